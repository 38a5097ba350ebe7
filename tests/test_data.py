import json

import numpy as np
import pytest
import torch

from pointdiff.data import PointCloudDataset, ShardError, read_index, write_shards


def _records(n=5, p=256, sdf=True):
    g = np.random.default_rng(0)
    for i in range(n):
        r = {
            "id": f"obj{i}",
            "caption": f"thing {i % 2}",
            "source": "test",
            "licence": "CC0",
            "split": "test" if i == 0 else "train",
            "coords": g.uniform(-0.5, 0.5, (p, 3)).astype(np.float32),
            "colors": g.integers(0, 256, (p, 3), dtype=np.uint8),
            "scale": 2.0,
        }
        if sdf:
            r["sdf_points"] = g.uniform(-0.5, 0.5, (64, 3))
            r["sdf_values"] = g.normal(size=64)
        yield r


def test_write_read_round_trip_and_determinism(tmp_path):
    meta = write_shards(_records(), tmp_path / "a", objects_per_shard=2)
    write_shards(_records(), tmp_path / "b", objects_per_shard=2)
    assert meta["num_objects"] == 5 and len(meta["shards"]) == 3 and meta["num_sdf"] == 64
    for name in [*meta["shards"], "index.jsonl", "meta.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    idx = read_index(tmp_path / "a")
    assert [e["id"] for e in idx] == [f"obj{i}" for i in range(5)]
    assert idx[3]["shard"] == "shard-00001.safetensors" and idx[3]["row"] == 1
    ds = PointCloudDataset(tmp_path / "a", split=None, num_points=256, subsample="first")
    rec = list(_records())[3]
    expect = np.concatenate([rec["coords"] * 2, rec["colors"] / 127.5 - 1], -1)
    np.testing.assert_allclose(ds[3]["points"].numpy(), expect, atol=1e-6)


def test_dataset_split_subsample_augment_and_text(tmp_path):
    write_shards(_records(), tmp_path)
    ds = PointCloudDataset(tmp_path, split="train", num_points=64, augment=True, seed=3)
    assert len(ds) == 4 and ds.captions == ["thing 0", "thing 1"]
    item = ds[0]
    assert item["points"].shape == (64, 6)
    assert item["points"][:, :3].abs().max() <= 1.0 + 1e-6
    # augmentation is a pure function of (seed, epoch, index): repeatable, and changes per epoch
    assert torch.equal(ds[1]["points"], ds[1]["points"])
    a = ds[1]["points"]
    ds.set_epoch(1)
    assert not torch.equal(a, ds[1]["points"])
    with pytest.raises(KeyError, match="no text embedding"):
        ds.set_text_embeddings({"thing 0": torch.zeros(4)})
    ds.set_text_embeddings({"thing 0": torch.zeros(4), "thing 1": torch.ones(4)})
    assert ds[1]["text_emb"].tolist() == [0.0] * 4  # obj2 has caption "thing 0"


def test_shard_errors(tmp_path):
    with pytest.raises(ShardError, match="no meta.json"):
        PointCloudDataset(tmp_path)
    with pytest.raises(ShardError, match="no records"):
        write_shards([], tmp_path)
    recs = list(_records(2))
    recs[1]["coords"] = recs[1]["coords"][:10]
    with pytest.raises(ShardError, match="obj1"):
        write_shards(recs, tmp_path)
    write_shards(_records(), tmp_path)
    with pytest.raises(ShardError, match="no objects in split 'val'"):
        PointCloudDataset(tmp_path, split="val")
    (tmp_path / "meta.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ShardError, match="format"):
        read_index(tmp_path)


def _fps_ordered(records):
    """The records with each cloud reordered as FPS (from point 0) picks it: data_tools' order."""
    from pointdiff.pointcloud import farthest_point_sample

    for r in records:
        order = farthest_point_sample(torch.from_numpy(r["coords"]), len(r["coords"])).numpy()
        yield {**r, "coords": r["coords"][order], "colors": r["colors"][order]}


def test_auto_subsample_reads_the_first_points_of_fps_ordered_clouds(tmp_path):
    write_shards(_fps_ordered(_records()), tmp_path / "fps")
    write_shards(_records(), tmp_path / "plain")
    write_shards(_records(), tmp_path / "told", point_order="fps")
    auto = PointCloudDataset(tmp_path / "fps", num_points=64)
    fps = PointCloudDataset(tmp_path / "fps", num_points=64, subsample="fps")
    assert auto.subsample == "first" and fps.subsample == "fps"
    for i in range(len(auto)):  # the very points FPS would pick, without running it
        assert torch.equal(auto[i]["points"], fps[i]["points"])
    assert PointCloudDataset(tmp_path / "plain", num_points=64).subsample == "fps"
    assert PointCloudDataset(tmp_path / "told", num_points=64).subsample == "first"
    # the FPS cache is bounded (least recently used objects go first)
    small = PointCloudDataset(tmp_path / "plain", num_points=64, subsample="fps", fps_cache=2)
    for i in (0, 1, 2, 3, 1):
        small[i]
    assert list(small._fps_cache) == [3, 1]


def test_index_is_columnar_and_text_tables_may_be_row_indexed(tmp_path):
    recs = list(_records())
    recs[1]["captions"] = ["thing 1", "a red thing", "a big thing"]
    write_shards(recs, tmp_path)
    ds = PointCloudDataset(tmp_path, num_points=64)
    index = ds.reader.index
    assert index.shard.dtype == np.int32 and index.caption_ids.dtype == np.int32
    assert list(index.vocab) == sorted({"thing 0", "thing 1", "a red thing", "a big thing"})
    assert ds.captions == ["a big thing", "a red thing", "thing 0", "thing 1"]
    assert ds.captions_of(0) == ["thing 1", "a red thing", "a big thing"]
    items = [ds[i] for i in range(len(ds))]
    assert ds.reader._entries is None  # no list of dicts was built to read items
    assert ds.entry(0)["id"] == "obj1" and ds.reader._entries is not None
    # a [C, D] table in the order of ds.captions (what the text cache stores), fp16 rows
    table = torch.arange(8, dtype=torch.float16).view(4, 2)
    ds.set_text_embeddings(table)
    for item in (ds[i] for i in range(len(ds))):
        row = ds.captions.index(item["caption"])
        assert item["text_emb"].dtype == torch.float32
        assert item["text_emb"].tolist() == table[row].float().tolist()
    assert [it["caption"] for it in items] == [ds[i]["caption"] for i in range(len(ds))]
    with pytest.raises(KeyError, match="3 text embeddings for 4 captions"):
        ds.set_text_embeddings(table[:3])

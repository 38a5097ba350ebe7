"""End-to-end converters on real data: captions, splits, colours, errors, determinism, resume."""

import csv
import json
import re
import shutil
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from data_tools import sweethome3d
from data_tools.__main__ import main
from data_tools.jobs import assign_split, parse_split, with_article, words_from_name
from data_tools.mesh_reader import load_mesh
from pointdiff.data import ShardReader, read_index

SMALL = ["--num-points", "256", "--oversample", "4096", "--sdf-queries", "256", "--no-progress"]
# Small ShapeNet models covering three splits, sub-synset captions and textures.
SHAPENET = [
    "02876657/2db802ef3de3d00618a36258eabc2b9c",
    "03001627/341e24df542e0676d42b9650f19dd425",
    "03797390/1eaf8db2dd2b710c7d5b1b70ae595e60",
    "03593526/9fe7e6a7bf8ca964efad53eb3f0b36fa",
]
GLBS = [
    "822202b6b8594342b632b0a39432642a",
    "e2ec7e244a1b4e328c92f57b4709257e",
    "b416732d162e4e4d92ee9a37c65fedbc",
]
BOX_FACES = "1 3 2, 1 4 3, 5 6 7, 5 7 8, 1 2 6, 1 6 5, 2 3 7, 2 7 6, 3 4 8, 3 8 7, 4 1 5, 4 5 8"
BOX_OBJ = "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 0 0 1\nv 1 0 1\nv 1 1 1\nv 0 1 1\n" + "".join(
    f"f {face}\n" for face in BOX_FACES.split(", ")
)


def _convert(*args) -> None:
    assert main([*args, *SMALL]) == 0


def _files(out: Path) -> dict[str, bytes]:
    names = ["meta.json", "index.jsonl", *sorted(p.name for p in out.glob("shard-*"))]
    return {n: (out / n).read_bytes() for n in names}


def _records(out: Path) -> dict[str, dict]:
    return {e["id"]: e for e in read_index(out)}


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, synthetic_meshes) -> Path:
    """Three small good meshes: a vertex-coloured GLB torus, a plain OBJ box and an OBJ cone."""
    root = tmp_path_factory.mktemp("mixed")
    torus = synthetic_meshes["torus"].copy()
    top = torus.vertices[:, 2:] > 0  # two-tone: orange above z = 0, blue below
    rgba = np.where(top, [200, 120, 40, 255], [40, 120, 200, 255])
    torus.visual.vertex_colors = rgba.astype(np.uint8)
    torus.export(root / "Torus.glb")
    (root / "box.obj").write_text(BOX_OBJ)
    synthetic_meshes["cone"].export(root / "cone.obj")
    return root


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, mixed_folder) -> Path:
    out = tmp_path_factory.mktemp("clean")
    _convert("folder", str(mixed_folder), "--out", str(out))
    return out


# ----------------------------------------------------------------------------------------------
# Sources


def test_shapenet_captions_splits_and_normalisation(shared_data, tmp_path):
    src = shared_data / "shapenet_core_v2_subset"
    root = tmp_path / "ShapeNetCore.v2"
    for rel in SHAPENET:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(src / rel)
    shutil.copy(src / "models.csv", root)
    out = tmp_path / "out"
    _convert("shapenet", str(root), "--out", str(out))
    table = {r["model_id"]: r for r in csv.DictReader(open(src / "models.csv"))}
    recs = _records(out)
    assert len(recs) == len(SHAPENET)
    assert {r["split"] for r in recs.values()} == {"train", "val", "test"}
    reader = ShardReader(out)
    for i, e in enumerate(reader.entries):
        row = table[e["model_id"]]
        assert e["split"] == row["official_split"]
        assert e["category"] == row["synset_name"] and row["synset_name"] in e["caption"]
        sub = row["sub_synset_name"].replace("_", " ")
        assert sub in e["caption"]
        coords = reader.get(i, "coords")
        assert np.abs(coords).max() <= 0.5 + 1e-6 and np.ptp(coords, axis=0).max() > 0.97
        # center/scale map the cloud back into the (Z-up) source frame, onto the mesh's bbox.
        obj = root / e["synset"] / e["model_id"] / "models/model_normalized.obj"
        tri = load_mesh(obj, root=obj.parent.parent, strict=False).triangles.reshape(-1, 3)
        back = coords * e["scale"] + np.array(e["center"])
        assert np.all(back.min(0) >= tri.min(0) - 1e-4) and np.all(back.max(0) <= tri.max(0) + 1e-4)
        sdf = reader.get(i, "sdf_values")
        assert sdf.shape == (256,) and (sdf < 0).any() and (sdf > 0).any()
        assert isinstance(e["sdf_reliable"], bool)


def test_objaverse_textures_licences_and_filter(shared_data, tmp_path):
    root = tmp_path / "glbs"
    root.mkdir()
    for uid in GLBS:
        (root / f"{uid}.glb").symlink_to(shared_data / f"objaverse_cap3d_examples/glbs/{uid}.glb")
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({GLBS[0]: "a red and black bicycle"}))
    out = tmp_path / "out"
    _convert(
        "objaverse",
        str(root),
        "--captions",
        str(captions),
        "--licences",
        "CC-BY-4.0",
        "--out",
        str(out),
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["converted"] == 2 and summary["filtered"] == 1  # the CC-BY-SA lamp
    assert summary["by_reason"] == {"filtered:licence CC-BY-SA-4.0": 1}
    assert (out / "errors.jsonl").read_text() == ""  # filtered objects are not errors
    reader = ShardReader(out)
    for i, e in enumerate(reader.entries):
        assert e["licence"] == "CC-BY-4.0" and e["colored_fraction"] == 1.0
        colors = reader.get(i, "colors").astype(float) / 255
        assert colors.std(axis=0).max() > 0.05  # texture detail, not one material colour
    recs = _records(out)
    assert recs[f"objaverse/{GLBS[0]}"]["caption"] == "a red and black bicycle"
    assert recs[f"objaverse/{GLBS[1]}"]["caption"] == "CTS 212-1"  # GLB title fallback
    assert recs[f"objaverse/{GLBS[1]}"]["caption_source"] == "title"


def test_waterbottle_colours_from_textures(shared_data, tmp_path):
    out = tmp_path / "out"
    _convert("folder", str(shared_data / "gltf_samples/WaterBottle"), "--out", str(out))
    colors = ShardReader(out).get(0, "colors").astype(float)
    fixture = np.load(shared_data / "fixtures_pc4096.npz")
    ref = fixture["rgb"][list(fixture["shape_id"]).index("WaterBottle")].reshape(-1, 3).mean(0)
    assert np.abs(colors.mean(0) - ref).max() < 25  # same texture; ours keeps visible points only
    assert colors.std(axis=0).min() > 10


def test_sweethome3d_small_catalog(tmp_path):
    src = sweethome3d.DEFAULT_DIR / "BlendSwap-CC-0.sh3f"
    if not src.is_file():
        pytest.skip("sweethome3d-furniture is not installed (make sysdeps)")
    head, pieces = sweethome3d.read_catalog(src)
    with zipfile.ZipFile(src) as zf:
        sizes = {}
        for info in zf.infolist():
            sizes.setdefault(str(PurePosixPath(info.filename).parent), 0)
            sizes[str(PurePosixPath(info.filename).parent)] += info.file_size
        folder = lambda p: str(PurePosixPath(p["model"].lstrip("/")).parent)  # noqa: E731
        small = sorted((p for p in pieces if "model" in p), key=lambda p: sizes[folder(p)])
        chosen = [small[0], next(p for p in small if p.get("modelRotation"))]
        lines = [f"{k}={v}" for k, v in head.items()]
        for n, p in enumerate(chosen, 1):
            lines += [f"{k}#{n}={v}" for k, v in p.items() if not k.startswith("_")]
        catalog = tmp_path / "small.sh3f"
        with zipfile.ZipFile(catalog, "w") as out_zip:
            out_zip.writestr(sweethome3d.CATALOG, "\n".join(lines).encode("latin-1"))
            for info in zf.infolist():
                if any(info.filename.startswith(folder(p) + "/") for p in chosen):
                    out_zip.writestr(info, zf.read(info))
    out = tmp_path / "out"
    _convert("sweethome3d", str(catalog), "--out", str(out))
    recs = list(_records(out).values())
    assert len(recs) == 2
    by_name = sorted(chosen, key=lambda p: p["name"])
    for e, p in zip(sorted(recs, key=lambda e: e["name"]), by_name, strict=True):
        assert e["licence"] == "Public domain" and p["name"].lower() in e["caption"]
        assert e["category"].lower() in e["caption"]
        size = np.array(e["size_cm"])  # width, depth, height: the same axes as x, y, z here
        ratio = np.array(e["extent"]) / size
        assert ratio.max() / ratio.min() < 1.05, (e["id"], ratio)  # orientation and aspect


# ----------------------------------------------------------------------------------------------
# Robustness and reproducibility


def test_corrupted_inputs_are_reported(synthetic_meshes, tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "good.obj").write_text(BOX_OBJ)
    glb = synthetic_meshes["torus"].export(file_type="glb")
    (root / "truncated.glb").write_bytes(glb[: len(glb) // 2])
    (root / "no_mtl.obj").write_text("mtllib missing.mtl\nusemtl m\n" + BOX_OBJ)
    (root / "no_tex.mtl").write_text("newmtl m\nKd 1 1 1\nmap_Kd missing.png\n")
    (root / "no_tex.obj").write_text("mtllib no_tex.mtl\nusemtl m\n" + BOX_OBJ)
    (root / "empty.obj").write_text("")
    (root / "nan.obj").write_text(BOX_OBJ.replace("v 1 1 1", "v nan 1 1"))
    out = tmp_path / "out"
    _convert("folder", str(root), "--out", str(out))
    errors = {
        json.loads(x)["id"]: json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()
    }
    assert set(_records(out)) == {"folder/good"}
    assert errors["folder/empty"]["reason"] == "empty_file"
    assert errors["folder/nan"]["reason"] == "non_finite_vertices"
    assert errors["folder/no_mtl"]["reason"] == "missing_asset"
    assert "missing.png" in errors["folder/no_tex"]["message"]
    assert errors["folder/truncated"]["reason"] in ("unreadable", "truncated")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == 5 and summary["converted"] == 1
    # Missing assets may be accepted afterwards: only the failed objects are redone.
    _convert("folder", str(root), "--out", str(out), "--allow-missing-assets", "--retry-failed")
    recs = _records(out)
    assert set(recs) == {"folder/good", "folder/no_mtl", "folder/no_tex"}
    assert "missing.png" in recs["folder/no_tex"]["warnings"][0]
    assert len((out / "errors.jsonl").read_text().splitlines()) == 3


def test_determinism_across_runs_and_workers(clean_run, mixed_folder, tmp_path):
    again = tmp_path / "again"
    _convert("folder", str(mixed_folder), "--out", str(again), "--workers", "2")
    assert _files(again) == _files(clean_run)
    recs = _records(clean_run)
    assert len(recs) == 3 and recs["folder/Torus"]["caption"] == "a torus"


def test_resume_after_interruption_matches_clean_run(clean_run, mixed_folder, tmp_path):
    out = tmp_path / "resumed"
    _convert("folder", str(mixed_folder), "--out", str(out), "--limit", "1")  # "interrupted"
    (out / "work/00").mkdir(exist_ok=True)
    (out / "work/00/stray.safetensors.tmp123").write_bytes(b"half a file")
    _convert("folder", str(mixed_folder), "--out", str(out))
    assert _files(out) == _files(clean_run)
    _convert("folder", str(mixed_folder), "--out", str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == 3 and summary["converted_now"] == 0
    assert _files(out) == _files(clean_run)
    assert main(["folder", str(mixed_folder), "--out", str(out), "--num-points", "128"]) == 2


def test_job_array_parts_merge_to_clean_run(clean_run, mixed_folder, tmp_path):
    out = tmp_path / "array"
    # part 1 through the options' former names, which still work
    for i, flags in enumerate([("--num-parts", "--part-index"), ("--num-shards", "--shard-index")]):
        _convert("folder", str(mixed_folder), "--out", str(out), flags[0], "2", flags[1], str(i))
    assert not (out / "meta.json").exists()
    assert main(["merge", str(out)]) == 0
    assert _files(out) == _files(clean_run)


def test_shards_record_fps_order_and_the_dataset_reads_first_points(clean_run, tmp_path):
    """Converted clouds are stored in the order farthest point sampling picked them, meta.json
    says so, and ``--subsample auto`` then reads the first N points: the very points FPS picks."""
    import torch

    from pointdiff.data import PointCloudDataset
    from pointdiff.pointcloud import farthest_point_sample

    assert json.loads((clean_run / "meta.json").read_text())["point_order"] == "fps"
    reader = ShardReader(clean_run)
    for i in range(len(reader.entries)):  # the claim holds: FPS from point 0 keeps the order
        coords = torch.from_numpy(reader.get(i, "coords"))
        assert torch.equal(farthest_point_sample(coords, len(coords)), torch.arange(len(coords)))
    data = {s: PointCloudDataset(clean_run, None, 64, subsample=s) for s in ("auto", "fps")}
    assert data["auto"].subsample == "first"
    for i in range(len(data["fps"])):
        assert torch.equal(data["auto"][i]["points"], data["fps"][i]["points"])
    # select_classes keeps the order's record (all its sources are FPS-ordered)
    from data_tools.select_classes import select

    meta = select([clean_run], tmp_path / "selected", [], others=True)
    assert meta["point_order"] == "fps"


def test_preview_png(clean_run, tmp_path):
    from PIL import Image

    png = tmp_path / "preview.png"
    assert main(["preview", str(clean_run), "--png", str(png), "--cols", "3", "--size", "64"]) == 0
    img = Image.open(png)
    assert img.width == 3 * 2 * 64 and img.height >= 64


# ----------------------------------------------------------------------------------------------
# Helpers


def test_splits_captions_and_properties():
    spec = parse_split("train=0.8,val=0.1,test=0.1")
    splits = [assign_split(f"obj{i}", spec, seed=3) for i in range(4000)]
    assert abs(splits.count("train") / 4000 - 0.8) < 0.03
    assert splits == [assign_split(f"obj{i}", spec, seed=3) for i in range(4000)]
    assert assign_split("x", parse_split("test")) == "test"
    assert with_article("armchair") == "an armchair" and with_article("a cup") == "a cup"
    assert words_from_name("WaterBottle") == "water bottle"
    assert words_from_name("stanford-bunny") == "stanford bunny"
    props = sweethome3d.parse_properties("# c\nname#1=Bill 10\\u20ac\nlong=a \\\n  b\nk\\=x : v\n")
    assert props == {"name#1": "Bill 10€", "long": "a b", "k=x": "v"}
    assert re.match(r"an? ", sweethome3d.caption_for("Futon couch", ["Sofa"], "Living room"))


def test_cli_help():
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0


def test_select_classes_reads_the_head_noun_and_drops_excluded_names():
    from data_tools.select_classes import classify

    def cls(name, caption=""):
        return classify({"name": name, "caption": caption or f"a {name.lower()}"})

    assert cls("Desk lamp") == "lamp" and cls("Desk") == "table"
    assert cls("Glass door cabinet") == "cabinet" and cls("Double door with panes") == "door"
    assert cls("Table on trestles") == "table" and cls("Bar stool") == "chair"
    assert cls("Armchair ottoman") == "sofa" and cls("Sofa 2 seats") == "sofa"
    assert cls("Blue pine under snow", "a blue pine under snow, tree") == "plant"  # caption
    assert cls("Table fan") is None and cls("Woman shoes") is None  # excluded words
    assert cls("Toaster", "a toaster (kitchen)") is None

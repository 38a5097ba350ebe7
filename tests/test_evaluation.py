"""Evaluation suite: classifier (+ point-e evaluator loader), P-FID/P-IS, R-precision, reports."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pointdiff.data import write_shards
from pointdiff.evaluation.alignment import (
    ClipScorer,
    category_r_precision,
    clip_r_precision,
    load_clip_scorer,
    nearest_reference_accuracy,
    nearest_reference_categories,
    r_precision,
)
from pointdiff.evaluation.classifier import (
    CLASSIFIER_PRESETS,
    ClassifierError,
    PointNet2Classifier,
    load_classifier,
    load_pointe_evaluator,
    pointe_key_map,
    save_classifier,
    with_classes,
)
from pointdiff.evaluation.features import extract_features, frechet_distance, p_fid, p_is
from pointdiff.evaluation.report import run_eval
from pointdiff.metrics import MetricInputError
from pointdiff.pointcloud import PointCloud
from pointdiff.training.classifier import (
    accuracy,
    load_shapenet_subset,
    train_classifier,
)


def _tiny(names=("a", "b", "c"), **kw):
    torch.manual_seed(0)
    cfg = with_classes(CLASSIFIER_PRESETS["tiny"], list(names))
    return PointNet2Classifier(cfg.__class__(**{**cfg.__dict__, **kw})).eval()


def _blobs(n, k, seed, colour=(0.8, 0.2, 0.2)):
    g = np.random.default_rng(seed)
    xyz = g.normal(size=(n, k, 3)) * g.uniform(0.1, 0.3, (n, 1, 3))
    rgb = np.broadcast_to(np.float32(colour), (n, k, 3))
    return np.concatenate([np.clip(xyz, -0.5, 0.5), rgb], -1).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Classifier


@pytest.mark.parametrize("in_channels", [3, 6])
def test_classifier_shapes_and_input_checks(in_channels):
    m = _tiny(in_channels=in_channels)
    out = m(torch.from_numpy(_blobs(4, 256, 0)))
    assert out["logits"].shape == (4, 3) and out["features"].shape == (4, m.cfg.feature_dim)
    with pytest.raises(ClassifierError, match="expected points"):
        m(torch.zeros(4, 256, 2))


def test_classifier_save_load_roundtrip(tmp_path):
    m = _tiny()
    save_classifier(m, tmp_path, extra={"held_out": {"acc": 0.5}})
    m2 = load_classifier(tmp_path)
    x = torch.from_numpy(_blobs(3, 256, 1))
    assert torch.equal(m(x)["logits"], m2(x)["logits"])
    assert m2.cfg == m.cfg and json.loads((tmp_path / "config.json").read_text())["held_out"]
    with pytest.raises(ClassifierError, match="model.safetensors"):
        load_classifier(tmp_path / "missing")
    save_classifier(m, tmp_path / "fp16", dtype=torch.float16)  # shipped form
    m3 = load_classifier(tmp_path / "fp16")
    torch.testing.assert_close(m3(x)["logits"], m(x)["logits"], atol=2e-2, rtol=2e-2)
    assert next(m3.parameters()).dtype == torch.float32


def _pointe_reference(sd, xyz):
    """point-e's pointnet2_cls_ssg forward (eval mode), channel-first with 1×1 convs."""
    xyz = xyz - xyz.mean(1, keepdim=True)
    xyz = xyz / xyz.norm(dim=-1).amax(1)[:, None, None]
    b = xyz.shape[0]
    bi = torch.arange(b)

    def sq(src, dst):
        d = -2 * src @ dst.transpose(1, 2)
        return d + src.square().sum(-1)[..., None] + dst.square().sum(-1)[:, None]

    def sa(p, xyz, pts, npoint, r, ns):
        if npoint is None:
            new_xyz, grouped = None, torch.cat([xyz[:, None], pts[:, None]], -1)
        else:
            n = xyz.shape[1]
            cent, dist, far = (
                torch.zeros(b, npoint, dtype=torch.long),
                torch.full((b, n), 1e10),
                bi.clone(),
            )
            for i in range(npoint):
                cent[:, i] = far
                d = ((xyz - xyz[bi, far][:, None]) ** 2).sum(-1)
                dist = torch.where(d < dist, d, dist)
                far = dist.max(-1)[1]
            new_xyz = xyz[bi[:, None], cent]
            idx = torch.arange(n).repeat(b, npoint, 1)
            idx[sq(new_xyz, xyz) > r**2] = n
            idx = idx.sort(-1)[0][:, :, :ns]
            idx = torch.where(idx == n, idx[:, :, :1].expand_as(idx), idx)
            g = xyz[bi[:, None, None], idx] - new_xyz[:, :, None]
            grouped = g if pts is None else torch.cat([g, pts[bi[:, None, None], idx]], -1)
        x = grouped.permute(0, 3, 2, 1)
        for i in range(3):
            x = F.conv2d(x, sd[f"{p}.mlp_convs.{i}.weight"], sd[f"{p}.mlp_convs.{i}.bias"])
            x = F.batch_norm(
                x,
                sd[f"{p}.mlp_bns.{i}.running_mean"],
                sd[f"{p}.mlp_bns.{i}.running_var"],
                sd[f"{p}.mlp_bns.{i}.weight"],
                sd[f"{p}.mlp_bns.{i}.bias"],
            )
            x = F.relu(x)
        return new_xyz, x.max(2)[0].transpose(1, 2)

    l1, p1 = sa("sa1", xyz, None, 512, 0.2, 32)
    l2, p2 = sa("sa2", l1, p1, 128, 0.4, 64)
    _, p3 = sa("sa3", l2, p2, None, None, None)

    def bn(x, i):
        return F.batch_norm(
            x,
            sd[f"bn{i}.running_mean"],
            sd[f"bn{i}.running_var"],
            sd[f"bn{i}.weight"],
            sd[f"bn{i}.bias"],
        )

    x = F.relu(bn(F.linear(p3[:, 0], sd["fc1.weight"], sd["fc1.bias"]), 1))
    feats = bn(F.linear(x, sd["fc2.weight"], sd["fc2.bias"]), 2)
    return F.linear(F.relu(feats), sd["fc3.weight"], sd["fc3.bias"]), feats


def _fake_pointe_state_dict():
    """Random weights under point-e's parameter names and shapes (convs are [O, I, 1, 1])."""
    g = torch.Generator().manual_seed(0)
    ours = PointNet2Classifier(CLASSIFIER_PRESETS["pointe"]).state_dict()
    sd = {}
    for k, theirs in pointe_key_map(CLASSIFIER_PRESETS["pointe"]).items():
        v = ours[k]
        if k.endswith("num_batches_tracked"):
            sd[theirs] = torch.tensor(7)
            continue
        r = torch.rand(v.shape, generator=g)
        v = 0.5 + r if "running_var" in k or k.endswith("norms.0.weight") else (r - 0.5) * 0.2
        sd[theirs] = (
            v[..., None, None] if "mlp_convs" in theirs and theirs.endswith("weight") else v
        )
    return sd


def test_pointe_evaluator_loader_matches_pointe_forward(tmp_path):
    sd = _fake_pointe_state_dict()
    path = tmp_path / "pointnet.pt"
    torch.save({"model_state_dict": sd, "epoch": 3}, path)
    model = load_pointe_evaluator(path)
    assert model.cfg.feature_dim == 512 and model.cfg.num_classes == 40
    x = torch.from_numpy(_blobs(2, 1024, 2)[..., :3])
    out = model(x)
    ref_logits, ref_feats = _pointe_reference(sd, x)
    assert torch.allclose(out["features"], ref_feats, atol=1e-4, rtol=1e-4)
    assert torch.allclose(out["logits"], ref_logits, atol=1e-4, rtol=1e-4)
    # Bad files: missing and mis-shaped keys are named.
    del sd["fc3.bias"]
    torch.save({"model_state_dict": sd}, path)
    with pytest.raises(ClassifierError, match="fc3.bias"):
        load_pointe_evaluator(path)
    sd["fc3.bias"] = torch.zeros(39)
    torch.save(sd, path)
    with pytest.raises(ClassifierError, match=r"fc3.bias has shape \(39,\)"):
        load_pointe_evaluator(path)


def test_classifier_trains_and_beats_chance_on_shapenet(shared_data):
    data = load_shapenet_subset(shared_data / "shapenet_core_v2_subset_pc4096", num_points=1024)
    names = sorted(set(data.labels))
    train, held = data.subset(data.splits == "train"), data.subset(data.splits != "train")
    torch.manual_seed(0)
    model = PointNet2Classifier(with_classes(CLASSIFIER_PRESETS["tiny"], names))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: a second thread only adds sync cost (7x on a busy CPU)
    try:
        hist = train_classifier(model, train, epochs=25, num_points=384, lr=3e-3, log_every=25)
        acc = accuracy(model, held, num_points=384)
    finally:
        torch.set_num_threads(threads)
    chance = 1 / len(names)
    assert hist[-1]["loss"] < np.log(len(names))  # learned something
    assert acc["acc"] >= 2 * chance, acc  # 25 held-out clouds, 9 classes


# ----------------------------------------------------------------------------------------------
# P-FID, P-IS


def test_frechet_distance_matches_sqrtm_formula():
    from scipy import linalg

    g = np.random.default_rng(0)
    a, b = g.normal(size=(50, 6)), g.normal(size=(50, 6)) @ g.normal(size=(6, 6)) + 1
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)


def test_pfid_of_a_set_with_itself_is_zero_and_grows_with_shift():
    m = _tiny()
    f, p = extract_features(m, _blobs(40, 256, 3))
    assert f.shape == (40, m.cfg.feature_dim) and np.allclose(p.sum(1), 1)
    assert abs(p_fid(f, f)) < 1e-6  # 40 < feature_dim: singular covariances are handled
    assert p_fid(f, f + 1.0) == pytest.approx(f.shape[1], rel=1e-6)  # ‖Δμ‖² = D


def test_pis_bounds():
    assert p_is(np.full((10, 4), 0.25)) == pytest.approx(1.0)
    assert p_is(np.eye(4)[np.arange(40) % 4]) == pytest.approx(4.0, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# R-precision


def test_r_precision_hand_built():
    scores = np.array([[3.0, 1.0, 2.0], [0.0, 1.0, 5.0], [1.0, 1.0, 0.0]])
    value, hits = r_precision(scores, np.array([0, 1, 0]))
    assert value == pytest.approx(1 / 3) and hits.tolist() == [True, False, False]  # tie = miss
    res = category_r_precision(scores, ["x", "y", "x"], ["x", "y", "z"])
    assert res["per_category"] == {"x": 0.5, "y": 0.0}
    # With 2 candidates: row 0 always hits, rows 1 and 2 hit only with the distractor column
    # they beat (0 for row 1, 2 for row 2).
    vals = {r_precision(scores, np.array([0, 1, 0]), n=2, seed=s)[0] for s in range(20)}
    assert vals == {1 / 3, 2 / 3, 1.0}
    with pytest.raises(ValueError, match="not classifier classes"):
        category_r_precision(scores, ["w", "y", "x"], ["x", "y", "z"])


def test_nearest_reference_judge_is_shape_only_and_labels_by_the_nearest_cloud():
    """Spheres, flat slabs and thin rods as references; noisy, rescaled, shifted copies of each
    kind (different samples) are judged by shape: the bbox protocol removes size and position."""
    g = np.random.default_rng(0)

    def shape(kind, n=256):
        p = g.normal(size=(n, 3))
        p /= np.linalg.norm(p, axis=1, keepdims=True)
        scale = {"ball": [1, 1, 1], "slab": [1, 1, 0.1], "rod": [0.1, 0.1, 1]}[kind]
        return (p * scale).astype(np.float32)

    kinds = ["ball", "slab", "rod"]
    refs = np.stack([shape(k) for k in kinds for _ in range(2)])
    ref_cats = [k for k in kinds for _ in range(2)]
    asked = ["ball", "slab", "rod", "rod", "slab"]
    gen = np.stack(
        [
            shape(k) * g.uniform(0.3, 3) + g.normal(size=3) + 0.02 * g.normal(size=(256, 3))
            for k in asked
        ]
    ).astype(np.float32)
    assert nearest_reference_categories(gen, refs, ref_cats) == asked
    res = nearest_reference_accuracy(gen, ["ball", "slab", "slab", "ball", "slab"], refs, ref_cats)
    assert res["accuracy"] == pytest.approx(3 / 5)
    assert res["per_category"] == {"ball": 0.5, "slab": pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="categories"):
        nearest_reference_categories(gen, refs, ref_cats[:-1])


class _ColourCLIP(torch.nn.Module):
    """A fake CLIP whose image embedding is the mean non-white colour and whose text embedding
    is the colour a prompt names."""

    TABLE = {"a red thing": [1.0, 0, 0], "a green thing": [0, 1.0, 0], "a blue thing": [0, 0, 1.0]}

    def encode_image(self, x):  # x [B, 3, H, W] in [0, 1]
        mask = (x < 0.99).any(1, keepdim=True)
        return (x * mask).sum((2, 3)) / mask.sum((2, 3)).clamp_min(1)

    def encode_text(self, tokens):
        return tokens.float()


def _colour_scorer():
    from torchvision.transforms.functional import to_tensor

    def tok(texts):
        return torch.tensor([_ColourCLIP.TABLE[t] for t in texts])

    return ClipScorer(_ColourCLIP(), to_tensor, tok, name="colour-fake")


def test_clip_r_precision_with_a_known_scorer():
    colours = {
        "a red thing": (0.9, 0.1, 0.1),
        "a green thing": (0.1, 0.9, 0.1),
        "a blue thing": (0.1, 0.1, 0.9),
    }
    clouds, prompts = [], []
    for i, (prompt, col) in enumerate(colours.items()):
        c = _blobs(1, 400, i, col)[0]
        clouds.append(PointCloud(c[:, :3], c[:, 3:]))
        prompts.append(prompt)
    res = clip_r_precision(clouds, prompts, _colour_scorer(), views=2, size=64)
    assert res["r_precision"] == 1.0 and res["n_candidates"] == 3
    shuffled = clip_r_precision(clouds, prompts[::-1], _colour_scorer(), views=2, size=64)
    assert shuffled["r_precision"] == pytest.approx(1 / 3)


def test_clip_scorer_from_a_tiny_local_open_clip(tmp_path, tiny_clip_config):
    cfg = {"model_cfg": tiny_clip_config(embed_dim=16, text_layers=1, context_length=16)}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    scorer = load_clip_scorer(f"local-dir:{tmp_path}")
    c = _blobs(2, 300, 5)
    clouds = [PointCloud(x[:, :3], x[:, 3:]) for x in c]
    res = clip_r_precision(clouds, ["a chair", "a mug"], scorer, views=2, size=32)
    assert 0.0 <= res["r_precision"] <= 1.0 and res["count"] == 2
    with pytest.raises(FileNotFoundError, match="local weights"):
        load_clip_scorer("ViT-B-32")


# ----------------------------------------------------------------------------------------------
# Reports


def _reference_shards(tmp_path, n=10, k=300):
    clouds = _blobs(n, k, 7)
    recs = [
        {
            "id": f"r{i}",
            "caption": "a blob",
            "source": "test",
            "licence": "CC0",
            "split": "test",
            "category": "a",
            "coords": c[:, :3],
            "colors": c[:, 3:],
        }
        for i, c in enumerate(clouds)
    ]
    write_shards(recs, tmp_path / "ref")
    return tmp_path / "ref"


def test_run_eval_end_to_end(tmp_path):
    ref = _reference_shards(tmp_path)
    sdir = tmp_path / "samples"
    sdir.mkdir()
    meta = []
    for i, c in enumerate(_blobs(8, 320, 8)):
        PointCloud(c[:, :3], c[:, 3:]).save(sdir / f"s{i:02d}.ply")
        meta.append(json.dumps({"file": f"s{i:02d}.ply", "prompt": "a red thing", "category": "a"}))
    (sdir / "metadata.jsonl").write_text("\n".join(meta))
    clf = tmp_path / "clf"
    save_classifier(_tiny(), clf)
    rep = run_eval(
        sdir,
        ref,
        tmp_path / "out",
        protocol="bbox",
        seeds=(0, 1),
        num_points=256,
        classifier=clf,
        clip=_colour_scorer(),
        clip_views=2,
        grid=4,
    )
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["protocol"] == "bbox" and on_disk["seeds"] == [0, 1] and on_disk["n_eval"] == 8
    for key in ("1nna_cd", "cov_cd", "mmd_cd", "1nna_emd", "cov_emd", "mmd_emd", "jsd"):
        assert len(rep["metrics"][key]["values"]) == 2 and np.isfinite(rep["metrics"][key]["std"])
    assert np.isfinite(rep["classifier"]["p_fid"]) and rep["classifier"]["p_is"] >= 1.0
    assert rep["classifier"]["category_r_precision"]["count"] == 8
    assert rep["clip_r_precision"]["r_precision"] == 1.0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "protocol: **bbox**" in md and "1nna_cd" in md and "± " in md
    assert (tmp_path / "out" / "grid.png").stat().st_size > 0
    assert any("differ in size" in w for w in rep["warnings"])


def test_run_eval_on_pointe_npz_and_bad_inputs(tmp_path):
    ref = _reference_shards(tmp_path)
    arr = _blobs(6, 256, 9)[..., :3]
    np.savez(tmp_path / "s.npz", arr_0=arr)
    rep = run_eval(
        tmp_path / "s.npz", ref, tmp_path / "o1", metrics=("cd",), num_points=200, grid=0
    )
    assert rep["protocol"] == "global" and rep["num_points"] == 200 and rep["n_eval"] == 6
    arr[2, 5, 1] = np.nan
    np.savez(tmp_path / "nan.npz", arr_0=arr)
    with pytest.raises(MetricInputError, match="NaN"):
        run_eval(tmp_path / "nan.npz", ref, tmp_path / "o2", metrics=("cd",))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MetricInputError, match="no .ply or .npz"):
        run_eval(tmp_path / "empty", ref, tmp_path / "o3")
    with pytest.raises(MetricInputError, match="protocol"):
        run_eval(tmp_path / "s.npz", ref, tmp_path / "o4", protocol="unit")
    with pytest.raises(MetricInputError, match="empty set"):
        run_eval(tmp_path / "s.npz", ref, tmp_path / "o5", split="val")
    np.savez(tmp_path / "bad.npz", arr_0=np.zeros((2, 10, 4), np.float32))
    with pytest.raises(MetricInputError, match=r"\[N, K, 3 or 6\]"):
        run_eval(tmp_path / "bad.npz", ref, tmp_path / "o6")


def test_classifier_augmentation_rotation_is_bounded():
    import math

    from pointdiff.training.classifier import _augment

    x = torch.tensor([[[0.5, 0.0, 0.0]]]).expand(512, 1, 3).contiguous()
    for limit in (0.0, 15.0, 180.0):
        y = _augment(x, torch.Generator().manual_seed(0), rotation=limit)
        angle = torch.atan2(y[:, 0, 1], y[:, 0, 0]).abs().max().item()
        # anisotropic scale (y/x up to 1.25/0.8) widens the angle; jitter adds ~0.01 rad
        bound = math.atan(1.25 / 0.8 * math.tan(math.radians(min(limit, 89.0)))) + 0.05
        assert limit == 180 or angle <= bound
        assert limit == 0 or angle > 0.8 * math.radians(limit)


def test_perturb_moves_the_stated_share_of_points_and_leaves_the_input_alone():
    from pointdiff.pointcloud import STRAY_SIGMA
    from pointdiff.training.classifier import LabelledClouds, perturb

    rng = np.random.default_rng(0)
    coords = rng.uniform(-0.5, 0.5, (4, 1000, 3)).astype(np.float32)
    data = LabelledClouds(
        coords, np.zeros_like(coords), np.array(list("abab")), np.full(4, "test"), np.full(4, "x")
    )
    before = coords.copy()
    out = perturb(data, noise=0.0, outliers=0.03, seed=1)
    assert np.array_equal(data.coords, before)  # a copy
    moved = np.linalg.norm(out.coords - before, axis=-1) > 0
    assert (moved.sum(1) == 30).all()  # exactly 3 % of each cloud
    assert 0.6 * STRAY_SIGMA < np.abs(out.coords - before)[moved].std() < 1.4 * STRAY_SIGMA
    jitter = perturb(data, noise=0.015, outliers=0.0, seed=1).coords - before
    assert abs(jitter.std() - 0.015) < 0.001
    assert np.array_equal(
        perturb(data, 0.015, 0.03, seed=5).coords, perturb(data, 0.015, 0.03, seed=5).coords
    )
    assert list(out.labels) == list("abab")


def test_classifier_augmentation_noise_and_outliers_are_bounded():
    from pointdiff.pointcloud import STRAY_SIGMA
    from pointdiff.training.classifier import _augment

    x = torch.zeros(256, 512, 3)
    base = _augment(x, torch.Generator().manual_seed(0), rotation=0.0)
    noisy = _augment(x, torch.Generator().manual_seed(0), rotation=0.0, noise=0.02)
    strays = _augment(x, torch.Generator().manual_seed(0), rotation=0.0, outliers=0.1)
    # base jitter σ 0.005; noise adds σ ~ U(0, 0.02) per cloud: mean variance 0.02²/3
    assert abs(base.std().item() - 0.005) < 0.0003
    assert abs(noisy.var().item() - (0.005**2 + 0.02**2 / 3)) < 2e-5
    assert noisy.std(dim=(1, 2)).max() < 0.022  # √(0.02² + 0.005²) = 0.0206 at most, + sampling
    far = (strays.norm(dim=-1) > 0.03).float().mean(1)  # moved points, per cloud
    assert far.max() < 0.1 * 1.2 and far.mean() > 0.02  # fraction ~ U(0, 0.1)
    assert strays.abs().max() < 6 * STRAY_SIGMA


def test_shapenet_yaw_turns_chair_backs_to_sweet_home_3ds_side(shared_data):
    root = shared_data / "shapenet_core_v2_subset_pc4096"
    for yaw, sign in ((0.0, -1), (180.0, 1)):
        data = load_shapenet_subset(root, num_points=1024, yaw=yaw)
        for x in data.coords[data.labels == "chair"][:5]:
            top = x[x[:, 2] > np.quantile(x[:, 2], 0.8)]  # the backrest
            assert sign * (top[:, 1].mean() - x[:, 1].mean()) > 0.05


def test_rescore_clouds_scores_saved_clouds_with_the_given_classifier(tmp_path, monkeypatch):
    """Labels equal to the classifier's own predictions score 1, any other labels 0."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    from eval_shipped import classify
    from rescore_clouds import main

    model = _tiny(("a", "b", "c"))
    save_classifier(model, tmp_path / "clf")
    clf = load_classifier(tmp_path / "clf").eval()
    x = _blobs(12, 256, seed=0)
    clouds = [PointCloud(c[:, :3], c[:, 3:]) for c in x]
    pred = [clf.cfg.class_names[i] for i in classify(clf, clouds).argmax(-1).tolist()]
    never = sorted(set("abc") - set(pred))
    files = []
    for name, cats in (("own", pred), ("other", None)):
        if cats is None:  # every cloud labelled with a class it was not given
            cats = [never[0] if never else next(c for c in "abc" if c != p) for p in pred]
        files.append(tmp_path / f"{name}.npz")
        np.savez(
            files[-1],
            coords=x[..., :3],
            colors=x[..., 3:],
            categories=np.array(cats),
            prompts=np.array(cats),
        )
    assert main(["--classifier", str(tmp_path / "clf"), str(files[0])])["r_precision"] == (1.0, 0.0)
    assert main(["--classifier", str(tmp_path / "clf"), str(files[1])])["r_precision"] == (0.0, 0.0)
    both = main(["--classifier", str(tmp_path / "clf"), *map(str, files)])
    assert both["r_precision"] == (0.5, 0.5)
    # --stray-ratio runs the pipeline's relocation on the saved clouds before classifying
    import rescore_clouds

    seen = []
    real = rescore_clouds.relocate_strays
    monkeypatch.setattr(
        rescore_clouds,
        "relocate_strays",
        lambda x, r: seen.append((tuple(x.shape), r)) or real(x, r),
    )
    main(["--classifier", str(tmp_path / "clf"), "--stray-ratio", "3", str(files[0])])
    assert seen == [((12, 256, 6), 3.0)]


def test_rescore_clouds_nearest_judge_needs_no_classifier(tmp_path, monkeypatch):
    """Saved clouds that are the training clouds themselves are judged by their own category;
    a label no training cloud has is always a miss."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    from rescore_clouds import main

    clouds = _blobs(6, 600, seed=3)  # 600 points: the judge takes 512 FPS points
    cats = ["a", "b", "c", "a", "b", "c"]
    recs = [
        {
            "id": f"t{i}",
            "caption": "x",
            "source": "test",
            "licence": "CC0",
            "split": "train",
            "category": k,
            "coords": c[:, :3],
            "colors": (c[:, 3:] + 1) / 2,
        }
        for i, (c, k) in enumerate(zip(clouds, cats, strict=True))
    ]
    write_shards(recs, tmp_path / "train")
    for name, labels in (("own", cats), ("none", ["d"] * 6)):
        np.savez(
            tmp_path / f"{name}.npz",
            coords=clouds[..., :3],
            colors=clouds[..., 3:],
            categories=np.array(labels),
            prompts=np.array(labels),
        )
    res = main(
        [
            "--nearest",
            str(tmp_path / "train"),
            str(tmp_path / "own.npz"),
            str(tmp_path / "none.npz"),
        ]
    )
    assert res == {"nn_accuracy": (0.5, 0.5)}
    with pytest.raises(SystemExit):
        main([str(tmp_path / "own.npz")])


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_fps_share_trains_on_the_farthest_point_prefix_that_share_of_the_time(share):
    from pointdiff.training.classifier import LabelledClouds, _batch

    n, p = 400, 100
    coords = np.zeros((n, p, 3), dtype=np.float32)
    coords[..., 0] = np.arange(p)  # x = the point's index (the augmentation's jitter is 0.005)
    data = LabelledClouds(
        coords, np.zeros_like(coords), np.full(n, "a"), np.full(n, "train"), np.full(n, "x")
    )
    g = torch.Generator().manual_seed(0)
    out = _batch(data, np.arange(n), 10, 3, g, True, rotation=0.0, fps_share=share)
    # the prefix is points 0..9 in order; a random pick is in increasing order with p ≈ 1/10!
    in_order = (out[..., 0].diff(dim=1) > 0).all(1)
    assert abs(in_order.float().mean().item() - share) < 0.08

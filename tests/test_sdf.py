"""SDF head: shapes, cached K/V = uncached, point-e names, bad input, and overfitting two shapes."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pointdiff.config import TrainConfig, get_preset
from pointdiff.models import ModelInputError, build_model
from pointdiff.models.sdf import SDFLatents, SDFModel
from pointdiff.training.sdf import SDFDataset, SDFLoss, volumetric_iou

TINY = get_preset("sdf_tiny")
PERCEIVER = dataclasses.replace(TINY, num_latents=16)
DATA = Path(__file__).resolve().parent / "data"  # made by point-e's own code: data/README.md


def _model(cfg=TINY, seed=0) -> SDFModel:
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    # zero-initialised output: give it weights so outputs differ between queries
    torch.nn.init.normal_(model.output_proj.weight, std=0.5)
    return model


def _cloud(b=2, n=64, seed=0) -> torch.Tensor:
    return torch.rand(b, n, 3, generator=torch.Generator().manual_seed(seed)) - 0.5


# ----------------------------------------------------------------------------------------------
# Shapes and caching


@pytest.mark.parametrize("cfg", [TINY, PERCEIVER], ids=["self-attention", "perceiver"])
def test_forward_backward_shapes(cfg):
    model = _model(cfg).train()
    out = model(_cloud(), _cloud(n=10, seed=1))
    assert out.shape == (2, 10)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("cfg", [TINY, PERCEIVER], ids=["self-attention", "perceiver"])
def test_cached_kv_equals_uncached(cfg):
    model = _model(cfg)
    with torch.no_grad():
        latents = model.encode(_cloud())
        queries = _cloud(n=33, seed=1)
        cached = model.predict_sdf(latents, queries)
        uncached = model.predict_sdf(latents.tokens, queries)
    assert isinstance(latents, SDFLatents) and len(latents.kv) == cfg.decoder_depth
    torch.testing.assert_close(cached, uncached, rtol=0, atol=1e-6)


def test_queries_are_independent_and_latents_broadcast():
    model = _model()
    with torch.no_grad():
        latents = model.encode(_cloud(b=1))
        q = _cloud(b=1, n=40, seed=1)
        whole = model.predict_sdf(latents, q)
        parts = torch.cat([model.predict_sdf(latents, c) for c in q.split(7, dim=1)], dim=1)
        batched = model.predict_sdf(latents, q.view(4, 10, 3))  # one cloud, 4 query batches
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-5)
    torch.testing.assert_close(batched.view(1, 40), whole, rtol=0, atol=1e-5)


def test_query_fn_matches_forward():
    model = _model()
    cloud = _cloud(b=1)
    fn = model.query_fn(cloud[0], batch_size=16)
    q = _cloud(b=1, n=50, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(fn(q[0]), model(cloud, q)[0], rtol=0, atol=1e-6)


def test_parameter_names_and_count_match_pointe():
    ref = json.loads((DATA / "pointe_state_dict_shapes.json").read_text())["sdf"]
    with torch.device("meta"):
        model = SDFModel(get_preset("sdf_pointe"))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == ref["state_dict"]  # names and shapes; only fused-row order differs
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"]


# ----------------------------------------------------------------------------------------------
# Bad input


def test_bad_inputs_are_named():
    model = _model()
    with pytest.raises(ModelInputError, match="empty"):
        model.encode(torch.zeros(1, 0, 3))
    with pytest.raises(ModelInputError, match="NaN"):
        model.encode(torch.full((1, 8, 3), float("nan")))
    with pytest.raises(ModelInputError, match=r"\[B, N, 3\]"):
        model.encode(torch.zeros(8, 3))
    with pytest.raises(ModelInputError, match=r"\[B, Q, 3\]"):
        model.predict_sdf(model.encode(_cloud()), torch.zeros(2, 5, 4))


# ----------------------------------------------------------------------------------------------
# Loss


class _Echo(torch.nn.Module):
    """A fake head whose prediction is the query's x coordinate."""

    def forward(self, points, queries):
        return queries[..., 0]


def test_loss_is_clamped_and_sign_balanced():
    sdf = torch.tensor([[-0.05, 0.02, 0.3, 0.5]])  # one inside, three outside
    exact = torch.stack([sdf.clamp(-0.1, 0.1), torch.zeros_like(sdf), torch.zeros_like(sdf)], -1)

    def batch(queries):
        return {"points": None, "queries": queries, "sdf": sdf}

    for balance in (False, True):
        loss = SDFLoss(0.1, balance=balance)(_Echo(), batch(exact))
        assert loss.shape == (1,) and float(loss) == 0.0  # far values count only up to the clamp
    err = 0.04
    wrong_in = exact.clone()
    wrong_in[0, 0, 0] += err
    wrong_out = exact.clone()
    wrong_out[0, 1:, 0] += err
    balanced = SDFLoss(0.1, balance=True)
    # the one inside sample weighs as much as the three outside ones together
    torch.testing.assert_close(balanced(_Echo(), batch(wrong_in)), torch.tensor([err / 2]))
    torch.testing.assert_close(balanced(_Echo(), batch(wrong_out)), torch.tensor([err / 2]))


# ----------------------------------------------------------------------------------------------
# Training: a tiny head overfits two closed shapes (volumetric IoU >= 0.9)

# SDF samples come from data_tools.surface_sampling (open3d ray casting) in a child process:
# open3d's thread pool, once started, slows torch's CPU kernels in the same process several-fold.
_MAKE_SHAPES = """
import sys
import numpy as np
from pointdiff.data import write_shards
from data_tools.mesh_reader import load_mesh
from pointdiff.pointcloud import normalize_bbox
from data_tools.surface_sampling import MeshRaycaster, sample_sdf_queries, sample_surface

out, names = sys.argv[1], sys.argv[2:]
records, evals = [], {}
for name in names:
    soup = load_mesh(f"{out}/{name}.obj", up="z", strict=False)
    flat, _, _ = normalize_bbox(soup.triangles.reshape(-1, 3))
    soup = soup.transformed(flat.reshape(-1, 3, 3).astype(np.float64))
    rng = np.random.default_rng(0)
    surface = sample_surface(soup, 4096, rng)
    caster = MeshRaycaster(soup.triangles)
    queries = sample_sdf_queries(surface.points, 16384, rng, uniform_fraction=0.5)
    values, _ = caster.signed_distance(queries, rng=rng)
    uniform = rng.uniform(-0.5, 0.5, (8000, 3)).astype(np.float32)  # held-out IoU points
    evals[name], _ = caster.signed_distance(uniform, rng=rng)
    evals[name + "_points"] = uniform
    records.append(dict(id=name, caption=name, source="synthetic", licence="test", split="train",
                        coords=surface.points, colors=surface.colors,
                        sdf_points=queries, sdf_values=values))
write_shards(records, out)
np.savez(f"{out}/eval.npz", **evals)
"""


SHAPES = ("torus", "cone")  # a hole and a sharp rim: neither is a blob


@pytest.fixture(scope="module")
def closed_shapes(synthetic_meshes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sdf_shapes")
    for name in SHAPES:
        synthetic_meshes[name].export(out / f"{name}.obj")
    subprocess.run([sys.executable, "-c", _MAKE_SHAPES, str(out), *SHAPES], check=True)
    return out


def test_sdf_dataset_items_and_augmentation(closed_shapes):
    exact = dict(noise=0.0, dropout=0.0, rotate=False)
    clean = SDFDataset(closed_shapes, split=None, num_points=256, num_queries=64, **exact)
    aug = SDFDataset(closed_shapes, split=None, num_points=256, num_queries=64)
    item = clean[0]
    assert item["points"].shape == (256, 3) and item["queries"].shape == (64, 3)
    assert item["sdf"].shape == (64,) and item["index"] == 0
    assert item["points"].abs().max() <= 0.5 + 1e-5
    a, b = aug[1], aug[1]
    torch.testing.assert_close(a["points"], b["points"])  # a function of (seed, epoch, index)
    aug.set_epoch(1)
    assert not torch.equal(aug[1]["points"], a["points"])


def test_sdf_dataset_outliers_scatter_a_few_points(closed_shapes):
    kw = dict(split=None, num_points=1024, num_queries=64, noise=0.0, dropout=0.0, rotate=False)
    clean = SDFDataset(closed_shapes, **kw)
    strays = SDFDataset(closed_shapes, outliers=0.2, **kw)
    for i in range(len(clean)):
        a, b = clean[i]["points"], strays[i]["points"]
        moved = (a - b).norm(dim=-1) > 0
        assert 0 < moved.float().mean() <= 0.2  # a fraction ~ U(0, 0.2) of the points
        assert (a - b)[moved].norm(dim=-1).mean() > 0.03  # moved by σ 0.05 per axis
        torch.testing.assert_close(strays[i]["queries"], clean[i]["queries"])  # targets unchanged


@pytest.mark.slow
def test_tiny_head_overfits_two_shapes(closed_shapes, tmp_path, one_thread):
    from pointdiff.training.loop import train

    torch.manual_seed(0)
    model = build_model(TINY)
    exact = dict(noise=0.0, dropout=0.0, rotate=False)
    data = SDFDataset(
        closed_shapes, split=None, num_points=TINY.num_points, num_queries=2048, **exact
    )
    cfg = TrainConfig(
        batch_size=2,
        lr=3e-3,
        weight_decay=0.0,
        warmup_steps=20,
        max_steps=400,
        min_lr_ratio=0.05,
        grad_clip=0.0,
        ema_decay=0.0,
        log_every=50,
        ckpt_every=10**9,
    )
    out = train(model, SDFLoss(0.1), data, cfg, tmp_path / "run", {"model": TINY}, device="cpu")
    assert out["step"] == 400
    ev = np.load(closed_shapes / "eval.npz")
    model.eval()
    for i, name in enumerate(SHAPES):
        cloud = torch.from_numpy(data.readers[0].get(i, "coords"))
        with torch.no_grad():
            pred = model.query_fn(cloud[:: 4096 // TINY.num_points])(
                torch.from_numpy(ev[name + "_points"])
            )
        iou = float(volumetric_iou(pred, torch.from_numpy(ev[name])))
        assert iou >= 0.9, f"{name}: volumetric IoU {iou:.3f}"


def test_local_geometry_features_tell_inside_from_outside_of_a_sphere():
    from pointdiff.models.sdf import LocalGeometry

    g = torch.Generator().manual_seed(0)
    shell = torch.nn.functional.normalize(torch.randn(1, 2048, 3, generator=g), dim=-1) * 0.4
    q = torch.tensor([[[0.0, 0.0, 0.0], [0.05, 0.1, 0.0], [0.0, 0.0, 0.48], [0.6, 0.0, 0.0]]])
    f = LocalGeometry(k=8, wide=1024)(q, shell)
    assert f.shape == (1, 4, 4 * 8 + 7)
    one_sided = f[0, :, 4 * 8 + 3]  # surrounded (inside) -> small; one side (outside) -> large
    assert (one_sided[:2] < 0.4).all() and (one_sided[2:] > 0.6).all(), one_sided
    # nearest distance = distance to the shell
    torch.testing.assert_close(f[0, :, 3 * 8], (q[0].norm(dim=-1) - 0.4).abs(), atol=0.02, rtol=0)


def test_local_sdf_head_cached_queries_match_forward_and_need_latents():
    cfg = get_preset("sdf_small_local")
    cfg = dataclasses.replace(cfg, width=32, num_latents=16, num_points=256)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    torch.nn.init.normal_(model.output_proj.weight, std=0.1)
    pts, q = torch.rand(1, 256, 3) - 0.5, torch.rand(1, 700, 3) - 0.5
    with torch.no_grad():
        ref = model(pts, q)[0]
    got = model.query_fn(pts[0], batch_size=128)(q[0])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ModelInputError, match="needs encode"):
        model.predict_sdf(model.encode(pts).tokens, q)


def test_train_sdf_cli_trains_and_init_from_starts_from_ema(closed_shapes, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
    from train_sdf import main

    from pointdiff.checkpoint import load_weights

    common = ["--data", str(closed_shapes), *"--preset sdf_tiny --split all".split()]
    common += "--num-queries 64 --outliers 0.05 --batch_size=2 --log_every=1".split()
    out = main([*common, "--out", str(tmp_path / "a"), "--max_steps=2", "--ckpt_every=2"])
    assert out["step"] == 2
    ema, _ = load_weights(tmp_path / "a")
    # a new run from a's EMA weights; lr 0 keeps them, so its weights equal a's EMA
    fine_tune = ["--max_steps=1", "--ckpt_every=1", "--lr=0", "--init-from", str(tmp_path / "a")]
    main([*common, "--out", str(tmp_path / "b"), *fine_tune])
    raw, _ = load_weights(tmp_path / "b", use_ema=False)
    assert raw.keys() == ema.keys()
    for k in ema:
        torch.testing.assert_close(raw[k], ema[k], msg=k)


def test_train_sdf_stopped_by_sigterm_checkpoints_exits_75_and_resumes(
    closed_shapes, tmp_path, sigterm_job
):
    """A scheduler's SIGTERM to the job's process group: the run checkpoints the step it was
    in and exits with the requeue status (as train_base.py); --resume continues from there."""
    run = tmp_path / "run"
    argv = [sys.executable, str(Path(__file__).resolve().parents[1] / "train" / "train_sdf.py")]
    argv += ["--data", str(closed_shapes), "--out", str(run), "--device", "cpu", "--resume"]
    argv += "--preset sdf_tiny --split all --num-queries 64 --batch_size=2 --log_every=1".split()
    argv += ["--ckpt_every=1000", "--warmup_steps=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    stop, _ = sigterm_job([*argv, "--max_steps=100000"], run / "log.jsonl", 2)
    assert (run / f"ckpt-{stop:07d}" / "state.pt").is_file()
    again = subprocess.run(
        [*argv, f"--max_steps={stop + 1}"], env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {run / f'ckpt-{stop:07d}'}" in again.stdout
    assert json.loads((run / "latest.json").read_text())["step"] == stop + 1
    # a bad argument ends with one error line, not a traceback
    bad = subprocess.run(
        [*argv, "--data", str(tmp_path / "nowhere")], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 1 and "train_sdf.py: error:" in bad.stderr
    assert "Traceback" not in bad.stderr

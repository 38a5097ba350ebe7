"""Fine-tuning converted point-e models with point-e's own loss (``training.pointe_objective``).

The loss is checked against point-e's ``GaussianDiffusion.training_losses`` on fixed inputs
(tests/data/pointe_training_losses.npz, see tests/data/README.md), then by properties; a tiny
converted point-e model is fine-tuned through ``train/train_base.py``'s entry point and sampled
by the point-e pipeline loader.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pointdiff.checkpoint import load_configs, load_model
from pointdiff.compat.pointe_pipeline import load_pointe_pipeline
from pointdiff.conditioning.words import WordEncoder
from pointdiff.data import write_shards
from pointdiff.diffusion.discrete import ALPHAS_CUMPROD, DiscreteDiffusion
from pointdiff.pointcloud import to_model_space
from pointdiff.training.pointe_objective import PointeLoss, choose_objective, pointe_info
from pointdiff.training.run import main

FIXTURE = Path(__file__).parent / "data" / "pointe_training_losses.npz"
N_BASE, N_UP = 64, 192  # tiny: point-e's 1024 + 3072 points
SHAPES = ("torus", "cone", "box")  # conftest's synthetic clouds to fine-tune on

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------
# The loss: parity with point-e, then properties


def _fixture(schedule: str) -> dict[str, torch.Tensor]:
    """One schedule's arrays, channel-first [B, C, N] turned into our [B, N, C]."""
    with np.load(FIXTURE) as f:
        arrays = {k.split("_", 1)[1]: torch.from_numpy(f[k]) for k in f if k.startswith(schedule)}
    for k in ("x_start_raw", "x_start", "noise", "x_t", "model_out"):
        arrays[k] = arrays[k].transpose(1, 2)
    return arrays


def _stand_in(x_t: torch.Tensor, t: torch.Tensor, weight: torch.Tensor, freqs: torch.Tensor):
    """The fixture's deterministic model: W·x_t per point + sin(t·freqs) per channel."""
    return x_t @ weight.T + torch.sin(t.float()[:, None] * freqs)[:, None]


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_hybrid_loss_matches_pointe_training_losses(schedule):
    """Point-e's mse, vb and loss terms (ε, learned_range, mse + VB) at t from 0 to 1023."""
    f = _fixture(schedule)
    diffusion = DiscreteDiffusion(ALPHAS_CUMPROD[schedule]())
    x0, t, noise = f["x_start"], f["t"], f["noise"]
    # point-e scales raw clouds (xyz, rgb 0..255) itself; our data arrive in model space
    raw = f["x_start_raw"]
    assert torch.allclose(to_model_space(raw[..., :3], raw[..., 3:] / 255), x0, atol=1e-6)
    x_t = diffusion.add_noise(x0, t, noise)
    torch.testing.assert_close(x_t, f["x_t"], rtol=0, atol=1e-6)
    out = _stand_in(x_t, t, f["weight"], f["freqs"])
    torch.testing.assert_close(out, f["model_out"], rtol=0, atol=1e-5)
    terms = diffusion.training_losses(out, x0, t, noise)
    for k in ("mse", "vb", "loss"):
        torch.testing.assert_close(terms[k], f[k], rtol=1e-5, atol=1e-5, msg=k)
    assert terms["vb"][t == 0].eq(0).all() and terms["vb"][t > 0].gt(0).all()


def test_vb_trains_the_variance_only_and_vanishes_at_the_true_posterior():
    diffusion = DiscreteDiffusion(ALPHAS_CUMPROD["cosine"]())
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 16, 6, generator=g), torch.randn(4, 16, 6, generator=g)
    t = torch.tensor([0, 3, 200, 1000])
    out = torch.randn(4, 16, 12, generator=g).requires_grad_(True)
    terms = diffusion.training_losses(out, x0, t, noise)
    (grad_vb,) = torch.autograd.grad(terms["vb"].sum(), out, retain_graph=True)
    (grad_mse,) = torch.autograd.grad(terms["mse"].sum(), out)
    assert not grad_vb[..., :6].any() and not grad_mse[..., 6:].any()  # stop-gradient on ε̂
    assert not grad_vb[0].any() and grad_vb[1:, :, 6:].abs().sum((1, 2)).gt(0).all()
    # ε̂ = ε and v = −1 (the posterior's own variance β̃_t): p = q, so L_vb = 0 and MSE = 0
    exact = torch.cat([noise, -torch.ones_like(noise)], -1)
    terms = diffusion.training_losses(exact, x0, t, noise)
    assert terms["mse"].abs().max() < 1e-6 and terms["vb"].abs().max() < 1e-4
    with pytest.raises(ValueError, match="needs 2 × 6"):
        diffusion.training_losses(out[..., :6], x0, t, noise)


def test_pointe_loss_draws_uniform_steps_and_splits_the_upsampler_cloud():
    seen = []

    def net(x_t, t, low_res=None, text_emb=None):
        seen.append((x_t.shape, t, None if low_res is None else low_res.shape, text_emb))
        return torch.zeros(*x_t.shape[:2], 12)

    batch = {"points": torch.rand(256, 20, 6) * 2 - 1, "text_emb": torch.ones(256, 8)}
    torch.manual_seed(0)
    loss = PointeLoss("cosine", "text_emb")(net, batch)
    shape, t, _, emb = seen[-1]
    assert loss.shape == (256,) and shape == (256, 20, 6) and emb is batch["text_emb"]
    assert (
        t.dtype == torch.float32 and t.min() >= 0 and t.max() <= 1023 and t.unique().numel() > 200
    )
    PointeLoss("linear", None, num_cond_points=5)(net, batch)
    assert seen[-1][0] == (256, 15, 6) and seen[-1][2] == (256, 5, 6)
    with pytest.raises(ValueError, match="unknown schedule"):
        PointeLoss("quadratic")


# ----------------------------------------------------------------------------------------------
# Fine-tuning a converted model through the training command, then sampling it


@pytest.fixture(scope="module")
def converted(tmp_path_factory, converted_pointe) -> Path:
    """Tiny random "released" point-e models (point-e's parameter names), converted once."""
    return converted_pointe(tmp_path_factory.mktemp("converted"), N_BASE, N_UP)


@pytest.fixture(scope="module")
def shards(synthetic_clouds, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_shards([r for r in synthetic_clouds if r["id"] in SHAPES], out)
    return out


def _fine_tune(stage: str, init: Path, shards: Path, run: Path, *extra: str) -> dict:
    argv = ["--data", str(shards), "--run-dir", str(run), "--init-from", str(init)]
    argv += "--batch_size=3 --max_steps=8 --ckpt_every=4 --warmup_steps=1 --lr=1e-3".split()
    argv += "--log_every=1 --ema_decay=0.5 --no-augment".split()
    return main(stage, [*argv, *extra])


def _changed(before: dict, after: dict) -> bool:
    assert before.keys() == after.keys()
    return any(not torch.equal(before[k], after[k]) for k in before)


def _eval_loss(path: Path, records: list[dict], words: WordEncoder) -> float:
    """Point-e's loss of a checkpoint's network on the training shapes, at fixed t and noise."""
    net, _ = load_model(path)
    points = [
        to_model_space(torch.from_numpy(r["coords"]), torch.from_numpy(r["colors"]) / 255)
        for r in records
    ]
    batch = {
        "points": torch.stack([p[:: len(p) // N_BASE][:N_BASE] for p in points]).repeat(64, 1, 1),
        "text_emb": words.embed([r["caption"] for r in records]).repeat(64, 1),
    }
    torch.manual_seed(1)
    with torch.no_grad():
        return PointeLoss("cosine", "text_emb")(net, batch).mean().item()


def test_fine_tuned_pointe_models_keep_their_format_and_sample(
    converted, shards, synthetic_clouds, tmp_path
):
    """train_base / train_upsampler on a converted model pick point-e's objective by themselves;
    the loss is finite and falls, the weights move, and the checkpoints load where the converted
    models do (their config plus the point-e record) and sample through the point-e pipeline."""
    base = _fine_tune(
        "base", converted / "base40M-textvec", shards, tmp_path / "b", "--text=words-32"
    )
    up = _fine_tune("upsampler", converted / "upsample", shards, tmp_path / "u")
    for out, name, schedule in ((base, "base40M-textvec", "cosine"), (up, "upsample", "linear")):
        run = out["checkpoint"].parent
        lines = (run / "log.jsonl").read_text().splitlines()
        losses = [json.loads(line)["loss"] for line in lines]
        assert out["step"] == 8 and len(losses) == 8 and np.isfinite(losses).all()
        meta = json.loads((out["checkpoint"] / "config.json").read_text())
        assert meta["pointe"] == {"name": name, "schedule": schedule}
        assert "diffusion" not in meta["configs"]  # no EDM config: the discrete schedule rules
        assert load_configs(out["checkpoint"])["model"] == load_configs(converted / name)["model"]
        assert pointe_info(run) == meta["pointe"]
        first = load_file(str(converted / name / "model.safetensors"))
        assert _changed(first, load_file(str(out["checkpoint"] / "model.safetensors")))

    words = WordEncoder.from_arch("words-32")
    records = [r for r in synthetic_clouds if r["id"] in SHAPES]
    before = _eval_loss(converted / "base40M-textvec", records, words)
    assert _eval_loss(base["checkpoint"], records, words) < before

    pe = tmp_path / "pe"
    pe.mkdir()
    (pe / "base40M-textvec").symlink_to(base["checkpoint"])
    (pe / "upsample").symlink_to(up["checkpoint"])
    pipe = load_pointe_pipeline(pe, text_encoder=words, sdf=False)
    ema, _ = load_model(base["checkpoint"])
    net = pipe.stages[0].denoiser.net
    want, got = ema.state_dict(), net.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    (cloud,) = pipe.sample_clouds(["a torus"], seed=0, overrides={"steps": 3})
    assert len(cloud) == N_BASE + N_UP and np.isfinite(cloud.coords).all()

    # a second fine-tune starts from the first run (its checkpoints carry the record)
    again = _fine_tune("base", tmp_path / "b", shards, tmp_path / "b2", "--text=words-32")
    assert json.loads((again["checkpoint"] / "config.json").read_text())["pointe"]["name"] == (
        "base40M-textvec"
    )


def test_objective_choice_and_its_errors(converted, shards, tmp_path):
    textvec = converted / "base40M-textvec"
    cfg, info = choose_objective(None, textvec, "denoiser")
    assert info == {"name": "base40M-textvec", "schedule": "cosine"} and cfg.out_channels == 12
    assert choose_objective(None, None, "upsampler") == (None, None)
    assert choose_objective("pointe", None, "upsampler") == (
        None,
        {"name": None, "schedule": "linear"},
    )
    with pytest.raises(ValueError, match="use --objective pointe"):
        choose_objective("edm", textvec, "denoiser")
    with pytest.raises(ValueError, match="holds a denoiser, not a upsampler"):
        choose_objective(None, textvec, "upsampler")
    with pytest.raises(ValueError, match="brings its model config"):
        _fine_tune("base", textvec, shards, tmp_path / "a", "tiny")
    with pytest.raises(ValueError, match="no config has a field 'p_mean'"):
        _fine_tune("base", textvec, shards, tmp_path / "a", "--text=words-32", "--p_mean=-1")
    # from scratch: a preset with ε + variance outputs; an EDM run is not a point-e model
    common = ["tiny", "--data", str(shards), "--text=words-32"]
    common += "--batch_size=2 --max_steps=1 --warmup_steps=1".split()
    scratch = [*common, "--run-dir", str(tmp_path / "s"), "--objective", "pointe"]
    with pytest.raises(ValueError, match="pass --out_channels=12"):
        main("base", scratch)
    assert main("base", [*scratch, "--out_channels=12"])["step"] == 1
    assert pointe_info(tmp_path / "s") == {"name": None, "schedule": "cosine"}
    main("base", [*common, "--run-dir", str(tmp_path / "e")])
    assert pointe_info(tmp_path / "e") is None
    with pytest.raises(ValueError, match="is not a point-e model"):
        choose_objective("pointe", tmp_path / "e", "denoiser")

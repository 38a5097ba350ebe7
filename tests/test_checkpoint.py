import json
import random

import numpy as np
import pytest
import torch

from pointdiff.checkpoint import (
    CheckpointError,
    export_for_release,
    latest_checkpoint,
    list_checkpoints,
    load_configs,
    load_model,
    load_training_state,
    load_weights,
    save_checkpoint,
)
from pointdiff.conditioning.text import TextEncoder
from pointdiff.conditioning.text_loading import load_text_encoder
from pointdiff.config import DiffusionConfig, get_preset
from pointdiff.models import build_model
from pointdiff.training.rng import get_rng_state, set_rng_state


def _randomised(cfg, seed=0):
    """A model whose zero-initialised output layer is perturbed, so outputs are non-trivial."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def _inputs(cfg, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, cfg.num_points, 6, generator=g)
    return x, torch.tensor([10.0, -300.0]), torch.randn(2, cfg.cond_dim, generator=g)


def _save(run, step, model, ema=None, **kw):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    cfgs = {"model": model.cfg, "diffusion": DiffusionConfig()}
    return save_checkpoint(run, step, model, ema, opt, sched, cfgs, {"epoch": 1}, **kw)


@pytest.fixture
def tiny_model():
    return _randomised(get_preset("tiny"))


def test_save_load_gives_bit_identical_outputs(tmp_path, tiny_model):
    ema = _randomised(get_preset("tiny"), seed=5)
    ckpt = _save(tmp_path / "run", 7, tiny_model, ema)
    assert ckpt.name == "ckpt-0000007" and latest_checkpoint(tmp_path / "run") == ckpt
    files = {"model.safetensors", "ema.safetensors", "config.json", "state.pt"}
    assert {p.name for p in ckpt.iterdir()} == files
    x, c, e = _inputs(tiny_model.cfg)
    with torch.no_grad():
        for use_ema, ref in ((False, tiny_model), (True, ema)):
            # a run dir, a checkpoint dir: both resolve
            for path in (tmp_path / "run", ckpt):
                loaded, configs = load_model(path, kind="denoiser", use_ema=use_ema)
                assert torch.equal(loaded(x, c, text_emb=e), ref(x, c, text_emb=e))
    assert configs["model"] == tiny_model.cfg and configs["diffusion"] == DiffusionConfig()
    state = load_training_state(ckpt)  # weights_only=True inside
    assert (
        state["step"] == 7
        and state["extra"] == {"epoch": 1}
        and "param_groups" in state["optimizer"]
    )


def test_latest_pointer_atomic_replace_and_keep_last(tmp_path, tiny_model):
    run = tmp_path / "run"
    for step in (1, 2, 3, 4):
        _save(run, step, tiny_model, keep_last=2)
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-0000003", "ckpt-0000004"]
    assert json.loads((run / "latest.json").read_text()) == {
        "checkpoint": "ckpt-0000004",
        "step": 4,
    }
    _save(run, 4, tiny_model, keep_last=2)  # re-saving a step replaces it in place
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_rng_state_round_trip_survives_weights_only_loading(tmp_path):
    torch.save(get_rng_state(), tmp_path / "rng.pt")
    a = (torch.rand(3), np.random.rand(), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    b = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_clear_errors_for_missing_corrupt_and_wrong_kind(tmp_path, tiny_model):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_model(tmp_path / "empty")
    ckpt = _save(tmp_path / "run", 1, tiny_model)
    with pytest.raises(CheckpointError, match="holds a 'denoiser' model, expected 'upsampler'"):
        load_model(ckpt, kind="upsampler")
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(ckpt, use_ema=False)
    weights.unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_weights(ckpt, use_ema=False)
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_configs(ckpt)
    (ckpt / "state.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable training state"):
        load_training_state(ckpt)


def test_weights_of_another_shape_are_a_clear_error(tmp_path, tiny_model):
    ckpt = _save(tmp_path / "run", 1, tiny_model)
    meta = json.loads((ckpt / "config.json").read_text())
    meta["configs"]["model"]["width"] = 64
    (ckpt / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(ckpt)


def test_export_for_release_keeps_ema_in_fp16_with_the_text_tower(tmp_path, tiny_model):
    ema = _randomised(get_preset("tiny"), seed=5)
    text = TextEncoder.from_config("tiny", seed=0)
    text_ema = TextEncoder.from_config("tiny", seed=1)
    ckpt = _save(tmp_path / "run", 3, tiny_model, ema, text_encoder=text, text_ema=text_ema)
    out = export_for_release(ckpt, tmp_path / "checkpoints" / "tiny")
    files = {"model.safetensors", "config.json", "text.safetensors", "text_config.json"}
    assert {p.name for p in out.iterdir()} == files
    w, _ = load_weights(out)
    assert all(v.dtype == torch.float16 for v in w.values() if v.is_floating_point())
    model, configs = load_model(out, kind="denoiser")
    x, c, e = _inputs(tiny_model.cfg)
    with torch.no_grad():
        torch.testing.assert_close(
            model(x, c, text_emb=e), ema(x, c, text_emb=e), atol=2e-3, rtol=1e-2
        )
    released = load_text_encoder(out)  # the EMA text tower, fp16 -> fp32
    torch.testing.assert_close(
        released.embed(["a cup"]), text_ema.freeze().embed(["a cup"]), atol=2e-3, rtol=1e-2
    )
    with pytest.raises(CheckpointError, match="cannot resume"):
        load_training_state(out)

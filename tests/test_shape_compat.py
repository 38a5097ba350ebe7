"""Shap-E compatibility: released checkpoints convert key for key, and tiny Shap-E models with
random weights (tests/data/shape_fixtures, made by Shap-E's own code) give the same numbers."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pointdiff.compat.shape import (
    LatentDenoiser,
    LatentDenoiserConfig,
    ShapeConversionError,
    ShapeDecoder,
    ShapeDecoderConfig,
    convert_shape,
    convert_shape_state_dict,
    decode_outputs,
    load_shape,
)
from pointdiff.compat.shape.convert import build_shape_model
from pointdiff.compat.shape.transformer import cast_linears

DATA = Path(__file__).parent / "data"
FIX = DATA / "shape_fixtures"
SHAPES = json.loads((DATA / "shape_state_dict_shapes.json").read_text())


def _fixture(name: str) -> tuple[dict, dict]:
    f = np.load(FIX / f"shape_{name}.npz")
    sd = {k[3:]: torch.from_numpy(f[k]) for k in f.files if k.startswith("sd/")}
    return f, sd


def _close(mine: torch.Tensor | np.ndarray, ref: np.ndarray, tol: float = 1e-4) -> None:
    mine = np.asarray(mine.detach() if isinstance(mine, torch.Tensor) else mine)
    err = np.abs(mine - ref).max() / max(np.abs(ref).max(), 1e-12)
    assert err <= tol, f"relative error {err:.2e}"


@pytest.mark.parametrize("name", ["transmitter", "decoder", "text300M", "image300M"])
def test_released_layouts_convert(name):
    """Every released parameter name and shape converts (meta tensors: no memory)."""
    sd = {k: torch.empty(v, device="meta") for k, v in SHAPES[name]["state_dict"].items()}
    state, cfg, encoder = convert_shape_state_dict(sd, name)
    encoder = encoder[0] if encoder else {}
    n = len(state) + len(encoder)
    assert n == SHAPES[name]["num_state_dict_keys"]
    assert (
        sum(t.numel() for t in state.values()) + sum(t.numel() for t in encoder.values())
        == SHAPES[name]["num_state_dict_elements"]
    )
    # and the full-size module builds with exactly these names and shapes
    with torch.device("meta"):
        ref = build_shape_model(cfg).state_dict()
    assert {k: tuple(v.shape) for k, v in ref.items()} == {
        k: tuple(v.shape) for k, v in state.items()
    }


@pytest.mark.parametrize("problem", ["missing", "unexpected", "shape"])
def test_bad_keys_are_named(problem):
    sd = {k: torch.empty(v, device="meta") for k, v in SHAPES["decoder"]["state_dict"].items()}
    key = "renderer.nerstf.mlp.5.bias"
    if problem == "missing":
        del sd[key]
    elif problem == "unexpected":
        sd["renderer.extra.weight"] = torch.empty(3, device="meta")
        key = "renderer.extra.weight"
    else:
        sd[key] = torch.empty(7, device="meta")
    with pytest.raises(ShapeConversionError, match=key.replace(".", r"\.")):
        convert_shape_state_dict(sd, "decoder")


def test_decoder_matches_shape_e():
    f, sd = _fixture("decoder")
    model = ShapeDecoder(ShapeDecoderConfig(channels=16, hidden=8))
    model.load_state_dict(sd, strict=True)
    params = model.latent_to_params(torch.from_numpy(f["latent"]))
    for i, w in enumerate(params):
        _close(w, f[f"params/nerstf.mlp.{i}.weight"])
    out = decode_outputs(model.query(torch.from_numpy(f["query/position"]), params))
    _close(out["sdf"], f["query/sdf"][..., 0])
    for level in ("coarse", "fine"):
        _close(out[f"density_{level}"], f[f"query/nerf_{level}_density"][..., 0])
        _close(out[f"nerf_{level}"], f[f"query/nerf_{level}_channels"])
    _close(out["texture"], f["query/stf_fine_channels"])


@pytest.mark.parametrize("kind,heads", [("text", 2), ("image", 4)])
def test_latent_denoiser_matches_shape_e(kind, heads):
    f, sd = _fixture(kind)
    sd = {k.removeprefix("wrapped."): v for k, v in sd.items()}
    cond = torch.from_numpy(f["cond"])
    cfg = LatentDenoiserConfig(kind, 32, 16, 32, 2, heads, cond.shape[1], grid_tokens=4)
    model = LatentDenoiser(cfg)
    model.load_state_dict(sd, strict=True)
    out = model(torch.from_numpy(f["x"]).view(3, 32, 16), torch.from_numpy(f["t"]), cond)
    flat = torch.cat([out[..., :16].flatten(1), out[..., 16:].flatten(1)], dim=1)  # [x̂0 | v]
    _close(flat, f["out"])


def test_latent_denoiser_bf16_weights_cast_once_give_autocast_output():
    f, sd = _fixture("text")
    cond = torch.from_numpy(f["cond"])
    model = LatentDenoiser(LatentDenoiserConfig("text", 32, 16, 32, 2, 2, cond.shape[1]))
    model.load_state_dict({k.removeprefix("wrapped."): v for k, v in sd.items()})
    x, t = torch.from_numpy(f["x"]).view(3, 32, 16), torch.from_numpy(f["t"])
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        full = model(x, t, cond)
        cast_linears(model)
        x0 = model(x, t, cond, variance=False)
    assert model.backbone.resblocks[0].ln_1.weight.dtype == torch.float32
    assert x0.shape == (3, 32, 16)
    torch.testing.assert_close(x0, full[..., :16], rtol=0, atol=0)


def test_convert_shape_roundtrip(tmp_path):
    f, sd = _fixture("decoder")
    src = tmp_path / "tiny_decoder.pt"
    torch.save(sd, src)
    out = convert_shape(src, tmp_path / "dec", "decoder")
    meta = json.loads((out / "config.json").read_text())
    assert meta["kind"] == "decoder" and "model.safetensors" in meta["sha256"]
    model, _ = load_shape(out)
    lat = torch.from_numpy(f["latent"])
    _close(model.latent_to_params(lat)[0], f["params/nerstf.mlp.0.weight"])


@pytest.mark.parametrize("kind,heads", [("text", 2), ("image", 4)])
def test_guided_sample_matches_shape_e(kind, heads):
    """4 Karras/Heun steps with guidance (15 text, 3 image), x̂0 clamped per branch."""
    from pointdiff.compat.shape.sample import sample_latents

    f, sd = _fixture(kind)
    sd = {k.removeprefix("wrapped."): v for k, v in sd.items()}
    cond = torch.from_numpy(f["cond"])[:2]
    model = LatentDenoiser(LatentDenoiserConfig(kind, 32, 16, 32, 2, heads, cond.shape[1], 4))
    model.load_state_dict(sd, strict=True)
    gen = torch.Generator().manual_seed(3)  # Shap-E seeded its global generator with 3
    lat = sample_latents(model, cond, float(f["sample/guidance_scale"]), steps=4, generator=gen)
    _close(lat, f["sample/latent"])

"""Point-E weight conversion against golden fixtures made by point-e's own code.

Fixture tensors are channel-first ``[B, C, N]`` (point-e); pointdiff is channel-last.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pointdiff.compat.pointe import (
    POINTE_MODELS,
    PointeConversionError,
    convert_pointe_state_dict,
    load_converted,
    load_pointe_model,
    save_converted,
)
from pointdiff.pointcloud import to_model_space

DATA = Path(__file__).resolve().parent / "data"  # made by point-e's own code: data/README.md

# The fixtures' models are point-e's classes at test sizes; shapes give width/depth, the
# rest of each config (heads, context sizes) comes from meta.json.
TINY = {
    "textvec_tiny": ("base40M-textvec", dict(heads=2, num_points=64)),
    "upsample_tiny": ("upsample", dict(heads=2, num_points=192, num_cond_points=64)),
    "sdf_tiny": ("sdf", dict(encoder_heads=2, decoder_heads=2, num_points=128)),
}


@pytest.fixture(scope="module")
def fixtures() -> Path:
    return DATA / "pointe_fixtures"


def _weights(fixtures: Path, tiny: str) -> dict[str, torch.Tensor]:
    return load_file(str(fixtures / f"{tiny}.weights.safetensors"))


def _model(fixtures: Path, tiny: str):
    name, overrides = TINY[tiny]
    return load_pointe_model(fixtures / f"{tiny}.weights.safetensors", name, **overrides)


def _cl(t: torch.Tensor) -> torch.Tensor:
    """Channel-first [B, C, N] -> channel-last [B, N, C]."""
    return t.transpose(1, 2)


# ----------------------------------------------------------------------------------------------
# Outputs reproduce point-e's


def test_textvec_tiny_reproduces_pointe(fixtures):
    model = _model(fixtures, "textvec_tiny")
    io = load_file(str(fixtures / "textvec_tiny.io.safetensors"))
    with torch.no_grad():
        out = model(_cl(io["x"]), io["t"], text_emb=io["embeddings"])
    assert out.shape == (2, 64, 12)
    assert (out - _cl(io["out"])).abs().max() <= 1e-4


def test_upsample_tiny_reproduces_pointe(fixtures):
    model = _model(fixtures, "upsample_tiny")
    io = load_file(str(fixtures / "upsample_tiny.io.safetensors"))
    # point-e scales the raw low-res cloud inside its model; ours takes model space, mapped by
    # the single owner of that convention (rgb 0..255 -> [0, 1] -> model space).
    low_res = _cl(io["low_res"])
    low_res = to_model_space(low_res[..., :3], low_res[..., 3:] / 255.0)
    with torch.no_grad():
        out = model(_cl(io["x"]), io["t"], low_res=low_res)
    assert out.shape == (2, 192, 12)
    assert (out - _cl(io["out"])).abs().max() <= 1e-4


def test_sdf_tiny_reproduces_pointe(fixtures):
    model = _model(fixtures, "sdf_tiny")
    io = load_file(str(fixtures / "sdf_tiny.io.safetensors"))
    with torch.no_grad():
        out = model(_cl(io["point_clouds"]), _cl(io["queries"]))
    assert out.shape == (2, 50)
    assert (out - io["out"]).abs().max() <= 1e-4


# ----------------------------------------------------------------------------------------------
# Every released model converts (shapes only, on the meta device)


@pytest.mark.parametrize("name", list(POINTE_MODELS))
def test_every_released_model_converts(name):
    ref = json.loads((DATA / "pointe_state_dict_shapes.json").read_text())[name]
    sd = {k: torch.empty(s, device="meta") for k, s in ref["state_dict"].items()}
    if "channel_scales" in sd:  # buffers whose values are checked
        sd["channel_scales"] = torch.tensor(ref["config"]["channel_scales"])
        sd["channel_biases"] = torch.tensor(ref["config"]["channel_biases"])
    state, cfg = convert_pointe_state_dict(sd, name)
    buffers = 12 if "channel_scales" in sd else 0  # dropped: our low-res arrives in model space
    assert sum(t.numel() for t in state.values()) == ref["num_params"] - buffers
    assert cfg.kind == POINTE_MODELS[name].kind
    if cfg.kind != "sdf":
        assert (cfg.width, cfg.depth, cfg.heads) == (
            ref["config"]["width"],
            ref["config"]["layers"],
            ref["config"]["heads"],
        )
        assert cfg.out_channels == 12


# ----------------------------------------------------------------------------------------------
# Errors name the key


def test_missing_key_is_named(fixtures):
    sd = _weights(fixtures, "textvec_tiny")
    del sd["backbone.resblocks.1.attn.c_qkv.weight"]
    with pytest.raises(PointeConversionError, match=r"backbone\.resblocks\.1\.attn\.c_qkv\.weight"):
        convert_pointe_state_dict(sd, "base40M-textvec", heads=2)


def test_misshaped_key_is_named(fixtures):
    sd = _weights(fixtures, "upsample_tiny")
    sd["cond_point_proj.weight"] = torch.zeros(64, 3)
    with pytest.raises(PointeConversionError, match=r"cond_point_proj\.weight.*shape"):
        convert_pointe_state_dict(sd, "upsample", heads=2)


def test_unexpected_key_unknown_name_and_bad_scales(fixtures):
    sd = _weights(fixtures, "textvec_tiny")
    with pytest.raises(PointeConversionError, match="clip_embed.weight"):
        convert_pointe_state_dict(sd, "base40M-uncond", heads=2)  # wrong name: a leftover key
    with pytest.raises(PointeConversionError, match="unknown point-e model"):
        convert_pointe_state_dict(sd, "base2B")
    sd = _weights(fixtures, "upsample_tiny")
    sd["channel_scales"] = torch.ones(6)
    with pytest.raises(PointeConversionError, match="channel_scales"):
        convert_pointe_state_dict(sd, "upsample", heads=2)


# ----------------------------------------------------------------------------------------------
# Files: .pt (weights_only) -> converted directory -> same outputs


def test_pt_round_trip_through_converted_dir(fixtures, tmp_path):
    name, overrides = TINY["textvec_tiny"]
    pt = tmp_path / "textvec_tiny.pt"
    torch.save(_weights(fixtures, "textvec_tiny"), pt)
    out_dir = save_converted(pt, name, tmp_path / "converted", **overrides)
    assert (out_dir / "model.safetensors").is_file()
    meta = json.loads((out_dir / "config.json").read_text())
    assert meta["pointe"] == {"name": name, "schedule": "cosine"}
    model, cfg, info = load_converted(out_dir)
    assert cfg.heads == 2 and info["schedule"] == "cosine"
    io = load_file(str(fixtures / "textvec_tiny.io.safetensors"))
    with torch.no_grad():
        out = model(_cl(io["x"]), io["t"], text_emb=io["embeddings"])
    assert (out - _cl(io["out"])).abs().max() <= 1e-4


class _Pickled:
    """An arbitrary object: unpickling it could run code, so weights_only must refuse it."""


def test_pt_with_pickled_objects_is_refused(tmp_path):
    pt = tmp_path / "evil.pt"
    torch.save({"x": _Pickled()}, pt)
    with pytest.raises(PointeConversionError, match="cannot read"):
        load_pointe_model(pt, "base40M-textvec")
    torch.save([torch.zeros(1)], pt)
    with pytest.raises(PointeConversionError, match="not a state dict"):
        load_pointe_model(pt, "base40M-textvec")
    with pytest.raises(FileNotFoundError):
        load_pointe_model(tmp_path / "missing.pt", "base40M-textvec")

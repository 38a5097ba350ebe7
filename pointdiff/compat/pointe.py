"""Load OpenAI's released Point-E checkpoints into pointdiff modules.

Every released diffusion model and the SDF model map one to one onto pointdiff's
``PointDenoiser`` / ``PointUpsampler`` / ``SDFModel`` (names and shapes:
``shared/reference/pointe_state_dict_shapes.json``). The differences handled here:

* **Fused attention projections.** Point-e's ``c_qkv`` rows are interleaved per head
  (``[h0: q k v | h1: q k v | …]``, and ``c_kv`` as ``[h0: k v | …]``); ours are ``[q | k | v]``
  with the heads contiguous inside each part. Rows are permuted on conversion.
* **Names.** ``backbone.resblocks.i`` → ``backbone.blocks.i``; ``clip_embed`` → ``text_proj`` (a
  768-d vector token) or ``grid_embed`` (LayerNorm + Linear over 256 CLIP patch tokens).
* **Text vector scaling.** Point-e multiplies the L2-normalised CLIP vector by √768 inside the
  model; so does our text token, so the weights need no change.
* **Upsampler channel scales.** Point-e scales the low-res cloud inside the model
  (xyz × 2, rgb 0..255 / 127.5 − 1). Ours receives it already in model space
  (``pointdiff.pointcloud.to_model_space``), so the buffers are checked and dropped.
* **Outputs.** Diffusion models keep point-e's 12 output channels: ε (6) followed by the
  learned-variance interpolation values (6), which samplers ignore. The discrete-time schedule
  (``cosine`` for base models, ``linear`` for the upsampler) is recorded next to the weights.

Loading a ``.pt`` never executes pickled code (``torch.load(..., weights_only=True)``).
The ``pointnet`` evaluator is read by ``evaluation.classifier``, not here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pointdiff.atomic import atomic_path, write_text_atomic
from pointdiff.checkpoint import FORMAT as CHECKPOINT_FORMAT
from pointdiff.checkpoint import VERSION as CHECKPOINT_VERSION
from pointdiff.checkpoint import load_model
from pointdiff.compat.released import load_released_state_dict
from pointdiff.config import DenoiserConfig, SDFConfig, UpsamplerConfig, to_dict
from pointdiff.models import build_model


class PointeConversionError(ValueError):
    """A point-e checkpoint that does not match the model it is converted to (names the key)."""


# ----------------------------------------------------------------------------------------------
# The released models


@dataclass(frozen=True)
class PointeSpec:
    """What the shapes of a released state dict do not tell: heads, context sizes, schedule."""

    kind: str  # "denoiser" | "upsampler" | "sdf"
    cond: str  # "text" (one 768-d vector token) | "grid" (256 CLIP patch tokens) | "none"
    heads: int
    num_points: int
    schedule: str | None  # point-e's 1024-step discrete schedule: "cosine" | "linear" | None
    num_cond_points: int = 0  # upsampler: low-res points


POINTE_MODELS: dict[str, PointeSpec] = {
    "base40M-textvec": PointeSpec("denoiser", "text", 8, 1024, "cosine"),
    "base40M-imagevec": PointeSpec("denoiser", "text", 8, 1024, "cosine"),
    "base40M-uncond": PointeSpec("denoiser", "none", 8, 1024, "cosine"),
    "base40M": PointeSpec("denoiser", "grid", 8, 1024, "cosine"),
    "base300M": PointeSpec("denoiser", "grid", 16, 1024, "cosine"),
    "base1B": PointeSpec("denoiser", "grid", 32, 1024, "cosine"),
    "upsample": PointeSpec("upsampler", "grid", 8, 3072, "linear", num_cond_points=1024),
    "sdf": PointeSpec("sdf", "none", 4, 4096, None),
}
GRID_TOKENS = 256  # CLIP ViT-L/14 at 224 px: a 16 × 16 patch grid

# Point-e's upsampler normalisation of the raw low-res cloud (xyz, rgb 0..255): must equal
# pointdiff's model-space map, since our upsampler takes the cloud already mapped.
_POINTE_CHANNEL_SCALES = (2.0, 2.0, 2.0, 1 / 127.5, 1 / 127.5, 1 / 127.5)
_POINTE_CHANNEL_BIASES = (0.0, 0.0, 0.0, -1.0, -1.0, -1.0)


def _spec(name: str) -> PointeSpec:
    if name not in POINTE_MODELS:
        valid = ", ".join(POINTE_MODELS)
        raise PointeConversionError(f"unknown point-e model {name!r}; choose one of: {valid}")
    return POINTE_MODELS[name]


def _get(sd: Mapping, key: str, name: str) -> torch.Tensor:
    if key not in sd:
        raise PointeConversionError(f"point-e state dict for {name!r} is missing key {key!r}")
    return sd[key]


def _depth(sd: Mapping, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in sd if (m := pattern.match(k))}
    return max(idx) + 1 if idx else 0


def pointe_config(sd: Mapping, name: str, **overrides):
    """The pointdiff config of a released model: sizes from the shapes, the rest from the name.

    :param overrides: config fields to replace (e.g. ``heads`` for a re-sized test model).
    """
    spec = _spec(name)
    if spec.kind == "sdf":
        cfg = SDFConfig(
            width=_get(sd, "encoder_input_proj.weight", name).shape[0],
            encoder_depth=_depth(sd, "encoder.resblocks."),
            encoder_heads=spec.heads,
            decoder_depth=_depth(sd, "decoder.resblocks."),
            decoder_heads=spec.heads,
            num_points=spec.num_points,
        )
        return dataclasses.replace(cfg, **overrides)
    common = dict(
        width=_get(sd, "ln_pre.weight", name).shape[0],
        depth=_depth(sd, "backbone.resblocks."),
        heads=spec.heads,
        num_points=spec.num_points,
        in_channels=_get(sd, "input_proj.weight", name).shape[1],
        out_channels=_get(sd, "output_proj.weight", name).shape[0],
        cond_dim=_get(sd, "clip_embed.weight", name).shape[1] if spec.cond == "text" else 0,
        grid_tokens=GRID_TOKENS if spec.cond == "grid" else 0,
        grid_dim=_get(sd, "clip_embed.0.weight", name).shape[0] if spec.cond == "grid" else 1024,
    )
    if spec.kind == "upsampler":
        cfg = UpsamplerConfig(**common, num_cond_points=spec.num_cond_points)
    else:
        cfg = DenoiserConfig(**common)
    return dataclasses.replace(cfg, **overrides)


# ----------------------------------------------------------------------------------------------
# State-dict conversion


def _pointe_key(key: str) -> str:
    """Our parameter name -> point-e's (SDF names are already point-e's)."""
    key = re.sub(r"^backbone\.blocks\.", "backbone.resblocks.", key)
    return re.sub(r"^(text_proj|grid_embed)\.", "clip_embed.", key)


def _deinterleave(t: torch.Tensor, heads: int, parts: int) -> torch.Tensor:
    """Point-e per-head rows ``[h: p0 p1 (p2)]`` -> ours ``[p0 (all heads) | p1 | (p2)]``.

    :param t: [parts·w, in] weight or [parts·w] bias.
    """
    rows = t.shape[0]
    d = rows // (parts * heads)
    return t.reshape(heads, parts, d, *t.shape[1:]).transpose(0, 1).reshape(rows, *t.shape[1:])


def _heads_for(key: str, cfg) -> int:
    if isinstance(cfg, SDFConfig):
        return cfg.encoder_heads if key.startswith("encoder.") else cfg.decoder_heads
    return cfg.heads


def _check_channel_scales(sd: Mapping, name: str) -> None:
    for key, want in (
        ("channel_scales", _POINTE_CHANNEL_SCALES),
        ("channel_biases", _POINTE_CHANNEL_BIASES),
    ):
        got = _get(sd, key, name)
        if got.shape != (6,) or not torch.allclose(
            got.double(), torch.tensor(want, dtype=torch.float64), atol=1e-6
        ):
            raise PointeConversionError(
                f"{name!r}: key {key!r} is {got.tolist()}, expected {list(want)} (pointdiff feeds "
                "the upsampler its low-res cloud already in model space)"
            )


def convert_pointe_state_dict(
    sd: Mapping[str, torch.Tensor], name: str, **overrides
) -> tuple[dict[str, torch.Tensor], object]:
    """Map a released point-e state dict onto pointdiff parameter names and layouts.

    :param sd: point-e's state dict (``torch.load`` of e.g. ``base40M-textvec.pt``).
    :param name: the released model's name (``base40M-textvec``, ``upsample``, ``sdf``, …).
    :param overrides: config fields to replace (for re-sized models, e.g. ``heads=2``).
    :return: (pointdiff state dict, config); ``build_model(cfg).load_state_dict(...)`` is strict.
    :raises PointeConversionError: unknown name, missing, mis-shaped or unexpected key.
    """
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise PointeConversionError(f"{name!r}: expected a state dict of tensors")
    spec = _spec(name)
    cfg = pointe_config(sd, name, **overrides)
    with torch.device("meta"):  # shapes only; no memory even for base1B
        expected = build_model(cfg).state_dict()

    out: dict[str, torch.Tensor] = {}
    used = set()
    for key, ref in expected.items():
        src = _pointe_key(key)
        t = _get(sd, src, name)
        if tuple(t.shape) != tuple(ref.shape):
            raise PointeConversionError(
                f"{name!r}: key {src!r} has shape {list(t.shape)}, expected {list(ref.shape)}"
            )
        if ".attn.c_qkv." in key or ".attn.c_kv." in key:
            parts = 3 if ".c_qkv." in key else 2
            t = _deinterleave(t, _heads_for(key, cfg), parts)
        out[key] = t.detach().to(torch.float32).contiguous()
        used.add(src)

    if spec.kind == "upsampler":
        _check_channel_scales(sd, name)
        used |= {"channel_scales", "channel_biases"}
    unexpected = sorted(set(sd) - used)
    if unexpected:
        shown = ", ".join(repr(k) for k in unexpected[:5])
        raise PointeConversionError(
            f"{name!r}: unexpected key(s) {shown}{' …' if len(unexpected) > 5 else ''} "
            "(a different model, or the wrong name?)"
        )
    return out, cfg


# ----------------------------------------------------------------------------------------------
# Files


def load_pointe_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a point-e checkpoint without executing pickled code (``.safetensors`` directly,
    anything else with ``torch.load(..., weights_only=True)``)."""
    return load_released_state_dict(path, "point-e", PointeConversionError)


def load_pointe_model(
    path_or_sd: str | os.PathLike | Mapping[str, torch.Tensor], name: str, **overrides
) -> nn.Module:
    """Build the pointdiff module for a released point-e model and load its weights.

    :param path_or_sd: a ``.pt``/``.safetensors`` file or an already-loaded state dict.
    :param name: the released model's name (see ``POINTE_MODELS``).
    :return: the module in eval mode (its config is ``module.cfg``).
    """
    sd = path_or_sd if isinstance(path_or_sd, Mapping) else load_pointe_state_dict(path_or_sd)
    state, cfg = convert_pointe_state_dict(sd, name, **overrides)
    model = build_model(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()


def save_converted(
    path_pt: str | os.PathLike, name: str, out_dir: str | os.PathLike, **overrides
) -> Path:
    """Convert once: write ``out_dir/model.safetensors`` and ``out_dir/config.json``.

    The directory is a pointdiff release checkpoint (``pointdiff.checkpoint.load_model`` rebuilds
    it); ``config.json`` also records ``{"pointe": {"name", "schedule"}}`` with point-e's discrete
    schedule (``cosine``/``linear``; null for the SDF model), which ``load_converted`` returns.
    """
    from safetensors.torch import save_file

    sd = load_pointe_state_dict(path_pt)
    state, cfg = convert_pointe_state_dict(sd, name, **overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = POINTE_MODELS.get(name)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "kind": cfg.kind,
        "step": 0,
        "configs": {"model": to_dict(cfg)},
        "pointe": {"name": name, "schedule": spec.schedule if spec else None},
    }
    # atomic: an interrupted run leaves no half-written file
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"pointe_name": name})
    write_text_atomic(out / "config.json", json.dumps(meta, indent=2) + "\n")
    return out


def load_converted(out_dir: str | os.PathLike) -> tuple[nn.Module, object, dict]:
    """Load a directory written by ``save_converted``.

    :return: (module in eval mode, its config, ``{"name", "schedule"}`` of the point-e model).
    """
    model, configs = load_model(out_dir)
    info = json.loads((Path(out_dir) / "config.json").read_text()).get("pointe", {})
    return model, configs["model"], info


__all__ = [
    "PointeConversionError",
    "PointeSpec",
    "POINTE_MODELS",
    "pointe_config",
    "convert_pointe_state_dict",
    "load_pointe_state_dict",
    "load_pointe_model",
    "save_converted",
    "load_converted",
]

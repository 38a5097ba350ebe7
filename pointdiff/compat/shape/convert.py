"""Convert Shap-E's released checkpoints (``transmitter``, ``decoder``, ``text300M``,
``image300M``) to safetensors + ``config.json`` (with SHA-256s), checking every key.

Sizes come from the tensors (so a re-sized model converts too); what shapes cannot tell (heads,
the conditioning kind) comes from the model's name. The decoding part of ``transmitter``
(``encoder.params_proj.*`` + ``renderer.*``) is the same network as ``decoder`` and is written
in the same layout; its encoder weights (``encoder.*`` less ``params_proj``) are checked against
``ShapeEncoder`` and written to ``encoder.safetensors`` with their config (``load_shape_encoder``).
Loading a ``.pt`` never executes pickled code (``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from pointdiff.atomic import atomic_path, write_json_atomic
from pointdiff.checkpoint import record_hashes, verify_hashes
from pointdiff.compat.released import load_released_state_dict
from pointdiff.compat.shape.decoder import ShapeDecoder, ShapeDecoderConfig
from pointdiff.compat.shape.encoder import ShapeEncoder, ShapeEncoderConfig
from pointdiff.compat.shape.transformer import LatentDenoiser, LatentDenoiserConfig

FORMAT = "pointdiff-shape"
SHAPE_MODELS = {  # name -> (kind, heads of the denoiser)
    "transmitter": ("decoder", 0),
    "decoder": ("decoder", 0),
    "text300M": ("text", 16),
    "image300M": ("image", 8),
}
DOWNLOAD = {  # where Shap-E's code fetches the released files
    "transmitter": "https://openaipublic.azureedge.net/main/shap-e/transmitter.pt",
    "decoder": "https://openaipublic.azureedge.net/main/shap-e/vector_decoder.pt",
    "text300M": "https://openaipublic.azureedge.net/main/shap-e/text_cond.pt",
    "image300M": "https://openaipublic.azureedge.net/main/shap-e/image_cond.pt",
}


class ShapeConversionError(ValueError):
    """A Shap-E checkpoint that does not match the model it is converted to (names the key)."""


def _get(sd: Mapping, key: str, name: str) -> torch.Tensor:
    if key not in sd:
        raise ShapeConversionError(f"Shap-E state dict for {name!r} is missing key {key!r}")
    return sd[key]


def shape_config(sd: Mapping, name: str, **overrides):
    """The config of a released (or re-sized) Shap-E model, read from its tensor shapes."""
    if name not in SHAPE_MODELS:
        raise ShapeConversionError(
            f"unknown Shap-E model {name!r}; choose one of {list(SHAPE_MODELS)}"
        )
    kind, heads = SHAPE_MODELS[name]
    if kind == "decoder":
        pre = "encoder.params_proj." if name == "transmitter" else "params_proj."
        w1 = _get(sd, pre + "projections.nerstf__mlp__1__weight.norm.weight", name)
        w0 = _get(sd, pre + "projections.nerstf__mlp__0__weight.proj.weight", name)
        metas = len({k for k in sd if k.startswith(pre) and k.endswith(".proj.weight")})
        layers = len({k.split(".")[3] for k in sd if k.startswith("renderer.nerstf.mlp.")})
        cfg = ShapeDecoderConfig(
            channels=w0.shape[1], hidden=w1.shape[0], hidden_layers=layers - 1, meta_layers=metas
        )
    else:
        blocks = {
            int(m.group(1))
            for k in sd
            if (m := re.match(r"wrapped\.backbone\.resblocks\.(\d+)\.", k))
        }
        pos = _get(sd, "wrapped.pos_emb", name)
        clip = _get(
            sd,
            "wrapped.clip_embed.weight" if kind == "text" else "wrapped.clip_embed.1.weight",
            name,
        )
        cfg = LatentDenoiserConfig(
            cond=kind,
            latent_ctx=pos.shape[0],
            channels=_get(sd, "wrapped.input_proj.weight", name).shape[1],
            width=pos.shape[1],
            depth=max(blocks) + 1 if blocks else 0,
            heads=heads,
            cond_dim=clip.shape[1],
        )
    return dataclasses.replace(cfg, **overrides)


def build_shape_model(cfg) -> nn.Module:
    return ShapeDecoder(cfg) if isinstance(cfg, ShapeDecoderConfig) else LatentDenoiser(cfg)


def encoder_config(sd: Mapping, **overrides) -> ShapeEncoderConfig:
    """The transmitter encoder's config: sizes from its tensors (under ``encoder.``), the rest
    (heads, neighbour counts, radius, image size…, which shapes cannot tell) the released values."""
    name = "transmitter"
    w = _get(sd, "encoder.ln_pre.weight", name).shape[0]
    blocks = {k.split(".")[3] for k in sd if k.startswith("encoder.processor.resblocks.")}
    convs = sorted(
        {int(k.split(".")[3]) for k in sd if k.startswith("encoder.point_conv.mlp_convs.")}
    )
    conv0 = _get(sd, "encoder.point_conv.mlp_convs.0.weight", name)
    tokens = _get(sd, "encoder.output_tokens", name)
    cfg = ShapeEncoderConfig(
        width=w,
        layers=len(blocks) + 1,
        latent_ctx=tokens.shape[0],
        channels=_get(sd, "encoder.output_proj.weight", name).shape[0],
        conv_hidden=tuple(
            _get(sd, f"encoder.point_conv.mlp_convs.{i}.bias", name).shape[0] for i in convs
        ),
        conv_kernel=conv0.shape[2],
        patch=_get(sd, "encoder.patch_emb.weight", name).shape[2],
    )
    return dataclasses.replace(cfg, **overrides)


def _check(sd: Mapping, expected: Mapping, src_of, name: str) -> dict[str, torch.Tensor]:
    out = {}
    for key, shape in expected.items():
        src = src_of(key)
        t = _get(sd, src, name)
        if tuple(t.shape) != tuple(shape):
            raise ShapeConversionError(
                f"{name!r}: key {src!r} has shape {list(t.shape)}, expected {list(shape)}"
            )
        out[key] = t.detach().to(torch.float32).contiguous()
    return out


def convert_shape_state_dict(
    sd: Mapping[str, torch.Tensor],
    name: str,
    encoder_overrides: Mapping | None = None,
    **overrides,
):
    """:param encoder_overrides: ``ShapeEncoderConfig`` fields (transmitter; tests' tiny models).
    :return: (weights in pointdiff names, config, (encoder weights, encoder config) or None).
    :raises ShapeConversionError: unknown name; missing, mis-shaped or unexpected key."""
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ShapeConversionError(f"{name!r}: expected a state dict of tensors")
    cfg = shape_config(sd, name, **overrides)
    with torch.device("meta"):
        expected = {k: v.shape for k, v in build_shape_model(cfg).state_dict().items()}
    if name == "transmitter":
        src_of = lambda k: "encoder." + k if k.startswith("params_proj.") else k  # noqa: E731
    elif name == "decoder":
        src_of = lambda k: k  # noqa: E731
    else:
        src_of = lambda k: "wrapped." + k  # noqa: E731
    state = _check(sd, expected, src_of, name)
    used = {src_of(k) for k in expected}
    encoder = None
    if name == "transmitter":
        enc_cfg = encoder_config(sd, **(encoder_overrides or {}))
        with torch.device("meta"):
            enc = {k: v.shape for k, v in ShapeEncoder(enc_cfg).state_dict().items()}
        encoder = (_check(sd, enc, lambda k: "encoder." + k, name), enc_cfg)
        used |= {"encoder." + k for k in enc}
    unexpected = sorted(set(sd) - used)
    if unexpected:
        shown = ", ".join(repr(k) for k in unexpected[:5])
        raise ShapeConversionError(
            f"{name!r}: unexpected key(s) {shown}{' …' if len(unexpected) > 5 else ''}"
        )
    return state, cfg, encoder


def load_shape_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a Shap-E ``.pt`` (weights only, no pickled code) or a ``.safetensors`` file."""
    return load_released_state_dict(path, "Shap-E", ShapeConversionError)


def convert_shape(
    src_pt: str | os.PathLike,
    out_dir: str | os.PathLike,
    name: str,
    encoder_overrides: Mapping | None = None,
    **overrides,
) -> Path:
    """Write ``out_dir/{model.safetensors, [encoder.safetensors,] config.json}``.

    ``config.json`` holds the format, the Shap-E name, the kind (decoder/text/image), the config
    (and ``encoder_config``) and the SHA-256 of every weight file. :return: ``out_dir``."""
    from safetensors.torch import save_file

    sd = load_shape_state_dict(src_pt)
    state, cfg, encoder = convert_shape_state_dict(sd, name, encoder_overrides, **overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"model.safetensors": state} | ({"encoder.safetensors": encoder[0]} if encoder else {})
    for fname, tensors in files.items():
        with atomic_path(out / fname) as tmp:  # an interrupted run leaves no half-written file
            save_file(tensors, str(tmp), metadata={"shape_name": name})
    kind = SHAPE_MODELS[name][0]
    meta = {"format": FORMAT, "name": name, "kind": kind, "config": dataclasses.asdict(cfg)}
    if encoder:
        meta["encoder_config"] = dataclasses.asdict(encoder[1])
    write_json_atomic(out / "config.json", meta, sort_keys=False)
    record_hashes(out)
    return out


def _read_meta(out: Path) -> dict:
    config = out / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{out} is not a converted Shap-E model: no config.json")
    meta = json.loads(config.read_text())
    if meta.get("format") != FORMAT:
        raise ShapeConversionError(
            f"{out} is not a converted Shap-E model (format {meta.get('format')!r})"
        )
    verify_hashes(out)
    return meta


def load_shape(out_dir: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Load a directory written by ``convert_shape`` (hashes verified). :return: (module in eval
    mode, its ``config.json``)."""
    from safetensors.torch import load_file

    out = Path(out_dir)
    meta = _read_meta(out)
    cls = ShapeDecoderConfig if meta["kind"] == "decoder" else LatentDenoiserConfig
    model = build_shape_model(cls(**meta["config"]))
    model.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    return model.eval(), meta


def load_shape_encoder(out_dir: str | os.PathLike) -> ShapeEncoder:
    """The transmitter's encoder from a directory converted from ``transmitter`` (eval mode)."""
    from safetensors.torch import load_file

    out = Path(out_dir)
    meta = _read_meta(out)
    if "encoder_config" not in meta:
        raise ShapeConversionError(f"{out} holds {meta.get('name')!r}, not the transmitter")
    cfg = meta["encoder_config"]
    model = ShapeEncoder(ShapeEncoderConfig(**{**cfg, "conv_hidden": tuple(cfg["conv_hidden"])}))
    model.load_state_dict(load_file(str(out / "encoder.safetensors")), strict=True)
    return model.eval()

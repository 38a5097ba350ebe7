"""Convert Shap-E's released checkpoints (``transmitter``, ``decoder``, ``text300M``,
``image300M``) to safetensors + ``config.json`` (with SHA-256s), checking every key.

Sizes come from the tensors (so a re-sized model converts too); what shapes cannot tell (heads,
the conditioning kind) comes from the model's name. The decoding part of ``transmitter``
(``encoder.params_proj.*`` + ``renderer.*``) is the same network as ``decoder`` and is written
in the same layout; its encoder weights are checked against the released encoder's layout and
stored unchanged in ``encoder.safetensors`` (pointdiff has no encoder forward pass yet).
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
from pointdiff.compat.shape.decoder import ShapeDecoder, ShapeDecoderConfig
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


def encoder_shapes(
    width: int,
    channels: int,
    latent_ctx: int,
    layers: int,
    conv_hidden=(1024, 1024),
    conv_kernel: int = 8,
    patch: int = 8,
) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the transmitter's point-cloud + multiview perceiver encoder (without
    its ``params_proj``): 1 cross-attention block per modality, ``layers − 1`` self-attention."""
    w, h0, h1 = width, *conv_hidden
    out: dict[str, tuple[int, ...]] = {
        "output_tokens": (latent_ctx, w),
        "ln_pre.weight": (w,),
        "ln_pre.bias": (w,),
        "ln_post.weight": (w,),
        "ln_post.bias": (w,),
        "output_proj.weight": (channels, w),
        "output_proj.bias": (channels,),
        "input_proj.weight": (w, 6 * 31),
        "input_proj.bias": (w,),  # xyz+rgb, NeRF encoding
        "point_conv.mlp_convs.0.weight": (h0, w + 3, conv_kernel, 1),
        "point_conv.mlp_convs.0.bias": (h0,),
        "point_conv.mlp_convs.1.weight": (h1, h0, conv_kernel, 1),
        "point_conv.mlp_convs.1.bias": (h1,),
        "mv_pcl_embed.weight": (w // 2, 279, 3, 3),
        "mv_pcl_embed.bias": (w // 2,),
        "mv_pcl_embed.unk_token": (279,),  # per-pixel encoding of rgb, ray origin, point
        "patch_emb.weight": (w, w // 2, patch, patch),
        "patch_emb.bias": (w,),
    }

    def block(prefix: str, cross: bool) -> None:
        attn = {"c_q": (w, w), "c_kv": (2 * w, w)} if cross else {"c_qkv": (3 * w, w)}
        for n, s in {**attn, "c_proj": (w, w)}.items():
            out[f"{prefix}.attn.{n}.weight"], out[f"{prefix}.attn.{n}.bias"] = s, s[:1]
        out[f"{prefix}.mlp.c_fc.weight"], out[f"{prefix}.mlp.c_fc.bias"] = (4 * w, w), (4 * w,)
        out[f"{prefix}.mlp.c_proj.weight"], out[f"{prefix}.mlp.c_proj.bias"] = (w, 4 * w), (w,)
        for ln in ("ln_1", "ln_2", "ln_3") if cross else ("ln_1", "ln_2"):
            out[f"{prefix}.{ln}.weight"] = out[f"{prefix}.{ln}.bias"] = (w,)

    for i in range(2):
        block(f"encoder.{i}.resblocks.0", cross=True)
    for i in range(layers - 1):
        block(f"processor.resblocks.{i}", cross=False)
    return out


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


def convert_shape_state_dict(sd: Mapping[str, torch.Tensor], name: str, **overrides):
    """:return: (weights in pointdiff names, config, encoder weights or None).
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
        w = _get(sd, "encoder.ln_pre.weight", name).shape[0]
        layers = 1 + len(
            {k.split(".")[3] for k in sd if k.startswith("encoder.processor.resblocks.")}
        )
        conv = tuple(
            _get(sd, f"encoder.point_conv.mlp_convs.{i}.bias", name).shape[0] for i in range(2)
        )
        ctx = _get(sd, "encoder.output_tokens", name).shape[0]
        enc = encoder_shapes(w, cfg.channels, ctx, layers, conv)
        encoder = _check(sd, enc, lambda k: "encoder." + k, name)
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
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Shap-E checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, or pickled objects other than tensors
        raise ShapeConversionError(f"cannot read {path} as a Shap-E state dict: {e}") from e
    if not isinstance(sd, Mapping):
        raise ShapeConversionError(f"{path} holds a {type(sd).__name__}, not a state dict")
    return dict(sd)


def convert_shape(
    src_pt: str | os.PathLike, out_dir: str | os.PathLike, name: str, **overrides
) -> Path:
    """Write ``out_dir/{model.safetensors, [encoder.safetensors,] config.json}``.

    ``config.json`` holds the format, the Shap-E name, the kind (decoder/text/image), the config
    and the SHA-256 of every weight file. :return: ``out_dir``."""
    from safetensors.torch import save_file

    state, cfg, encoder = convert_shape_state_dict(load_shape_state_dict(src_pt), name, **overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"model.safetensors": state} | ({"encoder.safetensors": encoder} if encoder else {})
    for fname, tensors in files.items():
        with atomic_path(out / fname) as tmp:  # an interrupted run leaves no half-written file
            save_file(tensors, str(tmp), metadata={"shape_name": name})
    kind = SHAPE_MODELS[name][0]
    meta = {"format": FORMAT, "name": name, "kind": kind, "config": dataclasses.asdict(cfg)}
    write_json_atomic(out / "config.json", meta, sort_keys=False)
    record_hashes(out)
    return out


def load_shape(out_dir: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Load a directory written by ``convert_shape`` (hashes verified). :return: (module in eval
    mode, its ``config.json``)."""
    from safetensors.torch import load_file

    out = Path(out_dir)
    meta = json.loads((out / "config.json").read_text())
    if meta.get("format") != FORMAT:
        raise ShapeConversionError(
            f"{out} is not a converted Shap-E model (format {meta.get('format')!r})"
        )
    verify_hashes(out)
    cls = ShapeDecoderConfig if meta["kind"] == "decoder" else LatentDenoiserConfig
    model = build_shape_model(cls(**meta["config"]))
    model.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    return model.eval(), meta

"""Frozen dataclass configs, named presets and ``--key=value`` overrides.

Stdlib only. Every component takes its config object; the resolved config is written to every
checkpoint (``to_dict``) so a checkpoint rebuilds without the original command line
(``from_dict``).
"""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass
from typing import Any

# ----------------------------------------------------------------------------------------------
# Models


@dataclass(frozen=True)
class PointTransformerConfig:
    """What the point-diffusion transformer trunk (``models.trunk.PointTransformer``) takes: the
    fields ``DenoiserConfig`` and ``UpsamplerConfig`` share. Not a model on its own."""

    kind: str = "denoiser"  # registry key in pointdiff.models.MODELS
    width: int = 512  # transformer width
    depth: int = 12  # number of residual attention blocks
    heads: int = 8  # attention heads (width must divide by heads)
    num_points: int = 1024  # points generated per cloud
    in_channels: int = 6  # xyz + rgb in model space
    out_channels: int = 6  # denoised output (12 for point-e's eps + variance heads)
    cond_dim: int = 768  # text-embedding size; 0 = unconditional
    cond_drop_prob: float = 0.1  # training-time probability of zeroing the condition (CFG)
    init_scale: float = 0.25  # point-e's init scale for backbone linears
    grid_tokens: int = 0  # point-e image-grid models: 256 CLIP patch tokens (0 = text vector)
    grid_dim: int = 1024  # feature size of each grid token (CLIP ViT-L/14 width)
    # The classifier-free guidance scale is an input (``guidance_proj``, zero-init, added to the
    # noise token): one call gives the guided output (distilled students, Meng et al. 2023).
    guidance_embed: bool = False


@dataclass(frozen=True)
class DenoiserConfig(PointTransformerConfig):
    """The Point-E point-diffusion transformer (``PointDenoiser``)."""

    # Also add Linear(condition) to every point token (zero-init; not in point-e). The single
    # condition token alone was not learned in CPU-scale training (see PointTransformer.__init__).
    cond_bias: bool = False
    # Per-token conditioning: besides the pooled vector, the text encoder's first ``text_tokens``
    # token states ([B, 1 + text_tokens, cond_dim] condition; padding is zeros) become extra
    # condition tokens through ``token_proj`` (LayerNorm + zero-init Linear). 0 = pooled only.
    text_tokens: int = 0


@dataclass(frozen=True)
class UpsamplerConfig(PointTransformerConfig):
    """The Point-E upsampler (``PointUpsampler``): low-res cloud as extra tokens."""

    kind: str = "upsampler"
    num_points: int = 3072  # new points generated
    cond_dim: int = 0  # optional text conditioning (0 = none)
    num_cond_points: int = 1024  # low-resolution points given as condition
    low_res_noise: float = 0.0  # training-time augmentation noise on the low-res condition


@dataclass(frozen=True)
class SDFConfig:
    """Point-cloud → signed-distance model (``SDFModel``)."""

    kind: str = "sdf"
    width: int = 256
    encoder_depth: int = 8
    encoder_heads: int = 4
    decoder_depth: int = 4
    decoder_heads: int = 4
    num_points: int = 4096  # input cloud size
    num_latents: int = 0  # 0 = self-attention over all points; >0 = perceiver with latents
    init_scale: float = 0.25
    fourier_freqs: int = 0  # F>0: xyz -> [xyz, sin/cos(2^k·π·xyz), k<F] before the input Linears
    local_k: int = 0  # K>0: each query also sees its K nearest cloud points (LocalGeometry)
    local_k_wide: int = 64  # with local_k: neighbourhood of the "surroundedness" features


@dataclass(frozen=True)
class TextConfig:
    """Text encoder: an open_clip text tower, pretrained or built from scratch."""

    arch: str = "ViT-L-14"  # open_clip model name, or "tiny"/"small" for the from-scratch towers
    pretrained: str = "openai"  # open_clip pretrained tag, a local weights file, or "" (random)
    trainable: bool = False  # train the tower jointly with the denoiser (offline checkpoints)


# ----------------------------------------------------------------------------------------------
# Diffusion and sampling


@dataclass(frozen=True)
class DiffusionConfig:
    """EDM (Karras et al. 2022) continuous-σ preconditioning, training σ law and sampling grid."""

    sigma_data: float = 0.5  # std of the data in model space (xyz*2, rgb*2-1)
    p_mean: float = -1.2  # log-normal training σ: ln σ ~ N(p_mean, p_std²) (EDM Table 1)
    p_std: float = 1.2
    sigma_min: float = 0.002  # sampling grid bounds
    sigma_max: float = 80.0
    rho: float = 7.0  # Karras grid curvature


@dataclass(frozen=True)
class SampleConfig:
    """Defaults for one sampling stage."""

    sampler: str = "heun"  # heun | euler | dpmpp_2m | consistency
    steps: int = 64
    guidance: float = 3.0
    s_churn: float = 3.0
    clip_denoised: bool = True
    #: move points farther than this × the median k-NN spacing onto their nearest inlier after
    #: sampling (``pointcloud.relocate_strays``); 0 = off (point-e's behaviour)
    stray_ratio: float = 0.0
    #: guide only where lo < σ ≤ hi, conditional elsewhere (Kynkäänniemi et al. 2024); None: all σ
    guidance_interval: tuple[float, float] | None = None
    #: after sampling, passes that pull each point onto the plane of its 16 nearest neighbours
    #: (``densify.project_to_surface``; 0.5 = half-way once, 2 = fully twice); 0 = off (point-e)
    surface_projection: float = 0.0
    #: 0: the Karras grid of ``steps``; G > 0: every (G / steps)-th level of the Karras grid of G
    #: steps (``schedules.get_sigmas_subgrid``: the levels a distilled student was trained on)
    grid: int = 0


# ----------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping for ``pointdiff.training.loop.train``."""

    batch_size: int = 32  # per rank, per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 500
    max_steps: int = 100_000
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    bf16: bool = False  # bf16 autocast (CUDA by default; CPU when asked)
    log_every: int = 10
    ckpt_every: int = 500
    seed: int = 0
    num_workers: int = -1  # DataLoader workers per rank; -1 = min(4, CPUs per rank - 1)
    keep_checkpoints: int = 3  # keep the last K ckpt-* directories of a run
    compile: bool = False  # torch.compile the network
    fsdp: bool = False  # shard params/grads/AdamW/EMA over ranks (FSDP2) instead of DDP replicas
    grad_checkpointing: bool = False  # recompute each block in backward: less activation memory


@dataclass(frozen=True)
class DistillConfig:
    """A few-call student from a teacher (``pointdiff.training.distill``)."""

    method: str = "guidance"  # guidance | progressive | trajectory
    guidance_min: float = 1.0  # guidance scales the student learns, w ~ U[min, max]
    guidance_max: float = 5.0
    #: progressive: the student's steps (its teacher takes twice as many); trajectory and
    #: guidance: the steps the student samples with by default
    steps: int = 16
    grid: int = 16  # every σ level is one of the Karras grid of this many steps
    trajectories: int = 1024  # trajectory: teacher trajectories solved and stored


# ----------------------------------------------------------------------------------------------
# Presets (named registry, DiT-style)

_SDF_SMALL = SDFConfig(
    width=128, encoder_depth=4, decoder_depth=2, num_latents=256, fourier_freqs=6
)

PRESETS: dict[str, Any] = {
    # tests: seconds on a CPU
    "tiny": DenoiserConfig(width=32, depth=2, heads=2, num_points=64, cond_dim=32),
    # trainable on a 2-core CPU in hours
    "small": DenoiserConfig(width=256, depth=6, heads=4, num_points=1024, cond_dim=512),
    # point-e's base40M-textvec shape
    "base40M": DenoiserConfig(width=512, depth=12, heads=8, num_points=1024, cond_dim=768),
    "base300M": DenoiserConfig(width=1024, depth=24, heads=16, num_points=1024, cond_dim=768),
    "base1B": DenoiserConfig(width=2048, depth=24, heads=32, num_points=1024, cond_dim=768),
    "upsample_tiny": UpsamplerConfig(
        width=32, depth=2, heads=2, num_points=192, num_cond_points=64
    ),
    "upsample_small": UpsamplerConfig(width=256, depth=6, heads=4),
    "upsample40M": UpsamplerConfig(width=512, depth=12, heads=8),
    "sdf_tiny": SDFConfig(
        width=32,
        encoder_depth=2,
        encoder_heads=2,
        decoder_depth=2,
        decoder_heads=2,
        num_points=256,
        fourier_freqs=6,
    ),
    "sdf_small": _SDF_SMALL,
    # sdf_small whose queries also see their nearest cloud points (LocalGeometry)
    "sdf_small_local": dataclasses.replace(_SDF_SMALL, local_k=16, local_k_wide=256),
    "sdf_pointe": SDFConfig(),
}


def get_preset(name: str):
    """Return the named preset config; unknown names list the valid ones."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


# ----------------------------------------------------------------------------------------------
# Serialisation and overrides

CONFIG_CLASSES = {
    cls.__name__: cls
    for cls in (
        DenoiserConfig,
        UpsamplerConfig,
        SDFConfig,
        TextConfig,
        DiffusionConfig,
        SampleConfig,
        TrainConfig,
        DistillConfig,
    )
}


def to_dict(cfg) -> dict:
    """A JSON-ready dict that records the config class name under ``"_class"``."""
    d = dataclasses.asdict(cfg)
    d["_class"] = type(cfg).__name__
    return d


def from_dict(d: dict):
    """Rebuild a config written by ``to_dict``; unknown fields are an error."""
    d = dict(d)
    name = d.pop("_class", None)
    if name not in CONFIG_CLASSES:
        raise ValueError(f"config dict has unknown or missing class {name!r}")
    cls = CONFIG_CLASSES[name]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"{name} has no field(s) {sorted(unknown)}")
    for f in dataclasses.fields(cls):
        if f.name in d and isinstance(d[f.name], list):
            d[f.name] = tuple(d[f.name])
    return cls(**d)


def apply_overrides(cfg, argv: list[str]):
    """Apply ``--key=value`` overrides (nanoGPT semantics, without exec).

    Values are parsed with ``ast.literal_eval`` (falling back to the raw string) and must match
    the field's current type; an unknown key is an error naming the valid keys.
    """
    changes: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise ValueError(f"override {arg!r} must look like --key=value")
        key, raw = arg[2:].split("=", 1)
        key = key.replace("-", "_")
        if key not in fields:
            raise ValueError(
                f"{type(cfg).__name__} has no field {key!r}; valid: {', '.join(sorted(fields))}"
            )
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        current = getattr(cfg, key)
        if isinstance(current, bool) and not isinstance(value, bool):
            raise ValueError(f"--{key} expects True/False, got {raw!r}")
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        if current is not None and not isinstance(value, type(current)):
            raise ValueError(f"--{key} expects {type(current).__name__}, got {raw!r}")
        changes[key] = value
    return dataclasses.replace(cfg, **changes)


__all__ = [
    "PointTransformerConfig",
    "DenoiserConfig",
    "UpsamplerConfig",
    "SDFConfig",
    "TextConfig",
    "DiffusionConfig",
    "SampleConfig",
    "TrainConfig",
    "DistillConfig",
    "PRESETS",
    "get_preset",
    "to_dict",
    "from_dict",
    "apply_overrides",
]

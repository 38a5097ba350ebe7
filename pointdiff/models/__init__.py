"""Networks (``nn.Module``s). They know nothing of σ schedules, files, CLIP or checkpoints.

``MODELS`` maps a config's ``kind`` to its class; ``build_model(cfg)`` is a dict lookup.
"""

from __future__ import annotations

from torch import nn

from pointdiff.models.denoiser import PointDenoiser
from pointdiff.models.sdf import SDFModel
from pointdiff.models.trunk import ModelInputError
from pointdiff.models.upsampler import PointUpsampler

MODELS: dict[str, type[nn.Module]] = {
    "denoiser": PointDenoiser,
    "upsampler": PointUpsampler,
    "sdf": SDFModel,
}


def build_model(cfg) -> nn.Module:
    """Instantiate the network for ``cfg`` (any model config with a ``kind`` field)."""
    kind = getattr(cfg, "kind", None)
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[kind](cfg)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "MODELS",
    "build_model",
    "count_params",
    "PointDenoiser",
    "PointUpsampler",
    "SDFModel",
    "ModelInputError",
]

"""From-scratch CLIP-shaped towers, text or image: random-init and reproducible from a seed.

Each encoder names its sizes in its ``SCRATCH_CONFIGS`` (arch -> ``embed_dim`` and the fields of
its tower's open_clip config); these towers serve tests and offline-trained checkpoints.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TypeVar

import torch

T = TypeVar("T")


def build_scratch_tower(cls: type[T], arch: str, fields: dict, seed: int | None, **tower_cfg) -> T:
    """``cls(spec)`` for the from-scratch tower ``arch`` (its ``SCRATCH_CONFIGS`` entry
    ``fields``), random-init from ``seed``; torch's global RNG is restored after (None: the
    weights are drawn from its current state).

    :param tower_cfg: the spec key of the tower's open_clip config and that config's dataclass
        (``text_cfg=CLIPTextCfg``): the spec records all of its fields, defaults included.
    """
    spec = {**fields, "arch": arch, "pretrained": "", "quick_gelu": False}
    for key, cfg_type in tower_cfg.items():
        spec[key] = asdict(cfg_type(**spec[key]))
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return cls(spec)

"""One optimizer step's pieces: AdamW with weight decay on matrices only, the LR schedule
(linear warmup, cosine decay) and the EMA of the weights."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from pointdiff.config import TrainConfig


def lr_factor(step: int, warmup: int, max_steps: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``max_steps``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device):
    """AdamW over ``model``'s trainable parameters (in ``parameters()`` order, so an optimizer
    state saved from one run numbers them as another's) and its ``lr_factor`` schedule.

    :return: (optimizer, LambdaLR scheduler).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [  # weight decay on matrices only (nanoGPT): not on biases, norms or scalars
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=device.type == "cuda")
    schedule = partial(
        lr_factor, warmup=cfg.warmup_steps, max_steps=cfg.max_steps, min_ratio=cfg.min_lr_ratio
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1-decay)·model over matched named parameters; buffers are copied."""
    ema_params, params = dict(ema.named_parameters()), dict(model.named_parameters())
    assert ema_params.keys() == params.keys(), "EMA and model parameters differ"
    names = list(params)
    torch._foreach_lerp_(
        [ema_params[k] for k in names], [params[k].detach() for k in names], 1 - decay
    )
    for (name, b_ema), (_, b) in zip(ema.named_buffers(), model.named_buffers(), strict=True):
        assert name == _, "EMA and model buffers differ"
        b_ema.copy_(b)


def ema_decay(step: int, decay: float) -> float:
    """The EMA decay after ``step`` optimizer steps: warmed up as (1+step)/(10+step), so a short
    run's EMA is not dominated by its random initialisation."""
    return min(decay, (1 + step) / (10 + step))

"""What each diffusion stage trains and minimises: the model (a network wrapped in its EDM
preconditioner) and one small loss callable per stage, ``loss(model, batch) -> [B]``, which the
training loop averages (EDM ``training/loss.py`` style). The SDF head's loss lives beside its
dataset in ``pointdiff.training.sdf``.

A stage's condition is a batch key handed to the model: ``text_emb`` (the frozen text encoder's
table, set on the dataset before training), ``caption`` (a ``TextConditioned`` model embeds the
captions with a tower trained jointly), or None (unconditional).
"""

from __future__ import annotations

import torch
from torch import nn

from pointdiff.config import DiffusionConfig
from pointdiff.diffusion.precond import EDMLoss, KarrasDenoiser
from pointdiff.models import build_model
from pointdiff.pointcloud import farthest_point_sample


def build_diffusion_model(model_cfg, diffusion_cfg: DiffusionConfig) -> KarrasDenoiser:
    """The network of ``model_cfg`` inside its preconditioner, σ_data from ``diffusion_cfg``."""
    return KarrasDenoiser(build_model(model_cfg), diffusion_cfg.sigma_data)


class TextConditioned(nn.Module):
    """A diffusion model and the text tower trained with it, as one module (so one DDP wrapper
    or FSDP root synchronises both): captions in, the tower's embeddings [B, D] to the model.

    :param denoiser: ``denoiser(x, sigma, text_emb=…, **extra) -> denoised``.
    :param text: a trainable ``TextEncoder`` (``embed(captions) -> [B, D]``).
    """

    def __init__(self, denoiser: nn.Module, text: nn.Module):
        super().__init__()
        self.denoiser, self.text = denoiser, text

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, caption: list[str], **extra):
        return self.denoiser(x, sigma, text_emb=self.text.embed(caption), **extra)


def _condition(batch: dict, key: str | None) -> dict:
    return {} if key is None else {key: batch[key]}


class BaseLoss:
    """Base stage (text → cloud): x0 = the cloud [B, N, 6], denoised given its condition.

    :param condition: the batch key the model is conditioned on (see the module doc).
    """

    def __init__(self, diffusion_cfg: DiffusionConfig, condition: str | None = "text_emb"):
        self.edm, self.condition = EDMLoss(diffusion_cfg), condition

    def inputs(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """(x0 [B, N, 6], the model's condition kwargs) of a batch."""
        return batch["points"], _condition(batch, self.condition)

    def __call__(self, model: nn.Module, batch: dict) -> torch.Tensor:
        x0, extra = self.inputs(batch)
        return self.edm(model, x0, **extra)


def split_low_res(points: torch.Tensor, num_cond_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split clouds [B, M+N, C] into their farthest-point subset ``low_res`` [B, M, C] (what a
    base model generates: FPS keeps the coverage of a 1024-point cloud) and the remaining points
    [B, N, C], the upsampler's targets. Final cloud = low_res ∪ new points, as point-e's
    upsampler (1024 + 3072 = 4096).

    :return: (low_res, rest).
    """
    b, n, c = points.shape
    idx = farthest_point_sample(points, num_cond_points)  # [B, M], FPS from point 0
    keep = torch.ones(b, n, dtype=torch.bool, device=points.device).scatter_(1, idx, False)
    low_res = torch.gather(points, 1, idx[..., None].expand(-1, -1, c))
    return low_res, points[keep].view(b, n - num_cond_points, c)


class UpsamplerLoss:
    """Upsampler stage (low-res cloud → more points): each training cloud of M + N points is
    split by ``split_low_res``; x0 = the N other points, denoised given ``low_res`` (and the
    condition, when the model takes text).

    :param num_cond_points: M, the low-res points (``UpsamplerConfig.num_cond_points``).
    """

    def __init__(
        self, diffusion_cfg: DiffusionConfig, num_cond_points: int, condition: str | None = None
    ):
        self.edm = EDMLoss(diffusion_cfg)
        self.num_cond_points, self.condition = num_cond_points, condition

    def inputs(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """(x0 [B, N, 6] the points to generate, kwargs: ``low_res`` and the condition)."""
        low_res, x0 = split_low_res(batch["points"], self.num_cond_points)
        return x0, {"low_res": low_res, **_condition(batch, self.condition)}

    def __call__(self, model: nn.Module, batch: dict) -> torch.Tensor:
        x0, extra = self.inputs(batch)
        return self.edm(model, x0, **extra)


__all__ = [
    "BaseLoss",
    "TextConditioned",
    "UpsamplerLoss",
    "build_diffusion_model",
    "split_low_res",
]

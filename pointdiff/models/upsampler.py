"""``PointUpsampler``: the Point-E upsampler (1024 → 4096 points).

The low-resolution cloud enters as M extra tokens through its own projection ``cond_point_proj``;
the network denoises N new points (3072 for point-e). The final cloud (low-res + new) is put
together by the pipeline, not here: this module returns only the N new points' outputs.

Token sequence (point-e order): ``[(text), time, (image grid), low_res…, points…]``.

**Low-res noise augmentation (training only).** At sampling time the low-res cloud comes from
the base model and carries its residual errors, not the clean FPS subset the upsampler trains on.
When ``cfg.low_res_noise > 0`` and the module is in training mode, each sample's low-res cloud
gets Gaussian noise with a std drawn uniformly from ``[0, low_res_noise]`` (model space; torch's
global RNG): the model sees clean and perturbed conditions alike and learns to trust the
condition only as far as it is reliable. At eval (``model.eval()``) the condition is used as given.
"""

from __future__ import annotations

import torch

from pointdiff.config import UpsamplerConfig
from pointdiff.models.trunk import ModelInputError, PointTransformer


class PointUpsampler(PointTransformer):
    """Point-E's ``(CLIPImageGrid)UpsamplePointDiffusionTransformer``.

    ``grid_tokens = 256`` reproduces point-e's 256 (all-zero when no image is given) CLIP-grid
    tokens for weight compatibility; our own models default to none. ``cond_dim > 0`` adds an
    optional text token.

    :param cfg: ``UpsamplerConfig``.
    """

    def __init__(self, cfg: UpsamplerConfig):
        super().__init__(cfg)
        # The low-res points arrive in model space (pointcloud.to_model_space), so unlike
        # point-e there are no channel scales/biases here.
        self.cond_point_proj = torch.nn.Linear(cfg.in_channels, cfg.width)

    def forward(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor,
        low_res: torch.Tensor | None = None,
        text_emb: torch.Tensor | None = None,
        grid: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        :param x: [B, N, in_channels] network input for the N new points, model space.
        :param c_noise: [B] noise-level input (see ``PointDenoiser.forward``).
        :param low_res: [B, M, in_channels] the low-resolution cloud, model space.
        :param text_emb: [B, cond_dim] or None (only when ``cond_dim > 0``).
        :param guidance: [B] classifier-free guidance scale (``guidance_embed`` models only).
        :param grid: [B, grid_tokens, grid_dim] or None (zeros) when ``grid_tokens > 0``.
        :return: [B, N, out_channels] for the new points only.
        """
        c_noise = self.check_points(x, c_noise)
        b = x.shape[0]
        if low_res is None:
            raise ModelInputError("PointUpsampler needs low_res [B, M, C] (the low-res cloud)")
        if low_res.ndim != 3 or low_res.shape[0] != b or low_res.shape[-1] != self.cfg.in_channels:
            raise ModelInputError(
                f"low_res must be [B={b}, M, {self.cfg.in_channels}], got {tuple(low_res.shape)}"
            )
        if self.training and self.cfg.low_res_noise > 0:
            std = torch.rand(b, 1, 1, device=low_res.device, dtype=low_res.dtype)
            low_res = low_res + std * self.cfg.low_res_noise * torch.randn_like(low_res)
        prefix, bias = self.cond_tokens(c_noise, b, text_emb=text_emb, grid=grid, guidance=guidance)
        prefix.append(self.embed(self.cond_point_proj, low_res))  # [B, M, w]
        h = self.embed(self.input_proj, x)  # [B, N, w]
        return self.run(h if bias is None else h + bias, prefix, guidance)  # [B, N, out_channels]


__all__ = ["PointUpsampler"]

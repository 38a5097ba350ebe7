"""``PointDenoiser``: the Point-E point-diffusion transformer (base stage).

Token sequence ``[text, (text-token states), time, (256 image-grid tokens), points…]`` → pre-LN
transformer → the point tokens → ``output_proj``. The network only sees
``(x_in, c_noise, condition)``; everything about σ (c_in, c_skip, c_out, or point-e's discrete
ε-parameterisation) lives in the diffusion wrapper it is built in.
"""

from __future__ import annotations

import torch

from pointdiff.config import DenoiserConfig
from pointdiff.models.trunk import PointTransformer


class PointDenoiser(PointTransformer):
    """Point-E's ``PointDiffusionTransformer`` family in one class.

    * ``cond_dim > 0``: one text(-or-image)-vector token (``base40M-textvec``/``-imagevec``);
      with ``text_tokens > 0`` also one token per text-encoder token state (not in point-e).
    * ``cond_dim = 0, grid_tokens = 0``: unconditional (``base40M-uncond``).
    * ``grid_tokens > 0``: CLIP image patch-grid tokens (``base40M``/``300M``/``1B``).

    :param cfg: ``DenoiserConfig``.
    """

    def __init__(self, cfg: DenoiserConfig):
        super().__init__(cfg)

    def forward(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor,
        text_emb: torch.Tensor | None = None,
        grid: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        :param x: [B, N, in_channels] network input (already scaled by c_in), model space.
        :param c_noise: [B] noise-level input of the sinusoidal embedding (250·ln σ for EDM
            models, the integer step t for point-e discrete models).
        :param text_emb: [B, cond_dim] condition vector (L2-normalised here), or for
            ``text_tokens`` models [B, 1 + text_tokens, cond_dim]: the pooled vector then the
            per-token states (zero rows = padding); None or zeros is the null condition.
        :param guidance: [B] classifier-free guidance scale (``guidance_embed`` models only).
        :param grid: [B, grid_tokens, grid_dim] image patch grid; None = zeros (null condition).
        :return: [B, N, out_channels].
        """
        c_noise = self.check_points(x, c_noise)
        prefix, bias = self.cond_tokens(
            c_noise, x.shape[0], text_emb=text_emb, grid=grid, guidance=guidance
        )
        h = self.embed(self.input_proj, x)  # [B, N, w]
        return self.run(h if bias is None else h + bias, prefix, guidance)  # [B, N, out_channels]


__all__ = ["PointDenoiser"]

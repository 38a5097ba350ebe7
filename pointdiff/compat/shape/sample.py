"""Sampling Shap-E latents with pointdiff's samplers (Shap-E's defaults: Karras grid σ ∈ [1e-3,
160], ρ = 7, 64 Heun steps, x̂0 clamped to [−1, 1] per branch, guidance 15 text / 3 image).

The released denoisers are discrete-time x̂0-predictors on the ``exp`` schedule
(ᾱ(t) = e^(−12·t/T) per step, T = 1024). The σ → t bridge is Point-E's (ᾱ = 1/(σ² + 1) located in
the table, floored), shared with ``pointdiff.diffusion.discrete``; the input is scaled by
c_in = 1/√(σ² + 1) and the first half of the output channels is D(x; σ).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pointdiff.compat.shape.transformer import LatentDenoiser
from pointdiff.diffusion import get_sigmas_karras, sample_heun
from pointdiff.diffusion.discrete import DiscreteEpsDenoiser
from pointdiff.diffusion.guidance import clamp_denoised, classifier_free_guidance

GUIDANCE = {"text": 15.0, "image": 3.0}


def get_exp_alphas_cumprod(num_timesteps: int = 1024, rate: float = 12.0) -> torch.Tensor:
    """ᾱ of Shap-E's ``exp`` schedule: constant β = 1 − e^(−rate/T). [T] float64."""
    t = np.arange(num_timesteps + 1) / num_timesteps
    abar = np.exp(-rate * t)
    betas = np.minimum(1 - abar[1:] / abar[:-1], 0.999)
    return torch.from_numpy(np.cumprod(1.0 - betas))


class LatentKarrasDenoiser(nn.Module):
    """``D(x [B, T, C], sigma [B], cond) -> x̂0`` for a ``LatentDenoiser``."""

    def __init__(self, net: LatentDenoiser):
        super().__init__()
        self.net = net
        self._bridge = DiscreteEpsDenoiser(
            nn.Identity(), get_exp_alphas_cumprod(), exact_pointe=True
        )

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        t = self._bridge.sigma_to_t(sigma).long()
        c_in = (1.0 / (sigma**2 + 1) ** 0.5).reshape(-1, 1, 1).to(x.dtype)
        return self.net(x * c_in, t, cond, variance=False)


def guided_denoiser(net: LatentDenoiser, guidance_scale: float | None = None):
    """Shap-E's denoiser: ``D(x, sigma, cond)`` with x̂0 clamped to [−1, 1] per branch, then
    classifier-free guidance against the all-zero condition (none for scale 0 or 1).

    :param guidance_scale: default Shap-E's (``GUIDANCE``: 15 text, 3 image)."""
    scale = GUIDANCE[net.cfg.cond] if guidance_scale is None else guidance_scale
    model = clamp_denoised(LatentKarrasDenoiser(net))
    if scale not in (0.0, 1.0):
        model = classifier_free_guidance(model, scale, cond_keys=("cond",))
    return model


@torch.no_grad()
def sample_latents(
    net: LatentDenoiser,
    cond: torch.Tensor,
    guidance_scale: float | None = None,
    steps: int = 64,
    sigma_min: float = 1e-3,
    sigma_max: float = 160.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Shap-E's sampler (Heun on the Karras grid, ``guided_denoiser``). :param cond: [B, …] (see
    ``LatentDenoiser``). :return: [B, T·C] flat latents, token-major (Shap-E's layout; the last
    Heun/Euler iterate, not clamped)."""
    cfg = net.cfg
    model = guided_denoiser(net, guidance_scale)
    b = cond.shape[0]
    x = torch.randn(b, cfg.latent_ctx * cfg.channels, generator=generator, device=cond.device)
    x = (x * sigma_max).view(b, cfg.latent_ctx, cfg.channels)
    sigmas = get_sigmas_karras(steps, sigma_min, sigma_max, device=cond.device)
    x = sample_heun(model, x, sigmas, extra_args={"cond": cond}, disable=True)
    return x.flatten(1)

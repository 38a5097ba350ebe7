"""Serve a discrete-time ε-prediction model (point-e's released weights) as a continuous-σ
denoiser, so every pointdiff sampler can drive it.

A discrete DDPM step t has x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε. Dividing by √ᾱ_t gives the σ-form
x = x0 + σ·ε with σ = √(1/ᾱ − 1), i.e. ᾱ = 1/(σ² + 1) and x_t = x·c_in with c_in = 1/√(σ² + 1).
So D(x; σ) = x − σ·ε̂(c_in·x, t(σ)) with t(σ) found in the ᾱ table.

Point-e's ``GaussianToKarrasDenoiser`` floors t(σ) to an integer and converts ε → x̂0 with the
floored step's ᾱ_t (x̂0 = √(1/ᾱ_t)·x_t − √(1/ᾱ_t − 1)·ε̂): the net is told a lower noise level
than x has, and every σ below σ(1) acts as σ(0) = 0.0063 (cosine), so with σ_min = 1e-3 the last
6 of 64 Karras steps all subtract σ(0)·ε̂ and D does not tend to x as σ → 0.
``exact_pointe=True`` reproduces that bit for bit. The default passes the fractional t and uses
the true σ in x − σ·ε̂ (t stays at 0 below σ(0), where the net was never trained, but D → x as
σ → 0); σ above the table's largest σ (linear: 157.3 < point-e's σ_max = 160) is clamped to it.
With the Bayes-optimal ε-net for Gaussian data (tests/test_discrete.py) the default is the exact
optimal denoiser inside the table's range and 4× closer to it below; the floor is up to 0.14·s
off there.

Schedules: point-e ``gaussian_diffusion.get_named_beta_schedule`` (1024 steps): ``cosine`` for the
base models (Nichol & Dhariwal 2021), ``linear`` scaled by 1000/1024 for the upsampler.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

NUM_TIMESTEPS = 1024  # point-e's diffusion length for every released model


def get_cosine_alphas_cumprod(num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """ᾱ of the cosine schedule: β_i = min(1 − ᾱ(t_{i+1})/ᾱ(t_i), 0.999) with
    ᾱ(t) = cos²((t + 0.008)/1.008 · π/2), t_i = i/T; ᾱ = cumprod(1 − β). [T] float64."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    t = num_timesteps
    betas = np.array([min(1 - alpha_bar((i + 1) / t) / alpha_bar(i / t), 0.999) for i in range(t)])
    return torch.from_numpy(np.cumprod(1.0 - betas, axis=0))


def get_linear_alphas_cumprod(num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """ᾱ of the DDPM linear schedule β ∈ [1e-4, 0.02]·(1000/T), linearly spaced (point-e's
    upsampler). [T] float64."""
    scale = 1000 / num_timesteps
    betas = np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)
    return torch.from_numpy(np.cumprod(1.0 - betas, axis=0))


ALPHAS_CUMPROD = {"cosine": get_cosine_alphas_cumprod, "linear": get_linear_alphas_cumprod}


class DiscreteEpsDenoiser(nn.Module):
    """A discrete ε-prediction net as a denoiser ``D(x [B,N,C], sigma [B], **cond) -> [B,N,C]``.

    :param net: ``net(x_t [B,N,C], t [B] float, **cond) -> [B,N,≥C]``; the first
        ``eps_channels`` output channels are ε (point-e: 12 = 6 ε + 6 variance values).
    :param alphas_cumprod: [T] ᾱ table (``ALPHAS_CUMPROD[name]()``), kept in float64.
    :param exact_pointe: reproduce point-e's bridge (t floored, x̂0 from the table at that t).
    :param eps_channels: how many leading output channels are ε (must equal x's channels).
    """

    def __init__(
        self,
        net: nn.Module,
        alphas_cumprod: torch.Tensor,
        exact_pointe: bool = False,
        eps_channels: int = 6,
    ):
        super().__init__()
        self.net = net
        self.exact_pointe = exact_pointe
        self.eps_channels = eps_channels
        acp = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if acp.ndim != 1 or not bool((acp[1:] < acp[:-1]).all()):
            raise ValueError("alphas_cumprod must be a 1-D strictly decreasing table")
        # Plain attributes, not buffers: module.to(dtype) must not round the float64 tables.
        self.alphas_cumprod = acp
        self.num_timesteps = len(acp)
        # smallest and largest σ = √(1/ᾱ − 1) of the discrete steps
        self.sigma_range = (math.sqrt(1 / acp[0].item() - 1), math.sqrt(1 / acp[-1].item() - 1))

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous σ [B] -> discrete time [B] float64 in [0, T−1].

        ᾱ = 1/(σ² + 1) is located in the ᾱ table by linear interpolation (as point-e's
        ``scipy.interpolate.interp1d``); σ below the table's smallest σ gives 0, above its
        largest T−1. ``exact_pointe`` computes ᾱ in float32 (point-e's numpy arithmetic on the
        float32 σ) and floors t.
        """
        acp = self.alphas_cumprod.to(sigma.device)
        if self.exact_pointe:
            alpha = (1.0 / (sigma.float() ** 2 + 1)).double()
        else:
            alpha = 1.0 / (sigma.double() ** 2 + 1)
        xs = acp.flip(0)  # ascending ᾱ
        ys = torch.arange(self.num_timesteps - 1, -1, -1, dtype=torch.float64, device=xs.device)
        hi = torch.searchsorted(xs, alpha).clamp(1, self.num_timesteps - 1)
        lo = hi - 1
        t = (ys[hi] - ys[lo]) / (xs[hi] - xs[lo]) * (alpha - xs[lo]) + ys[lo]
        t = torch.where(alpha > acp[0], torch.zeros_like(t), t)
        t = torch.where(alpha <= acp[-1], torch.full_like(t, self.num_timesteps - 1), t)
        return t.floor() if self.exact_pointe else t

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond) -> torch.Tensor:
        """:param x: [B,N,C] in the σ-form (x0 + σ·ε). :param sigma: [B] or scalar.
        :return: denoised x̂0 [B,N,C] (not clamped; wrap with ``guidance.clamp_denoised``)."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        if x.shape[-1] != self.eps_channels:
            raise ValueError(f"x has {x.shape[-1]} channels, ε has {self.eps_channels}")
        if not self.exact_pointe:  # above the table the net only knows σ(T−1)
            sigma = sigma.clamp(max=self.sigma_range[1])
        t = self.sigma_to_t(sigma)
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        x_in = x * (1.0 / (s**2 + 1) ** 0.5)  # c_in: the discrete x_t
        out = self.net(x_in, t.float(), **cond)  # float32 t even under bf16
        if out.shape[-1] < self.eps_channels:
            raise ValueError(f"net returned {out.shape[-1]} channels, need ≥ {self.eps_channels}")
        eps = out[..., : self.eps_channels]
        if not self.exact_pointe:
            return x - s * eps
        # point-e _predict_xstart_from_eps with its float64 tables gathered at the floored t
        # and cast to float32 (_extract_into_tensor): √(1/ᾱ_t)·x_t − √(1/ᾱ_t − 1)·ε.
        acp = self.alphas_cumprod.to(x.device)[t.long()]
        shape = (-1, *([1] * (x.ndim - 1)))
        recip = (1.0 / acp).sqrt().to(x.dtype).reshape(shape)
        recipm1 = (1.0 / acp - 1).sqrt().to(x.dtype).reshape(shape)
        return recip * x_in - recipm1 * eps

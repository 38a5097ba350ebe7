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

``DiscreteDiffusion`` is the training side: point-e's forward process and the loss its networks
were made for (ε MSE + the variational bound of the learned variance), used to fine-tune the
released weights (``pointdiff.training.pointe_objective``).
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
#: point-e's Karras sampling grid (σ_min, σ_max, ρ) per schedule: base models (cosine) and the
#: upsampler (linear)
POINTE_SIGMAS = {"cosine": (1e-3, 120.0, 7.0), "linear": (1e-3, 160.0, 7.0)}


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


# ----------------------------------------------------------------------------------------------
# Training: the loss point-e's released models were made for


def _gather(table: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """``table[t]`` as float32 [B, 1, …, 1]: the float64 table is rounded after the gather, as
    point-e's ``_extract_into_tensor`` does, so both compute the loss in float32 alike."""
    return table.to(t.device)[t].float().reshape(-1, *([1] * (ndim - 1)))


class DiscreteDiffusion:
    """The discrete forward process of a point-e model and its "hybrid" training loss (Ho et al.
    2020; learned variance: Nichol & Dhariwal 2021, "Improved DDPM" §3.1 and eq. 15-16).

    q(x_t | x0) = N(√ᾱ_t·x0, (1 − ᾱ_t)·I). The net returns 2C channels: ε̂ and, per channel,
    v ∈ [-1, 1] (not clamped) setting the reverse step's log variance between the posterior's
    log β̃_t and log β_t ("learned_range"). The loss is MSE(ε̂, ε) + L_vb, where L_vb is
    KL(q(x_{t−1} | x_t, x0) ‖ p(x_{t−1} | x_t)) in bits per element, computed on a stop-gradient
    ε̂ so that only v learns from it (the mean is trained by the MSE alone). It is not rescaled
    (point-e's ``loss_type="mse"``, not ``"rescaled_mse"``), and at t = 0 it is 0: point-e has no
    discretised decoder term for point clouds.

    :param alphas_cumprod: [T] ᾱ table (``ALPHAS_CUMPROD[name]()``); β, the posterior and every
        other table derive from it in float64 (β_t = 1 − ᾱ_t/ᾱ_{t−1}).
    """

    def __init__(self, alphas_cumprod: torch.Tensor):
        acp = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if acp.ndim != 1 or not bool((acp[1:] < acp[:-1]).all()):
            raise ValueError("alphas_cumprod must be a 1-D strictly decreasing table")
        prev = torch.cat([acp.new_ones(1), acp[:-1]])  # ᾱ_{t−1}, with ᾱ_{−1} = 1
        betas = 1 - acp / prev
        self.num_timesteps = len(acp)
        self.sqrt_alphas_cumprod = acp.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1 - acp).sqrt()
        self.sqrt_recip_alphas_cumprod = (1 / acp).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1 / acp - 1).sqrt()
        # q(x_{t−1} | x_t, x0) = N(coef1·x0 + coef2·x_t, β̃_t) (DDPM eq. 6-7)
        posterior_variance = betas * (1 - prev) / (1 - acp)
        self.posterior_mean_coef1 = betas * prev.sqrt() / (1 - acp)
        self.posterior_mean_coef2 = (1 - prev) * (1 - betas).sqrt() / (1 - acp)
        # β̃_0 = 0 has no log: the table starts with β̃_1 instead (as improved DDPM)
        clipped = torch.cat([posterior_variance[1:2], posterior_variance[1:]])
        self.posterior_log_variance_clipped = clipped.log()
        self.log_betas = betas.log()

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·noise. :param x0, noise: [B, N, C]. :param t: [B] long."""
        a = _gather(self.sqrt_alphas_cumprod, t, x0.ndim)
        s = _gather(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim)
        return a * x0 + s * noise

    def vb_terms(
        self,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        eps: torch.Tensor,
        var_values: torch.Tensor,
    ) -> torch.Tensor:
        """L_vb per example, in bits (mean over points and channels; 0 where t = 0).

        :param x0, x_t: [B, N, C] clean and noised data. :param t: [B] long steps.
        :param eps: [B, N, C] predicted ε (detach it for the hybrid loss).
        :param var_values: [B, N, C] the variance outputs v.
        """
        nd = x0.ndim
        coef1 = _gather(self.posterior_mean_coef1, t, nd)
        coef2 = _gather(self.posterior_mean_coef2, t, nd)
        true_mean = coef1 * x0 + coef2 * x_t
        true_log_var = _gather(self.posterior_log_variance_clipped, t, nd)
        # the model's mean: the posterior mean at x̂0 = √(1/ᾱ)·x_t − √(1/ᾱ − 1)·ε̂ (DDPM eq. 15)
        recip = _gather(self.sqrt_recip_alphas_cumprod, t, nd)
        recipm1 = _gather(self.sqrt_recipm1_alphas_cumprod, t, nd)
        mean = coef1 * (recip * x_t - recipm1 * eps) + coef2 * x_t
        # v ∈ [-1, 1] spans [log β̃_t, log β_t] (improved DDPM eq. 15)
        frac = (var_values + 1) / 2
        log_var = frac * _gather(self.log_betas, t, nd) + (1 - frac) * true_log_var
        # KL of two diagonal Gaussians, in the order of point-e's normal_kl (bit parity)
        kl = 0.5 * (
            -1.0
            + log_var
            - true_log_var
            + torch.exp(true_log_var - log_var)
            + (true_mean - mean) ** 2 * torch.exp(-log_var)
        )
        kl = kl.flatten(1).mean(1) / math.log(2.0)
        return torch.where(t == 0, torch.zeros_like(kl), kl)

    def training_losses(
        self, out: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The hybrid loss of one noised batch (point-e ``training_losses`` with ``epsilon``,
        ``learned_range``, ``mse``), each term [B].

        :param out: [B, N, 2C] the net's output at ``add_noise(x0, t, noise)`` and t.
        :param x0, noise: [B, N, C]. :param t: [B] long steps.
        :return: ``{"mse", "vb", "loss" = mse + vb}``.
        """
        c = x0.shape[-1]
        if out.shape[-1] != 2 * c:
            raise ValueError(
                f"the net returned {out.shape[-1]} channels; the point-e loss needs 2 × {c} "
                "(ε and the learned variance)"
            )
        eps, var_values = out[..., :c], out[..., c:]
        x_t = self.add_noise(x0, t, noise)
        mse = (noise - eps).pow(2).flatten(1).mean(1)
        vb = self.vb_terms(x0, x_t, t, eps.detach(), var_values)
        return {"mse": mse, "vb": vb, "loss": mse + vb}

"""EDM preconditioning and training loss (Karras et al. 2022, "EDM", Table 1 and §5).

The network only ever sees ``(c_in·x, c_noise, **cond)``; everything that depends on σ lives here
(k-diffusion ``Denoiser``, EDM ``EDMPrecond``). ``KarrasDenoiser`` has the sampler signature
``model(x [B,N,C], sigma [B], **extra_args) -> denoised [B,N,C]``.
"""

from __future__ import annotations

import torch
from torch import nn

from pointdiff.diffusion.schedules import sample_train_sigmas


def _append_dims(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """[B] -> [B, 1, …, 1] with ``ndim`` dims, for broadcasting against x."""
    return t.reshape(t.shape + (1,) * (ndim - t.ndim))


def _as_batch_sigma(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Accept a python float, a 0-d or a [B] tensor; return [B] in x's dtype and device."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a scalar or [B={x.shape[0]}], got {tuple(sigma.shape)}")
    return sigma


class KarrasDenoiser(nn.Module):
    """D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, c_noise(σ)) (EDM eq. 7, Table 1).

    With σ_d = ``sigma_data``:
      c_skip = σ_d² / (σ² + σ_d²)       (→ 1 as σ → 0: keep the input)
      c_out  = σ·σ_d / √(σ² + σ_d²)     (→ 0 as σ → 0, → σ_d as σ → ∞)
      c_in   = 1 / √(σ² + σ_d²)         (unit-variance network input)
      c_noise = 250·ln σ                (EDM's ln(σ)/4, ×1000 for the sinusoidal embedding: the
                                         convention of point-e's ``KarrasDenoiser``)

    :param net: ``net(x_in [B,N,C], c_noise [B], **cond) -> [B,N,C]``.
    :param sigma_data: standard deviation of the training data (0.5 for our model space).
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5):
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data

    def get_scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:param sigma: [B] noise levels. :return: c_skip, c_out, c_in, each [B]."""
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2) ** 0.5
        c_in = 1 / (sigma**2 + sd2) ** 0.5
        return c_skip, c_out, c_in

    @staticmethod
    def get_c_noise(sigma: torch.Tensor) -> torch.Tensor:
        """Network noise conditioning c_noise = 250·ln σ, [B]."""
        return 250.0 * sigma.log()

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, **extra_args) -> torch.Tensor:
        """:param x: [B,N,C] noisy points. :param sigma: [B] or scalar.
        :return: denoised [B,N,C]."""
        sigma = _as_batch_sigma(sigma, x)
        c_skip, c_out, c_in = (_append_dims(c, x.ndim) for c in self.get_scalings(sigma))
        out = self.net(c_in * x, self.get_c_noise(sigma), **extra_args)
        return c_skip * x + c_out * out


class EDMLoss:
    """EDM training loss (EDM §5, Table 1; EDM ``training/loss.py``), per example.

    σ is drawn log-normally, ln σ ~ N(p_mean, p_std²), and the squared error of D is weighted by
    λ(σ) = (σ² + σ_d²) / (σ·σ_d)² = 1/c_out², which makes the network's effective target unit
    variance at every σ. For data with std σ_d the optimal denoiser reaches an expected loss of
    exactly 1 (per element) at every σ; the loss cannot go below that irreducible value.

    :return: (via ``__call__``) [B] weighted MSE, averaged over points and channels.
    """

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2, sigma_data: float = 0.5):
        self.p_mean, self.p_std, self.sigma_data = p_mean, p_std, sigma_data

    def __call__(self, denoiser, x0: torch.Tensor, generator=None, **extra_args) -> torch.Tensor:
        """:param denoiser: ``denoiser(x, sigma [B], **extra_args) -> [B,N,C]``.
        :param x0: [B,N,C] clean data. :param generator: optional torch.Generator."""
        b = x0.shape[0]
        sigma = sample_train_sigmas(b, self.p_mean, self.p_std, generator, x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        denoised = denoiser(x0 + noise * _append_dims(sigma, x0.ndim), sigma, **extra_args)
        return weight * (denoised - x0).pow(2).flatten(1).mean(1)


__all__ = ["KarrasDenoiser", "EDMLoss"]

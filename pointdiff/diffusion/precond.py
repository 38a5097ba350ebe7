"""EDM preconditioning and training loss (Karras et al. 2022, "EDM", Table 1 and §5).

The network only ever sees ``(c_in·x, c_noise, **cond)``; everything that depends on σ lives here
(k-diffusion ``Denoiser``, EDM ``EDMPrecond``). A diffusion model *is* its network wrapped in
``KarrasDenoiser``, with the sampler signature
``model(x [B,N,C], sigma [B], **extra_args) -> denoised [B,N,C]``; training builds it that way
(``pointdiff.training.objectives.build_diffusion_model``) and so does sampling. Both it and
``EDMLoss`` take σ_data from ``DiffusionConfig``. The wrapper has no weights of its own:
checkpoints hold the network's.
"""

from __future__ import annotations

import torch
from torch import nn

from pointdiff.config import DiffusionConfig
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
    :param sigma_data: standard deviation of the training data (``DiffusionConfig.sigma_data``).
    """

    def __init__(self, net: nn.Module, sigma_data: float = DiffusionConfig.sigma_data):
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
    σ and the noise come from torch's global RNG (the training loop seeds it per micro-step).

    :param cfg: ``p_mean``, ``p_std`` and ``sigma_data`` (the denoiser's, from the same config).
    """

    def __init__(self, cfg: DiffusionConfig | None = None):
        cfg = cfg or DiffusionConfig()
        self.p_mean, self.p_std, self.sigma_data = cfg.p_mean, cfg.p_std, cfg.sigma_data

    def __call__(self, denoiser, x0: torch.Tensor, **extra_args) -> torch.Tensor:
        """:param denoiser: ``denoiser(x, sigma [B], **extra_args) -> [B,N,C]``.
        :param x0: [B,N,C] clean data. :return: [B] weighted MSE, mean over points and channels.
        """
        sigma = sample_train_sigmas(x0.shape[0], self.p_mean, self.p_std, x0.device)
        noise = torch.randn_like(x0)
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        denoised = denoiser(x0 + noise * _append_dims(sigma, x0.ndim), sigma, **extra_args)
        return weight * (denoised - x0).pow(2).flatten(1).mean(1)


__all__ = ["KarrasDenoiser", "EDMLoss"]

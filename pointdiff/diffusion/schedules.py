"""Noise-level schedules for the continuous-σ (EDM) formulation: pure functions, no state.

* ``get_sigmas_karras``: the sampling grid of Karras et al. 2022 ("EDM"), eq. 5, with a trailing 0
  so that samplers take their last step to the clean data (as k-diffusion and point-e do).
* ``sample_train_sigmas``: the training σ distribution of EDM Table 1, ln σ ~ N(P_mean, P_std²).
* ``get_sigmas_subgrid``: every k-th level of a Karras grid (the levels a distilled student was
  trained on); ``sample_grid_sigmas``: σ drawn uniformly along the Karras ramp (where samplers
  evaluate a model: distillation trains there).

The ``get_*`` functions return a sampling grid ending in 0; the ``sample_*`` ones draw ``batch``
σ values (B) from torch's global RNG.
"""

from __future__ import annotations

import torch


def _karras_ramp(u: torch.Tensor, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """σ at positions ``u`` in [0, 1] along the Karras ramp (EDM eq. 5 with i/(n−1) = u):
    (σ_max^(1/ρ) + u · (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, σ_max at 0 and σ_min at 1; u's shape."""
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return (max_inv_rho + u * (min_inv_rho - max_inv_rho)) ** rho


def get_sigmas_karras(
    n: int,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """The Karras σ grid (EDM eq. 5) followed by a final 0.

    σ_i = (σ_max^(1/ρ) + i/(n-1) · (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ for i = 0 … n−1; larger ρ puts
    more steps at small σ (ρ = 7 in EDM and point-e). Same float32 arithmetic as k-diffusion and
    point-e, so point-e's grids are reproduced bit for bit.

    :param n: number of sampling steps (≥ 1).
    :param sigma_min: smallest non-zero σ (> 0).
    :param sigma_max: largest σ (≥ sigma_min).
    :param rho: grid curvature.
    :return: [n+1] float32 tensor, strictly decreasing, sigmas[0] = σ_max, sigmas[n-1] = σ_min,
        sigmas[n] = 0.
    """
    if n < 1:
        raise ValueError(f"get_sigmas_karras needs n >= 1 steps, got {n}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    sigmas = _karras_ramp(torch.linspace(0, 1, n), sigma_min, sigma_max, rho)
    return torch.cat([sigmas, sigmas.new_zeros([1])]).to(device)


def get_sigmas_subgrid(
    steps: int,
    grid: int,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Every (grid / steps)-th level of the Karras grid of ``grid`` steps, then 0: the σ levels
    a student distilled from a ``grid``-step teacher samples on (progressive distillation halves
    the steps on nested grids). ``grid = steps`` is ``get_sigmas_karras(steps, …)``.

    :return: [steps+1] float32, starting at σ_max, ending in 0.
    """
    if steps < 1 or grid < steps or grid % steps:
        raise ValueError(
            f"a subgrid needs 1 <= steps <= grid and grid % steps == 0; got "
            f"steps={steps}, grid={grid}"
        )
    full = get_sigmas_karras(grid, sigma_min, sigma_max, rho, device)
    return torch.cat([full[: grid : grid // steps], full[-1:]])


def sample_grid_sigmas(
    batch: int,
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """σ at a uniform position u ~ U[0, 1] along the Karras ramp (EDM eq. 5 with i/(n−1) = u):
    the noise levels a sampler visits, σ_max to σ_min, with their density.

    :return: [B] float32 tensor of σ in [σ_min, σ_max].
    """
    return _karras_ramp(torch.rand(batch, device=device), sigma_min, sigma_max, rho)


def sample_train_sigmas(
    batch: int,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Training noise levels, log-normal as in EDM Table 1: ln σ ~ N(P_mean, P_std²).

    EDM's image defaults are P_mean = −1.2, P_std = 1.2 (median σ ≈ 0.30, 95 % in [0.03, 3.2]);
    the loss weight that goes with it lives in ``precond.EDMLoss``.

    :return: [B] float32 tensor of σ > 0.
    """
    rnd = torch.randn(batch, device=device)
    return (rnd * p_std + p_mean).exp()

"""ODE/SDE samplers for the continuous-σ formulation: one stateless function per algorithm.

Signature (k-diffusion): ``sample_x(model, x, sigmas, extra_args=None, callback=None,
disable=None, generator=None, …) -> x0`` where ``model(x [B,N,C], sigma [B], **extra_args) ->
denoised``, ``sigmas`` is a decreasing [n+1] grid ending in 0 (``schedules.get_sigmas_karras``)
and ``x`` [B,N,C] is already scaled to the first noise level (``noise * sigmas[0]``); the result
is the [B,N,C] sample at ``sigmas[-1]``. ``callback`` receives a dict with ``x, i, sigma,
sigma_hat, denoised`` once per step. Every sampler takes ``generator`` (one, or a list of one
per batch row: see ``randn_rows``), even one that draws no noise, so a caller runs them all the
same way; all randomness comes from it. Samplers named in ``CHURN`` also take Karras'
``s_churn``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import trange


def _to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """ODE derivative dx/dσ = (x − D(x; σ)) / σ (EDM eq. 3 with σ(t) = t)."""
    return (x - denoised) / sigma


def randn_rows(
    shape: tuple[int, ...],
    generator: torch.Generator | list[torch.Generator] | None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of ``shape`` [B, ...] on ``device``, drawn on the generator's device
    (a CPU generator seeds a GPU run identically). ``generator`` may be a list of B generators,
    one per batch row: row b then depends only on generator b, not on the rest of the batch."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        rows = [
            torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generator
        ]
        return torch.stack([r.to(device) for r in rows])
    where = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=where, dtype=dtype).to(device)


def _churn(
    x: torch.Tensor,
    sigmas: torch.Tensor,
    i: int,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
    generator: torch.Generator | list[torch.Generator] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Karras Alg. 2 lines 4–6 at step ``i``: raise σ to σ̂ = σ(1+γ) by adding fresh noise of std
    √(σ̂² − σ²), with γ = min(S_churn/N, √2 − 1) inside [S_tmin, S_tmax], else 0 (the same rule
    as k-diffusion and point-e). Returns (x̂, σ̂); draws no noise when γ = 0 (noise:
    ``randn_rows``)."""
    sigma = sigmas[i]
    gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        eps = randn_rows(x.shape, generator, x.device, x.dtype) * s_noise
        x = x + eps * (sigma_hat**2 - sigma**2) ** 0.5
    return x, sigma_hat


def _denoise(
    model: Callable,
    x: torch.Tensor,
    sigma_hat: torch.Tensor,
    extra_args: dict | None,
    callback: Callable | None = None,
    i: int | None = None,
    sigma: torch.Tensor | None = None,
) -> torch.Tensor:
    """D(x; σ̂) for the whole batch; with a ``callback``, reports step ``i`` (from grid level
    ``sigma``) to it."""
    denoised = model(x, sigma_hat * x.new_ones([x.shape[0]]), **(extra_args or {}))
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})
    return denoised


@torch.no_grad()
def sample_heun(
    model: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callable | None = None,
    disable: bool | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    second_order: bool = True,
) -> torch.Tensor:
    """Heun's 2nd-order method with churn: Karras et al. 2022 ("EDM") Algorithm 2, point-e's
    default sampler. Euler on the last step (to σ = 0), so 2·n − 1 model calls for n steps.
    ``second_order=False`` drops the correction (Alg. 2 lines 9–11) on every step: that is
    ``sample_euler``, one model call per step. ``s_churn``, ``s_tmin``, ``s_tmax`` and
    ``s_noise`` are Alg. 2's stochastic-step settings (``s_churn=0``: deterministic)."""
    for i in trange(len(sigmas) - 1, disable=disable):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, generator)
        denoised = _denoise(model, x, sigma_hat, extra_args, callback, i, sigmas[i])
        d = _to_d(x, sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if not second_order or sigmas[i + 1] == 0:
            # Alg. 2 line 8: the trapezoid needs D at σ = 0, which is undefined; take Euler.
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = _denoise(model, x_2, sigmas[i + 1], extra_args)
            d_2 = _to_d(x_2, sigmas[i + 1], denoised_2)
            x = x + (d + d_2) / 2 * dt  # Alg. 2 line 11: average of the two slopes
    return x


def sample_euler(
    model: Callable, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None, **kwargs
) -> torch.Tensor:
    """Euler method on the probability-flow ODE, with optional churn (Karras Alg. 2 without the
    2nd-order correction). One model call per step. Takes ``sample_heun``'s arguments."""
    return sample_heun(model, x, sigmas, extra_args, second_order=False, **kwargs)


@torch.no_grad()
def sample_dpmpp_2m(
    model: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callable | None = None,
    disable: bool | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M): Lu et al. 2022, "DPM-Solver++" Algorithm 2 (multistep, data prediction),
    in k-diffusion's form. Works in λ = −ln σ; each step is exact for a denoised value that is
    linear in λ, extrapolated from the current and previous D. One model call per step; the
    first step and the final step to σ = 0 are 1st order (DDIM). Deterministic: ``generator``
    is accepted for the common signature and draws nothing."""
    old_denoised = None
    h_last = None
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = _denoise(model, x, sigmas[i], extra_args, callback, i, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised  # the limit of the update below as σ_next → 0
        else:
            h = sigmas[i].log() - sigmas[i + 1].log()  # step in λ = −ln σ
            if old_denoised is None:
                denoised_d = denoised
            else:
                r = h_last / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised_d
            h_last = h
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_consistency(
    model: Callable,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callable | None = None,
    disable: bool | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> torch.Tensor:
    """Multistep sampling of a model whose output at any σ is the end of its ODE trajectory (a
    consistency model, Song et al. 2023, Algorithm 1; a trajectory-distilled student): predict the
    clean sample, then re-noise it to the next σ with fresh noise. One model call per step; one
    step from σ_max is the student's single-call sample."""
    for i in trange(len(sigmas) - 1, disable=disable):
        x = _denoise(model, x, sigmas[i], extra_args, callback, i, sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + randn_rows(x.shape, generator, x.device, x.dtype) * sigmas[i + 1]
    return x


SAMPLERS: dict[str, Callable] = {
    "heun": sample_heun,
    "euler": sample_euler,
    "dpmpp_2m": sample_dpmpp_2m,
    "consistency": sample_consistency,
}

#: the samplers that take ``s_churn`` (Karras Alg. 2 stochastic steps)
CHURN = frozenset({"heun", "euler"})

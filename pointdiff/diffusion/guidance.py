"""Model wrappers applied to a denoiser ``model(x, sigma, **extra_args) -> denoised``.

Guidance wraps the model rather than being a sampler flag (shap-e ``uncond_guide_model``, DiT
``forward_with_cfg``), so it works with every sampler.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def classifier_free_guidance(
    model: Callable,
    scale: float | torch.Tensor,
    cond_keys: Sequence[str] = ("text_emb",),
    sigma_range: tuple[float, float] | None = None,
) -> Callable:
    """Classifier-free guidance (Ho & Salimans 2022) on the denoised output.

    D̃ = D_u + s·(D_c − D_u) on all channels, where D_c uses the given condition and D_u the
    null condition: zeros for ``cond_keys`` (the same null that conditioning dropout trains,
    point-e ``cond_drop_prob``). Other tensor kwargs (e.g. ``low_res``) are duplicated unchanged,
    not zeroed. Both halves run in ONE batched call of size 2B. ``scale == 1`` is exactly the
    conditional model and ``scale == 0`` exactly the null one (single call of size B).

    Point-e clamps each half before mixing: compose as
    ``classifier_free_guidance(clamp_denoised(model), s)`` for that behaviour.

    :param model: ``model(x [B,N,C], sigma [B], **extra_args) -> denoised [B,N,C]``.
    :param scale: guidance scale s: a number, or [B] one per batch row (distillation targets).
    :param cond_keys: extra_args keys whose null value is zeros.
    :param sigma_range: ``(lo, hi)``: guide only where lo < σ ≤ hi and use the conditional model
        elsewhere (guidance in a limited interval, Kynkäänniemi et al. 2024); a step with no σ
        inside costs one call of size B. ``None``: every σ.
    :return: model_fn with the same signature.
    """
    cond_keys = tuple(cond_keys)
    if sigma_range is not None and not 0 <= sigma_range[0] < sigma_range[1]:
        raise ValueError(
            f"guidance sigma_range must be (lo, hi) with 0 <= lo < hi, got {sigma_range}"
        )

    def _null(extra_args: dict) -> dict:
        present = [k for k in cond_keys if extra_args.get(k) is not None]
        if not present:
            raise ValueError(
                f"classifier-free guidance needs a condition among {cond_keys}; "
                f"got extra_args keys {sorted(extra_args)}"
            )
        return {
            k: torch.zeros_like(v) if k in cond_keys and v is not None else v
            for k, v in extra_args.items()
        }

    per_row = isinstance(scale, torch.Tensor) and scale.ndim > 0

    def model_fn(x: torch.Tensor, sigma: torch.Tensor, **extra_args) -> torch.Tensor:
        if not per_row and scale == 1:
            return model(x, sigma, **extra_args)
        null_args = _null(extra_args)
        inside = None
        if sigma_range is not None:  # [B] bool, or a 0-d one for a scalar σ
            s = torch.as_tensor(sigma, device=x.device)
            inside = (s > sigma_range[0]) & (s <= sigma_range[1])
            if not inside.any():
                return model(x, sigma, **extra_args)
        if not per_row and scale == 0 and (inside is None or bool(inside.all())):
            return model(x, sigma, **null_args)
        b = x.shape[0]
        both = {}
        for k, v in extra_args.items():
            if k in cond_keys and v is not None and (v.ndim == 0 or v.shape[0] != b):
                shape = tuple(v.shape)
                raise ValueError(
                    f"guidance condition {k!r} must be batched [B={b}, …], got {shape}"
                )
            if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == b:
                both[k] = torch.cat([v, null_args[k]])
            else:  # scalars, None, non-batched values pass through
                both[k] = v
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        sigma2 = torch.cat([sigma, sigma]) if sigma.ndim else sigma
        denoised_c, denoised_u = model(torch.cat([x, x]), sigma2, **both).chunk(2)
        w = scale.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype) if per_row else scale
        guided = denoised_u + w * (denoised_c - denoised_u)
        if inside is None or bool(inside.all()):
            return guided
        return torch.where(inside.reshape(-1, *([1] * (x.ndim - 1))), guided, denoised_c)

    return model_fn


def clamp_denoised(model: Callable, lo: float = -1.0, hi: float = 1.0) -> Callable:
    """Clamp ``denoised`` to [lo, hi] (point-e's ``clip_denoised``: data lives in [-1, 1] in
    model space). Same signature as ``model``."""

    def model_fn(x: torch.Tensor, sigma: torch.Tensor, **extra_args) -> torch.Tensor:
        return model(x, sigma, **extra_args).clamp(lo, hi)

    return model_fn

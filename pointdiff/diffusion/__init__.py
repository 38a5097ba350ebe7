"""The noise process: EDM preconditioning and loss, σ schedules, samplers, guidance, and the
adapter for discrete-time ε-models. Knows nothing of models, data, CLIP or meshes."""

from pointdiff.diffusion.discrete import ALPHAS_CUMPROD, DiscreteEpsDenoiser
from pointdiff.diffusion.guidance import clamp_denoised, classifier_free_guidance
from pointdiff.diffusion.precond import EDMLoss, KarrasDenoiser
from pointdiff.diffusion.samplers import (
    CHURN,
    SAMPLERS,
    randn_rows,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
)
from pointdiff.diffusion.schedules import get_sigmas_karras, sample_train_sigmas

__all__ = [
    "ALPHAS_CUMPROD",
    "CHURN",
    "DiscreteEpsDenoiser",
    "EDMLoss",
    "KarrasDenoiser",
    "SAMPLERS",
    "clamp_denoised",
    "classifier_free_guidance",
    "get_sigmas_karras",
    "randn_rows",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_heun",
    "sample_train_sigmas",
]

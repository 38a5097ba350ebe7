"""One diffusion stage of the pipeline and how it runs.

Each stage declares what it consumes (``cond_key``: the prompt's condition; ``takes_low_res``:
the cloud so far) and is called the same way: ``stage.run(inputs, stage.settings(overrides))``
returns its new points. ``Stage`` samples with a denoiser on a Karras σ grid; ``SurfaceUpsampler``
adds points along the cloud's surface without weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import torch

from pointdiff.config import SampleConfig
from pointdiff.densify import project_to_surface, upsample_on_surface
from pointdiff.diffusion.guidance import clamp_denoised, classifier_free_guidance
from pointdiff.diffusion.samplers import CHURN, SAMPLERS, randn_rows
from pointdiff.diffusion.schedules import get_sigmas_karras, get_sigmas_subgrid
from pointdiff.pointcloud import relocate_strays

#: SampleConfig fields that act on the prompt's condition: a stage that takes none ignores them
PROMPT_SETTINGS = ("guidance", "guidance_interval")


class PipelineError(ValueError):
    """Bad pipeline input or checkpoint, with the reason."""


@dataclass(frozen=True)
class StageInputs:
    """What flows down into every stage.

    :param condition: the prompts' condition: [B, D] text vectors, [B, 1 + T, D] with per-token
        states, or an image grid; None when no stage takes it.
    :param low_res: [B, N, 6] model-space cloud of the stages so far; None before the first.
    :param generators: one CPU generator per prompt (all randomness comes from them).
    :param device: where the stage runs.
    """

    condition: torch.Tensor | None
    low_res: torch.Tensor | None
    generators: list[torch.Generator]
    device: torch.device


@dataclass
class Stage:
    """One diffusion stage.

    :param name: ``base`` or ``upsampler`` (what ``stop_after`` and ``stage_overrides`` name).
    :param denoiser: ``model(x [B,N,6], sigma [B], **cond) -> denoised [B,N,6]``.
    :param num_points: points this stage generates.
    :param sample: sampler defaults (sampler, steps, guidance, churn, clamp, ...).
    :param sigma_min, sigma_max, rho: the Karras σ grid.
    :param cond_key: the extra-arg name under which the stage takes the prompt's condition
        (``text_emb``: a text vector; ``grid``: a CLIP image patch grid), guided on it; None: the
        stage takes no prompt.
    :param takes_low_res: the stage takes the cloud so far (extra-arg ``low_res``).
    :param guide: ``guide(model, scale) -> model``; default: classifier-free guidance zeroing
        ``cond_key`` (point-e's image upsampler also zeroes its low-res cloud).
    :param text_tokens: per-token text states the stage's model takes (``DenoiserConfig``).
    :param takes_guidance: the model takes the guidance scale as an input (a distilled student,
        ``guidance_embed``): one call per step instead of the guided pair.
    """

    name: str
    denoiser: Callable
    num_points: int
    sample: SampleConfig
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    cond_key: str | None = "text_emb"
    takes_low_res: bool = False
    guide: Callable | None = None
    text_tokens: int = 0
    takes_guidance: bool = False

    def settings(self, overrides: dict) -> SampleConfig:
        """``sample`` with the given fields replaced (None: keep; prompt settings only where
        the stage takes the prompt), checked."""
        keep = {
            k: v
            for k, v in overrides.items()
            if v is not None and (k not in PROMPT_SETTINGS or self.cond_key is not None)
        }
        cfg = replace(self.sample, **keep)
        if cfg.sampler not in SAMPLERS:
            raise PipelineError(f"unknown sampler {cfg.sampler!r}; choose from {sorted(SAMPLERS)}")
        if cfg.steps < 1:
            raise PipelineError(f"steps must be >= 1, got {cfg.steps}")
        if cfg.grid and (cfg.grid < cfg.steps or cfg.grid % cfg.steps):
            raise PipelineError(
                f"stage {self.name!r} samples on a {cfg.grid}-step grid: steps must divide "
                f"{cfg.grid}, got {cfg.steps}"
            )
        if cfg.guidance_interval is not None and self.takes_guidance:
            raise PipelineError(
                f"stage {self.name!r} is a distilled student that takes the guidance scale as "
                "an input; guidance_interval does not apply to it"
            )
        if cfg.guidance_interval is not None and self.guide is not None and cfg.guidance != 1.0:
            raise PipelineError(
                f"stage {self.name!r} has its own guidance; "
                "guidance_interval applies to classifier-free guidance only"
            )
        return cfg

    def run(self, inputs: StageInputs, cfg: SampleConfig, bf16: bool = False) -> torch.Tensor:
        """Sample this stage's new points: [B, num_points, 6] model space."""
        extra_args = {}
        if self.cond_key is not None:
            extra_args[self.cond_key] = _stage_condition(inputs.condition, self)
        if self.takes_low_res:
            extra_args["low_res"] = _need_low_res(self, inputs)
        model = self.denoiser
        if cfg.clip_denoised:  # clamp each half before mixing, as point-e does (bit parity)
            model = clamp_denoised(model)
        b = len(inputs.generators)
        if self.takes_guidance:  # the scale is an input: one call per step
            extra_args["guidance"] = torch.full((b,), float(cfg.guidance), device=inputs.device)
        elif self.cond_key is not None and cfg.guidance != 1.0:
            interval = cfg.guidance_interval
            guide = self.guide or partial(
                classifier_free_guidance,
                cond_keys=(self.cond_key,),
                sigma_range=None if interval is None else tuple(interval),
            )
            model = guide(model, cfg.guidance)
        grid = (self.sigma_min, self.sigma_max, self.rho)
        if cfg.grid:
            sigmas = get_sigmas_subgrid(cfg.steps, cfg.grid, *grid)
        else:
            sigmas = get_sigmas_karras(cfg.steps, *grid)
        sigmas = sigmas.to(inputs.device)
        shape = (b, self.num_points, 6)
        x = randn_rows(shape, inputs.generators, inputs.device) * sigmas[0]
        churn = {"s_churn": cfg.s_churn} if cfg.sampler in CHURN else {}
        sampler = SAMPLERS[cfg.sampler]
        with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = sampler(
                model, x, sigmas, extra_args=extra_args, generator=inputs.generators, **churn
            )
        out = relocate_strays(out.float(), cfg.stray_ratio, context=inputs.low_res)
        return project_to_surface(out, cfg.surface_projection)


@dataclass
class SurfaceUpsampler:
    """An upsampler stage without weights: ``num_points`` new points along the surface of the
    cloud so far (``densify.upsample_on_surface``). It cannot add detail the cloud lacks, nor
    points off its surface; it has no sampler settings."""

    num_points: int
    name: str = "upsampler"
    cond_key: str | None = None
    takes_low_res: bool = True

    def settings(self, overrides: dict) -> None:
        return None

    def run(self, inputs: StageInputs, cfg: None = None, bf16: bool = False) -> torch.Tensor:
        """[B, num_points, 6] new points along the low-res cloud's surface."""
        return upsample_on_surface(_need_low_res(self, inputs), self.num_points, inputs.generators)


def _need_low_res(stage, inputs: StageInputs) -> torch.Tensor:
    if inputs.low_res is None:
        raise PipelineError(f"the {stage.name} stage needs a stage before it")
    return inputs.low_res


def _stage_condition(condition: torch.Tensor | None, stage: Stage) -> torch.Tensor:
    """The condition a stage takes. The pipeline embeds text with the most token states any
    stage takes ([B, 1 + T, D], pooled first); a text stage taking ``text_tokens`` of them gets
    the first 1 + text_tokens (0: the pooled [B, D]). Other conditions (an image patch grid
    [B, 256, D]) pass unchanged."""
    if condition is None:
        raise PipelineError("a stage takes the prompt but the pipeline has no encoder for it")
    if stage.cond_key != "text_emb" or condition.ndim == 2:
        return condition
    return condition[:, 0] if stage.text_tokens == 0 else condition[:, : 1 + stage.text_tokens]

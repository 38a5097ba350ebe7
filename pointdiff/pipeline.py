"""Text → coloured point cloud → mesh: the one place where the stages meet, in one direction.

A prompt is read once (``TextTo3D.read_prompts``: lexicon swaps and warnings in one frozen
``Prompt``), embedded once, and the condition flows down through the stages in order: the base
stage (text → 1024 points), then the upsampler (the cloud so far → more points). Each stage
declares what it consumes (``cond_key``: the prompt's condition; ``takes_low_res``: the cloud so
far) and is called the same way (``stage.run(inputs, settings)``). ``to_mesh`` meshes a cloud
with the SDF head (``meshing.mesh_from_cloud``) and returns a ``MeshResult`` that names the
method and why.

Checkpoint layouts understood by ``load_pipeline``:

* a **pipeline directory** with ``pipeline.json`` (``{"stages": {"base": "base", "upsampler":
  "upsampler", "sdf": "sdf"}}``; the shipped ``checkpoints/<name>/`` use this), each entry a model
  directory, or for the upsampler ``{"surface": N}`` (``SurfaceUpsampler``, no weights); an
  optional ``"fast": {"base": "base_fast"}`` names distilled students that ``fast=True`` loads
  in place of those stages (``pointdiff sample --fast``);
* a single **model directory** (``model.safetensors`` + ``config.json``, e.g. a training run's
  ``ckpt-*`` or a release export): a base-only pipeline.

A text tower trained jointly with the base model is stored beside it (``text.safetensors``);
otherwise ``TextConfig`` in the base config names the encoder. Sampler settings default to each
stage's ``SampleConfig`` in its ``config.json``; ``overrides`` replace fields of it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from pointdiff.checkpoint import CheckpointError, load_model
from pointdiff.conditioning.lexicon import LexiconError, Prompt, PromptReader, load_lexicon
from pointdiff.conditioning.prompts import check_prompts
from pointdiff.conditioning.text import TextEncoder, text_condition
from pointdiff.config import DiffusionConfig, SampleConfig, TextConfig
from pointdiff.densify import project_to_surface, upsample_on_surface
from pointdiff.diffusion.guidance import clamp_denoised, classifier_free_guidance
from pointdiff.diffusion.precond import KarrasDenoiser
from pointdiff.diffusion.samplers import CHURN, SAMPLERS, randn_rows
from pointdiff.diffusion.schedules import get_sigmas_karras, get_sigmas_subgrid
from pointdiff.meshing import MeshResult, mesh_from_cloud
from pointdiff.pointcloud import PointCloud, relocate_strays
from pointdiff.precision import choose_precision, resolve_device

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


@dataclass
class TextTo3D:
    """The full pipeline. Build with ``load_pipeline``; call ``read_prompts`` (optional),
    ``sample_clouds`` and ``to_mesh``."""

    text_encoder: TextEncoder | None
    stages: list[Stage | SurfaceUpsampler]
    sdf_model: torch.nn.Module | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    reader: PromptReader = field(default_factory=PromptReader)
    image_encoder: torch.nn.Module | None = None  # image prompts: ``embed(images) -> grid``
    bf16: bool = False  # bf16 autocast where a call does not say (``load_pipeline``'s precision)

    @property
    def known_captions(self) -> list[str]:
        """What the base model was trained on (empty when unknown)."""
        return list(self.reader.known_captions)

    @property
    def aliases(self) -> dict[str, str]:
        """The lexicon: unknown word -> known word."""
        return dict(self.reader.aliases)

    def read_prompts(self, prompts: Sequence[str]) -> list[Prompt]:
        """Read text prompts once (``lexicon.PromptReader``): the text the model is given, the
        words swapped, the warnings. Pass the result to ``sample_clouds``."""
        check_prompts(prompts)
        return [self.reader.read(p) for p in prompts]

    @torch.no_grad()
    def sample_clouds(
        self,
        prompts: Sequence,
        seed: int = 0,
        stop_after: str | None = None,
        overrides: dict | None = None,
        bf16: bool | None = None,
        stage_overrides: dict[str, dict] | None = None,
    ) -> list[PointCloud]:
        """Sample one cloud per prompt (batched), deterministically: prompt i uses seed + i,
        whatever else is in the batch.

        :param prompts: ``Prompt``s from ``read_prompts``, or text (read here); image files /
            PIL images when ``image_encoder`` is set.
        :param stop_after: a stage name to stop at (e.g. ``"base"`` for 1024 points).
        :param overrides: SampleConfig fields applied to every stage (e.g. ``{"steps": 32}``;
            None values keep the checkpoint's); ``guidance`` applies to prompt stages only.
        :param stage_overrides: SampleConfig fields per stage name, applied after ``overrides``
            (e.g. ``{"base": {"sampler": "heun", "steps": 64}}``).
        :param bf16: bf16 autocast; None: the pipeline's ``bf16``.
        """
        unknown = set(stage_overrides or {}) - {s.name for s in self.stages}
        if unknown:
            raise PipelineError(f"stage_overrides for unknown stages {sorted(unknown)}")
        condition = self._condition(prompts)
        # one generator per prompt (seed + index): a prompt's sample does not depend on the
        # other prompts of the batch, and prompt 0 of any batch equals that prompt alone
        gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(len(prompts))]
        bf16 = self.bf16 if bf16 is None else bf16
        x = None
        for stage in self.stages:
            cfg = stage.settings(
                {**(overrides or {}), **(stage_overrides or {}).get(stage.name, {})}
            )
            new = stage.run(StageInputs(condition, x, gens, self.device), cfg, bf16)
            x = new if x is None else torch.cat([x, new], dim=1)
            if stage.name == stop_after:
                break
        return [PointCloud.from_tensor(row) for row in x]

    def _condition(self, prompts: Sequence) -> torch.Tensor | None:
        """The prompts' condition, computed once for every stage that takes it."""
        takers = [s for s in self.stages if s.cond_key is not None]
        if self.image_encoder is not None:
            encoder, inputs = self.image_encoder, list(prompts)
        else:
            if not all(isinstance(p, Prompt) for p in prompts):
                prompts = self.read_prompts(prompts)
            encoder, inputs = self.text_encoder, [p.read for p in prompts]
        if not takers:
            return None
        if encoder is None:
            raise PipelineError("a stage takes the prompt but the pipeline has no encoder for it")
        tokens = max(s.text_tokens for s in takers)
        return text_condition(encoder, inputs, tokens).to(self.device)

    @torch.no_grad()
    def to_mesh(
        self,
        cloud: PointCloud,
        grid_size: int = 64,
        bf16: bool | None = None,
        method: str = "auto",
        max_fit_error: float = 0.03,
        snap: bool = True,
    ) -> MeshResult:
        """Coloured mesh of a cloud and how it was made (``meshing.mesh_from_cloud``).

        :param method: ``sdf`` (the SDF head, encoded once, queried coarse-to-fine),
            ``poisson`` (open3d screened Poisson) or ``auto``: the SDF head when the pipeline has
            one and its surface fits the cloud, Poisson otherwise (the result says why).
        :param snap: move the SDF mesh's vertices onto the cloud's local planes.
        :param bf16: bf16 autocast for the SDF head; None: the pipeline's ``bf16``.
        """
        if method == "sdf" and self.sdf_model is None:
            raise PipelineError("this pipeline has no SDF head; use method='poisson' instead")
        sdf_fn = None
        if method != "poisson" and self.sdf_model is not None:
            n = self.sdf_model.cfg.num_points
            inputs = cloud.subsample(n) if len(cloud) > n else cloud
            bf16 = self.bf16 if bf16 is None else bf16
            sdf_fn = self.sdf_model.query_fn(torch.from_numpy(inputs.coords), bf16=bf16)
        return mesh_from_cloud(cloud, sdf_fn, method, grid_size, snap, max_fit_error)


# ----------------------------------------------------------------------------------------------
# Loading


def _stage_from_dir(path: Path, name: str, device: torch.device) -> tuple[Stage, dict]:
    net, configs = load_model(path, kind="upsampler" if name == "upsampler" else "denoiser")
    net.to(device).eval()
    dcfg = configs.get("diffusion", DiffusionConfig())
    stage = Stage(
        name=name,
        denoiser=KarrasDenoiser(net, sigma_data=dcfg.sigma_data),
        num_points=net.cfg.num_points,
        sample=configs.get("sample", SampleConfig()),
        sigma_min=dcfg.sigma_min,
        sigma_max=dcfg.sigma_max,
        rho=dcfg.rho,
        cond_key="text_emb" if net.cfg.cond_dim > 0 else None,
        takes_low_res=net.cfg.kind == "upsampler",
        text_tokens=getattr(net.cfg, "text_tokens", 0),
        takes_guidance=getattr(net.cfg, "guidance_embed", False),
    )
    return stage, configs


def _surface_upsampler(entry: dict, root: Path) -> SurfaceUpsampler:
    n = entry.get("surface")
    if set(entry) != {"surface"} or not isinstance(n, int) or n < 1:
        raise CheckpointError(
            f'{root}/pipeline.json: an upsampler entry is a directory or {{"surface": N}} '
            f"with N > 0 new points, got {entry!r}"
        )
    return SurfaceUpsampler(num_points=n)


def _text_encoder_for(
    path: Path, configs: dict, device: torch.device, clip_weights, download: bool
) -> TextEncoder | None:
    if (path / "text.safetensors").is_file():
        return TextEncoder.load(path).to(device).eval()
    cfg = configs.get("text", TextConfig())
    return TextEncoder.from_text_config(cfg, None, clip_weights, download).to(device).eval()


def _prompt_reader(base: Path) -> PromptReader:
    """The base model's training captions (``captions.json``) and lexicon (``lexicon.json``)."""
    captions = []
    if (base / "captions.json").is_file():
        captions = json.loads((base / "captions.json").read_text())
    try:
        aliases = load_lexicon(base)
    except LexiconError as e:
        raise CheckpointError(str(e)) from None
    return PromptReader(tuple(captions), aliases)


def load_pipeline(
    checkpoint: str | Path,
    device: str = "cpu",
    precision: str = "fp32",
    clip_weights: str | Path | None = None,
    download: bool = True,
    fast: bool = False,
) -> TextTo3D:
    """Build a ``TextTo3D`` from a pipeline directory or a single base-model directory.

    :param fast: load the pipeline's distilled stages (``pipeline.json`` ``"fast"``) in place of
        their teachers.
    :param device, precision: a device or ``auto``; fp32 | bf16 | auto (``pointdiff.precision``).
    :param clip_weights: a local file of the CLIP weights the base config names (hash-checked);
        None: the local caches, then a download where ``download``."""
    root = Path(checkpoint)
    dev = resolve_device(device)
    bf16 = choose_precision(precision, dev).bf16
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory {root} does not exist")
    spec = {"stages": {"base": "."}}  # a single model directory
    if (root / "pipeline.json").is_file():
        spec = json.loads((root / "pipeline.json").read_text())
    entries = spec.get("stages", {})
    if fast:
        if not spec.get("fast"):
            raise CheckpointError(
                f'{root} has no distilled stages (pipeline.json "fast"); sample without '
                "--fast, or distil them with train/distill.py"
            )
        entries = {**entries, **spec["fast"]}
    if "base" not in entries:
        raise CheckpointError(f"{root}/pipeline.json names no 'base' stage")
    stages, base_cfg = [], None
    for name in ("base", "upsampler"):
        if isinstance(entries.get(name), dict):  # {"surface": N}: no weights
            stages.append(_surface_upsampler(entries[name], root))
        elif name in entries:
            stage, configs = _stage_from_dir(root / entries[name], name, dev)
            stages.append(stage)
            base_cfg = base_cfg or configs
    text = None
    if stages[0].cond_key is not None:
        text = _text_encoder_for(root / entries["base"], base_cfg, dev, clip_weights, download)
    sdf = None
    if "sdf" in entries:
        sdf, _ = load_model(root / entries["sdf"], kind="sdf")
        sdf.to(dev).eval()
    reader = _prompt_reader(root / entries["base"])
    return TextTo3D(text, stages, sdf, dev, reader, bf16=bf16)

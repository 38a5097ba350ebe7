"""``TextTo3D``: prompts read once, embedded once, through the stages in order, then meshed.

A prompt is read once (``TextTo3D.read_prompts``: lexicon swaps and warnings in one frozen
``Prompt``), embedded once, and the condition flows down through the stages in order: the base
stage (text → 1024 points), then the upsampler (the cloud so far → more points). ``to_mesh``
meshes a cloud with the SDF head (``meshing.mesh_from_cloud``) and returns a ``MeshResult`` that
names the method and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from pointdiff.conditioning.lexicon import Prompt, PromptReader
from pointdiff.conditioning.prompts import check_prompts
from pointdiff.conditioning.text import TextEncoder, text_condition
from pointdiff.meshing import MeshResult, mesh_from_cloud
from pointdiff.pipeline.stages import PipelineError, Stage, StageInputs, SurfaceUpsampler
from pointdiff.pointcloud import PointCloud


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

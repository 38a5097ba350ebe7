"""Text → coloured point cloud → mesh: the one place where the stages meet, in one direction.

``load_pipeline`` (``pipeline.load``) builds a ``TextTo3D`` (``pipeline.text_to_3d``) from a
checkpoint directory; it reads prompts once, embeds them once and runs its stages in order
(``pipeline.stages``: ``Stage``, ``SurfaceUpsampler``), then meshes a cloud.
"""

from pointdiff.pipeline.load import load_pipeline
from pointdiff.pipeline.stages import (
    PROMPT_SETTINGS,
    PipelineError,
    Stage,
    StageInputs,
    SurfaceUpsampler,
)
from pointdiff.pipeline.text_to_3d import TextTo3D

__all__ = [
    "PROMPT_SETTINGS",
    "PipelineError",
    "Stage",
    "StageInputs",
    "SurfaceUpsampler",
    "TextTo3D",
    "load_pipeline",
]

"""Reading other projects' released checkpoint files (point-e, Shap-E) without executing
pickled code."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch


def load_released_state_dict(
    path: str | os.PathLike, project: str, error: type[Exception]
) -> dict[str, torch.Tensor]:
    """Read a released state dict: ``.safetensors`` files directly, anything else through
    ``torch.load(..., weights_only=True)``.

    :param project: the project's name for messages ("point-e", "Shap-E").
    :param error: raised (naming the file) for an unreadable file or one that holds no state dict.
    :raises FileNotFoundError: no file at ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{project} checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, or pickled objects other than tensors
        raise error(f"cannot read {path} as a {project} state dict: {e}") from e
    if not isinstance(sd, Mapping):
        raise error(f"{path} holds a {type(sd).__name__}, not a state dict")
    return dict(sd)

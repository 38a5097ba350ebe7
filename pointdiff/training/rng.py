"""A process's RNG states (torch, CUDA, numpy, python) as plain tensors and numbers, so that a
checkpoint's ``state.pt`` holding them loads with ``torch.load(weights_only=True)``.

The CUDA state is that of the process's own device only (not every visible GPU's), so a
checkpoint resumes under another GPUs-per-node layout. Training draws nothing from these states
anyway: every micro-step reseeds from (seed, step, slot) (``training.batches``); restoring them
keeps anything else a run draws from the global generators reproducible.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def get_rng_state() -> dict:
    """This process's torch / numpy / python (and CUDA) RNG states."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = {
        "kind": kind,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # the current device's
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``get_rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if isinstance(cuda, list | tuple):  # older checkpoints: one state per visible device
        i = torch.cuda.current_device() if torch.cuda.is_available() else len(cuda)
        cuda = cuda[i] if i < len(cuda) else None
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)

"""A frozen text encoder's condition for every caption of a dataset, computed once and kept
beside the shards: ``<data>/text-cache/<encoder>-<key>.safetensors``, one fp16 tensor ``emb``
([C, D], or [C, 1 + text_tokens, D]) whose row c is caption c of ``dataset.captions``.

The key hashes everything the table depends on: the encoder's description (``spec``) and
weights, ``text_tokens`` and the caption list, so a restart (or another run on the same shards)
reads the file instead of running the encoder, and any change makes a new file. Rank 0 computes
a missing table (on the training device; the encoder leaves it afterwards) and writes it
atomically (``pointdiff.atomic``); the other ranks wait at a barrier, then every rank reads the
same file memory-mapped, row by row, so DataLoader workers share the page cache instead of each
holding the table (C × D × 2 bytes: 1.5 GB for a million captions of CLIP ViT-L/14).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pointdiff.atomic import atomic_path
from pointdiff.conditioning.text import text_condition
from pointdiff.training import distributed as dist

CACHE_DIR = "text-cache"
CHUNK = 4096  # captions embedded per call (bounded device memory)


class EmbeddingTable(Sequence):
    """The rows of a cached table file: ``table[c]`` reads row c (fp16) from the memory-mapped
    file; the handle is opened per process (DataLoader workers open their own)."""

    def __init__(self, path: str | os.PathLike):
        self.path, self._handle = Path(path), None
        with safe_open(str(self.path), framework="pt") as f:
            self.shape = tuple(f.get_slice("emb").get_shape())
            self.metadata = f.metadata()

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, c: int) -> torch.Tensor:
        if self._handle is None:
            self._handle = safe_open(str(self.path), framework="pt")
        return self._handle.get_slice("emb")[c]

    def __getstate__(self):
        return {**self.__dict__, "_handle": None}


def cache_key(text, tokens: int, captions: Sequence[str]) -> str:
    """SHA-256 of the encoder's spec and weights, ``tokens`` and the captions in order."""
    h = hashlib.sha256()
    h.update(json.dumps([getattr(text, "spec", {}), tokens], sort_keys=True, default=str).encode())
    for name, t in sorted(text.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    for c in captions:
        h.update(c.encode() + b"\0")
    return h.hexdigest()


def cache_dir_for(data: str | os.PathLike, run_dir: str | os.PathLike) -> Path:
    """``<data>/text-cache`` when the shard directory is writable, else ``<run_dir>/text-cache``
    (read-only shared datasets)."""
    beside = Path(data) / CACHE_DIR
    if os.access(beside if beside.is_dir() else Path(data), os.W_OK):
        return beside
    return Path(run_dir) / CACHE_DIR


def set_text_table(
    dataset,
    text,
    tokens: int = 0,
    cache_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
) -> Path | None:
    """Give ``dataset`` a frozen encoder's condition for each of its captions (``text_emb``),
    computed in batched passes outside the training graph.

    :param tokens: the model's ``text_tokens`` (per-token states after the pooled vector).
    :param cache_dir: keep the table there (fp16, see the module doc) and read it back when it
        exists; None: compute it in memory (fp32) every time.
    :param device: where a table that must be computed is computed (the encoder moves there
        for that, then back to the CPU).
    :return: the cache file (None without ``cache_dir``).
    """
    captions = dataset.captions
    if cache_dir is None:
        dataset.set_text_embeddings(_embed(text, captions, tokens, device, torch.float32))
        return None
    key = cache_key(text, tokens, captions)
    arch = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(getattr(text, "spec", {}).get("arch", "text")))
    path = Path(cache_dir) / f"{arch}-{key[:24]}.safetensors"
    if dist.is_main() and not path.is_file():
        start = time.perf_counter()
        table = _embed(text, captions, tokens, device, torch.float16)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"emb": table}, str(tmp), metadata={"key": key, "captions": str(len(table))})
        took = time.perf_counter() - start
        dist.print0(f"text: embedded {len(captions)} captions in {took:.1f} s -> {path}")
    dist.barrier()  # rank 0 wrote it (or it was there)
    table = EmbeddingTable(path)
    if table.metadata.get("key") != key:
        raise ValueError(f"{path}: a text cache of other captions or weights (key mismatch)")
    dist.print0(f"text: {len(table)} caption conditions {list(table.shape)} from {path}")
    dataset.set_text_embeddings(table)
    return path


def _embed(text, captions: list[str], tokens: int, device, dtype: torch.dtype) -> torch.Tensor:
    """[C, ...] conditions on the CPU, computed ``CHUNK`` captions at a time on ``device``."""
    text.to(device)
    try:
        rows = [
            text_condition(text, captions[i : i + CHUNK], tokens).to("cpu", dtype)
            for i in range(0, len(captions), CHUNK)
        ]
    finally:
        text.to("cpu")
    return torch.cat(rows)

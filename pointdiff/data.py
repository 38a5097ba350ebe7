"""Data shards (the on-disk training format, its writer and reader) and the dataset that reads
them; the converters that make shards are ``data_tools``.

Shard format (a directory; memory-mappable, no pickle):

* ``meta.json``: ``{"format": "pointdiff-shards", "version": 1, "num_objects", "num_points",
  "num_sdf", "shards": [...]}``.
* ``shard-00000.safetensors`` …: per shard of K objects
  ``coords`` [K, P, 3] float32 (object space, Z-up, xyz ∈ [-0.5, 0.5]),
  ``colors`` [K, P, 3] uint8 (sRGB bytes), and when SDF samples exist
  ``sdf_points`` [K, Q, 3] float32 and ``sdf_values`` [K, Q] float32 (negative inside).
* ``index.jsonl``: one JSON object per line, in row order: ``id``, ``caption``, ``source``,
  ``licence``, ``split`` (train/val/test), ``shard`` (file name), ``row`` (index in the shard),
  plus whatever the converter adds (``center``, ``scale``, ``category``, ``sdf_reliable``, …).

Files are written to a temporary name and renamed, so a reader never sees half a shard.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from pointdiff.atomic import atomic_path, write_json_atomic, write_text_atomic
from pointdiff.pointcloud import farthest_point_sample, normalize_bbox, to_model_space

FORMAT = "pointdiff-shards"
VERSION = 1
_REQUIRED = ("id", "caption", "source", "licence", "split")


class ShardError(ValueError):
    """A shard directory that cannot be read or written, with the reason."""


# ----------------------------------------------------------------------------------------------
# Writing


def write_shards(
    records: Iterable[Mapping], out_dir: str | os.PathLike, objects_per_shard: int = 256
) -> dict:
    """Write records to a shard directory (replacing any previous index there).

    Each record holds the metadata keys ``id, caption, source, licence, split``, the arrays
    ``coords`` [P, 3] and ``colors`` [P, 3] (uint8, or float in [0, 1]), optionally
    ``sdf_points`` [Q, 3] and ``sdf_values`` [Q], and any JSON-able extras. All records share P
    (and Q). Output bytes depend only on the records and their order.

    :return: the ``meta.json`` dict.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index_lines: list[str] = []
    shards: list[str] = []
    buf: list[Mapping] = []
    shape: dict[str, tuple] = {}

    def flush():
        name = f"shard-{len(shards):05d}.safetensors"
        arrays = {k: np.stack([np.asarray(r[k]) for r in buf]) for k in shape}
        arrays["coords"] = arrays["coords"].astype(np.float32)
        if arrays["colors"].dtype != np.uint8:
            arrays["colors"] = np.round(np.clip(arrays["colors"], 0, 1) * 255).astype(np.uint8)
        for k in ("sdf_points", "sdf_values"):
            if k in arrays:
                arrays[k] = arrays[k].astype(np.float32)
        with atomic_path(out / name) as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
        for row, r in enumerate(buf):
            meta = {k: _jsonable(v) for k, v in r.items() if k not in shape}
            meta.update(shard=name, row=row)
            index_lines.append(json.dumps(meta, sort_keys=True))
        shards.append(name)
        buf.clear()

    for r in records:
        missing = [k for k in (*_REQUIRED, "coords", "colors") if k not in r]
        if missing:
            raise ShardError(f"record {r.get('id', '?')!r} lacks {missing}")
        keys = {
            k: np.shape(r[k]) for k in ("coords", "colors", "sdf_points", "sdf_values") if k in r
        }
        if not shape:
            shape.update(keys)
        elif keys != shape:
            raise ShardError(f"record {r['id']!r} has array shapes {keys}, expected {shape}")
        buf.append(r)
        if len(buf) == objects_per_shard:
            flush()
    if buf:
        flush()
    if not shards:
        raise ShardError("no records to write")
    for stale in out.glob("shard-*.safetensors"):
        if stale.name not in shards:
            stale.unlink()
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "num_objects": len(index_lines),
        "num_points": int(shape["coords"][0]),
        "num_sdf": int(shape["sdf_values"][0]) if "sdf_values" in shape else 0,
        "shards": shards,
    }
    write_text_atomic(out / "index.jsonl", "\n".join(index_lines) + "\n")
    write_json_atomic(
        out / "meta.json", meta, sort_keys=False
    )  # meta.json last: readers start there
    return meta


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


# ----------------------------------------------------------------------------------------------
# Reading


def read_index(root: str | os.PathLike) -> list[dict]:
    """The index entries of a shard directory (one dict per object, in row order)."""
    root = Path(root)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise ShardError(
            f"{root}: not a shard directory (no meta.json); convert data with data_tools"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ShardError(f"{root}: meta.json format is {meta.get('format')!r}, expected {FORMAT!r}")
    with open(root / "index.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


class ShardReader:
    """Random access to the arrays of one shard directory (memory-mapped safetensors)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.entries = read_index(self.root)
        self._handles: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, i: int, key: str) -> np.ndarray:
        """Array ``key`` of object i (e.g. ``coords`` [P, 3], ``colors`` [P, 3] uint8)."""
        e = self.entries[i]
        h = self._handles.get(e["shard"])
        if h is None:
            h = safe_open(str(self.root / e["shard"]), framework="numpy")
            self._handles[e["shard"]] = h
        return h.get_slice(key)[e["row"]]

    def __getstate__(self):  # handles are per process (DataLoader workers reopen them)
        return {**self.__dict__, "_handles": {}}


# ----------------------------------------------------------------------------------------------
# Dataset


def rotate_z(coords: np.ndarray, angle: float) -> np.ndarray:
    """Rotate [N, 3] coordinates by ``angle`` radians about the up (Z) axis."""
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    return coords @ rot.T


class PointCloudDataset(torch.utils.data.Dataset):
    """Clouds of one split of a shard directory, in model space.

    Items: ``{"points": [num_points, 6], "caption": str, "index": int}`` plus ``"text_emb"``
    [D] once ``set_text_embeddings`` was called (per-caption cache, computed once per caption).
    An object with a ``captions`` list gets one of them per item, drawn from (seed, epoch, index).

    Augmentation (``augment=True``): a random rotation about the up axis (then the bbox is
    re-normalised, keeping xyz in [-0.5, 0.5]) and a scale jitter in [1 - scale_jitter, 1].
    Its randomness is a function of (seed, epoch, index) only, so a resumed run sees exactly the
    data an uninterrupted one would (call ``set_epoch`` at each epoch).

    :param subsample: ``fps`` (farthest points, cached per object), ``random`` or ``first``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = "train",
        num_points: int = 1024,
        subsample: str = "fps",
        augment: bool = False,
        scale_jitter: float = 0.1,
        seed: int = 0,
    ):
        self.reader = ShardReader(root)
        self.rows = [
            i for i, e in enumerate(self.reader.entries) if split is None or e["split"] == split
        ]
        if not self.rows:
            raise ShardError(f"{root}: no objects in split {split!r}")
        if subsample not in ("fps", "random", "first"):
            raise ValueError(f"unknown subsample {subsample!r} (fps | random | first)")
        self.num_points, self.subsample = num_points, subsample
        self.augment, self.scale_jitter, self.seed = augment, scale_jitter, seed
        self.epoch = 0
        self._fps_cache: dict[int, np.ndarray] = {}
        self._text: Mapping[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def captions(self) -> list[str]:
        """The distinct captions of this split (every caption of every object), sorted."""
        return sorted({c for i in range(len(self)) for c in self.captions_of(i)})

    def captions_of(self, i: int) -> list[str]:
        """Object ``i``'s captions: its ``captions`` list (``data_tools captions``), else
        ``[caption]``."""
        e = self.entry(i)
        return e.get("captions") or [e["caption"]]

    def entry(self, i: int) -> dict:
        return self.reader.entries[self.rows[i]]

    def set_text_embeddings(self, table: Mapping[str, torch.Tensor]) -> None:
        """Attach precomputed embeddings, one [D] tensor per caption."""
        missing = [c for c in self.captions if c not in table]
        if missing:
            raise KeyError(f"no text embedding for {len(missing)} captions, e.g. {missing[:3]}")
        self._text = table

    def _indices(self, i: int, n: int, g: np.random.Generator) -> np.ndarray:
        k = self.num_points
        if k > n:
            raise ShardError(f"objects have {n} points, fewer than num_points={k}")
        if self.subsample == "first" or k == n:
            return np.arange(k)
        if self.subsample == "random":
            return g.choice(n, size=k, replace=False)
        if i not in self._fps_cache:
            coords = torch.from_numpy(self.reader.get(self.rows[i], "coords"))
            self._fps_cache[i] = farthest_point_sample(coords, k).numpy()
        return self._fps_cache[i]

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        coords = self.reader.get(row, "coords")
        colors = self.reader.get(row, "colors").astype(np.float32) / 255.0
        g = np.random.default_rng([self.seed, self.epoch, i])
        idx = self._indices(i, len(coords), g)
        coords, colors = coords[idx], colors[idx]
        if self.augment:
            coords, _, _ = normalize_bbox(rotate_z(coords, g.uniform(0, 2 * math.pi)))
            coords = coords * g.uniform(1 - self.scale_jitter, 1.0)
        points = to_model_space(torch.from_numpy(coords).float(), torch.from_numpy(colors))
        # One caption per step when an object has several; its own stream, so objects with one
        # caption see the same points as before captions lists existed.
        caps = self.captions_of(i)
        pick = np.random.default_rng([self.seed, self.epoch, i, 1]).integers(len(caps))
        item = {"points": points, "caption": caps[int(pick)], "index": i}
        if self._text is not None:
            item["text_emb"] = self._text[item["caption"]]
        return item


# ----------------------------------------------------------------------------------------------
# Sampling order (distributed, resumable)


class ResumableSampler(torch.utils.data.Sampler[int]):
    """Seeded per-epoch order, split across ranks in blocks, that can start mid-epoch.

    Each epoch is a permutation seeded by (seed, epoch) (several concatenated ones when the
    dataset is smaller than one global batch), cut to a whole number of global batches of
    ``block * num_replicas`` indices (the tail is dropped, differently every epoch). Global batch
    ``s`` is ``order[s*G : (s+1)*G]``; rank r takes its r-th block of ``block`` indices. With
    ``block = batch_size * grad_accum`` one rank reads, step after step, exactly the samples a
    single process with ``grad_accum * num_replicas`` micro-steps would give to micro-steps
    ``r*grad_accum …``: the ranks are disjoint, their union is the epoch, and the split does not
    depend on the rank count beyond that.

    ``set_position(epoch, start)`` resumes after ``start`` samples (global) of ``epoch``.
    """

    def __init__(
        self,
        size: int,
        num_replicas: int = 1,
        rank: int = 0,
        block: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ):
        if size <= 0 or block <= 0 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"bad sampler args size={size} block={block} rank={rank}/{num_replicas}"
            )
        self.size, self.num_replicas, self.rank, self.block = size, num_replicas, rank, block
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.start = 0, 0

    @property
    def global_batch(self) -> int:
        return self.block * self.num_replicas

    @property
    def steps_per_epoch(self) -> int:
        """Global batches per epoch."""
        return max(1, self.size // self.global_batch)

    def order(self, epoch: int) -> np.ndarray:
        """The global sample order of ``epoch``: [steps_per_epoch * global_batch] indices."""
        reps = -(-self.global_batch // self.size)  # datasets smaller than one global batch
        perms = [
            np.random.default_rng([self.seed, epoch, j]).permutation(self.size)
            if self.shuffle
            else np.arange(self.size)
            for j in range(reps)
        ]
        return np.concatenate(perms)[: self.steps_per_epoch * self.global_batch]

    def set_epoch(self, epoch: int) -> None:
        self.set_position(epoch, 0)

    def set_position(self, epoch: int, start: int) -> None:
        """Resume at global sample ``start`` (a multiple of the global batch) of ``epoch``."""
        if start % self.global_batch or not 0 <= start <= self.steps_per_epoch * self.global_batch:
            raise ValueError(
                f"start={start} is not a whole number of global batches ({self.global_batch})"
            )
        self.epoch, self.start = epoch, start

    def __iter__(self):
        blocks = self.order(self.epoch)[self.start :].reshape(-1, self.num_replicas, self.block)
        return iter(blocks[:, self.rank].reshape(-1).tolist())

    def __len__(self) -> int:
        return (self.steps_per_epoch * self.global_batch - self.start) // self.num_replicas

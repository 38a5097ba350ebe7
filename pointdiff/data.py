"""Data shards (the on-disk training format, its writer and reader) and the dataset that reads
them; the converters that make shards are ``data_tools``.

Shard format (a directory; memory-mappable, no pickle):

* ``meta.json``: ``{"format": "pointdiff-shards", "version": 1, "num_objects", "num_points",
  "num_sdf", "shards": [...]}`` (+ ``"point_order": "fps"``: clouds stored in FPS order).
* ``shard-00000.safetensors`` …: per shard of K objects
  ``coords`` [K, P, 3] float32 (object space, Z-up, xyz ∈ [-0.5, 0.5]),
  ``colors`` [K, P, 3] uint8 (sRGB bytes), and when SDF samples exist
  ``sdf_points`` [K, Q, 3] float32 and ``sdf_values`` [K, Q] float32 (negative inside).
* ``index.jsonl``: one JSON object per line, in row order: ``id``, ``caption``, ``source``,
  ``licence``, ``split`` (train/val/test), ``shard`` (file name), ``row`` (index in the shard),
  plus whatever the converter adds (``center``, ``scale``, ``category``, ``sdf_reliable``, …).
Files are written to a temporary name and renamed, so a reader never sees half a shard.
The dataset holds the index as columns (``ShardIndex``: numpy arrays, no object per entry): a
million objects cost tens of MB, shared by forked DataLoader workers (reference counts touch
every dict of a list of dicts, copying its pages into each worker; never numpy buffers).
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
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
SUBSAMPLES = ("auto", "fps", "random", "first")


class ShardError(ValueError):
    """A shard directory that cannot be read or written, with the reason."""


# ----------------------------------------------------------------------------------------------
# Writing


def write_shards(
    records: Iterable[Mapping],
    out_dir: str | os.PathLike,
    objects_per_shard: int = 256,
    point_order: str | None = None,
) -> dict:
    """Write records to a shard directory (replacing any previous index there).

    Each record holds the metadata keys ``id, caption, source, licence, split``, the arrays
    ``coords`` [P, 3] and ``colors`` [P, 3] (uint8, or float in [0, 1]), optionally
    ``sdf_points`` [Q, 3] and ``sdf_values`` [Q], and any JSON-able extras. All records share P
    (and Q). Output bytes depend only on the records and their order.

    :param point_order: ``"fps"`` when every cloud is in farthest-point order (recorded in
        ``meta.json``; the dataset then takes the first N points instead of running FPS).
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
        for k in {"sdf_points", "sdf_values"} & arrays.keys():
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
        **({"point_order": point_order} if point_order else {}),
    }
    write_text_atomic(out / "index.jsonl", "\n".join(index_lines) + "\n")
    write_json_atomic(out / "meta.json", meta, sort_keys=False)
    return meta  # meta.json was written last: readers start there


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


# ----------------------------------------------------------------------------------------------
# Reading


def read_meta(root: str | os.PathLike) -> dict:
    """A shard directory's ``meta.json`` (checked)."""
    root = Path(root)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise ShardError(
            f"{root}: not a shard directory (no meta.json); convert data with data_tools"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ShardError(f"{root}: meta.json format is {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def read_index(root: str | os.PathLike) -> list[dict]:
    """The index entries of a shard directory (one dict per object, in row order)."""
    read_meta(root)
    with open(Path(root) / "index.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


class StringColumn(Sequence[str]):
    """Strings as one UTF-8 buffer and offsets: ``col[i]`` decodes string i."""

    def __init__(self, strings: list[str]):
        data = [s.encode() for s in strings]
        self.offsets, self.buffer = (
            np.cumsum([0, *map(len, data)]),
            np.frombuffer(b"".join(data), np.uint8),
        )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        return self.buffer[self.offsets[i] : self.offsets[i + 1]].tobytes().decode()


class ShardIndex:
    """``index.jsonl`` as columns, built in one streaming pass (no list of dicts is kept).

    ``shard``/``row`` [N] locate each object's arrays, ``split`` [N] names its split; object i's
    captions (its ``captions`` list, else ``[caption]``) are the ids
    ``caption_ids[caption_start[i] : caption_start[i + 1]]`` into ``vocab``, the sorted distinct
    captions.
    """

    def __init__(self, root: str | os.PathLike):
        self.meta = read_meta(root)
        shard_code = {name: k for k, name in enumerate(self.meta["shards"])}
        vocab: dict[str, int] = {}
        shard, row, split, cap_ids, cap_count = [], [], [], [], []
        with open(Path(root) / "index.jsonl") as f:
            for e in map(json.loads, filter(str.strip, f)):
                shard.append(shard_code[e["shard"]])
                row.append(e["row"])
                split.append(e["split"])
                caps = e.get("captions") or [e["caption"]]
                cap_ids += [vocab.setdefault(c, len(vocab)) for c in caps]
                cap_count.append(len(caps))
        self.shard, self.row = np.array(shard, np.int32), np.array(row, np.int64)
        self.split = np.array(split)
        # renumber the captions so that the vocabulary is sorted (id order = string order)
        words = np.array(list(vocab), dtype=object)
        order = np.argsort(words, kind="stable")
        self.vocab = StringColumn(list(words[order]))
        new_id = np.empty(len(order), np.int32)
        new_id[order] = np.arange(len(order), dtype=np.int32)
        self.caption_ids = new_id[np.array(cap_ids, np.int64)]
        self.caption_start = np.cumsum([0, *cap_count], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.shard)

    def captions_of(self, i: int) -> np.ndarray:
        """Caption ids of object ``i`` (into ``vocab``)."""
        return self.caption_ids[self.caption_start[i] : self.caption_start[i + 1]]

    def caption_ids_of(self, rows: np.ndarray) -> np.ndarray:
        """Sorted distinct caption ids of the objects ``rows``."""
        start, count = self.caption_start[rows], np.diff(self.caption_start)[rows]
        offsets = np.repeat(start - np.cumsum(count) + count, count)
        return np.unique(self.caption_ids[offsets + np.arange(count.sum())])


class ShardReader:
    """Random access to the arrays of one shard directory (memory-mapped safetensors); ``index``
    is its columnar index, ``entries`` its index as dicts (read on first use, for tools)."""

    def __init__(self, root: str | os.PathLike):
        self.root, self.index = Path(root), ShardIndex(root)
        self._entries: list[dict] | None = None
        self._handles: dict[int, object] = {}

    @property
    def entries(self) -> list[dict]:
        if self._entries is None:
            self._entries = read_index(self.root)
        return self._entries

    def get(self, i: int, key: str, first: int | None = None) -> np.ndarray:
        """Array ``key`` of object i (e.g. ``coords`` [P, 3], ``colors`` [P, 3] uint8); with
        ``first``, only its first ``first`` rows (read from the file, not sliced after)."""
        k = int(self.index.shard[i])
        h = self._handles.get(k)
        if h is None:
            h = safe_open(str(self.root / self.index.meta["shards"][k]), framework="numpy")
            self._handles[k] = h
        row = int(self.index.row[i])
        return h.get_slice(key)[row] if first is None else h.get_slice(key)[row, :first]

    def __getstate__(self):  # handles are per process (DataLoader workers reopen them)
        return {**self.__dict__, "_handles": {}, "_entries": None}


def is_fps_ordered(reader: ShardReader, rows: np.ndarray, k: int, probes: int = 4) -> bool:
    """Whether clouds are stored in farthest-point order (``data_tools`` stores them in the order
    FPS picked them): ``meta.json`` says so, or FPS of ``k`` points from point 0 gives the first
    ``k`` points of ``probes`` objects spread over ``rows``."""
    if reader.index.meta.get("point_order") == "fps":
        return True
    picks = rows[np.linspace(0, len(rows) - 1, min(probes, len(rows))).astype(int)]
    for i in picks:
        coords = torch.from_numpy(reader.get(int(i), "coords"))
        if not np.array_equal(farthest_point_sample(coords, k).numpy(), np.arange(k)):
            return False
    return True


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
    [D] (float32) once ``set_text_embeddings`` was called. An object with a ``captions`` list
    gets one of them per item, drawn from (seed, epoch, index).

    Augmentation (``augment=True``): a random rotation about the up axis (then the bbox is
    re-normalised, keeping xyz in [-0.5, 0.5]) and a scale jitter in [1 - scale_jitter, 1].
    Its randomness is a function of (seed, epoch, index) only, so a resumed run sees exactly the
    data an uninterrupted one would (call ``set_epoch`` at each epoch).

    :param subsample: ``first`` (the first points: the FPS subset of clouds stored in FPS
        order, read without computing anything), ``fps`` (farthest points from point 0, cached
        for the last ``fps_cache`` objects), ``random``, or ``auto``: ``first`` when the clouds
        are FPS-ordered (``is_fps_ordered``; then it picks the very points ``fps`` would),
        else ``fps``. ``self.subsample`` is the resolved choice.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = "train",
        num_points: int = 1024,
        subsample: str = "auto",
        augment: bool = False,
        scale_jitter: float = 0.1,
        seed: int = 0,
        fps_cache: int = 65_536,
    ):
        self.reader = ShardReader(root)
        index = self.reader.index
        self.rows = np.flatnonzero(index.split == split) if split else np.arange(len(index))
        if not len(self.rows):
            raise ShardError(f"{root}: no objects in split {split!r}")
        if subsample not in SUBSAMPLES:
            raise ValueError(f"unknown subsample {subsample!r} ({' | '.join(SUBSAMPLES)})")
        if num_points > (points := index.meta["num_points"]):
            raise ShardError(f"objects have {points} points, fewer than num_points={num_points}")
        if subsample == "auto":  # the first points are the FPS subset of an FPS-ordered cloud
            subsample = "first" if is_fps_ordered(self.reader, self.rows, num_points) else "fps"
        self.num_points, self.subsample = num_points, subsample
        self.augment, self.scale_jitter, self.seed, self.epoch = augment, scale_jitter, seed, 0
        self._fps_cache, self._fps_cache_size = OrderedDict(), fps_cache  # LRU, per process
        self._text, self._text_row = None, None  # rows; caption id -> row

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def captions(self) -> list[str]:
        """The distinct captions of this split (every caption of every object), sorted."""
        vocab = self.reader.index.vocab
        return [vocab[int(c)] for c in self.reader.index.caption_ids_of(self.rows)]

    def captions_of(self, i: int) -> list[str]:
        """Object ``i``'s captions: its ``captions`` list (``data_tools captions``) or caption."""
        vocab = self.reader.index.vocab
        return [vocab[int(c)] for c in self.reader.index.captions_of(int(self.rows[i]))]

    def entry(self, i: int) -> dict:  # the whole index line (reads the index as dicts once)
        return self.reader.entries[self.rows[i]]

    def set_text_embeddings(self, table: Mapping[str, torch.Tensor] | Sequence) -> None:
        """Attach precomputed embeddings: a mapping caption → [D] tensor, or rows (a [C, D]
        tensor, a memory-mapped table) of the C captions of ``self.captions``, in that order."""
        captions = self.captions
        if isinstance(table, Mapping):
            missing = [c for c in captions if c not in table]
            if missing:
                raise KeyError(f"no text embedding for {len(missing)} captions, e.g. {missing[:3]}")
            table = torch.stack([table[c] for c in captions])
        if len(table) != len(captions):
            raise KeyError(f"{len(table)} text embeddings for {len(captions)} captions")
        self._text_row = np.full(len(self.reader.index.vocab), -1, dtype=np.int64)
        self._text_row[self.reader.index.caption_ids_of(self.rows)] = np.arange(len(captions))
        self._text = table

    def _indices(self, i: int, n: int, g: np.random.Generator | None) -> np.ndarray | None:
        k = self.num_points
        if self.subsample == "first" or k == n:
            return None  # the first k points, read as such
        if self.subsample == "random":
            return g.choice(n, size=k, replace=False)
        idx = self._fps_cache.pop(i, None)
        if idx is None:
            coords = torch.from_numpy(self.reader.get(int(self.rows[i]), "coords"))
            idx = farthest_point_sample(coords, k).numpy().astype(np.int32)
        self._fps_cache[i] = idx  # the most recently used last
        if len(self._fps_cache) > self._fps_cache_size:
            self._fps_cache.popitem(last=False)
        return idx

    def __getitem__(self, i: int) -> dict:
        row = int(self.rows[i])
        # randomness: a function of (seed, epoch, i); the generator is made only when used
        random = self.augment or self.subsample == "random"
        g = np.random.default_rng([self.seed, self.epoch, i]) if random else None
        idx = self._indices(i, self.reader.index.meta["num_points"], g)
        first = self.num_points if idx is None else None
        coords = self.reader.get(row, "coords", first)
        colors = self.reader.get(row, "colors", first)
        if idx is not None:
            coords, colors = coords[idx], colors[idx]
        if self.augment:
            coords, _, _ = normalize_bbox(rotate_z(coords, g.uniform(0, 2 * math.pi)))
            coords = coords * g.uniform(1 - self.scale_jitter, 1.0)
        colors = torch.from_numpy(colors.astype(np.float32) / 255.0)
        points = to_model_space(torch.from_numpy(coords).float(), colors)
        # One caption per step when an object has several; its own stream, so objects with one
        # caption see the same points as before captions lists existed.
        caps, pick = self.reader.index.captions_of(row), 0
        if len(caps) > 1:
            pick = int(np.random.default_rng([self.seed, self.epoch, i, 1]).integers(len(caps)))
        item = {"points": points, "caption": self.reader.index.vocab[int(caps[pick])], "index": i}
        if self._text is not None:
            item["text_emb"] = self._text[int(self._text_row[caps[pick]])].float()
        return item

"""The work directory of a conversion: one file per finished object, then packing into shards.

Layout of an output directory ``OUT``::

    OUT/work/settings.json            conversion settings (a rerun must match them)
    OUT/work/<xx>/<key>.safetensors   one finished object (arrays + JSON metadata)
    OUT/work/<xx>/<key>.fail.json     one failed or filtered object, with its reason
    OUT/meta.json, index.jsonl, shard-*.safetensors   the packed data shards (pointdiff.data)
    OUT/errors.jsonl                  one line per failed object: id, path, reason, message
    OUT/filtered.jsonl                one line per filtered object (licence, no caption), why

Reports and packing read the work files through a few threads (``map_files``: on network
file systems the latency of opening a file dominates), in order and with a bounded number in
flight, so memory does not grow with the number of objects beyond one (id, path) pair each.

Every file is written atomically (``pointdiff.atomic``: a hidden temporary sibling, renamed), so
a killed worker leaves at most a hidden temporary file, which packing ignores. A write that
fails (disk full, read-only) raises ``OutputError``: the machine's fault, not the object's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from data_tools.jobs import Job, Settings, id_hash
from pointdiff.atomic import atomic_path
from pointdiff.data import write_shards

_ARRAYS = ("coords", "colors", "sdf_points", "sdf_values")


class RunError(ValueError):
    """A run that cannot start (e.g. a work directory made with other settings)."""


class OutputError(RuntimeError):
    """Output that cannot be written (disk full, quota, read-only): the run stops, resumable."""


def work_key(object_id: str) -> str:
    """File-system-safe, collision-free name for an object id: ``<xx>/<slug>-<crc32>``."""
    crc = f"{id_hash(object_id):08x}"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", object_id)[-80:]
    return f"{crc[:2]}/{slug}-{crc}"


def write_output(path: Path, write) -> None:
    """``write(tmp)``, then rename ``tmp`` to ``path``; an ``OSError`` becomes ``OutputError``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            write(tmp)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None


def write_output_text(path: Path, text: str) -> None:
    write_output(path, lambda p: p.write_text(text))


def save_work(work: Path, job: Job, arrays: dict) -> None:
    """The work file of a converted object (and no fail file: a retry that worked)."""
    meta = {**job.metadata(), **arrays["meta"]}
    tensors = {k: np.ascontiguousarray(arrays[k]) for k in _ARRAYS if k in arrays}
    record = {"record": json.dumps(meta, sort_keys=True)}
    write_output(
        work / (work_key(job.id) + ".safetensors"),
        lambda p: save_file(tensors, str(p), metadata=record),
    )
    (work / (work_key(job.id) + ".fail.json")).unlink(missing_ok=True)


def save_fail(work: Path, job: Job, outcome: str, reason: str, message: str) -> None:
    """The fail file of an object that failed or was filtered, with its reason."""
    rec = {"id": job.id, "path": job.path, "source": job.source, "outcome": outcome}
    rec.update(reason=reason, message=message[-2000:])
    write_output_text(work / (work_key(job.id) + ".fail.json"), json.dumps(rec, sort_keys=True))


def load_work(path: Path) -> dict:
    """A work file → a record for ``write_shards`` (arrays + metadata)."""
    with safe_open(str(path), framework="numpy") as f:
        record = json.loads(f.metadata()["record"])
        for k in f.keys():
            record[k] = f.get_tensor(k)
    return record


def work_files(work: Path, pattern: str) -> Iterator[Path]:
    """The work files matching ``pattern`` (e.g. ``*.fail.json``), without temporary files, as
    the directory listing yields them (none is held)."""
    return (f for f in work.glob(f"*/{pattern}") if not f.name.startswith("."))


def check_settings(work: Path, settings: Settings) -> None:
    """Record the settings of a new work directory; refuse one made with other settings."""
    path = work / "settings.json"
    want = settings.fingerprint()
    if path.is_file():
        have = {k: v for k, v in json.loads(path.read_text()).items() if k in want}
        if have != want:
            diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
            raise RunError(
                f"{work} was made with other settings {diff} (old, new): "
                "use another --out or the same options"
            )
    else:
        write_output_text(path, json.dumps(want, indent=1, sort_keys=True))


def map_files(fn: Callable, items: Iterable, threads: int = 8) -> Iterator:
    """``fn`` over ``items`` in ``threads`` threads (file reads release the GIL), yielding the
    results in order, with at most ``4 × threads`` of them pending."""
    if threads <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 4 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _read_fail(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def write_reports(
    out: Path, suffix: str, work: Path, ids: list[str] | None, threads: int = 8
) -> Counter:
    """``errors{suffix}.jsonl`` (failed objects) and ``filtered{suffix}.jsonl`` (filtered ones,
    with the reason and why) among ``ids`` (all when None), sorted by id.

    :return: counts of ``outcome:reason`` over the fail files read.
    """
    if ids is None:
        files = work_files(work, "*.fail.json")
    else:
        files = [work / (work_key(i) + ".fail.json") for i in ids]
    lines: dict[str, list[str]] = {"failed": [], "filtered": []}
    counts = Counter()
    for rec in map_files(_read_fail, files, threads):
        if rec is not None:
            counts[f"{rec['outcome']}:{rec['reason']}"] += 1
            lines[rec["outcome"]].append(json.dumps(rec, sort_keys=True))
    for outcome, name in (("failed", "errors"), ("filtered", "filtered")):
        rows = sorted(lines[outcome])  # rows start with {"id": ...: sorted by id
        write_output_text(out / f"{name}{suffix}.jsonl", "".join(r + "\n" for r in rows))
    return counts


def _work_id(path: Path) -> str:
    """The object id of a work file, from its safetensors header alone (u64 length + JSON)."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    return json.loads(header["__metadata__"]["record"])["id"]


def pack(
    work: Path,
    out: Path,
    ids: list[str] | None = None,
    objects_per_shard: int = 256,
    threads: int = 8,
) -> int:
    """Write the shards of ``out`` from the work files of ``ids`` (every work file when None),
    sorted by id, streaming: records are read ahead by ``threads`` threads, in order. Returns
    the number of objects packed (0: no shards written).

    Memory: the sorted ids (a work file's name follows from its id, ``work_key``) and the index
    lines ``write_shards`` collects, about 1.2 KB per object; the arrays stream through."""

    def path(object_id: str) -> Path:
        return work / (work_key(object_id) + ".safetensors")

    if ids is None:  # the ids from the files' headers
        entries = sorted(map_files(_work_id, work_files(work, "*.safetensors"), threads))
    else:
        entries = sorted(i for i in ids if path(i).is_file())
    if not entries:
        return 0
    # A set of shards is replaced as a whole, not file by file: it is written into a staging
    # folder, then moved in (meta.json last, as readers start from it), so a full disk leaves
    # the previous shards, or none, never part of a set.
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        records = map_files(lambda i: load_work(path(i)), entries, threads)
        # every converter stores its clouds in the order farthest point sampling picked them
        # (convert_object, convert_cloud): the first N points are an N-point FPS subset
        meta = write_shards(records, staging, objects_per_shard, point_order="fps")
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"cannot write shards into {out}: {e.strerror or e}") from None
    for name in (*meta["shards"], "index.jsonl", "meta.json"):
        os.replace(staging / name, out / name)
    for stale in out.glob("shard-*.safetensors"):
        if stale.name not in meta["shards"]:
            stale.unlink()
    shutil.rmtree(staging, ignore_errors=True)
    return len(entries)

"""The work directory of a conversion: one file per finished object, then packing into shards.

Layout of an output directory ``OUT``::

    OUT/work/settings.json            conversion settings (a rerun must match them)
    OUT/work/<xx>/<key>.safetensors   one finished object (arrays + JSON metadata)
    OUT/work/<xx>/<key>.fail.json     one failed or filtered object, with its reason
    OUT/meta.json, index.jsonl, shard-*.safetensors   the packed data shards (pointdiff.data)
    OUT/errors.jsonl                  one line per failed object: id, path, reason, message

Every file is written atomically (``pointdiff.atomic``: a hidden temporary sibling, renamed), so
a killed worker leaves at most a hidden temporary file, which packing ignores. A write that
fails (disk full, read-only) raises ``OutputError``: the machine's fault, not the object's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
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


def work_files(work: Path, pattern: str) -> list[Path]:
    """The work files matching ``pattern`` (e.g. ``*.fail.json``), without temporary files."""
    return [f for f in work.glob(f"*/{pattern}") if not f.name.startswith(".")]


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


def write_errors(path: Path, work: Path, ids: list[str] | None) -> int:
    """errors.jsonl: failed (not filtered) objects among ``ids`` (all when None), by id."""
    if ids is None:
        files = sorted(work_files(work, "*.fail.json"))
    else:
        files = [work / (work_key(i) + ".fail.json") for i in sorted(ids)]
    lines = []
    for f in files:
        if f.is_file():
            rec = json.loads(f.read_text())
            if rec["outcome"] == "failed":
                lines.append(json.dumps(rec, sort_keys=True))
    lines.sort()
    write_output_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def pack(work: Path, out: Path, ids: list[str] | None = None, objects_per_shard: int = 256) -> int:
    """Write the shards of ``out`` from the work files of ``ids`` (every work file when None),
    sorted by id. Returns the number of objects packed (0: no shards written)."""
    if ids is None:
        entries = []
        for f in work_files(work, "*.safetensors"):
            with safe_open(str(f), framework="numpy") as h:
                entries.append((json.loads(h.metadata()["record"])["id"], f))
    else:
        entries = [(i, work / (work_key(i) + ".safetensors")) for i in ids]
        entries = [(i, f) for i, f in entries if f.is_file()]
    entries.sort()
    if not entries:
        return 0
    # A set of shards is replaced as a whole, not file by file: it is written into a staging
    # folder, then moved in (meta.json last, as readers start from it), so a full disk leaves
    # the previous shards, or none, never part of a set.
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        meta = write_shards((load_work(f) for _, f in entries), staging, objects_per_shard)
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

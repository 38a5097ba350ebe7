"""Run jobs: parallel, resumable, fault-tolerant; then pack work files into shards.

Layout of an output directory ``OUT``::

    OUT/work/settings.json            conversion settings (a rerun must match them)
    OUT/work/<xx>/<key>.safetensors   one finished object (arrays + JSON metadata), atomic
    OUT/work/<xx>/<key>.fail.json     one failed or filtered object, with its reason
    OUT/meta.json, index.jsonl, shard-*.safetensors   the packed shards (pointdiff.data)
    OUT/errors.jsonl                  one line per failed object: id, path, reason, message
    OUT/summary.json                  counts by outcome and reason, throughput

A rerun skips objects that have a work file (or a fail file, unless ``retry_failed``), so an
interrupted conversion resumes where it stopped; packing sorts by id, so the shards are the same
bytes as those of an uninterrupted run. With ``num_shards`` > 1 a task converts every
``num_shards``-th job (starting at ``shard_index``) and leaves packing to ``merge``.

Output that cannot be written (disk full, read-only) stops the run with ``OutputError``: no
object is recorded as failed for it, no partial file keeps a final name (shards are written
into ``OUT/.staging`` and moved into place once complete), and a rerun resumes.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
import time
import traceback
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from data_tools.convert import Filtered, convert_object, default_threads
from data_tools.jobs import Job, Settings, id_hash
from data_tools.mesh_reader import MeshError
from pointdiff.data import write_shards

_ARRAYS = ("coords", "colors", "sdf_points", "sdf_values")


class RunError(ValueError):
    """A run that cannot start (e.g. a work directory made with other settings)."""


class OutputError(RuntimeError):
    """Output that cannot be written (disk full, quota, read-only): the run stops, resumable."""


#: errors of the machine, not of an object: they stop the run instead of failing the object.
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


# ----------------------------------------------------------------------------------------------
# Work files


def work_key(object_id: str) -> str:
    """File-system-safe, collision-free name for an object id: ``<xx>/<slug>-<crc32>``."""
    crc = f"{id_hash(object_id):08x}"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", object_id)[-80:]
    return f"{crc[:2]}/{slug}-{crc}"


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)  # never leave half a file behind
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None


def _save_work(work: Path, job: Job, arrays: dict) -> None:
    meta = {**job.metadata(), **arrays["meta"]}
    tensors = {k: np.ascontiguousarray(arrays[k]) for k in _ARRAYS if k in arrays}
    _write_atomic(
        work / (work_key(job.id) + ".safetensors"),
        lambda p: save_file(tensors, str(p), metadata={"record": json.dumps(meta, sort_keys=True)}),
    )
    (work / (work_key(job.id) + ".fail.json")).unlink(missing_ok=True)  # a retry that worked


def _save_fail(work: Path, job: Job, outcome: str, reason: str, message: str) -> None:
    rec = {"id": job.id, "path": job.path, "source": job.source, "outcome": outcome}
    rec.update(reason=reason, message=message[-2000:])
    text = json.dumps(rec, sort_keys=True)
    _write_atomic(work / (work_key(job.id) + ".fail.json"), lambda p: p.write_text(text))


def load_work(path: Path) -> dict:
    """A work file → a record for ``write_shards`` (arrays + metadata)."""
    with safe_open(str(path), framework="numpy") as f:
        record = json.loads(f.metadata()["record"])
        for k in f.keys():
            record[k] = f.get_tensor(k)
    return record


def _check_settings(work: Path, settings: Settings) -> None:
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
        _write_atomic(path, lambda p: p.write_text(json.dumps(want, indent=1, sort_keys=True)))


# ----------------------------------------------------------------------------------------------
# Workers


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(1)  # the FPS loop is serial; extra threads only contend
    os.environ["OMP_NUM_THREADS"] = str(threads)


def _run_one(job: Job, settings: Settings, work: str, threads: int) -> tuple[str, str, str]:
    """Convert one job and write its work (or fail) file. Returns (id, outcome, reason)."""
    work_dir = Path(work)
    try:
        try:
            arrays, done = convert_object(job, settings, threads)
        except OSError as e:
            if e.errno in _OUTPUT_ERRNOS:  # e.g. a full disk while unpacking an archive
                raise OutputError(f"converting {job.id}: {e.strerror}") from None
            raise MeshError("unreadable", f"{Path(job.path).name}: {e}") from None
        _save_work(work_dir, done, arrays)
        return job.id, "converted", ""
    except OutputError:  # the machine's fault, not the object's: stop, record nothing
        raise
    except Filtered as e:
        _save_fail(work_dir, job, "filtered", e.reason, str(e))
        return job.id, "filtered", e.reason
    except MeshError as e:
        _save_fail(work_dir, job, "failed", e.reason, str(e))
        return job.id, "failed", e.reason
    except MemoryError:
        _save_fail(work_dir, job, "failed", "out_of_memory", "MemoryError")
        return job.id, "failed", "out_of_memory"
    except Exception as e:  # a bug or an input no check caught: record it, keep going
        reason = f"error:{type(e).__name__}"
        _save_fail(work_dir, job, "failed", reason, traceback.format_exc())
        return job.id, "failed", reason


def _run_pool(todo: list[Job], settings, work, workers, threads) -> Iterator[tuple]:
    """Yield one result per job from a process pool with at most ``workers`` jobs in flight.

    A worker that dies (OOM kill, segfault) breaks the pool and fails every job in flight with
    it. Those jobs are retried in a fresh pool one at a time, so a second death names its job:
    that one is recorded as ``worker_crashed`` and the others carry on.
    """
    queue, suspects, crashes = deque(todo), deque(), Counter()
    while queue or suspects:
        # forkserver: a clean single-threaded server imports the heavy modules once and forks
        # the workers from it (a plain fork of this process could inherit running threads).
        ctx = get_context("forkserver")
        ctx.set_forkserver_preload(["data_tools.convert"])
        died, broken = [], False  # jobs in flight when a worker died
        with ProcessPoolExecutor(workers, ctx, _init_worker, (threads,)) as pool:
            running = {}
            while (queue or suspects or running) and not broken:
                # a job retried after a crash runs alone, until it is done
                alone = suspects or any(crashes[j.id] for j in running.values())
                while (suspects or queue) and len(running) < (1 if alone else workers):
                    source = suspects or queue
                    job = source.popleft()
                    try:
                        running[pool.submit(_run_one, job, settings, work, threads)] = job
                    except BrokenProcessPool:  # an idle worker died since the last wait
                        source.appendleft(job)
                        broken = True
                        break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                if broken or any(isinstance(f.exception(), BrokenProcessPool) for f in done):
                    broken = True
                    done, _ = wait(running)  # the rest fail (or finish) with the pool
                for fut in done:
                    job = running.pop(fut)
                    if isinstance(fut.exception(), BrokenProcessPool):
                        died.append(job)
                    else:
                        yield fut.result()  # re-raises OutputError: the run stops
        if died:
            ids = ", ".join(j.id for j in died)
            print(f"note: a worker process died while converting {ids}", file=sys.stderr)
        for job in died:
            crashes[job.id] += 1
            if crashes[job.id] < 2:
                suspects.append(job)
                continue
            message = (
                "the worker process died twice while converting this object (killed, e.g. by "
                "the out-of-memory killer, or crashed in native code)"
            )
            _save_fail(Path(work), job, "failed", "worker_crashed", message)
            yield job.id, "failed", "worker_crashed"


# ----------------------------------------------------------------------------------------------
# Runs


@dataclass
class Summary:
    """Final state of the objects of a run. ``skipped`` objects were finished (converted,
    failed or filtered) by an earlier run; ``by_reason`` maps ``outcome:reason`` to a count."""

    total: int = 0
    converted: int = 0
    converted_now: int = 0
    failed: int = 0
    filtered: int = 0
    skipped: int = 0
    by_reason: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    packed: int = 0

    @property
    def objects_per_s(self) -> float | None:
        return round(self.converted_now / self.seconds, 3) if self.seconds else None

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["by_reason"] = dict(sorted(self.by_reason.items()))
        d["objects_per_s"] = self.objects_per_s
        return d

    def table(self) -> str:
        rows = [("objects", self.total), ("converted", self.converted)]
        rows += [("  in this run", self.converted_now), ("failed", self.failed)]
        rows += [(f"  {k[7:]}", v) for k, v in sorted(self.by_reason.items()) if k[:7] == "failed:"]
        rows += [("filtered", self.filtered)]
        rows += [
            (f"  {k[9:]}", v) for k, v in sorted(self.by_reason.items()) if k[:9] == "filtered:"
        ]
        rows += [("skipped (finished earlier)", self.skipped), ("packed into shards", self.packed)]
        if self.seconds:
            rows.append(("seconds (this run)", self.seconds))
            rows.append(("objects/s (this run)", self.objects_per_s))
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def limit_jobs(jobs: list[Job], limit: int | None, seed: int = 0) -> list[Job]:
    """A deterministic pseudo-random subset of ``limit`` jobs (ranked by a hash of id and seed),
    so ``--limit`` samples every category rather than the first in id order."""
    if limit is None or limit >= len(jobs):
        return jobs
    return sorted(sorted(jobs, key=lambda j: id_hash(j.id, seed))[:limit], key=lambda j: j.id)


def select_shard(jobs: list[Job], shard_index: int, num_shards: int) -> list[Job]:
    """Every ``num_shards``-th job of the id-sorted list, from ``shard_index``."""
    if not 0 <= shard_index < num_shards:
        raise RunError(f"--shard-index {shard_index} not in [0, {num_shards})")
    return sorted(jobs, key=lambda j: j.id)[shard_index::num_shards]


def run(
    jobs: list[Job],
    out: str | os.PathLike,
    settings: Settings,
    workers: int = 1,
    retry_failed: bool = False,
    shard_index: int = 0,
    num_shards: int = 1,
    objects_per_shard: int = 256,
    progress: bool = True,
) -> Summary:
    """Convert ``jobs`` into ``out`` (see the module docstring) and pack unless sharded."""
    from tqdm import tqdm

    out = Path(out)
    work = out / "work"
    check_output_dir(out)
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create {work}: {e.strerror or e}") from None
    _check_settings(work, settings)
    jobs, duplicates = _unique(jobs)
    jobs = select_shard(jobs, shard_index, num_shards)
    ids = {j.id for j in jobs}
    duplicates = [j for j in duplicates if j.id in ids]  # counted in the part of their id
    summary = Summary(total=len(jobs) + len(duplicates))
    for _ in duplicates:
        _count(summary, "filtered", "duplicate_id")
    todo = []
    for job in jobs:
        key = work / work_key(job.id)
        if key.with_name(key.name + ".safetensors").is_file():
            summary.skipped += 1
            summary.converted += 1
        elif key.with_name(key.name + ".fail.json").is_file() and not retry_failed:
            rec = json.loads(key.with_name(key.name + ".fail.json").read_text())
            summary.skipped += 1
            _count(summary, rec["outcome"], rec["reason"])
        else:
            todo.append(job)
    threads = default_threads(workers)
    t0 = time.time()
    bar = tqdm(
        total=len(todo),
        disable=not progress,
        unit="obj",
        mininterval=1.0,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    if workers <= 1:
        _init_worker(threads)
        results = (_run_one(job, settings, str(work), threads) for job in todo)
    else:
        results = _run_pool(todo, settings, str(work), workers, threads)
    for _, outcome, reason in results:
        bar.update(1)
        if outcome == "converted":
            summary.converted += 1
            summary.converted_now += 1
        else:
            _count(summary, outcome, reason)
    bar.close()
    summary.seconds = round(time.time() - t0, 2)
    suffix = "" if num_shards == 1 else f"-part{shard_index:05d}-of-{num_shards:05d}"
    _write_errors(out / f"errors{suffix}.jsonl", work, [j.id for j in jobs])
    if num_shards == 1:
        summary.packed = pack(work, out, [j.id for j in jobs], objects_per_shard)
    text = json.dumps(summary.to_dict(), indent=1)
    _write_atomic(out / f"summary{suffix}.json", lambda p: p.write_text(text))
    return summary


def check_output_dir(out: str | os.PathLike) -> None:
    """Refuse an output path that is, or lies under, something other than a directory."""
    out = Path(out)
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "is" if p == out else f"lies under {p}, which is"
                raise RunError(f"--out {out} {what} a file, not a directory")
            return


def _unique(jobs: list[Job]) -> tuple[list[Job], list[Job]]:
    """(first job of each id, the later ones): sources give distinct ids, but should two files
    still claim one id, the run goes on with the first and names the others."""
    seen, kept, dropped = {}, [], []
    for job in jobs:
        if job.id in seen:
            dropped.append(job)
            print(
                f"note: {job.path} has the id {job.id} of {seen[job.id]}: skipped",
                file=sys.stderr,
            )
        else:
            seen[job.id] = job.path
            kept.append(job)
    return kept, dropped


def _count(summary: Summary, outcome: str, reason: str) -> None:
    if outcome == "filtered":
        summary.filtered += 1
    else:
        summary.failed += 1
    summary.by_reason[f"{outcome}:{reason}"] += 1


def _write_errors(path: Path, work: Path, ids: list[str] | None) -> int:
    """errors.jsonl: failed (not filtered) objects among ``ids`` (all when None), by id."""
    if ids is None:
        files = sorted(work.glob("*/*.fail.json"))
    else:
        files = [work / (work_key(i) + ".fail.json") for i in sorted(ids)]
    lines = []
    for f in files:
        if f.is_file():
            rec = json.loads(f.read_text())
            if rec["outcome"] == "failed":
                lines.append(json.dumps(rec, sort_keys=True))
    lines.sort()
    _write_atomic(path, lambda p: p.write_text("".join(line + "\n" for line in lines)))
    return len(lines)


def pack(work: Path, out: Path, ids: list[str] | None = None, objects_per_shard: int = 256) -> int:
    """Write the shards of ``out`` from the work files of ``ids`` (every work file when None),
    sorted by id. Returns the number of objects packed (0: no shards written)."""
    if ids is None:
        entries = []
        for f in work.glob("*/*.safetensors"):
            with safe_open(str(f), framework="numpy") as h:
                entries.append((json.loads(h.metadata()["record"])["id"], f))
    else:
        entries = [(i, work / (work_key(i) + ".safetensors")) for i in ids]
        entries = [(i, f) for i, f in entries if f.is_file()]
    entries.sort()
    if not entries:
        return 0
    # Write into a staging folder, then move the complete set in (meta.json last, as readers
    # start from it): a full disk leaves the previous shards, or none, never part of a set.
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


def merge(out: str | os.PathLike, objects_per_shard: int = 256) -> Summary:
    """Pack every work file of ``out/work`` (after a job array) and write ``errors.jsonl``."""
    out = Path(out)
    work = out / "work"
    if not (work / "settings.json").is_file():
        raise RunError(f"{out}: no work directory (run a conversion with --out {out} first)")
    summary = Summary()
    for f in work.glob("*/*.fail.json"):
        rec = json.loads(f.read_text())
        _count(summary, rec["outcome"], rec["reason"])
    _write_errors(out / "errors.jsonl", work, None)
    summary.packed = summary.converted = pack(work, out, None, objects_per_shard)
    summary.total = summary.packed + summary.failed + summary.filtered
    text = json.dumps(summary.to_dict(), indent=1)
    _write_atomic(out / "summary.json", lambda p: p.write_text(text))
    return summary

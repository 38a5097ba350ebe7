"""Run a conversion: resumable, in parallel, part of a job array or whole; then pack.

``run`` converts jobs into an output directory (its layout: ``data_tools.work_files``), one work
file per object, in worker processes (``data_tools.workers``), then packs the work files into
data shards and writes ``OUT/summary.json`` (counts by outcome and reason, throughput).

A rerun skips objects that have a work file (or a fail file, unless ``retry_failed``), so an
interrupted conversion resumes where it stopped; packing sorts by id, so the shards are the same
bytes as those of an uninterrupted run. In a job array (``num_parts`` > 1) a task converts the
jobs whose id hashes to its part (``jobs.in_part``) and leaves packing to ``merge``, which
streams every work file into shards.

An object that runs past ``timeout`` seconds is recorded as failed (``timeout``) and the run
goes on: pools kill its worker, in-process runs (``workers`` = 1) interrupt it with an alarm.

Output that cannot be written (disk full, read-only) stops the run with ``OutputError``: no
object is recorded as failed for it, no partial file keeps a final name, and a rerun resumes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from data_tools.jobs import Job, Settings, id_hash, in_part
from data_tools.work_files import (
    OutputError,
    RunError,
    check_settings,
    pack,
    work_key,
    write_output_text,
    write_reports,
)
from data_tools.workers import default_threads, init_worker, run_one, run_pool

#: threads reading work files while packing and reporting (I/O bound)
IO_THREADS = 8


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


def select_part(jobs: list[Job], part_index: int, num_parts: int) -> list[Job]:
    """The jobs of part ``part_index`` (by a hash of the id: ``jobs.in_part``), sorted by id."""
    check_part(part_index, num_parts)
    return sorted((j for j in jobs if in_part(j.id, part_index, num_parts)), key=lambda j: j.id)


def check_part(part_index: int, num_parts: int) -> None:
    if not 0 <= part_index < num_parts:
        raise RunError(f"--part-index {part_index} not in [0, {num_parts})")


def run(
    jobs: list[Job],
    out: str | os.PathLike,
    settings: Settings,
    workers: int = 1,
    retry_failed: bool = False,
    part_index: int = 0,
    num_parts: int = 1,
    objects_per_shard: int = 256,
    progress: bool = True,
    timeout: float | None = None,
) -> Summary:
    """Convert ``jobs`` into ``out`` (see the module docstring); pack them unless this is one
    part of a job array (``num_parts`` > 1).

    :param timeout: seconds one object may take (None or 0: no limit).
    """
    from tqdm import tqdm

    out = Path(out)
    work = out / "work"
    check_output_dir(out)
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create {work}: {e.strerror or e}") from None
    check_settings(work, settings)
    jobs, duplicates = _unique(jobs)
    jobs = select_part(jobs, part_index, num_parts)
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
    timeout = timeout or None
    if workers <= 1:
        init_worker(threads)
        results = (run_one(job, settings, str(work), threads, timeout) for job in todo)
    else:
        results = run_pool(todo, settings, str(work), workers, threads, timeout)
    for _, outcome, reason in results:
        bar.update(1)
        if outcome == "converted":
            summary.converted += 1
            summary.converted_now += 1
        else:
            _count(summary, outcome, reason)
    bar.close()
    summary.seconds = round(time.time() - t0, 2)
    suffix = "" if num_parts == 1 else f"-part{part_index:05d}-of-{num_parts:05d}"
    write_reports(out, suffix, work, [j.id for j in jobs], IO_THREADS)
    if num_parts == 1:
        summary.packed = pack(work, out, [j.id for j in jobs], objects_per_shard, IO_THREADS)
    write_output_text(out / f"summary{suffix}.json", json.dumps(summary.to_dict(), indent=1))
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


def merge(
    out: str | os.PathLike, objects_per_shard: int = 256, threads: int = IO_THREADS
) -> Summary:
    """Pack every work file of ``out/work`` (after a job array) and write ``errors.jsonl`` and
    ``filtered.jsonl``. One pass over the fail files, one over the work files' headers (for
    their ids), then the records stream into shards: memory holds an (id, path) pair per
    object, not the objects."""
    out = Path(out)
    work = out / "work"
    if not (work / "settings.json").is_file():
        raise RunError(f"{out}: no work directory (run a conversion with --out {out} first)")
    summary = Summary()
    for key, n in write_reports(out, "", work, None, threads).items():
        summary.by_reason[key] += n
        if key.startswith("filtered:"):
            summary.filtered += n
        else:
            summary.failed += n
    summary.packed = summary.converted = pack(work, out, None, objects_per_shard, threads)
    summary.total = summary.packed + summary.failed + summary.filtered
    write_output_text(out / "summary.json", json.dumps(summary.to_dict(), indent=1))
    return summary

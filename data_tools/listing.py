"""A source's job list, listed once per job array: ``OUT/work/listing-<key>.jsonl``.

Listing a source walks its whole tree (an Objaverse mirror: 800k GLBs) and reads its tables
(Cap3D's captions: 130 MB). In a job array the first task to get the lock lists and writes the
list; the others wait for the lock, then read the file (one sequential read) and keep their own
part. The lock is ``flock`` on a file beside it, which the kernel drops when its holder dies;
where the file system has no ``flock``, each task lists for itself (correct, only slower:
parts are chosen by a hash of the id, so tasks agree whatever each of them listed).

The key hashes the source's arguments (not the run's), so another source or other captions
get another list. A list is not refreshed: delete ``OUT/work/listing-*.jsonl`` after adding
files to the source.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from data_tools.jobs import Job, in_part
from data_tools.work_files import write_output


def listed_jobs(
    work: Path, key: dict, list_jobs: Callable[[], list[Job]], part: tuple[int, int] | None
) -> list[Job]:
    """The jobs of ``part`` (part index, number of parts; None: all) from the cached list of
    ``key``, made by ``list_jobs`` under the lock if there is none yet."""

    def keep(job: Job) -> bool:
        return part is None or in_part(job.id, *part)

    text = json.dumps(key, sort_keys=True, default=str)
    path = work / f"listing-{hashlib.sha1(text.encode()).hexdigest()[:12]}.jsonl"
    work.mkdir(parents=True, exist_ok=True)
    with _locked(path.with_name("." + path.name + ".lock")):
        if not path.is_file():
            jobs = list_jobs()
            rows = [text] + [json.dumps(dataclasses.asdict(j), sort_keys=True) for j in jobs]
            write_output(path, lambda p: p.write_text("".join(r + "\n" for r in rows)))
            print(f"note: listed {len(jobs)} objects into {path}", file=sys.stderr)
            return [j for j in jobs if keep(j)]
    return [j for j in _read(path) if keep(j)]


def _read(path: Path) -> Iterator[Job]:
    with open(path, encoding="utf-8") as f:
        next(f)  # the key
        for line in f:
            d = json.loads(line)
            if d.get("rotation") is not None:
                d["rotation"] = tuple(d["rotation"])
            yield Job(**d)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:  # e.g. ENOLCK on a file system without flock: list unlocked
            pass
        yield

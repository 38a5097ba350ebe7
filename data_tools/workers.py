"""Worker processes of a conversion: each converts one job and writes its work (or fail) file.

``run_one`` never raises for a bad object: it records the object as failed (or filtered) with a
reason and moves on. Only ``OutputError`` (the machine cannot take the output) stops a run.
``run_pool`` keeps a process pool busy and survives workers that die (OOM kills, crashes in
native code).
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

from data_tools.convert import Filtered, convert_object
from data_tools.jobs import Job, Settings
from data_tools.mesh_files import MeshError
from data_tools.work_files import OutputError, save_fail, save_work

#: errors of the machine, not of an object: they stop the run instead of failing the object.
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(1)  # the FPS loop is serial; extra threads only contend
    os.environ["OMP_NUM_THREADS"] = str(threads)


def run_one(job: Job, settings: Settings, work: str, threads: int) -> tuple[str, str, str]:
    """Convert one job and write its work (or fail) file. Returns (id, outcome, reason)."""
    work_dir = Path(work)
    try:
        try:
            arrays, done = convert_object(job, settings, threads)
        except OSError as e:
            if e.errno in _OUTPUT_ERRNOS:  # e.g. a full disk while unpacking an archive
                raise OutputError(f"converting {job.id}: {e.strerror}") from None
            raise MeshError("unreadable", f"{Path(job.path).name}: {e}") from None
        save_work(work_dir, done, arrays)
        return job.id, "converted", ""
    except OutputError:  # the machine's fault, not the object's: stop, record nothing
        raise
    except Filtered as e:
        save_fail(work_dir, job, "filtered", e.reason, str(e))
        return job.id, "filtered", e.reason
    except MeshError as e:
        save_fail(work_dir, job, "failed", e.reason, str(e))
        return job.id, "failed", e.reason
    except MemoryError:
        save_fail(work_dir, job, "failed", "out_of_memory", "MemoryError")
        return job.id, "failed", "out_of_memory"
    except Exception as e:  # a bug or an input no check caught: record it, keep going
        reason = f"error:{type(e).__name__}"
        save_fail(work_dir, job, "failed", reason, traceback.format_exc())
        return job.id, "failed", reason


def run_pool(todo: list[Job], settings, work, workers, threads) -> Iterator[tuple]:
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
        with ProcessPoolExecutor(workers, ctx, init_worker, (threads,)) as pool:
            running = {}
            while (queue or suspects or running) and not broken:
                # a job retried after a crash runs alone, until it is done
                alone = suspects or any(crashes[j.id] for j in running.values())
                while (suspects or queue) and len(running) < (1 if alone else workers):
                    source = suspects or queue
                    job = source.popleft()
                    try:
                        running[pool.submit(run_one, job, settings, work, threads)] = job
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
            save_fail(Path(work), job, "failed", "worker_crashed", message)
            yield job.id, "failed", "worker_crashed"

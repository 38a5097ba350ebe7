"""Worker processes of a conversion: each converts one job and writes its work (or fail) file.

``run_one`` never raises for a bad object: it records the object as failed (or filtered) with a
reason and moves on. Only ``OutputError`` (the machine cannot take the output) stops a run.
``run_pool`` keeps a process pool busy, survives workers that die (OOM kills, crashes in
native code) and kills a worker whose object runs past the per-object time limit.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import signal
import sys
import threading
import time
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

#: set in each pool worker by ``init_worker``: where it reports (id, pid, time) as a job starts
_STARTED = None


class ObjectTimeout(BaseException):
    """An object ran past the time limit. A ``BaseException``, so that no ``except Exception``
    of a parser turns it into an ordinary failure."""


# ----------------------------------------------------------------------------------------------
# CPUs


def available_cpus(cgroup: str | os.PathLike = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: its affinity mask (``taskset``, Slurm's binding), capped by
    the cgroup CPU quota (containers, Slurm's cgroup plugin), which ``os.cpu_count()`` ignores.

    The quota comes from ``cpu.max`` (cgroup v2: ``"<quota> <period>"`` or ``"max ..."``) or
    ``cpu/cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` (v1; -1: none), rounded up.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        n = os.cpu_count() or 1
    quota = _cgroup_quota(Path(cgroup))
    if quota is not None:
        n = min(n, math.ceil(quota))
    return max(1, n)


def _cgroup_quota(root: Path) -> float | None:
    """The cgroup CPU quota in CPUs, or None for none (or no cgroup file to read)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for sub in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        try:
            quota = int((root / sub / "cpu.cfs_quota_us").read_text())
            period = int((root / sub / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota <= 0 or period <= 0 else quota / period
    return None


def default_threads(workers: int) -> int:
    """Threads per worker for open3d ray casting: the available CPUs divided among workers."""
    return max(1, available_cpus() // max(1, workers))


# ----------------------------------------------------------------------------------------------
# One object


def init_worker(threads: int, started=None) -> None:
    import torch

    global _STARTED
    _STARTED = started
    torch.set_num_threads(1)  # the FPS loop is serial; extra threads only contend
    os.environ["OMP_NUM_THREADS"] = str(threads)


@contextlib.contextmanager
def _alarm(seconds: float | None) -> Iterator[None]:
    """Raise ``ObjectTimeout`` in this (main) thread after ``seconds``. Soft: Python runs the
    handler between bytecodes, so a hang inside native code is only stopped by ``run_pool``."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not seconds or not usable:
        yield
        return

    def expire(signum, frame):
        raise ObjectTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_one(
    job: Job, settings: Settings, work: str, threads: int, timeout: float | None = None
) -> tuple[str, str, str]:
    """Convert one job and write its work (or fail) file. Returns (id, outcome, reason).

    :param timeout: seconds before the object is recorded as ``timeout`` (in-process runs; a
        pool enforces its limit from outside, by killing the worker).
    """
    work_dir = Path(work)
    if _STARTED is not None:
        _STARTED.put((job.id, os.getpid(), time.time()))
    try:
        try:
            with _alarm(timeout):
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
    except ObjectTimeout:
        return _record_timeout(work_dir, job, timeout)
    except Exception as e:  # a bug or an input no check caught: record it, keep going
        reason = f"error:{type(e).__name__}"
        save_fail(work_dir, job, "failed", reason, traceback.format_exc())
        return job.id, "failed", reason


def _record_timeout(work: Path, job: Job, timeout: float) -> tuple[str, str, str]:
    message = f"no result within {timeout:g} s (--timeout); the conversion was stopped"
    save_fail(work, job, "failed", "timeout", message)
    return job.id, "failed", "timeout"


# ----------------------------------------------------------------------------------------------
# A pool of workers


def run_pool(
    todo: list[Job], settings, work, workers, threads, timeout: float | None = None
) -> Iterator[tuple]:
    """Yield one result per job from a process pool with at most ``workers`` jobs in flight.

    A worker that dies (OOM kill, segfault) breaks the pool and fails every job in flight with
    it. Those jobs are retried in a fresh pool one at a time, so a second death names its job:
    that one is recorded as ``worker_crashed`` and the others carry on.

    A job still running ``timeout`` seconds after its worker took it is recorded as
    ``timeout``: its worker is killed (SIGKILL: a hang in native code ignores anything
    gentler), which breaks the pool; the other jobs in flight go back to the queue, uncounted,
    and a fresh pool carries on.
    """
    queue, suspects, crashes = deque(todo), deque(), Counter()
    poll = max(0.05, min(1.0, timeout / 10)) if timeout else None
    while queue or suspects:
        # forkserver: a clean single-threaded server imports the heavy modules once and forks
        # the workers from it (a plain fork of this process could inherit running threads).
        ctx = get_context("forkserver")
        ctx.set_forkserver_preload(["data_tools.convert"])
        started = ctx.SimpleQueue() if timeout else None  # one per pool: a kill may break it
        died, broken, expired, clock = [], False, set(), {}  # clock: id -> (pid, start)
        with ProcessPoolExecutor(workers, ctx, init_worker, (threads, started)) as pool:
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
                done, _ = wait(running, timeout=poll, return_when=FIRST_COMPLETED)
                if timeout:
                    expired |= _kill_expired(started, clock, running.values(), timeout)
                if broken or any(isinstance(f.exception(), BrokenProcessPool) for f in done):
                    broken = True
                    done, _ = wait(running)  # the rest fail (or finish) with the pool
                for fut in done:
                    job = running.pop(fut)
                    clock.pop(job.id, None)
                    if isinstance(fut.exception(), BrokenProcessPool):
                        died.append(job)
                    else:
                        yield fut.result()  # re-raises OutputError: the run stops
        if expired:
            ids = ", ".join(sorted(expired))
            print(f"note: {ids} ran past --timeout {timeout:g} s: worker killed", file=sys.stderr)
        elif died:
            ids = ", ".join(j.id for j in died)
            print(f"note: a worker process died while converting {ids}", file=sys.stderr)
        for job in died:
            if job.id in expired:
                yield _record_timeout(Path(work), job, timeout)
                continue
            if expired:  # in flight beside a job we killed: not a suspect
                queue.appendleft(job)
                continue
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


def _kill_expired(started, clock: dict, running, timeout: float) -> set[str]:
    """Kill the workers of running jobs that took them more than ``timeout`` s ago (as the
    workers reported); return those jobs' ids."""
    while not started.empty():
        job_id, pid, t = started.get()
        clock[job_id] = (pid, t)
    now, killed = time.time(), set()
    for job in running:
        pid, t = clock.get(job.id, (None, now))
        if pid is not None and now - t > timeout:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.add(job.id)
            del clock[job.id]  # killed once
    return killed

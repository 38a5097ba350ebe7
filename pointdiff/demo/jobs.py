"""A bounded job queue with one worker: many web users, one model in memory.

Requests become ``Job``s in a FIFO of at most ``max_waiting`` entries; one worker thread runs
them in order, so however many users submit at once, only one sampling batch is ever in memory
next to the model. A submission that finds the queue full is refused at once with ``Busy``
(the web app answers HTTP 503 with a message) instead of being dropped or held open. A job
reports its stage and step while it runs; its results, and every finished job, are kept in
bounded in-memory stores under random ids, the only handles the browser ever gets.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: ``report(stage, step, steps)``: what a running job is doing (steps 0: no step count)
Report = Callable[[str, int, int], None]


class Busy(RuntimeError):
    """The queue is full; the message says how full and what to do."""


@dataclass
class Job:
    """One request. ``state``: queued -> running -> done | failed."""

    id: str
    request: Any
    state: str = "queued"
    stage: str = ""
    step: int = 0
    steps: int = 0
    error: str = ""
    results: list = field(default_factory=list)
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None


class JobQueue:
    """FIFO of jobs run one at a time by ``run(request, report) -> results`` on a worker thread.

    :param run: does the work; an exception fails only its job. ``ValueError``'s message is
        shown to the user as is (our errors subclass it); other errors are shown by type.
    :param max_waiting: jobs that may wait behind the running one; one more is ``Busy``.
    :param keep_jobs: finished jobs kept for their status pages (oldest forgotten first).
    """

    def __init__(
        self, run: Callable[[Any, Report], list], max_waiting: int = 8, keep_jobs: int = 256
    ):
        if max_waiting < 1:
            raise ValueError(f"max_waiting must be >= 1, got {max_waiting}")
        self._run = run
        self.max_waiting = max_waiting
        self._keep = keep_jobs
        self._waiting: deque[Job] = deque()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="pointdiff-demo-worker")
        self._worker.daemon = True
        self._worker.start()

    # ------------------------------------------------------------------------------------------
    # Called by request handlers (any thread)

    def submit(self, request: Any) -> Job:
        """Queue a request; raise ``Busy`` when ``max_waiting`` jobs already wait."""
        with self._cond:
            if self._closed:
                raise Busy("the server is shutting down")
            if len(self._waiting) >= self.max_waiting:
                raise Busy(
                    f"busy: {len(self._waiting)} requests are already waiting (the limit); "
                    "please try again in a minute"
                )
            job = Job(id=secrets.token_urlsafe(12), request=request)
            self._waiting.append(job)
            self._jobs[job.id] = job
            self._forget_old()
            self._cond.notify_all()
            return job

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            return self._jobs.get(job_id)

    def status(self, job_id: str) -> dict | None:
        """A job's state as plain data (``position``: jobs ahead of it while queued)."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            out = {
                "id": job.id,
                "state": job.state,
                "stage": job.stage,
                "step": job.step,
                "steps": job.steps,
                "error": job.error,
                "results": list(job.results),
            }
            if job.state == "queued":
                out["position"] = next(i for i, j in enumerate(self._waiting) if j is job)
            return out

    def counts(self) -> dict:
        with self._cond:
            running = sum(j.state == "running" for j in self._jobs.values())
            return {"waiting": len(self._waiting), "running": running, "limit": self.max_waiting}

    def wait(self, job_id: str, timeout: float | None = None) -> Job | None:
        """Block until the job has finished (tests, the load benchmark); None if unknown."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while (job := self._jobs.get(job_id)) is not None and job.finished is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left)
            return job

    def close(self, timeout: float = 5.0) -> None:
        """Refuse new jobs, let the running one finish (waiting ones fail), stop the worker."""
        with self._cond:
            self._closed = True
            while self._waiting:
                job = self._waiting.popleft()
                job.state, job.error, job.finished = "failed", "server stopped", time.monotonic()
            self._cond.notify_all()
        self._worker.join(timeout)

    # ------------------------------------------------------------------------------------------
    # The worker

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._waiting.popleft()
                job.state, job.started = "running", time.monotonic()
                self._cond.notify_all()
            try:
                results = self._run(job.request, lambda *a, job=job: self._report(job, *a))
                update = {"state": "done", "results": list(results)}
            except ValueError as e:  # a refusal with its reason (bad prompt, no surface, ...)
                update = {"state": "failed", "error": str(e)}
            except Exception as e:  # one job's failure must not stop the queue
                update = {"state": "failed", "error": f"{type(e).__name__}: {e}"}
            with self._cond:
                for key, value in update.items():
                    setattr(job, key, value)
                job.finished = time.monotonic()
                self._cond.notify_all()

    def _report(self, job: Job, stage: str, step: int, steps: int) -> None:
        with self._cond:
            job.stage, job.step, job.steps = stage, step, steps

    def _forget_old(self) -> None:
        """Drop the oldest finished jobs beyond ``keep_jobs`` (queued/running ones stay)."""
        extra = len(self._jobs) - self._keep
        for job_id in [k for k, j in self._jobs.items() if j.finished is not None][: max(extra, 0)]:
            del self._jobs[job_id]


class ResultStore:
    """The files of this run's results, in memory under random ids; the oldest results are
    dropped beyond ``max_results`` so a long-running demo holds bounded memory."""

    def __init__(self, max_results: int = 48):
        self._max = max_results
        self._items: OrderedDict[str, tuple[dict, dict[str, bytes]]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, info: dict, files: dict[str, bytes]) -> dict:
        """Store one result; returns ``info`` with its new ``id``."""
        rid = secrets.token_urlsafe(12)
        info = {**info, "id": rid, "files": sorted(files)}
        with self._lock:
            self._items[rid] = (info, files)
            while len(self._items) > self._max:
                self._items.popitem(last=False)
        return info

    def get(self, rid: str) -> tuple[dict | None, dict[str, bytes]]:
        """(description, files by name) of a result; (None, {}) when unknown or dropped."""
        with self._lock:
            return self._items.get(rid, (None, {}))

    def gallery(self) -> list[dict]:
        """Every stored result's description, newest first."""
        with self._lock:
            return [info for info, _ in reversed(self._items.values())]

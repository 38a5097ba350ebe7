"""Stopping cleanly when the scheduler asks: SIGTERM (preemption, ``scancel``, the end of a
job's time) or SIGUSR1 (SLURM's advance warning, ``sbatch --signal=USR1@120``).

``StopSignal`` installs handlers that only record the signal. After every optimizer step the
loop asks ``requested()``: the ranks agree on it (a max over ranks on a CPU group, so CUDA is not
synchronised), so every rank finishes the same step, they write a checkpoint together and the
loop returns; ``--resume`` continues at the next step, with no sample lost or repeated. The
training scripts then exit with ``REQUEUE_EXIT_CODE``. DataLoader workers ignore both signals
(``ignore_in_worker``): a scheduler signals every process of a job, and a worker that died of it
would abort the main process before its checkpoint.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from pointdiff.training import distributed as dist

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
#: exit status of a run stopped by a signal after its checkpoint: sysexits.h EX_TEMPFAIL ("try
#: again later"), so a job script can tell it from success (0) and failure (1) and requeue.
REQUEUE_EXIT_CODE = 75


class StopSignal:
    """Records SIGTERM/SIGUSR1 between ``install()`` and ``restore()`` (from the main thread;
    elsewhere Python cannot set handlers, so the default ones stay)."""

    def __init__(self):
        self.received: int = 0
        self._previous: dict = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._record) for s in SIGNALS}

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _record(self, signum: int, frame) -> None:
        self.received = self.received or signum

    def requested(self) -> str | None:
        """Collective: the name of a signal some rank received (``"SIGTERM"``), else None."""
        agreed = dist.max_over_ranks(self.received)
        return signal.Signals(agreed).name if agreed else None


def ignore_in_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the main process decides when to stop (module doc)."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def run_script(prog: str, main: Callable[[], dict]) -> None:
    """Run a training script's ``main`` (it returns ``loop.train``'s result): a bad argument,
    config or checkpoint ends with one ``prog: error:`` line instead of a traceback; a run stopped
    by SIGTERM/SIGUSR1 (after its checkpoint) exits with ``REQUEUE_EXIT_CODE``; the process group
    is shut down either way."""
    try:
        result = main()
    except (ValueError, KeyError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise SystemExit(f"{prog}: error: {msg}") from None
    finally:
        dist.shutdown()
    if result["stopped"]:
        raise SystemExit(REQUEUE_EXIT_CODE)

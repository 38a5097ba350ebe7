"""The training scripts' entry: one error line for bad input, the requeue status after a stop."""

import pytest

from pointdiff.training.preemption import REQUEUE_EXIT_CODE, run_script


def _raise(error: Exception):
    def main() -> dict:
        raise error

    return main


@pytest.mark.parametrize(
    "error, line",
    [
        (ValueError("--lr must be positive"), "train_x.py: error: --lr must be positive"),
        (KeyError("unknown preset 'big'"), "train_x.py: error: unknown preset 'big'"),
        (FileNotFoundError("no shards in d"), "train_x.py: error: no shards in d"),
    ],
)
def test_bad_input_ends_with_one_error_line(error, line):
    with pytest.raises(SystemExit) as stop:
        run_script("train_x.py", _raise(error))
    assert str(stop.value.code) == line


def test_a_stopped_run_exits_with_the_requeue_status_and_a_finished_one_returns():
    with pytest.raises(SystemExit) as stop:
        run_script("train_x.py", lambda: {"stopped": "SIGTERM", "step": 3})
    assert stop.value.code == REQUEUE_EXIT_CODE
    assert run_script("train_x.py", lambda: {"stopped": None, "step": 4}) is None


def test_other_errors_keep_their_traceback():
    with pytest.raises(RuntimeError, match="a bug"):
        run_script("train_x.py", _raise(RuntimeError("a bug")))

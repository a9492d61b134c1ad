"""camid.util.pool: the same results on workers as in this process, a failing or dying task
reported with its item, and no deadlock when the caller runs threads."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from camid.errors import JobError
from camid.util import pool
from camid.util.pool import parallel_map

_SHARED: dict[str, np.ndarray] = {}


@pytest.fixture(autouse=True)
def _small_lists_on_workers(monkeypatch):
    """These tests' short item lists go to the workers all the same."""
    monkeypatch.setattr(pool, "MIN_ITEMS", 4)
_HELD = threading.Lock()  # held by a thread of the caller while the pool starts


def _share(table: np.ndarray) -> None:
    _SHARED["table"] = table


def _lookup(i: int) -> float:
    return float(_SHARED["table"][i] * 2)


def _fail_on_five(i: int) -> int:
    if i == 5:
        raise ValueError("five is bad")
    return i


def _die_on_five(i: int) -> int:
    if i == 5:
        os._exit(3)  # what a segfault or the OOM killer looks like from outside
    return i


def _locked(i: int) -> int:
    with _HELD:
        return i


def test_workers_give_the_in_process_results_in_order_and_unordered():
    table = np.arange(40, dtype=np.float64) ** 1.5
    items = list(range(40))
    one = list(parallel_map(_lookup, items, 1, "one", initializer=_share, initargs=(table,)))
    two = list(parallel_map(_lookup, items, 2, "two", initializer=_share, initargs=(table,)))
    loose = list(parallel_map(_lookup, items, 2, "loose", ordered=False, initializer=_share, initargs=(table,)))
    assert one == two == [float(v * 2) for v in table]
    assert sorted(loose) == one


@pytest.mark.parametrize("workers", [1, 2])
def test_a_task_that_raises_is_reported_with_its_item(workers):
    with pytest.raises(ValueError, match="five is bad") as info:
        list(parallel_map(_fail_on_five, list(range(12)), workers, "numbers"))
    assert "numbers: raised by item 5" in getattr(info.value, "__notes__", [])


# loky's manager thread trips over the dead worker's leftover queue entry: its noise, not ours
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_worker_that_dies_is_a_clear_error_naming_the_item_not_a_hang():
    with pytest.raises(JobError, match=r"numbers: a worker process died .* while running one of") as info:
        list(parallel_map(_die_on_five, list(range(12)), 2, "numbers"))
    assert "5" in str(info.value).split("item(s): ", 1)[1].split(", ")
    # ...and the next call gets a working pool again.
    assert list(parallel_map(_fail_on_five, [1, 2, 3, 4], 2, "again")) == [1, 2, 3, 4]


def test_a_thread_holding_a_lock_does_not_deadlock_the_workers():
    """A forked worker inherits the lock held (by a thread it does not have) and waits forever."""
    out: list[int] = []
    release = threading.Event()

    def hold() -> None:
        with _HELD:
            release.wait(120)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    runner = threading.Thread(target=lambda: out.extend(parallel_map(_locked, list(range(8)), 2, "locked")),
                              daemon=True)
    runner.start()
    runner.join(120)
    release.set()
    assert out == list(range(8)), "the pool hung: its workers inherited a lock held by a thread of the caller"


def _where(i: int) -> str:
    return os.getcwd()


def test_a_warm_pool_follows_the_callers_working_folder(tmp_path, monkeypatch):
    """Relative paths in items resolve where the caller is: warm workers started in another
    folder are not reused (they wrote a second pipeline's files into the first one's folder)."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        assert set(parallel_map(_where, list(range(8)), 2, "cwd")) == {str(tmp_path / name)}

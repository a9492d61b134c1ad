"""The one process pool: ``parallel_map`` runs a function over items on worker processes.

The workers are joblib's loky processes: started fresh (never forked, so a thread the caller
started cannot deadlock them), kept warm between calls, and a worker that dies (a segfault,
the OOM killer) is reported as a ``JobError`` naming the items it may have been running
instead of hanging the pool. (Subprocess jobs, one per GPU, are ``camid.jobs``.)
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, as_completed, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from joblib.externals.loky import ProcessPoolExecutor

from ..errors import JobError
from .log import progress
from .runtime import configure_threads

T = TypeVar("T")
R = TypeVar("R")

SHOWN_ITEMS = 8  # items named in the report of a dead worker
# Fewer items than this run in this process: a fresh worker imports its job's modules (1-3 s
# each on 2 cores), more than a few dozen small items take (issue #23: the suite's PRNU tests).
MIN_ITEMS = 48
IDLE_S = 300  # a warm worker left idle this long exits (the next call starts another)

# The warm pool: (workers, _Init, environment, working folder) -> its executor. Our own, not loky's reusable
# singleton, which joblib.Parallel (the stacker bags) takes over as its own.
_WARM: dict[tuple[Any, ...], Any] = {}


class _Init:
    """What a worker runs first: ``initializer(*initargs)``. Compared by its pickle, so a warm
    pool is reused exactly when the next call would start its workers the same way."""

    def __init__(self, initializer: Callable[..., None] | None, initargs: tuple[Any, ...]):
        self.initializer, self.initargs = initializer, initargs
        self.blob = pickle.dumps((initializer, initargs), protocol=pickle.HIGHEST_PROTOCOL)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Init) and other.blob == self.blob

    def __hash__(self) -> int:
        return hash(self.blob)

    def __getstate__(self) -> tuple[Any, ...]:
        return self.initializer, self.initargs  # the worker needs no key: the arguments go once

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.initializer, self.initargs = state
        self.blob = b""

    def __call__(self) -> None:
        configure_threads()  # OpenCV on one thread: the parallelism is the pool's
        if self.initializer is not None:
            self.initializer(*self.initargs)


def _call(fn: Callable[[T], R], item: T, desc: str) -> R:
    try:
        return fn(item)
    except Exception as exc:
        exc.add_note(f"{desc}: raised by item {_show(item)}")
        raise


def _run_chunk(fn: Callable[[T], R], chunk: Sequence[T], desc: str) -> list[R]:
    return [_call(fn, item, desc) for item in chunk]


def _show(item: Any, width: int = 200) -> str:
    text = repr(item)
    return text if len(text) <= width else text[:width] + "..."


def parallel_map(fn: Callable[[T], R], items: Sequence[T], workers: int, desc: str, *, ordered: bool = True,
                 initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = (),
                 unit: str = "it") -> Iterator[R]:
    """``fn(item)`` for every item on ``workers`` processes, with a progress bar on a terminal.

    Results come in item order (``ordered=False``: as they finish). ``fn`` and ``initializer``
    must be importable (module-level) functions; ``initializer(*initargs)`` runs once in each
    worker, so large ``initargs`` are sent once per worker, not per item. An exception raised
    by ``fn`` reaches the caller as it was, with a note naming the item. One worker, or fewer
    than ``MIN_ITEMS`` items, run in this process after the same ``initializer``, with the same
    results.
    """
    if workers <= 1 or len(items) < MIN_ITEMS:
        if initializer is not None:
            initializer(*initargs)
        yield from (_call(fn, item, desc) for item in progress(items, desc, len(items), unit))
        return
    executor = _executor(workers, _Init(initializer, initargs))
    size = max(1, min(16, len(items) // (workers * 8)))
    chunks = {executor.submit(_run_chunk, fn, items[i:i + size], desc): items[i:i + size]
              for i in range(0, len(items), size)}
    done = False
    try:
        finished = as_completed(chunks) if not ordered else iter(chunks)
        yield from progress((r for f in finished for r in _result(f, chunks, desc)), desc, len(items), unit)
        done = True
    finally:
        if not done:  # an error, or the caller stopped early: no work left running behind its back
            _WARM.clear()
            executor.shutdown(wait=False, kill_workers=True)


def _executor(workers: int, init: _Init) -> Any:
    """The warm pool when it was started the same way, else a new one (replacing it). The
    environment is part of the key (settings such as the decode cache travel in it), and so is
    the working folder: a worker keeps the one it started in, and relative paths resolve there."""
    key = (workers, init, tuple(sorted(os.environ.items())), os.getcwd())
    if key not in _WARM:
        for old in _WARM.values():
            old.shutdown(wait=True)
        _WARM.clear()
        _WARM[key] = ProcessPoolExecutor(workers, timeout=IDLE_S, initializer=init, env=dict(os.environ))
    return _WARM[key]


def _result(future: Future, chunks: dict[Future, Sequence[Any]], desc: str) -> list[Any]:
    try:
        out: list[Any] = future.result()
    except BrokenProcessPool as exc:
        wait(chunks)
        lost = [item for f, chunk in chunks.items() if isinstance(f.exception(), BrokenProcessPool) for item in chunk]
        shown = ", ".join(_show(item, 80) for item in lost[:SHOWN_ITEMS])
        more = f" and {len(lost) - SHOWN_ITEMS} more" if len(lost) > SHOWN_ITEMS else ""
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise JobError(f"{desc}: a worker process died ({first}) while running one of {len(lost)} item(s): "
                       f"{shown}{more}") from exc
    return out

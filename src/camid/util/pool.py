"""The one process pool: ``parallel_map`` runs a function over items on worker processes.

(Subprocess jobs, one per GPU, are ``camid.jobs.queue``.)
"""
from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from .log import progress

T = TypeVar("T")
R = TypeVar("R")


def parallel_map(fn: Callable[[T], R], items: Sequence[T], workers: int, desc: str, *, ordered: bool = True,
                 initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = (),
                 unit: str = "it") -> Iterator[R]:
    """``fn(item)`` for every item on ``workers`` processes, with a progress bar on a terminal.

    Results come in item order (``ordered=False``: as they finish). Workers are forked, so
    they inherit the imported modules and ``initargs`` (large arrays are not pickled per
    item); ``initializer(*initargs)`` runs once in each. One worker, or fewer than four
    items, run in this process after the same ``initializer``, with the same results.
    """
    if workers <= 1 or len(items) < 4:
        if initializer is not None:
            initializer(*initargs)
        yield from (fn(item) for item in progress(items, desc, len(items), unit))
        return
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    chunk = max(1, min(16, len(items) // (workers * 8)))
    # The pool starts before the progress bar, so no monitor thread exists at fork time.
    with ctx.Pool(workers, initializer=initializer, initargs=initargs) as pool:
        results = (pool.imap if ordered else pool.imap_unordered)(fn, items, chunksize=chunk)
        yield from progress(results, desc, len(items), unit)

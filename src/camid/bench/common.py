"""What the ``camid bench`` sections share: the result row and timing on one core."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# The checkout (src/camid/bench/ -> the repository root): the benchmark scripts' default data and
# output folders sit beside it or in it.
REPO = Path(__file__).resolve().parents[3]


@dataclass
class Row:
    section: str
    item: str
    baseline: str  # what the ratio is measured against
    baseline_value: float | None
    value: float | None
    unit: str
    ratio: float | None  # > 1: faster than the baseline
    note: str = ""


@contextlib.contextmanager
def one_core() -> Iterator[None]:
    """torch and OpenCV on one thread, as inside a DataLoader worker."""
    import cv2
    import torch

    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start

"""What every stage prints: one line per read/write event, and progress bars on a terminal only."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def stage_log(stage: str, message: str) -> None:
    """One line per read/write event, so every stage says what it touched."""
    print(f"[camid {stage}] {message}", flush=True)


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """``items`` with a tqdm bar when stderr is a terminal; silent otherwise, so a log file
    gets the stage's own summary lines instead of thousands of carriage-return frames."""
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, total=total, unit=unit, leave=False, disable=None)

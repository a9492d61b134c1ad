"""What every stage prints: one line per read/write event, and progress bars on a terminal only."""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from tqdm import tqdm

T = TypeVar("T")


def stage_log(stage: str, message: str) -> None:
    """One line per read/write event, so every stage says what it touched."""
    print(f"[camid {stage}] {message}", flush=True)


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> tqdm[T]:
    """``items`` with a tqdm bar on stderr when it is a terminal, silent otherwise: a log file
    gets the stages' own summary lines (one per epoch in training) instead of thousands of
    carriage-return frames."""
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, unit=unit, leave=False, disable=None)

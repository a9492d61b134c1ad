"""Facts of the competition that training, validation and level 2 share (docs/competition.md).

The metric weighs accuracy 0.7 on the unaltered test images and 0.3 on the manipulated
ones; a test file's name says which it is (``*_unalt.*`` / ``*_manip.*``), and that is
the ``manip`` flag given to the network.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError

UNALT_WEIGHT = 0.7
MANIP_WEIGHT = 0.3


def weighted(unalt: float, manip: float) -> float:
    """The metric's mix of an unaltered and a manipulated quantity (accuracy, loss)."""
    return UNALT_WEIGHT * unalt + MANIP_WEIGHT * manip


def manip_flag(fname: str) -> int:
    """1 for ``*_manip.*``, 0 for ``*_unalt.*`` (the competition's test naming)."""
    stem = Path(fname).stem
    if stem.endswith("_manip"):
        return 1
    if stem.endswith("_unalt"):
        return 0
    raise DataError(f"test file {fname!r} is neither *_unalt nor *_manip; "
                    "rename it or use `camid identify` for arbitrary photos")

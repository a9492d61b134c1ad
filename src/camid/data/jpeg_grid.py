"""The 8-px JPEG block grid of a crop: where it lies in a crop, and where the test crops have it.

A test crop is the centre crop of a JPEG photo (or of its manipulation), so its pixels keep the
photo's 8x8 DCT blocks at a phase set by the photo size: the crop's top-left pixel sits at
``centre offset mod 8`` of its block (4128x3096, the Galaxy S4's size, gives a row phase of 4).
Training crops, validation and OOF crops must see the camera's blocks at the phases the test
crops have, or the network learns a block position it is never tested at.

The estimator: a decoded JPEG's luminance, cut into 8x8 blocks on its own grid and transformed,
has AC coefficients near multiples of the quantisation steps, many of them at zero; on any other
grid the DCT mixes two blocks and few are zero. The phase with the most near-zero coefficients
is the grid. On 512-px crops of the real photos in ../shared/data (6 phone models, Nikon D70/D70s;
``bench_out`` script in BENCHMARKS.md) it found every phase whose margin passed ``MIN_MARGIN``
(333 of 360 crops; the misses are one tablet's photos, which show no grid at all).
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import ImageReadError
from .crops import BLOCK, GRID
from .images import read_image

Phase = tuple[int, int]

# Crops measured per test set (every k-th `_unalt` crop by name): the phases come from the photo
# sizes, a few per model, so a hundred crops find every one of them (about 4 s on a loaded core).
MAX_CROPS = 100
# Side of the centre window measured in each crop (a multiple of 8: its origin keeps the phase);
# 128 px found the same phases as 256 px on the real photos, in a third of the time.
WINDOW = 128
# A grid is "clear" when its share of near-zero AC coefficients beats the runner-up phase by this.
MIN_MARGIN = 0.05
# Phases found in fewer than this share of the clear crops are estimator noise, not a photo size.
MIN_SHARE = 0.05


def _dct_matrix(n: int = BLOCK) -> np.ndarray:
    k, i = np.mgrid[0:n, 0:n]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix()


def estimate_phase(img: np.ndarray, window: int = WINDOW) -> tuple[Phase, float]:
    """``((row, col), margin)``: the block position of the crop's top-left pixel (its offset in
    the JPEG-coded picture, mod 8) and how clearly the best phase beats the runner-up (the
    difference of their shares of near-zero AC coefficients; below ``MIN_MARGIN``: no clear grid).
    """
    y = np.asarray(img, np.float64)
    if y.ndim == 3:
        y = y[..., :3] @ np.array([0.299, 0.587, 0.114])
    h, w = y.shape
    wy, wx = min(window, h) // BLOCK * BLOCK, min(window, w) // BLOCK * BLOCK
    if wy < 3 * BLOCK or wx < 3 * BLOCK:
        return (0, 0), 0.0
    top, left = (h - wy) // 2 // BLOCK * BLOCK, (w - wx) // 2 // BLOCK * BLOCK
    y = y[top:top + wy, left:left + wx] - 128.0
    zeros = np.zeros((BLOCK, BLOCK))
    for a in range(BLOCK):
        for b in range(BLOCK):
            hh, ww = wy - BLOCK, wx - BLOCK  # the same number of blocks at every phase
            blocks = y[a:a + hh, b:b + ww].reshape(hh // BLOCK, BLOCK, ww // BLOCK, BLOCK).transpose(0, 2, 1, 3)
            ac = (_DCT @ blocks @ _DCT.T).reshape(-1, BLOCK * BLOCK)[:, 1:]
            zeros[a, b] = float((np.abs(ac) < 0.5).mean())
    a, b = (int(i) for i in np.unravel_index(int(zeros.argmax()), zeros.shape))
    runner_up, best = np.sort(zeros.ravel())[-2:]
    # a block starting at row a of the crop means the crop starts 8 - a rows into a block
    return ((-a) % BLOCK, (-b) % BLOCK), float(best - runner_up)


@dataclass(frozen=True)
class PhaseSet:
    """Grid phases ``(row, col)`` with their shares: what the training crops are drawn from."""

    phases: tuple[Phase, ...]
    weights: tuple[float, ...]

    def draw(self, rng: np.random.Generator) -> Phase:
        """One phase; a single-phase set draws nothing (a run keeps its random stream)."""
        if len(self.phases) == 1:
            return self.phases[0]
        return self.phases[int(rng.choice(len(self.phases), p=np.asarray(self.weights)))]

    def for_key(self, key: str) -> Phase:
        """A deterministic draw for one image (validation and OOF crops): the set's shares over a
        data set, the same phase for the same file in every fold and run."""
        if len(self.phases) == 1:
            return self.phases[0]
        u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") / 2.0 ** 64
        return self.phases[min(int(np.searchsorted(np.cumsum(self.weights), u, side="right")), len(self.phases) - 1)]

    def shifted(self, dy: int, dx: int) -> PhaseSet:
        """The phases ``(dy, dx)`` further into the crop (a view that starts there)."""
        return PhaseSet(tuple(((p + dy) % BLOCK, (q + dx) % BLOCK) for p, q in self.phases), self.weights)

    def describe(self) -> str:
        return ", ".join(f"{p}:{w:.0%}" for p, w in zip(self.phases, self.weights, strict=True))


ZERO = PhaseSet(((0, 0),), (1.0,))
# every phase that keeps the 2x2 colour-filter grid: a network trained on all of them does not care
ALL_EVEN = PhaseSet(tuple((p, q) for p in range(0, BLOCK, GRID) for q in range(0, BLOCK, GRID)),
                    (1.0 / (BLOCK // GRID) ** 2,) * (BLOCK // GRID) ** 2)


@dataclass(frozen=True)
class GridSurvey:
    """What the test crops say about their grid: the phase set (None: no clear grid in any crop)."""

    phases: PhaseSet | None
    measured: int  # crops read
    clear: int  # crops with a clear grid


def sample_names(fnames: Sequence[str], limit: int = MAX_CROPS) -> list[str]:
    """The crops measured: every k-th of the sorted names, at most ``limit``."""
    names = sorted(fnames)
    step = max(1, -(-len(names) // limit))
    return names[::step]


def measure(crops: Sequence[tuple[str, np.ndarray]]) -> GridSurvey:
    """The phase set of these (name, decoded crop) pairs: phases of the clear crops by share,
    rare ones (under ``MIN_SHARE``) dropped as estimator noise."""
    found: dict[Phase, int] = {}
    for _, img in crops:
        phase, margin = estimate_phase(img)
        if margin >= MIN_MARGIN:
            found[phase] = found.get(phase, 0) + 1
    clear = sum(found.values())
    kept = {p: n for p, n in sorted(found.items()) if n >= MIN_SHARE * clear}
    if not kept:
        return GridSurvey(None, len(crops), clear)
    total = sum(kept.values())
    return GridSurvey(PhaseSet(tuple(kept), tuple(n / total for n in kept.values())), len(crops), clear)


def survey_test_set(test: pd.DataFrame) -> GridSurvey:
    """Measure the grid of the ``_unalt`` crops of ``test`` (``layout.scan_test``: fname, path,
    manip): a resize moves the grid of a ``_manip`` crop; an unaltered one shows the camera's blocks."""
    paths = dict(zip(test["fname"], test["path"], strict=True))
    crops = []
    for name in sample_names(test.loc[test["manip"] == 0, "fname"].tolist()):
        try:
            crops.append((name, read_image(paths[name])))
        except ImageReadError:
            continue  # training goes on without it; predict refuses an unreadable test file
    return measure(crops)

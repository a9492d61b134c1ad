"""How a competition test crop is made: the one implementation `camid simulate` and `camid compose` share.

The Kaggle test set (docs/competition.md, "Data"): 512 px centre crops of photos from a second
device, named ``img_<7 hex>_unalt.tif`` or ``img_<7 hex>_manip.tif``; a ``_manip`` crop is the
photo (or a centre window of it) put through one of the 8 manipulations, then centre-cropped.
Names, the manipulation rotation, the crop itself, the TIFF and the two answer tables
(``solution.csv``, ``sample_submission.csv``) are made here, so a simulated and a composed
competition cannot drift apart.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..util.io import atomic_path, write_csv
from .crops import MCU, centre_crop, centre_offset
from .layout import SAMPLE_SUBMISSION, SOLUTION, TEST_DIR
from .manipulations import MANIPULATION_NAMES, apply

NAME_DIGITS = 7  # img_<7 hex digits>_...


def unique_names(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct random 7-hex-digit names, in draw order."""
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        for v in rng.integers(0, 16 ** NAME_DIGITS, size=n - len(names)):
            name = f"{int(v):0{NAME_DIGITS}x}"
            if name not in seen:
                seen.add(name)
                names.append(name)
    return names


def test_fname(name: str, manipulation: str) -> str:
    """The test file name: ``img_<name>_unalt.tif`` for ``none``, else ``img_<name>_manip.tif``."""
    return f"img_{name}_{'unalt' if manipulation == 'none' else 'manip'}.tif"


def rotating_manipulation(k: int) -> str:
    """The k-th manipulated crop's manipulation: one global rotation over the 8, so they are
    balanced overall and within any run of consecutive crops."""
    return MANIPULATION_NAMES[k % len(MANIPULATION_NAMES)]


def window_origin(height: int, width: int, window: int) -> tuple[int, int]:
    """The centre ``window`` square's top-left corner, on the 16-px JPEG grid of the photo, so a
    JPEG manipulation re-compresses on the camera's own 8x8 blocks."""
    return centre_offset(height, window, MCU), centre_offset(width, window, MCU)


def crop_origin(height: int, width: int, size: int) -> tuple[int, int]:
    """Where the ``_unalt`` crop of a photo's centre test window sits (the ``size`` square at the
    centre of the ``2 x size`` window at ``window_origin``): the sensor region of ``camid compose``'s
    test crops, and so of the ``+match`` fingerprints."""
    y, x = window_origin(height, width, 2 * size)
    return y + centre_offset(2 * size, size), x + centre_offset(2 * size, size)


def make_test_crop(photo: np.ndarray, manipulation: str, size: int, window: int | None = None,
                   origin: tuple[int, int] | None = None) -> np.ndarray:
    """One test crop (uint8 HxWx3, ``size`` square).

    ``window`` None: the whole photo is manipulated, then centre-cropped (the simulator's test
    set). ``window`` W: the W square at ``origin`` (default: the centre, ``window_origin``) is
    cut first; ``_unalt`` is its centre ``size`` crop, ``_manip`` its manipulated centre crop
    (the organisers' 1024 window for 512 crops: resize0.5 still fills the crop).
    """
    region = photo
    if window is not None:
        y, x = origin if origin is not None else window_origin(photo.shape[0], photo.shape[1], window)
        region = photo[y:y + window, x:x + window]
    return np.ascontiguousarray(centre_crop(apply(np.ascontiguousarray(region), manipulation), size))


def write_test_crop(out: Path, fname: str, crop: np.ndarray) -> str:
    """Write ``test/<fname>`` (uint8 RGB TIFF, as Kaggle's); returns its path relative to ``out``."""
    rel = f"{TEST_DIR}/{fname}"
    with atomic_path(out / rel) as tmp:
        Image.fromarray(crop).save(tmp, format="TIFF")
    return rel


def write_answer_tables(out: Path, fnames: Sequence[str], cameras: Sequence[str],
                        manipulations: Sequence[str], first_class: str) -> pd.DataFrame:
    """``solution.csv`` (fname, camera, manipulation; sorted by fname) and ``sample_submission.csv``
    (every test file, camera = ``first_class``, as Kaggle's). Returns the solution."""
    solution = pd.DataFrame({"fname": list(fnames), "camera": list(cameras), "manipulation": list(manipulations)})
    solution = solution.sort_values("fname", kind="mergesort").reset_index(drop=True)
    write_csv(out / SOLUTION, solution)
    write_csv(out / SAMPLE_SUBMISSION, solution[["fname"]].assign(camera=first_class))
    return solution

"""Crop logic shared by training, validation, out-of-fold prediction and the simulator.

Offsets are even so a crop keeps the 2x2 colour-filter grid of the sensor, and
pre-crops taken before a manipulation are aligned to 16 px so JPEG re-compression
sees the same 8x8/16x16 block grid as the full image.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Literal, Protocol, TypeVar

import numpy as np

from . import manipulations


class Croppable(Protocol):
    """What a crop needs: a decoded HxWx3 array, or an undecoded JPEG region
    (``fastjpeg.LazyCrop``) that slices without decoding and decodes when numpy asks."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, key: Any, /) -> Any: ...


C = TypeVar("C", bound=Croppable)

GRID = 2  # colour-filter (Bayer) period
MCU = 16  # JPEG minimum coded unit for 4:2:0
BLOCK = 8  # JPEG DCT block


def pad_to(img: C, size: int) -> C | np.ndarray:
    """Reflect-pad so both sides are at least ``size`` (small external photos, tiny tests)."""
    h, w = img.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if not ph and not pw:
        return img
    mode: Literal["reflect", "symmetric"] = "reflect" if h > 1 and w > 1 and ph < h and pw < w else "symmetric"
    return np.pad(np.asarray(img), ((0, ph), (0, pw), (0, 0)), mode=mode)


def centre_offset(length: int, size: int, align: int = GRID) -> int:
    return ((length - size) // 2) // align * align


def centre_crop(img: np.ndarray, size: int, align: int = GRID) -> np.ndarray:
    padded = pad_to(img, size)
    h, w = padded.shape[:2]
    y, x = centre_offset(h, size, align), centre_offset(w, size, align)
    return padded[y:y + size, x:x + size]


def phased_offset(length: int, size: int, phase: int) -> int:
    """The crop offset nearest the centre with ``offset % 8 == phase`` (ties: the lower one): a
    centre crop whose JPEG blocks sit where the test crops have them. The centre offset when
    the image leaves no room for that phase."""
    c, room = centre_offset(length, size), length - size
    below = c - (c - phase) % BLOCK
    fits = [o for o in (below, below + BLOCK) if 0 <= o <= room]
    return min(fits, key=lambda o: (abs(o - c), o)) if fits else c


def phased_random_crop(img: Croppable, size: int, rng: np.random.Generator, phase: tuple[int, int]) -> Croppable:
    """Uniform random crop on the 8-px block grid shifted by ``phase`` (row, col): offsets
    ``8k + phase``. A side with no room for its phase is cropped at 0."""
    img = pad_to(img, size)
    h, w = img.shape[:2]
    offsets = []
    for room, p in ((h - size, phase[0]), (w - size, phase[1])):
        offsets.append(int(rng.integers((room - p) // BLOCK + 1)) * BLOCK + p if room >= p else 0)
    y, x = offsets
    return img[y:y + size, x:x + size]


def random_crop(img: Croppable, size: int, rng: np.random.Generator, align: int = GRID) -> Croppable:
    """Uniform random crop whose offsets are multiples of ``align``."""
    img = pad_to(img, size)
    h, w = img.shape[:2]
    y = int(rng.integers((h - size) // align + 1)) * align
    x = int(rng.integers((w - size) // align + 1)) * align
    return img[y:y + size, x:x + size]


# Source pixels kept beyond the bicubic kernel's reach (2) around a resized region.
_RESIZE_MARGIN = 4
# A scale p/q needs region origins on multiples of q; beyond this q, resize the whole photo.
_MAX_DENOMINATOR = 64


def _resize_span(length: int, size: int, scale: float) -> tuple[int, int, int]:
    """``(start, stop, offset)``: resizing source ``[start, stop)`` by ``scale`` and cropping
    ``[offset, offset + size)`` gives the whole photo's resized centre crop, pixel for pixel.

    With an exact factor, output pixel ``i`` samples source ``(i + 0.5) / scale - 0.5``; a
    region starting at ``start`` with ``start * scale`` an integer samples at the same
    phases, so its outputs are the full resize's, away from the region's own borders."""
    full = manipulations.resized_length(length, scale)
    o = centre_offset(full, size)
    den = Fraction(scale).limit_denominator(1000).denominator
    if den > _MAX_DENOMINATOR:
        return 0, length, o
    first = math.floor((o + 0.5) / scale - 0.5) - _RESIZE_MARGIN
    last = math.ceil((o + size - 0.5) / scale - 0.5) + _RESIZE_MARGIN + 1
    start = max(0, first) // den * den
    return start, min(length, last), o - round(start * scale)


def manipulated_centre_crop(img: np.ndarray, name: str, size: int, phase: tuple[int, int] | None = None) -> np.ndarray:
    """The test-set recipe: manipulate the photo, then take its centre ``size`` crop.

    ``phase`` (row, col): place the crop, within 7 px of the centre, where its JPEG blocks have
    that phase (``phased_offset``), i.e. where the test crops have theirs (a photo of another
    size than the test photos has its centre at another phase); None: the centre. A resize has
    no camera grid left at 8 px, so its crop stays at the resized photo's centre.

    Only a centre region large enough for the final crop is manipulated (a 12-megapixel
    resize per variant would dominate the run time), and the crop is taken where the full
    photo's centre crop falls. The pixels equal manipulating the whole photo: JPEG and gamma
    regions start on the 16-px MCU grid (same blocks as the whole photo), resize regions on
    origins where the exact factor puts output pixels at the same sampling phases.
    """
    if name == "none" and phase is None:
        return np.ascontiguousarray(centre_crop(img, size))
    manip = manipulations.get(name) if name != "none" else None
    h, w = img.shape[:2]
    if manip is not None and manip.kind.resamples:
        scale = manip.scale
        if min(manipulations.resized_length(h, scale), manipulations.resized_length(w, scale)) < size:
            # a small photo: resized whole and padded, like the test recipe does
            return np.ascontiguousarray(centre_crop(manip(img), size))
        y0, y1, oy = _resize_span(h, size, scale)
        x0, x1, ox = _resize_span(w, size, scale)
        out = manip(np.ascontiguousarray(img[y0:y1, x0:x1]))
        return np.ascontiguousarray(out[oy:oy + size, ox:ox + size])
    img = np.asarray(pad_to(img, size))
    h, w = img.shape[:2]
    cy, cx = ((centre_offset(h, size), centre_offset(w, size)) if phase is None else
              (phased_offset(h, size, phase[0]), phased_offset(w, size, phase[1])))
    if manip is None:
        return np.ascontiguousarray(img[cy:cy + size, cx:cx + size])
    # 3 MCUs of margin cover the centre's rounding to 16 px and a phase shift of up to 7 px
    need = size + 3 * MCU
    ph, pw = min(h, need), min(w, need)
    y, x = centre_offset(h, ph, MCU), centre_offset(w, pw, MCU)
    out = manip(np.ascontiguousarray(img[y:y + ph, x:x + pw]))
    oy, ox = cy - y, cx - x
    return np.ascontiguousarray(out[oy:oy + size, ox:ox + size])

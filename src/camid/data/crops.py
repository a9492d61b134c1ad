"""Crop logic shared by training, validation, out-of-fold prediction and the simulator.

Offsets are even so a crop keeps the 2x2 colour-filter grid of the sensor, and
pre-crops taken before a manipulation are aligned to 16 px so JPEG re-compression
sees the same 8x8/16x16 block grid as the full image.
"""
from __future__ import annotations

import math
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


def random_crop(img: Croppable, size: int, rng: np.random.Generator, align: int = GRID) -> Croppable:
    """Uniform random crop whose offsets are multiples of ``align``."""
    img = pad_to(img, size)
    h, w = img.shape[:2]
    y = int(rng.integers((h - size) // align + 1)) * align
    x = int(rng.integers((w - size) // align + 1)) * align
    return img[y:y + size, x:x + size]


def manipulated_centre_crop(img: np.ndarray, name: str, size: int) -> np.ndarray:
    """The test-set recipe: manipulate the photo, then take its centre ``size`` crop.

    Only an MCU-aligned centre region large enough for the final crop is
    manipulated (a 12-megapixel resize per variant would dominate the run time),
    and the crop is taken where the full photo's centre crop falls. The pixels
    equal manipulating the whole photo for JPEG, gamma and the 0.5/2.0 resizes;
    for 0.8/1.5 the bicubic sampling phase can differ by a fraction of a pixel.
    """
    if name == "none":
        return np.ascontiguousarray(centre_crop(img, size))
    kind, value = manipulations.parse(name)
    scale = value if kind == "resize" else 1.0
    img = pad_to(img, int(math.ceil(size / scale)))
    h, w = img.shape[:2]
    need = int(math.ceil(size / scale)) + 3 * MCU
    ph, pw = min(h, need), min(w, need)
    y, x = centre_offset(h, ph, MCU), centre_offset(w, pw, MCU)
    out = manipulations.apply(np.ascontiguousarray(img[y:y + ph, x:x + pw]), name)
    full_h, full_w = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    oy = centre_offset(full_h, size) - int(round(y * full_h / h))
    ox = centre_offset(full_w, size) - int(round(x * full_w / w))
    oy = min(max(oy, 0), out.shape[0] - size)
    ox = min(max(ox, 0), out.shape[1] - size)
    return np.ascontiguousarray(pad_to(out, size)[oy:oy + size, ox:ox + size])

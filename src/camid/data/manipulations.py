"""The 8 competition manipulations, as pure functions on uint8 RGB arrays.

This module is the single implementation used by training augmentation,
validation, out-of-fold variants, the robustness report and the simulator.

- JPEG: Pillow's libjpeg(-turbo) with the standard IJG tables scaled to the
  quality, 4:2:0 chroma subsampling (libjpeg's and OpenCV's default), no optimisation.
- Resize: OpenCV ``INTER_CUBIC`` (the organisers' "bicubic") by exactly ``scale``
  (``fx = fy = scale``), output size ``side * scale`` rounded half to even as OpenCV
  does. An exact factor keeps the sampling phase of every output pixel a function of
  its position only, so a centre region resized on its own reproduces the whole photo's
  pixels (``crops.manipulated_centre_crop``).
- Gamma: ``255 * (x / 255) ** gamma`` rounded half up, through a 256-entry table.
"""
from __future__ import annotations

import re
from collections.abc import Callable

import cv2
import numpy as np

from .images import decode_bytes, encode_jpeg

Manipulation = Callable[[np.ndarray], np.ndarray]

def _check_image(img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 RGB array, got {getattr(img, 'dtype', type(img))} "
                         f"{getattr(img, 'shape', '')}")


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """Compress at ``quality`` (1-100) with the standard tables and 4:2:0 subsampling, and decode."""
    _check_image(img)
    return decode_bytes(encode_jpeg(img, quality, "4:2:0"))


def resized_length(length: int, scale: float) -> int:
    """The side of a resized image: OpenCV's ``cvRound(length * scale)`` (half to even)."""
    return max(1, int(np.rint(length * scale)))


def resize(img: np.ndarray, scale: float) -> np.ndarray:
    """Bicubic resize by exactly ``scale`` (OpenCV ``INTER_CUBIC`` with ``fx = fy = scale``)."""
    _check_image(img)
    if not 0.05 <= scale <= 20:
        raise ValueError(f"resize scale out of range: {scale}")
    h, w = img.shape[:2]
    if resized_length(h, scale) != int(np.rint(h * scale)) or resized_length(w, scale) != int(np.rint(w * scale)):
        # a side that would round to 0: OpenCV refuses fx/fy then, so give the size explicitly
        return cv2.resize(img, (resized_length(w, scale), resized_length(h, scale)), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)


def gamma_table(gamma: float) -> np.ndarray:
    x = np.arange(256, dtype=np.float64) / 255.0
    return np.floor(255.0 * np.power(x, gamma) + 0.5).clip(0, 255).astype(np.uint8)


def gamma(img: np.ndarray, g: float) -> np.ndarray:
    """Gamma correction ``255 * (x/255) ** g``, rounded half up."""
    _check_image(img)
    if not g > 0:
        raise ValueError(f"gamma must be positive, got {g}")
    return cv2.LUT(img, gamma_table(g))  # same values as table[img], several times faster


# Order is the competition's; names are the `aug` values of the probability tables.
MANIPULATIONS: dict[str, Manipulation] = {
    "jpeg70": lambda im: jpeg(im, 70),
    "jpeg90": lambda im: jpeg(im, 90),
    "resize0.5": lambda im: resize(im, 0.5),
    "resize0.8": lambda im: resize(im, 0.8),
    "resize1.5": lambda im: resize(im, 1.5),
    "resize2.0": lambda im: resize(im, 2.0),
    "gamma0.8": lambda im: gamma(im, 0.8),
    "gamma1.2": lambda im: gamma(im, 1.2),
}
MANIPULATION_NAMES: tuple[str, ...] = tuple(MANIPULATIONS)

# Ranges of the `continuous` training policy (docs/recipe.md §2, built in `augment`) and
# the robustness report's shaded training ranges.
CONTINUOUS_RANGES = {"jpeg": (70, 90), "gamma": (0.8, 1.2), "resize": (0.5, 2.0)}

_NAME_RE = re.compile(r"^(jpeg|resize|gamma)(\d+(?:\.\d+)?)$")


def parse(name: str) -> tuple[str, float]:
    """``'resize0.8'`` -> ``('resize', 0.8)``; accepts any parameter, not only the 8."""
    m = _NAME_RE.match(name)
    if not m:
        raise ValueError(f"unknown manipulation {name!r}; known: {', '.join(MANIPULATION_NAMES)}")
    return m.group(1), float(m.group(2))


def apply(img: np.ndarray, name: str) -> np.ndarray:
    """Apply a manipulation given by name, e.g. ``jpeg70`` or ``gamma0.95``; ``none`` is identity."""
    if name == "none":
        return img
    if name in MANIPULATIONS:
        return MANIPULATIONS[name](img)
    kind, value = parse(name)
    if kind == "jpeg":
        return jpeg(img, int(value))
    if kind == "resize":
        return resize(img, value)
    return gamma(img, value)


def sample(rng: np.random.Generator) -> str:
    """Draw one of the 8 competition manipulations, uniformly."""
    return MANIPULATION_NAMES[int(rng.integers(len(MANIPULATION_NAMES)))]

"""The 8 competition manipulations, as pure functions on uint8 RGB arrays.

This module is the single implementation used by training augmentation,
validation, out-of-fold variants, the robustness report and the simulator, and the one
place that knows each kind of manipulation (``Kind``: its function, whether it resamples
the photo and so moves its JPEG grid, its continuous training range, its robustness
curve) and each competition manipulation (``Manipulation``: a kind at one parameter).

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
from dataclasses import dataclass

import cv2
import numpy as np

from .images import decode_bytes, encode_jpeg


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


@dataclass(frozen=True)
class Kind:
    """A family of manipulations with one parameter (``jpeg`` quality, ``resize`` scale, ``gamma``):
    everything the samples, crops, training policies and the robustness report know about it."""

    name: str
    function: Callable[[np.ndarray, float], np.ndarray]
    spell: Callable[[float], str]  # the parameter as it is written in a name: "70", "2.0", "0.8"
    # The parameter is a scale factor: the photo is resampled, so its size changes and its 8-px
    # JPEG grid is gone (crops resample a region, samples take the final crop off that grid).
    resamples: bool
    continuous: tuple[float, float]  # the ``continuous`` training policy's range (augment)
    label: str  # robustness report: the axis
    curve: tuple[float, ...]  # robustness report: the write-up's grid of parameters
    identity: float | None = None  # the parameter that changes nothing (robustness: the unaltered point)

    def name_of(self, value: float) -> str:
        """The manipulation's name at ``value``; ``none`` at the identity."""
        return "none" if value == self.identity else f"{self.name}{self.spell(value)}"


@dataclass(frozen=True)
class Manipulation:
    """One manipulation: a kind at one parameter, applied by calling it on a uint8 RGB array."""

    name: str
    kind: Kind
    value: float

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return self.kind.function(img, self.value)

    @property
    def moves_grid(self) -> bool:
        """Whether the 8-px JPEG block grid of the photo is gone afterwards."""
        return self.kind.resamples

    @property
    def scale(self) -> float:
        """Output side / input side."""
        return self.value if self.kind.resamples else 1.0


# Order: the robustness report's panels and the ``continuous`` policy's choices.
KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("jpeg", lambda im, q: jpeg(im, int(q)), lambda q: str(int(q)), False, (70, 90), "JPEG quality",
         tuple(range(5, 100, 10))),
    Kind("gamma", gamma, lambda g: f"{g:g}", False, (0.8, 1.2), "gamma", (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
         identity=1.0),
    Kind("resize", resize, lambda s: str(float(s)), True, (0.5, 2.0), "resize factor",
         (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0), identity=1.0),
)}


def _pinned(kind: str, value: float) -> Manipulation:
    return Manipulation(KINDS[kind].name_of(value), KINDS[kind], value)


# The 8 competition manipulations. Order is the competition's; names are the `aug` values of the
# probability tables.
MANIPULATIONS: dict[str, Manipulation] = {m.name: m for m in (
    _pinned("jpeg", 70), _pinned("jpeg", 90),
    _pinned("resize", 0.5), _pinned("resize", 0.8), _pinned("resize", 1.5), _pinned("resize", 2.0),
    _pinned("gamma", 0.8), _pinned("gamma", 1.2),
)}
MANIPULATION_NAMES: tuple[str, ...] = tuple(MANIPULATIONS)

# Ranges of the `continuous` training policy (docs/recipe.md §2, built in `augment`) and
# the robustness report's shaded training ranges.
CONTINUOUS_RANGES = {k.name: k.continuous for k in KINDS.values()}

_NAME_RE = re.compile(rf"^({'|'.join(KINDS)})(\d+(?:\.\d+)?)$")


def parse(name: str) -> tuple[str, float]:
    """``'resize0.8'`` -> ``('resize', 0.8)``; accepts any parameter, not only the 8."""
    m = _NAME_RE.match(name)
    if not m:
        raise ValueError(f"unknown manipulation {name!r}; known: {', '.join(MANIPULATION_NAMES)}")
    return m.group(1), float(m.group(2))


def get(name: str) -> Manipulation:
    """The manipulation a name stands for: one of the 8, or any parameter of a kind (``gamma0.95``)."""
    if name in MANIPULATIONS:
        return MANIPULATIONS[name]
    kind, value = parse(name)
    return Manipulation(name, KINDS[kind], value)


def apply(img: np.ndarray, name: str) -> np.ndarray:
    """Apply a manipulation given by name, e.g. ``jpeg70`` or ``gamma0.95``; ``none`` is identity."""
    return img if name == "none" else get(name)(img)


def sample(rng: np.random.Generator) -> str:
    """Draw one of the 8 competition manipulations, uniformly."""
    return MANIPULATION_NAMES[int(rng.integers(len(MANIPULATION_NAMES)))]

"""The simulated cameras of ``camid simulate``: camera models, their devices, the scenes
they photograph, and the image processor and JPEG encoder that turn a shot into a file.

No real competition data can be downloaded here, so photos are rendered from simulated
cameras (``sim.competition`` lays them out as the Kaggle competition, ``sim.external_pool``
as a scrape of photo sites).

A camera MODEL is a processing pipeline (colour-filter pattern, demosaicing,
white balance and colour matrix, tone curve, denoise/sharpening, JPEG quality and
chroma subsampling). A DEVICE of a model adds its own PRNU fixed pattern and noise
levels; train photos come from device A and test photos from device B, as in the
competition. The PRNU strength is calibrated to real photos: two crops of one device
correlate about as weakly as real natural-scene crops do, and some models have none
usable (``prnu_level``; BENCHMARKS.md, "Sensor noise: real vs simulated").
No single discrete setting identifies a class: every CFA pattern, demosaicing
algorithm, JPEG quality and subsampling mode is shared by at least two models (when
there are >= 4), so only the combination (plus the continuous colour, tone and
sharpening settings) tells them apart.

Every image is seeded from (seed, class, device, index), never from worker order,
so the same options give byte-identical files for any number of workers.
"""
from __future__ import annotations

import functools
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..config import MAX_EXTERNAL_DEVICES
from ..data import images

KAGGLE_CLASSES: tuple[str, ...] = (
    "HTC-1-M7", "iPhone-4s", "iPhone-6", "LG-Nexus-5x", "Motorola-Droid-Maxx",
    "Motorola-Nexus-6", "Motorola-X", "Samsung-Galaxy-Note3", "Samsung-Galaxy-S4", "Sony-NEX-7",
)
DEVICES: tuple[str, ...] = ("A", "B")  # A shoots the training photos, B the test photos

# The discrete pipeline choices; each used value is shared by >= 2 models.
CFA_PATTERNS: tuple[str, ...] = ("RGGB", "BGGR", "GRBG", "GBRG")  # 2x2 tile, row-major
DEMOSAIC_ALGORITHMS: tuple[str, ...] = ("bilinear", "malvar", "hamilton_adams", "smooth_hue")
JPEG_QUALITIES: tuple[int, ...] = (90, 92, 93, 95, 96, 97)
SUBSAMPLINGS: tuple[str, ...] = ("4:4:4", "4:2:2", "4:2:0")  # order fixes the seeded draws
JPEG_QUALITY_JITTER = 1  # per-photo quality is the model's +- this
DISCRETE_CHOICES: dict[str, tuple[Any, ...]] = {
    "cfa": CFA_PATTERNS,
    "demosaic": DEMOSAIC_ALGORITHMS,
    "jpeg_quality": JPEG_QUALITIES,
    "subsampling": SUBSAMPLINGS,
}

# Independent random streams: the second seed word says what a generator is for (S_NAMES:
# sim.competition's test file names).
_S_ASSIGN, _S_MODEL, _S_DEVICE, _S_PRNU, _S_SCENE, _S_SENSOR, S_NAMES, _S_PRNU_LEVEL, _S_FLAT = range(1, 10)
# A and B keep codes 0 and 1 (their bytes must never change); C, D, ... are the
# external pool's further devices (camid.sim.external_pool).
DEVICE_CODES = {d: i for i, d in enumerate(string.ascii_uppercase[:len(DEVICES) + MAX_EXTERNAL_DEVICES])}
# Sensor fixed-pattern strength, calibrated so that the same-device NCC of two photos' crop
# residuals matches real photos (BENCHMARKS.md, "Sensor noise: real vs simulated").
PRNU_LEVELS = (0.011, 0.024)  # a model's PRNU std, log-uniform
# Temporal noise at base ISO (std in units of full scale; shot noise: variance per unit signal).
# Flat-fields fix it against PRNU: their same-device NCC, where no scene leaks into the
# residual, is 0.013-0.047 on the real photos; with the earlier noise (read 0.0005-0.002, shot
# 2e-5-8e-5, PRNU half as strong) it was 0.057-0.241 and only the scene leakage kept natural
# photos in range (BENCHMARKS.md, "Sensor noise: real vs simulated", flat-fields).
READ_NOISE = (0.004, 0.008)
SHOT_NOISE = (8.75e-4, 1.5e-3)
PRNU_DEVICE_SPREAD = 0.15  # each device's std is its model's times 1 +- this
PRNU_NONE_EVERY = 5  # one model in every 5 consecutive classes has no usable PRNU ...
PRNU_NONE_STD = 0.0005  # ... only this much
_TONE_LUT_SIZE = 4096  # the sensor's 12-bit ADC resolution
_BT601 = np.array([[0.299, 0.587, 0.114],
                   [-0.168736, -0.331264, 0.5],
                   [0.5, -0.418688, -0.081312]], dtype=np.float32)
_BT601_INV = np.linalg.inv(_BT601).astype(np.float32)


def class_names(n_classes: int) -> list[str]:
    """The Kaggle folder names for the first 10 classes, then Camera-11, Camera-12, ..."""
    return [KAGGLE_CLASSES[i] if i < len(KAGGLE_CLASSES) else f"Camera-{i + 1}" for i in range(n_classes)]


def seeded_rng(*words: int) -> np.random.Generator:
    """An independent random stream named by its seed words (seed, purpose, class, ...)."""
    return np.random.default_rng(np.random.SeedSequence([int(w) for w in words]))


# --------------------------------------------------------------------------- cameras


@dataclass(frozen=True)
class CameraModel:
    """One camera model: a fixed processing pipeline (tuples keep it hashable and JSON-able)."""

    index: int
    name: str
    cfa: str
    demosaic: str
    jpeg_quality: int
    subsampling: str
    sensor_matrix: tuple[float, ...]  # 3x3 row-major: scene RGB -> raw channel responses
    ccm: tuple[float, ...]  # 3x3 row-major: white-balanced raw -> output RGB
    wb_bias: tuple[float, float, float]  # the auto white balance's systematic cast
    gamma: float
    toe: float
    s_curve: float
    denoise_luma: float  # blend weight of a Gaussian-smoothed luma
    denoise_chroma: float  # Gaussian sigma on the chroma planes
    sharpen_amount: float
    sharpen_radius: float


@dataclass(frozen=True)
class Device:
    """One physical unit of a model: its own sensor fixed pattern and noise levels."""

    class_index: int
    device: str
    prnu_std: float
    read_noise: float  # std in units of full scale, at base ISO
    shot_noise: float  # variance per unit signal, at base ISO


def _balanced_column(pool: Sequence[Any], n: int, rng: np.random.Generator) -> list[Any]:
    # Use at most n // 2 distinct values so that each one is used by >= 2 models.
    k = max(1, min(len(pool), n // 2))
    chosen = [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]
    return [chosen[i % k] for i in range(n)]


def _assign_discrete(n_classes: int, seed: int) -> list[dict[str, Any]]:
    """Joint draw of the discrete settings: balanced, shared, and unique in combination."""
    rng = seeded_rng(seed, _S_ASSIGN, n_classes)
    columns = {key: _balanced_column(pool, n_classes, rng) for key, pool in DISCRETE_CHOICES.items()}
    for _ in range(1000):  # reshuffle until no two models share every discrete setting
        for column in columns.values():
            rng.shuffle(column)
        combos = list(zip(*columns.values(), strict=True))
        if len(set(combos)) == n_classes:
            break
    return [dict(zip(columns, combo, strict=True)) for combo in combos]


def _flat(m: np.ndarray) -> tuple[float, ...]:
    return tuple(round(float(v), 6) for v in m.ravel())


def draw_model(index: int, name: str, seed: int, discrete: dict[str, Any]) -> CameraModel:
    """Camera model ``index``: the given discrete choices (``DISCRETE_CHOICES`` keys) and
    continuous settings drawn from (seed, index)."""
    # Continuous settings come from (seed, class) only, and every model draws from the
    # same ranges, so none of them is a class label on its own.
    rng = seeded_rng(seed, _S_MODEL, index)
    crosstalk = rng.uniform(0.05, 0.10, size=(3, 3))
    np.fill_diagonal(crosstalk, 0.0)
    sensor = np.eye(3) + crosstalk
    sensor /= sensor.sum(axis=1, keepdims=True)  # white in, equal responses out
    saturation = rng.uniform(0.95, 1.1)
    luma = np.array([[0.299, 0.587, 0.114]])
    boost = saturation * np.eye(3) + (1.0 - saturation) * np.repeat(luma, 3, axis=0)
    ccm = boost @ np.linalg.inv(sensor)  # rows still sum to 1: grey stays grey
    return CameraModel(
        index=index, name=name,
        cfa=discrete["cfa"], demosaic=discrete["demosaic"],
        jpeg_quality=int(discrete["jpeg_quality"]), subsampling=discrete["subsampling"],
        sensor_matrix=_flat(sensor), ccm=_flat(ccm),
        wb_bias=_flat(np.exp(rng.normal(0.0, 0.015, size=3))),  # type: ignore[arg-type]
        gamma=round(float(rng.uniform(2.1, 2.4)), 6),
        toe=round(float(rng.uniform(0.005, 0.02)), 6),
        s_curve=round(float(rng.uniform(0.05, 0.25)), 6),
        denoise_luma=round(float(rng.uniform(0.1, 0.4)), 6),
        denoise_chroma=round(float(rng.uniform(0.6, 1.4)), 6),
        sharpen_amount=round(float(rng.uniform(0.2, 0.8)), 6),
        sharpen_radius=round(float(rng.uniform(0.7, 1.4)), 6),
    )


def make_models(n_classes: int, seed: int) -> list[CameraModel]:
    """The camera models of a simulated competition (class i is ``class_names(n)[i]``)."""
    names = class_names(n_classes)
    discrete = _assign_discrete(n_classes, seed)
    return [draw_model(i, names[i], seed, discrete[i]) for i in range(n_classes)]


def prnu_level(class_index: int, seed: int) -> float:
    """The PRNU strength of model ``class_index``'s sensors (std of K before the device's spread).

    Sensor technology and the firmware's processing set how much fixed pattern survives in a
    photo, so the strength is a model's, log-uniform in ``PRNU_LEVELS``; in every block of
    ``PRNU_NONE_EVERY`` consecutive classes one seeded model has none usable (``PRNU_NONE_STD``):
    multi-frame computational photography averages it away."""
    block, pos = divmod(class_index, PRNU_NONE_EVERY)
    if int(seeded_rng(seed, _S_PRNU_LEVEL, block).integers(PRNU_NONE_EVERY)) == pos:
        return PRNU_NONE_STD
    lo, hi = PRNU_LEVELS
    return float(np.exp(seeded_rng(seed, _S_PRNU_LEVEL, PRNU_NONE_EVERY, class_index).uniform(np.log(lo), np.log(hi))))


def make_device(class_index: int, device: str, seed: int) -> Device:
    """Device ``A`` or ``B`` of model ``class_index`` (or an external-pool device ``C``, ``D``, ...)."""
    rng = seeded_rng(seed, _S_DEVICE, class_index, DEVICE_CODES[device])
    spread = PRNU_DEVICE_SPREAD
    return Device(class_index=class_index, device=device,
                  prnu_std=prnu_level(class_index, seed) * float(rng.uniform(1 - spread, 1 + spread)),
                  read_noise=float(rng.uniform(*READ_NOISE)),
                  shot_noise=float(rng.uniform(*SHOT_NOISE)))


@functools.lru_cache(maxsize=4)
def prnu(seed: int, class_index: int, device: str, height: int, width: int, std: float) -> np.ndarray:
    """The device's multiplicative fixed pattern K (zero mean, ``std``), made lazily at the
    photo size; all photos of one device share it. Read-only: it is cached."""
    rng = seeded_rng(seed, _S_PRNU, class_index, DEVICE_CODES[device], height, width)
    k: np.ndarray = rng.standard_normal((height, width), dtype=np.float32)
    k = cv2.GaussianBlur(k, (0, 0), 0.5)  # real PRNU is slightly low-pass (pixel crosstalk)
    k = k * (np.float32(std) / max(float(k.std()), 1e-12))
    k.setflags(write=False)
    return k


# --------------------------------------------------------------------------- scenes


def _pink_noise(rng: np.random.Generator, h: int, w: int, beta: float) -> np.ndarray:
    """Zero-mean unit-std noise with a 1/f**beta power spectrum (natural-image statistics).
    Made at half size and upsampled: the finest scales come from the grain texture."""
    hh, ww = max(h // 2, 8), max(w // 2, 8)
    spec = np.fft.rfft2(rng.standard_normal((hh, ww), dtype=np.float32))
    f = np.hypot(np.fft.fftfreq(hh)[:, None], np.fft.rfftfreq(ww)[None, :]).astype(np.float32)
    f[0, 0] = 1.0
    spec *= f ** np.float32(-beta / 2)
    spec[0, 0] = 0.0
    noise: np.ndarray = np.fft.irfft2(spec, s=(hh, ww)).astype(np.float32)
    noise = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    return (noise - noise.mean()) / max(float(noise.std()), 1e-8)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Broadcastable float32 row (Hx1) and column (1xW) coordinates."""
    return np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]


def _grain(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    g = cv2.GaussianBlur(rng.standard_normal((h, w), dtype=np.float32), (0, 0), rng.uniform(0.5, 1.0))
    return g / max(float(g.std()), 1e-8)


def _colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """Surface reflectances: log-uniform brightness, mostly muted hues."""
    lum = np.exp(rng.uniform(np.log(0.03), np.log(0.9), size=(n, 1)))
    tint = np.exp(rng.normal(0.0, rng.uniform(0.15, 0.5), size=(n, 3)))
    return np.clip(lum * tint / tint.mean(axis=1, keepdims=True), 0.005, 1.0).astype(np.float32)


def _draw_shape(rng: np.random.Generator, labels: np.ndarray, label: int, radius: float) -> None:
    h, w = labels.shape
    cx, cy = rng.uniform(-0.1 * w, 1.1 * w), rng.uniform(-0.1 * h, 1.1 * h)
    kind = rng.random()
    if kind < 0.6:
        cv2.circle(labels, (int(cx), int(cy)), max(1, int(radius)), (label,), -1, lineType=cv2.LINE_8)
        return
    if kind < 0.85:  # rotated rectangle
        box = ((float(cx), float(cy)), (float(2 * radius * rng.uniform(0.3, 1.5)),
               float(2 * radius * rng.uniform(0.3, 1.5))), float(rng.uniform(0, 180)))
        pts = cv2.boxPoints(box)
    else:  # random polygon
        k = int(rng.integers(3, 8))
        ang = np.sort(rng.uniform(0, 2 * np.pi, size=k))
        rad = radius * rng.uniform(0.4, 1.2, size=k)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)
    cv2.fillPoly(labels, [np.round(pts).astype(np.int32)], (label,))


def _dead_leaves(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Occluding shapes with power-law sizes; each has a colour and a textured interior."""
    n = int(rng.integers(200, 600))
    side = min(h, w)
    rmin, rmax = 0.005 * side + 1.0, 0.25 * side
    a = rng.uniform(1.0, 2.0)  # p(r) ~ r^-(a+1); a = 2 is the scale-invariant dead-leaves law
    u = rng.random(n)
    radii = (rmin ** -a - u * (rmin ** -a - rmax ** -a)) ** (-1 / a)
    # A covering layer of big leaves first, so no background shows, then smaller ones on top.
    n_big = int(rng.integers(12, 30))
    radii = np.concatenate([rng.uniform(0.15, 0.5, n_big) * side, np.sort(radii)[::-1]])
    n = len(radii)
    labels = np.zeros((h, w), np.int32)
    for i, r in enumerate(radii, start=1):
        _draw_shape(rng, labels, i, float(r))
    fields_ = np.stack([_pink_noise(rng, h, w, rng.uniform(1.5, 2.5)), _grating(rng, h, w),
                        _grain(rng, h, w)])
    amp = rng.uniform(0.0, 1.0, size=(n + 1, 3)) * (rng.random((n + 1, 3)) < (0.7, 0.25, 0.5))
    amp *= np.array([0.5, 0.35, 0.3])
    modulation = np.ones((h, w), np.float32)
    for j in range(3):
        modulation += amp[:, j].astype(np.float32)[labels] * fields_[j]
    img = _colours(rng, n + 1)[labels] * np.maximum(modulation, 0.05)[..., None]
    return img


def _grating(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Oriented stripes with a wandering phase: fabric, fences, tiles."""
    theta, period = rng.uniform(0, np.pi), rng.uniform(3.0, 30.0)
    yy, xx = _grid(h, w)
    phase = (xx * np.float32(np.cos(theta)) + yy * np.float32(np.sin(theta))) * np.float32(2 * np.pi / period)
    return np.sin(phase + 2.0 * _pink_noise(rng, h, w, 3.0)).astype(np.float32)


def _landscape(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Natural-ish texture: 1/f ground, optional sky gradient above a tilted horizon, a few edges."""
    mix = 1.0 / (1.0 + np.exp(-3.0 * _pink_noise(rng, h, w, 3.0)))
    c1, c2 = _colours(rng, 2)
    img = c1 * (1 - mix[..., None]) + c2 * mix[..., None]
    img *= np.exp(rng.uniform(0.2, 0.6) * _pink_noise(rng, h, w, rng.uniform(1.6, 2.4)))[..., None]
    img *= (1.0 + rng.uniform(0.0, 0.3) * _grain(rng, h, w))[..., None]
    yy, xx = _grid(h, w)
    if rng.random() < 0.6:
        horizon = rng.uniform(0.2, 0.6) * h + np.tan(rng.uniform(-0.2, 0.2)) * (xx - w / 2)
        sky_top, sky_low = _colours(rng, 2) * np.float32(1.5)
        t = np.clip(yy / max(h * 0.6, 1.0), 0, 1)[..., None]
        sky = sky_top * (1 - t) + sky_low * t
        img = np.where((yy < horizon)[..., None], sky, img)
    for _ in range(int(rng.integers(0, 6))):  # man-made flat objects with sharp edges
        x0, y0 = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        x1, y1 = x0 + int(rng.uniform(0.05, 0.4) * w), y0 + int(rng.uniform(0.05, 0.4) * h)
        cv2.rectangle(img, (x0, y0), (x1, y1), tuple(float(c) for c in _colours(rng, 1)[0]), -1)
    return img.astype(np.float32)


def _illumination(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth light falloff across the frame (HxW)."""
    yy, xx = _grid(h, w)
    yn, xn = yy / np.float32(h) - 0.5, xx / np.float32(w) - 0.5
    gx, gy, v = (np.float32(x) for x in (rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), rng.uniform(0, 0.8)))
    field = (1.0 + gx * xn + gy * yn) * (1.0 - v * (xn ** 2 + yn ** 2))
    return np.maximum(field, 0.05)


def _illuminant(rng: np.random.Generator) -> np.ndarray:
    """Light colour from warm to cool, with a slight green-magenta tint."""
    temp, tint = rng.uniform(-1, 1), rng.normal(0, 0.05)
    return np.exp(np.array([0.3 * temp, tint, -0.3 * temp], dtype=np.float32))


def render_scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random scene in linear light (float32 HxWx3, highlights may exceed 1 and clip)."""
    img = _dead_leaves(rng, height, width) if rng.random() < 0.6 else _landscape(rng, height, width)
    if rng.random() < 0.5:  # defocus of some scene parts: not every photo is sharp everywhere
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 2.0))
    img *= _illumination(rng, height, width)[..., None]
    img *= _illuminant(rng)
    lum = img[::8, ::8].mean(axis=2)
    exposure = rng.uniform(0.55, 1.05) / max(float(np.percentile(lum, 98)), 1e-4)
    img *= np.float32(exposure)
    return img.astype(np.float32, copy=False)


# --------------------------------------------------------------------------- sensor


@functools.lru_cache(maxsize=4)
def cfa_masks(pattern: str, height: int, width: int) -> dict[str, np.ndarray]:
    """Boolean masks of the R, G, B sites, plus G sites on R rows (``Gr``) and on B rows (``Gb``)."""
    pos = (np.arange(height)[:, None] % 2) * 2 + (np.arange(width)[None, :] % 2)
    masks = {c: np.isin(pos, [i for i, p in enumerate(pattern) if p == c]) for c in "RGB"}
    r_row = pattern.index("R") // 2
    rows = (np.arange(height)[:, None] % 2 == r_row)
    masks["Gr"] = masks["G"] & rows
    masks["Gb"] = masks["G"] & ~rows
    for m in masks.values():
        m.setflags(write=False)
    return masks


def mosaic(raw: np.ndarray, pattern: str) -> np.ndarray:
    """Keep one colour per pixel, as the colour-filter array does."""
    out = np.empty(raw.shape[:2], np.float32)
    for i, c in enumerate(pattern):
        dy, dx = divmod(i, 2)
        out[dy::2, dx::2] = raw[dy::2, dx::2, "RGB".index(c)]
    return out


def _filt(img: np.ndarray, kernel: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    # Reflect-101 borders keep the CFA parity at the image edge.
    return cv2.filter2D(img, -1, np.asarray(kernel, np.float32), borderType=cv2.BORDER_REFLECT_101)


_K_G = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], np.float32) / 4
_K_RB = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 4
# Malvar, He & Cutler (2004) gradient-corrected linear interpolation, in units of 1/8.
_M_G = np.array([[0, 0, -1, 0, 0], [0, 0, 2, 0, 0], [-1, 2, 4, 2, -1],
                 [0, 0, 2, 0, 0], [0, 0, -1, 0, 0]], np.float32) / 8
_M_ROW = np.array([[0, 0, .5, 0, 0], [0, -1, 0, -1, 0], [-1, 4, 5, 4, -1],
                   [0, -1, 0, -1, 0], [0, 0, .5, 0, 0]], np.float32) / 8  # colour left/right
_M_COL = _M_ROW.T.copy()  # colour above/below
_M_DIAG = np.array([[0, 0, -1.5, 0, 0], [0, 2, 0, 2, 0], [-1.5, 0, 6, 0, -1.5],
                    [0, 2, 0, 2, 0], [0, 0, -1.5, 0, 0]], np.float32) / 8


def _bilinear(m: np.ndarray, masks: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([_filt(m * masks["R"], _K_RB), _filt(m * masks["G"], _K_G),
                     _filt(m * masks["B"], _K_RB)], axis=2)


def _malvar(m: np.ndarray, masks: dict[str, np.ndarray]) -> np.ndarray:
    g = np.where(masks["G"], m, _filt(m, _M_G))
    row, col, diag = _filt(m, _M_ROW), _filt(m, _M_COL), _filt(m, _M_DIAG)
    # On a G site of an R row, R is left/right and B above/below (and vice versa).
    r = np.where(masks["R"], m, np.where(masks["Gr"], row, np.where(masks["Gb"], col, diag)))
    b = np.where(masks["B"], m, np.where(masks["Gb"], row, np.where(masks["Gr"], col, diag)))
    return np.stack([r, g, b], axis=2)


def _hamilton_adams(m: np.ndarray, masks: dict[str, np.ndarray]) -> np.ndarray:
    """Edge-directed green (interpolate along the smaller gradient), then bilinear colour differences."""
    ka, kd = [[-0.25, 0.5, 0.5, 0.5, -0.25]], [[1, 0, -1]]
    kl = [[-1, 0, 2, 0, -1]]
    gh, gv = _filt(m, ka), _filt(m, np.transpose(ka))
    dh = np.abs(_filt(m, kd)) + np.abs(_filt(m, kl))
    dv = np.abs(_filt(m, np.transpose(kd))) + np.abs(_filt(m, np.transpose(kl)))
    g_est = np.where(dh < dv, gh, np.where(dv < dh, gv, 0.5 * (gh + gv)))
    g = np.where(masks["G"], m, g_est)
    r = g + _filt((m - g) * masks["R"], _K_RB)
    b = g + _filt((m - g) * masks["B"], _K_RB)
    return np.stack([r, g, b], axis=2)


def _smooth_hue(m: np.ndarray, masks: dict[str, np.ndarray]) -> np.ndarray:
    """Cok's smooth-hue transition: bilinear green, then interpolate the R/G and B/G ratios."""
    g = _filt(m * masks["G"], _K_G)
    gs = np.maximum(g, 1e-3)
    r = gs * _filt(np.clip(m / gs, 0, 8) * masks["R"], _K_RB)
    b = gs * _filt(np.clip(m / gs, 0, 8) * masks["B"], _K_RB)
    return np.stack([r, g, b], axis=2)


_DEMOSAIC = {"bilinear": _bilinear, "malvar": _malvar, "hamilton_adams": _hamilton_adams,
             "smooth_hue": _smooth_hue}


def demosaic(m: np.ndarray, pattern: str, algorithm: str) -> np.ndarray:
    """Reconstruct float32 HxWx3 RGB from a single-channel mosaic."""
    return _DEMOSAIC[algorithm](m, cfa_masks(pattern, *m.shape)).astype(np.float32, copy=False)


@functools.lru_cache(maxsize=64)
def _tone_lut(gamma: float, toe: float, s_curve: float) -> np.ndarray:
    x = np.linspace(0.0, 1.0, _TONE_LUT_SIZE)
    # Power law with a linear-ish toe (finite slope at black, like sRGB), then an S-curve
    # whose slope is 1 + s at mid-grey and 1 - s at the ends.
    y = ((x + toe) ** (1 / gamma) - toe ** (1 / gamma)) / ((1 + toe) ** (1 / gamma) - toe ** (1 / gamma))
    y = y - s_curve * np.sin(2 * np.pi * y) / (2 * np.pi)
    lut = np.clip(y, 0, 1).astype(np.float32)
    lut.setflags(write=False)
    return lut


def _matrix(values: tuple[float, ...]) -> np.ndarray:
    return np.asarray(values, np.float32).reshape(3, 3)


@dataclass(frozen=True)
class Shot:
    """Per-photo settings: the gain, and the processing the camera adapts to it."""

    iso: float  # analogue gain, 1 = base ISO
    denoise_luma: float
    denoise_chroma: float
    sharpen_amount: float
    jpeg_quality: int


def draw_shot(model: CameraModel, rng: np.random.Generator) -> Shot:
    """Like real firmware, denoising follows the gain, sharpening is backed off on noisy shots,
    and the JPEG quality moves by one step around the model's setting (some phones pick
    tables per image); this spreads each model's traces so they overlap other models'."""
    iso = float(rng.uniform(1.0, 4.0))
    noisy = (iso - 1.0) / 3.0
    return Shot(iso=iso,
                denoise_luma=float(np.clip(model.denoise_luma + 0.2 * noisy + rng.normal(0, 0.03), 0, 0.9)),
                denoise_chroma=float(model.denoise_chroma * (1.0 + 0.4 * noisy)),
                sharpen_amount=float(model.sharpen_amount * (1.0 - 0.3 * noisy) * rng.uniform(0.85, 1.15)),
                jpeg_quality=int(np.clip(model.jpeg_quality + rng.integers(-JPEG_QUALITY_JITTER,
                                                                           JPEG_QUALITY_JITTER + 1), 1, 98)))


def develop(raw_mosaic: np.ndarray, model: CameraModel, shot: Shot) -> np.ndarray:
    """The model's image processor: demosaic -> white balance and colour matrix -> tone curve
    -> denoise/sharpen -> 8-bit RGB."""
    rgb = demosaic(raw_mosaic, model.cfa, model.demosaic)
    # Grey-world auto white balance on unclipped pixels, with the model's own cast.
    sample = rgb[::4, ::4].reshape(-1, 3)
    sample = sample[sample.max(axis=1) < 0.95]
    means = sample.mean(axis=0) if len(sample) else np.ones(3)
    gains = (means[1] / np.maximum(means, 1e-6)) * np.asarray(model.wb_bias)
    rgb = cv2.transform(rgb, _matrix(model.ccm) * gains.astype(np.float32)[None, :])
    idx = np.clip(rgb * (_TONE_LUT_SIZE - 1) + 0.5, 0, _TONE_LUT_SIZE - 1).astype(np.uint16)
    rgb = _tone_lut(model.gamma, model.toe, model.s_curve)[idx]
    y, cb, cr = cv2.split(cv2.transform(rgb, _BT601))
    y = y + np.float32(shot.denoise_luma) * (cv2.GaussianBlur(y, (0, 0), 1.0) - y)
    y = y + np.float32(shot.sharpen_amount) * (y - cv2.GaussianBlur(y, (0, 0), model.sharpen_radius))
    cb = cv2.GaussianBlur(cb, (0, 0), shot.denoise_chroma)
    cr = cv2.GaussianBlur(cr, (0, 0), shot.denoise_chroma)
    rgb = cv2.transform(cv2.merge([y, cb, cr]), _BT601_INV)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def expose(scene: np.ndarray, model: CameraModel, device: Device, shot: Shot, rng: np.random.Generator,
           seed: int) -> np.ndarray:
    """The sensor: ``scene`` (linear float RGB) -> PRNU, shot and read noise -> 12-bit mosaic."""
    h, w = scene.shape[:2]
    raw = cv2.transform(scene, _matrix(model.sensor_matrix))
    # Mosaicking first is equivalent to per-channel PRNU and noise followed by the CFA
    # (only one channel per pixel survives) and three times cheaper.
    m = mosaic(raw, model.cfa)
    m *= 1.0 + prnu(seed, device.class_index, device.device, h, w, device.prnu_std)
    var = shot.iso * device.shot_noise * np.maximum(m, 0) + (shot.iso * device.read_noise) ** 2
    m += np.sqrt(var) * rng.standard_normal((h, w), dtype=np.float32)
    return (np.round(np.clip(m, 0, 1) * 4095) / np.float32(4095)).astype(np.float32)


def encode_jpeg(img: np.ndarray, model: CameraModel, quality: int | None = None) -> bytes:
    """The model's JPEG encoder: standard tables scaled to ``quality`` (default: the model's),
    the model's chroma subsampling."""
    return images.encode_jpeg(img, int(quality or model.jpeg_quality), model.subsampling)


def capture(model: CameraModel, device: str, index: int, width: int, height: int,
            seed: int) -> tuple[np.ndarray, Shot]:
    """Photo number ``index`` of ``device`` of ``model`` before its JPEG encoder: the
    developed uint8 RGB and the shot settings (the external pool re-encodes it)."""
    scene = render_scene(seeded_rng(seed, _S_SCENE, model.index, DEVICE_CODES[device], index), height, width)
    rng = seeded_rng(seed, _S_SENSOR, model.index, DEVICE_CODES[device], index)
    shot = draw_shot(model, rng)
    raw = expose(scene, model, make_device(model.index, device, seed), shot, rng, seed)
    return develop(raw, model, shot), shot


def flat_field(model: CameraModel, device: str, index: int, size: int, seed: int, level: float = 0.5) -> bytes:
    """Flat-field shot number ``index`` of ``device``: a uniform grey scene (linear ``level``),
    ``size`` x ``size``, through the whole camera. The reference shots of PRNU work, and the
    simulator's calibration against real ones: no scene leaks into their residual."""
    rng = seeded_rng(seed, _S_FLAT, model.index, DEVICE_CODES[device], index)
    shot = draw_shot(model, rng)
    raw = expose(np.full((size, size, 3), level, np.float32), model, make_device(model.index, device, seed),
                 shot, rng, seed)
    return encode_jpeg(develop(raw, model, shot), model, shot.jpeg_quality)


def shoot(model: CameraModel, device: str, index: int, width: int, height: int, seed: int) -> bytes:
    """Photo number ``index`` of ``device`` of ``model``: the camera's JPEG file bytes."""
    img, shot = capture(model, device, index, width, height, seed)
    return encode_jpeg(img, model, shot.jpeg_quality)

"""The examiner's PRNU toolkit: device fingerprints from arbitrary photos, the fingerprint
file format, and matching of query photos with an optional search over shifts and scales.

The maths (residuals, ML fingerprint, post-processing, NCC/PCE) is ``camid.forensics.prnu``'s; this
module adds what an examiner's own photos need and the competition folders never did:

- **Geometry.** Photos are used in their stored pixel orientation (EXIF orientation is not
  applied: the PRNU sits on the sensor grid). A photo whose pixel array is portrait is a
  landscape sensor frame that software rotated for display; it is rotated back to the
  landscape frame. Which way cannot be read from such a file, so fingerprints use one fixed
  direction (``--portrait``, default 90 degrees counter-clockwise: it undoes EXIF
  orientation 6, "rotate 90 clockwise to view", the tag half the Dresden flat-fields carry
  over their landscape pixels) and matching simply tries both directions.
- **File format.** ``.npz`` (read with ``allow_pickle=False``) holding the float32
  fingerprint and a JSON metadata string: format name and version, camid version, the
  residual settings, the sensor frame and the analysed region (whole frame or a centre
  crop), and every photo used (name, size, rotation, SHA-256).
- **Search.** A query cropped from an unknown position is found by taking the PCE peak
  over every position where it fits inside the fingerprint's region (prnu-python issue #2:
  circular shifts outside that range are not valid placements); a same-size query is
  searched over all circular shifts; a resized query is scaled back by ``1/s`` for each
  candidate factor ``s``. The number of positions tried enters the false-alarm estimate.
"""
from __future__ import annotations

import json
import math
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pywt
from scipy import fft as sfft
from scipy import special

from .. import __version__
from ..data import manipulations
from ..data.crops import centre_offset
from ..data.images import is_image_file, probe_image, read_image
from ..errors import CamidError, DataError, FingerprintError, ImageReadError, UsageError
from ..util.io import atomic_path, sha256_file, write_json
from ..util.log import stage_log
from ..util.pool import parallel_map
from . import prnu

FORMAT = "camid-prnu-fingerprint"
FORMAT_VERSION = 1
DEFAULT_THRESHOLD = 60.0  # Goljan, Fridrich & Filler (SPIE 2009): the usual PCE decision threshold
MIN_CROP = 32  # below this the 4-level wavelet denoiser is mostly boundary effect
# np.rot90's k (counter-clockwise quarter turns) that brings a portrait array to landscape.
PORTRAIT_TURNS = {"ccw": 1, "cw": 3}
# A resized-back query may overshoot the frame by rounding (round(w * s) / s); trim that much.
RESIZE_SLACK = 3


# ------------------------------------------------------------------ inputs

def collect_images(items: Iterable[str | Path], strict: bool = True) -> list[Path]:
    """Files and folders (their image files, not recursive, sorted) -> paths, duplicates dropped.

    ``strict``: a missing path or a folder without images is an error (fingerprints: the
    examiner must know exactly what went in). Otherwise (queries) a missing file is kept,
    so it is reported like any unreadable query, and only an empty total is an error."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(c for c in p.iterdir() if is_image_file(c))
            if not found:
                if strict:
                    raise DataError(f"{p}: no image files in this folder")
                stage_log("prnu", f"{p}: no image files in this folder")
            out += found
        elif p.exists() or not strict:
            out.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    unique = list(dict.fromkeys(out))
    if not unique:
        raise DataError("no image files given")
    return unique


def landscape_turns(height: int, width: int, portrait: str) -> int:
    """Quarter turns (counter-clockwise) that put a ``height x width`` array in the landscape frame;
    -1 when it is portrait and ``portrait`` says to refuse it."""
    if height <= width:
        return 0
    return PORTRAIT_TURNS.get(portrait, -1)


def validate_settings(s: prnu.PrnuSettings) -> prnu.PrnuSettings:
    if s.wavelet not in pywt.wavelist(kind="discrete"):
        raise UsageError(f"unknown wavelet {s.wavelet!r}; e.g. db4 (default), db8 (prnu-python), sym8")
    return s


# ------------------------------------------------------------------ the fingerprint

@dataclass
class Fingerprint:
    """A device fingerprint ``K`` over ``region`` of the landscape sensor ``frame``."""

    k: np.ndarray  # float32, region height x width
    meta: dict[str, Any]

    @property
    def settings(self) -> prnu.PrnuSettings:
        return prnu.PrnuSettings(**self.meta["settings"])

    @property
    def frame(self) -> tuple[int, int]:
        return int(self.meta["frame"]["height"]), int(self.meta["frame"]["width"])

    @property
    def region(self) -> tuple[int, int, int, int]:
        r = self.meta["region"]
        return int(r["y"]), int(r["x"]), int(r["height"]), int(r["width"])

    @property
    def crop(self) -> int | None:
        return self.meta["crop"]

    def describe(self) -> str:
        h, w = self.frame
        where = f"centre {self.crop}x{self.crop} crop" if self.crop else "whole frame"
        s = self.meta["settings"]
        return (f"{self.meta['count']} photo(s) of {w}x{h}, {where}; residual {s['wavelet']} x{s['levels']} "
                f"sigma {s['sigma']:g}, {s['channels']}, enhance {s['enhance']}")


def region_of(frame: tuple[int, int], crop: int | None) -> tuple[int, int, int, int]:
    """(y, x, height, width) of the analysed region: the frame, or its centre crop at even offsets
    (the same crop as ``crops.centre_crop``, so the colour-filter phase is kept)."""
    h, w = frame
    if crop is None:
        return 0, 0, h, w
    if crop < MIN_CROP:
        raise UsageError(f"--crop {crop}: use at least {MIN_CROP} pixels")
    if crop > min(h, w):
        raise UsageError(f"--crop {crop} is larger than the photos' {w}x{h} frame")
    return centre_offset(h, crop), centre_offset(w, crop), crop, crop


# What every job of one run shares (set once per worker process by ``_share``).
_JOBS: dict[str, Any] = {}


def _share(values: dict[str, Any]) -> None:
    _JOBS.clear()
    _JOBS.update(values)


def _fingerprint_job(job: tuple[str, int]) -> tuple[np.ndarray, np.ndarray, float] | str:
    path, turns = job
    try:
        img = read_image(path)
    except ImageReadError as exc:
        return exc.reason
    y, x, h, w = _JOBS["region"]
    img = np.ascontiguousarray(np.rot90(img, turns)[y:y + h, x:x + w])
    if img.shape[:2] != (h, w):  # the header promised a size the pixel data did not deliver
        return f"decoded size {img.shape[1]}x{img.shape[0]} differs from its header"
    t0 = time.perf_counter()
    num, den = prnu.fingerprint_terms(img, _JOBS["settings"])
    return num, den, time.perf_counter() - t0


def build_fingerprint(items: Sequence[str | Path], s: prnu.PrnuSettings | None = None,
                      crop: int | None = None, portrait: str = "ccw", workers: int = 1) -> Fingerprint:
    """The ML fingerprint of one device from its photos (flat-fields or natural scenes).

    Every photo must show the same sensor frame: one size once portrait arrays are turned to
    landscape. Unreadable photos are skipped and listed in the metadata."""
    s = validate_settings(s or prnu.PrnuSettings())
    paths = collect_images(items, strict=True)
    skipped: list[dict[str, str]] = []
    probed: list[tuple[Path, int, int, int]] = []  # path, width, height, turns
    for p in paths:
        try:
            w, h = probe_image(p)
        except ImageReadError as exc:
            stage_log("prnu", f"skipped unreadable {p}: {exc.reason}")
            skipped.append({"path": str(p), "reason": exc.reason})
            continue
        probed.append((p, w, h, landscape_turns(h, w, portrait)))
    if not probed:
        raise DataError(f"none of the {len(paths)} photo(s) could be read")
    refused = [f"{p.name} ({w}x{h})" for p, w, h, t in probed if t < 0]
    if refused:
        raise DataError(f"{len(refused)} portrait photo(s) and --portrait {portrait}: "
                        f"{', '.join(refused[:3])}{', ...' if len(refused) > 3 else ''}; turn them with --portrait "
                        "ccw (undoes EXIF orientation 6) or cw (undoes 8), or leave them out")
    frames: dict[tuple[int, int], list[str]] = {}
    for p, w, h, _ in probed:
        frames.setdefault((min(w, h), max(w, h)), []).append(p.name)
    if len(frames) > 1:
        parts = [f"{fw}x{fh} ({len(names)}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                 for (fh, fw), names in sorted(frames.items(), key=lambda kv: -len(kv[1]))]
        raise DataError("photos of different sizes cannot share one fingerprint (the pixels would not be "
                        f"the same sensor pixels): {'; '.join(parts)}; fingerprint each size separately")
    frame = next(iter(frames))
    region = region_of(frame, crop)
    rotated = [p.name for p, _, _, t in probed if t]
    if rotated:
        stage_log("prnu", f"{len(rotated)} portrait photo(s) turned 90 degrees "
                          f"{'counter-clockwise' if portrait == 'ccw' else 'clockwise'} to the landscape frame: "
                          f"{', '.join(rotated[:5])}{', ...' if len(rotated) > 5 else ''}")
    jobs = [(str(p), t) for p, _, _, t in probed]
    outs = parallel_map(_fingerprint_job, jobs, workers, "fingerprint", initializer=_share,
                        initargs=({"region": region, "settings": s},), unit="photo")
    sums: tuple[np.ndarray, np.ndarray] | None = None
    used, times = [], []
    for (p, w, h, t), out in zip(probed, outs, strict=True):
        if isinstance(out, str):
            stage_log("prnu", f"skipped unreadable {p}: {out}")
            skipped.append({"path": str(p), "reason": out})
            continue
        sums = (out[0], out[1]) if sums is None else (sums[0] + out[0], sums[1] + out[1])
        times.append(out[2])
        used.append({"file": p.name, "path": str(p), "width": w, "height": h, "rotation_ccw_deg": 90 * t,
                     "sha256": sha256_file(p)})
    if sums is None:
        raise DataError(f"none of the {len(paths)} photo(s) could be read")
    k = prnu.finish_fingerprint(*sums).astype(np.float32)
    y, x, rh, rw = region
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "camid_version": __version__,
        "settings": asdict(s), "crop": crop,
        "frame": {"height": frame[0], "width": frame[1]},
        "region": {"y": y, "x": x, "height": rh, "width": rw},
        "portrait": portrait, "count": len(used), "images": used, "skipped": skipped,
    }
    stage_log("prnu", f"fingerprint from {len(used)} photo(s): {float(np.mean(times)):.2f} s per residual")
    return Fingerprint(k, meta)


def save_fingerprint(fp: Fingerprint, path: str | Path) -> tuple[Path, Path]:
    """Write ``path`` (.npz, atomically) and a human-readable copy of its metadata next to it
    (``<stem>.json``; informational: loading reads only the .npz)."""
    path = Path(path)
    meta = json.dumps(fp.meta, sort_keys=True)
    # A file object, not the temp path: np.savez would append .npz to a path.
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, fingerprint=fp.k.astype(np.float32), meta=np.array(meta))
    sidecar = path.with_suffix(".json") if path.suffix.lower() == ".npz" else Path(f"{path}.json")
    write_json(sidecar, fp.meta)
    return path, sidecar


def load_fingerprint(path: str | Path) -> Fingerprint:
    """Read a fingerprint written by ``save_fingerprint``; anything else is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise FingerprintError(f"fingerprint file not found: {path}")
    with open(path, "rb") as stream:
        magic = stream.read(6)
    # Checked before np.load: for anything else numpy falls back to unpickling, and its refusal
    # message advises the unsafe way round; we neither try nor suggest it.
    if magic == b"\x93NUMPY":
        raise FingerprintError(f"{path}: a single .npy array, not a camid PRNU fingerprint (.npz)")
    if not magic.startswith(b"PK\x03\x04"):
        raise FingerprintError(f"{path}: not a camid PRNU fingerprint (.npz) file, or truncated")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = sorted(npz.files)
            if "fingerprint" not in names or "meta" not in names:
                raise FingerprintError(f"{path}: not a camid PRNU fingerprint (it holds {names}); "
                                       "make one with `camid prnu fingerprint`")
            k = npz["fingerprint"]
            meta = json.loads(str(npz["meta"]))
    except FingerprintError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise FingerprintError(f"{path}: not a camid PRNU fingerprint (.npz) file, or truncated: "
                               f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    except ValueError as exc:  # pickled object arrays (refused), broken JSON, bad array headers
        why = ("it holds pickled Python objects, which camid never loads" if "pickle" in str(exc)
               else str(exc).splitlines()[0])
        raise FingerprintError(f"{path}: not a usable camid PRNU fingerprint: {why}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise FingerprintError(f"{path}: not a camid PRNU fingerprint (format {found!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise FingerprintError(f"{path}: fingerprint format version {version} (written by camid "
                               f"{meta.get('camid_version', '?')}); this camid {__version__} reads version "
                               f"{FORMAT_VERSION}: rebuild it with `camid prnu fingerprint`")
    fp = Fingerprint(k, meta)
    try:
        validate_settings(fp.settings)
        (fh, fw), (y, x, h, w) = fp.frame, fp.region
    except (KeyError, TypeError, CamidError) as exc:
        raise FingerprintError(f"{path}: damaged fingerprint metadata ({exc})") from None
    if k.dtype.kind != "f" or k.shape != (h, w) or y + h > fh or x + w > fw or not np.isfinite(k).all():
        raise FingerprintError(f"{path}: damaged fingerprint: array {k.dtype} {k.shape}, metadata says "
                               f"{h}x{w} at ({y}, {x}) of a {fh}x{fw} frame")
    fp.k = k.astype(np.float32, copy=False)
    return fp


# ------------------------------------------------------------------ detection

def log10_false_alarm(pce: float, positions: int) -> float:
    """log10 of the false-alarm probability of a peak this high among ``positions`` tries, under the
    simplifying Gaussian null of the Binghamton reference code (its ``FAfromPCE``): each
    correlation value is N(0, energy), so one try exceeds ``sqrt(PCE)`` with probability
    ``Q(sqrt(PCE))``. Real residuals are not Gaussian white noise: treat it as a lower bound."""
    if pce <= 0:
        return 0.0
    log_p = float(special.log_ndtr(-math.sqrt(pce)))  # log Q(sqrt(pce)), no underflow
    log_n = math.log(positions)
    if log_p + log_n < math.log(1e-3):
        return (log_p + log_n) / math.log(10)  # N p, exact to 0.1% here
    return math.log10(-math.expm1(positions * math.log1p(-math.exp(log_p))))


def search_peak(residual: np.ndarray, grey: np.ndarray, k: np.ndarray, circular: bool,
                exclude: int = prnu.PCE_EXCLUDE) -> tuple[float, float, int, int, int]:
    """PCE peak of a query against ``k`` over shifts: (pce, ncc, dy, dx, positions).

    The PRNU term a query residual ``W`` (h x w) carries is ``I(x) K(x + s)`` for its unknown
    placement ``s``, so the statistic is ``C(s) = sum_x W(x) I(x) K(x + s)``: the zero-shift
    statistic of ``prnu.match`` at every ``s``. ``circular``: same size, every circular shift
    (returned signed, in ``[-n/2, n/2)``); otherwise the query is smaller and only placements
    inside ``k`` count. The correlation energy comes from all shifts outside an
    ``exclude x exclude`` window around the peak, as in ``prnu.pce``."""
    h, w = residual.shape
    kh, kw = k.shape
    if h > kh or w > kw:
        raise ValueError(f"query {residual.shape} larger than the fingerprint {k.shape}")
    a = residual.astype(np.float64) * grey
    a -= a.mean()
    b = k.astype(np.float64) - k.mean()
    padded = np.zeros((kh, kw))
    padded[:h, :w] = a
    xc = sfft.irfft2(np.conj(sfft.rfft2(padded)) * sfft.rfft2(b), s=(kh, kw))  # xc[s] = sum a(x) b(x+s)
    valid = xc if circular else xc[:kh - h + 1, :kw - w + 1]
    dy, dx = np.unravel_index(int(np.argmax(valid)), valid.shape)
    peak = float(xc[dy, dx])
    r = exclude // 2
    mask = np.ones((kh, kw), bool)
    mask[np.ix_(np.arange(dy - r, dy + r + 1) % kh, np.arange(dx - r, dx + r + 1) % kw)] = False
    energy = float(np.mean(xc[mask] ** 2)) if mask.any() else 0.0
    pce = float(np.sign(peak) * peak ** 2 / energy) if energy > 0 else 0.0
    aligned = np.roll(k, (-dy, -dx), axis=(0, 1))[:h, :w]
    ncc = prnu.ncc(residual, grey * aligned)
    if circular:
        dy, dx = (dy + kh // 2) % kh - kh // 2, (dx + kw // 2) % kw - kw // 2
    return pce, ncc, int(dy), int(dx), int(valid.size)


# ------------------------------------------------------------------ matching

@dataclass
class MatchResult:
    """One query against one fingerprint; ``shift_y/shift_x``: where the query's top-left pixel
    (after rotation and rescaling) lies in the sensor frame."""

    file: str
    width: int | None = None
    height: int | None = None
    ncc: float = float("nan")
    pce: float = float("nan")
    shift_y: int | None = None
    shift_x: int | None = None
    scale: float | None = None
    rotation: int | None = None  # counter-clockwise degrees applied to the query
    log10_p_fa: float = float("nan")
    decision: str = "error"
    error: str = ""

    def row(self) -> dict[str, Any]:
        return asdict(self)


COLUMNS = [f for f in MatchResult.__dataclass_fields__]
INT_COLUMNS = ["width", "height", "shift_y", "shift_x", "rotation"]


def results_frame(results: Sequence[MatchResult]) -> pd.DataFrame:
    """One row per result, integer columns kept integer (blank where a query could not be read)."""
    df = pd.DataFrame([r.row() for r in results], columns=COLUMNS)
    return df.astype({c: "Int64" for c in INT_COLUMNS})


@dataclass(frozen=True)
class Geometry:
    """What every fingerprint of one match run shares: residual settings, frame and region."""

    settings: prnu.PrnuSettings
    frame: tuple[int, int]
    region: tuple[int, int, int, int]

    @staticmethod
    def of(fps: Sequence[Fingerprint]) -> Geometry:
        geos = {(fp.settings, fp.frame, fp.region) for fp in fps}
        if len(geos) != 1:
            raise UsageError("fingerprints matched together must share settings, frame and region")
        s, f, r = geos.pop()
        return Geometry(s, f, r)


@dataclass
class _Candidate:
    pixels: np.ndarray
    origin: tuple[int, int]  # frame position of pixels[0, 0] when no shift is found
    mode: str  # "aligned", "circular" or "inside"
    scale: float
    turns: int


def _candidates(img: np.ndarray, geo: Geometry, search: bool, scales: Sequence[float]
                ) -> tuple[list[_Candidate], str]:
    """Every (rotation, scale) version of a query that can be laid on the fingerprint, and the
    reason when none can."""
    (fh, fw), (ry, rx, rh, rw) = geo.frame, geo.region
    whole = (rh, rw) == (fh, fw)
    h, w = img.shape[:2]
    turns = [0] if h <= w or fh == fw else [PORTRAIT_TURNS["ccw"], PORTRAIT_TURNS["cw"]]
    out, reasons = [], []
    for t in turns:
        turned = np.rot90(img, t) if t else img
        for s in scales:
            q = turned
            if s != 1:
                q = manipulations.resize(np.ascontiguousarray(turned), 1.0 / s)
                if q.shape[0] <= fh + RESIZE_SLACK and q.shape[1] <= fw + RESIZE_SLACK:
                    q = q[:fh, :fw]  # round(n * s) / s overshoots by a pixel or two
            qh, qw = q.shape[:2]
            # A rescaled full frame may come back a pixel or two short: still the whole frame.
            frame_sized = (qh, qw) == (fh, fw) or (s != 1 and 0 <= fh - qh <= RESIZE_SLACK
                                                   and 0 <= fw - qw <= RESIZE_SLACK)
            if frame_sized and not whole and q[ry:ry + rh, rx:rx + rw].shape[:2] == (rh, rw):
                q, origin = q[ry:ry + rh, rx:rx + rw], (0, 0)  # the fingerprint's own centre crop
                mode = "circular" if search else "aligned"
            elif (qh, qw) == (rh, rw):
                origin = (ry, rx)  # the frame, or a crop of the region's size taken like it
                mode = "circular" if search else "aligned"
            elif qh <= rh and qw <= rw:
                if not search:
                    reasons.append(f"query {qw}x{qh} is smaller than the fingerprint's {rw}x{rh} "
                                   f"{'frame' if whole else 'crop'}; pass --search to look for it at every position")
                    continue
                origin, mode = (ry, rx), "inside"
            else:
                reasons.append(f"query {qw}x{qh}" + (f" (rescaled by 1/{s:g})" if s != 1 else "")
                               + f" does not fit the fingerprint's {rw}x{rh} "
                               + ("frame" if whole else f"centre crop of a {fw}x{fh} frame"))
                continue
            out.append(_Candidate(np.ascontiguousarray(q), origin, mode, float(s), t))
    return out, (reasons[0] if reasons else "")


def _match_job(path: str) -> list[MatchResult]:
    """One query against every fingerprint: the best (rotation, scale, shift) for each."""
    prints: Sequence[np.ndarray] = _JOBS["prints"]
    geo: Geometry = _JOBS["geometry"]
    threshold: float = _JOBS["threshold"]
    name = str(path)
    try:
        img = read_image(path)
    except ImageReadError as exc:
        return [MatchResult(name, error=exc.reason) for _ in prints]
    h, w = img.shape[:2]
    cands, reason = _candidates(img, geo, _JOBS["search"], _JOBS["scales"])
    if not cands:
        return [MatchResult(name, w, h, error=reason) for _ in prints]
    best: list[MatchResult | None] = [None] * len(prints)
    tried = [0] * len(prints)  # positions examined: the multiple-testing factor of the false alarm
    for c in cands:
        residual, grey = prnu.query_residual(c.pixels, geo.settings)
        for i, k in enumerate(prints):
            if c.mode == "aligned":
                (ncc, pce), dy, dx, positions = prnu.match(residual, grey, k), 0, 0, 1
            else:
                pce, ncc, dy, dx, positions = search_peak(residual, grey, k, circular=c.mode == "circular")
            tried[i] += positions
            current = best[i]
            if current is None or pce > current.pce:
                best[i] = MatchResult(name, w, h, ncc, pce, c.origin[0] + dy, c.origin[1] + dx, c.scale,
                                      90 * c.turns, decision="match" if pce >= threshold else "no match")
    out = []
    for r, n in zip(best, tried, strict=True):
        if r is None:  # every candidate meets every fingerprint, and there is at least one candidate
            raise FingerprintError(f"{name}: no match result for a fingerprint")
        r.log10_p_fa = round(log10_false_alarm(r.pce, n), 2)
        out.append(r)
    return out


def parse_scales(text: str | None) -> list[float]:
    """``'0.5,0.8'`` -> ``[1.0, 0.5, 0.8]``: the factors a query may have been resized by (1 always tried)."""
    if not text:
        return [1.0]
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--scales {text!r}: give comma-separated factors such as 0.5,0.8") from None
    bad = [v for v in values if not 0.1 <= v <= 4]
    if bad or not values:
        raise UsageError(f"--scales {text!r}: factors must lie in 0.1..4 (the query's size / the sensor's)")
    return list(dict.fromkeys([1.0, *values]))


def match_paths(fps: Sequence[Fingerprint], queries: Sequence[str | Path], search: bool = False,
                scales: Sequence[float] = (1.0,), threshold: float = DEFAULT_THRESHOLD,
                workers: int = 1) -> list[list[MatchResult]]:
    """Every query against every fingerprint (which must share a geometry): ``out[q][f]``.

    A query's residual is computed once per (rotation, scale) and reused for all fingerprints."""
    geo = Geometry.of(fps)
    prints = [fp.k for fp in fps]
    search = search or any(s != 1 for s in scales)  # a rescaled query never lands on whole pixels
    shared = {"prints": prints, "geometry": geo, "search": search, "scales": list(scales), "threshold": threshold}
    return list(parallel_map(_match_job, [str(q) for q in queries], workers, "match", initializer=_share,
                             initargs=(shared,), unit="photo"))


@dataclass
class Meaning:
    """What a decision at ``threshold`` means, for the terminal and the README."""

    threshold: float
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        single = log10_false_alarm(self.threshold, 1)
        self.lines = [
            (f"PCE >= {self.threshold:g} -> 'match': the photo's noise contains this sensor's fingerprint, i.e. it "
             "was taken by this camera (the photo-response non-uniformity is unique to one sensor, not to a model)."),
            ("  60 is the usual threshold (Goljan, Fridrich & Filler, SPIE 2009: a test on over a million Flickr "
             f"photos of 6,896 cameras). Under the Gaussian null model of the Binghamton code, PCE {self.threshold:g} "
             f"at one position has a false-alarm probability of 10^{single:.1f}; a search multiplies it by the "
             "positions tried (column log10_p_fa). Real photos are not Gaussian noise: read the model figure as a "
             "lower bound."),
            (f"PCE < {self.threshold:g} -> 'no match': NOT evidence of another camera. Small crops, dark, saturated or "
             "textured scenes, strong JPEG compression, resizing and an unsearched crop or shift all weaken the PRNU."),
        ]

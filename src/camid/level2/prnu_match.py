"""The ``+match`` level-2 step: test crops matched against the sensor fingerprints of the TRAINING devices.

When the training photos include the very camera that took a test crop (photo-disjoint real
classes; an examiner's "which of these cameras?"), the crop's noise carries that sensor's PRNU
and a PCE above the usual 60 is decisive evidence of the device, hence of its class. On Kaggle
the test devices are never training devices: the step finds nothing there and changes nothing.

1. Devices: the training photos of each class, split by device where the file name says it
   (Dresden style ``<model>_<device>_<shot>``, e.g. ``Nikon_D70_0_19929``) and by photo size:
   the centre crops of two photo sizes are different sensor pixels.
2. Fingerprints (``prnu.fingerprint_terms``/``finish_fingerprint``, flat-field and natural
   photos alike) over the sensor region the test crops come from: the centre crop of the test
   crops' size of each training photo, turned to the landscape sensor frame first
   (``orientation.sensor_frame``). Cached in ``Workspace.match_fingerprints``.
3. Every test crop: its residual ``W`` and intensity ``I`` (``prnu.query_residual``) and the PCE
   of ``W I`` against each fingerprint at zero shift (centre crops align on the colour grid);
   ``_manip`` crops also against each fingerprint warped like the competition's bicubic
   resize (``prnu_cluster.warp_fingerprint``, ``scales``), best of +-``max_shift`` pixels.
4. A crop whose best PCE reaches ``threshold`` and is at least ``margin`` times the best PCE
   of any other class's device takes that device's class (a one-hot row at the floor);
   every other crop keeps its probabilities. OOF rows are photos of the training devices
   themselves, so they are left alone (a fingerprint would only find itself).
"""
from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from scipy import fft as sfft

from ..config import MatchConfig
from ..data.crops import centre_crop
from ..data.images import probe_image, read_image
from ..data.layout import scan_test, scan_train, solution_labels
from ..data.orientation import sensor_frame
from ..data.testcrops import crop_origin
from ..errors import ImageReadError
from ..forensics import prnu
from ..util.io import write_atomic, write_json
from ..util.log import stage_log
from ..util.pool import parallel_map
from .prnu_cluster import (
    confirm_rows,
    files_stamp,
    read_stamped,
    rows_of_test,
    warp_fingerprint,
    write_stamped,
)

_FINGERPRINT_VERSION = 2  # bump when the fingerprint definition changes, so a cache is not reused
_DEVICE_RE = re.compile(r"^(?P<device>.+_\d+)_\d+$")
DECIDED_MATCH, DECIDED_BASE = "prnu-match", "base"


def device_of(fname: str, label: str) -> str:
    """The device of a training photo: ``<model>_<device>`` of a Dresden-style name, else its class
    (the competition's design: one device per class in training)."""
    m = _DEVICE_RE.match(Path(fname).stem)
    return m.group("device") if m else label


@dataclass
class DeviceFingerprint:
    label: str  # the class
    device: str
    frame: tuple[int, int]  # (height, width) of its photos in the landscape sensor frame
    photos: int
    k: np.ndarray  # float32 fingerprint of the centre crop of the test crops' size

    @property
    def name(self) -> str:
        return f"{self.device}@{self.frame[1]}x{self.frame[0]}"


# What every job of one pass shares (set once per worker process by ``_share``).
_JOBS: dict[str, Any] = {}


def _share(values: dict[str, Any]) -> None:
    _JOBS.clear()
    _JOBS.update(values)


def plan_devices(train: pd.DataFrame, crop: int) -> tuple[dict[tuple[str, str, tuple[int, int]], list[str]],
                                                          list[tuple[str, str]]]:
    """Training photos (``fname``, ``path``, ``label``) grouped by (class, device, sensor frame);
    photos that cannot hold a ``crop`` centre crop are returned apart with the reason."""
    groups: dict[tuple[str, str, tuple[int, int]], list[str]] = {}
    skipped: list[tuple[str, str]] = []
    for fname, path, label in train[["fname", "path", "label"]].itertuples(index=False):
        try:
            w, h = probe_image(path)
        except ImageReadError as exc:
            skipped.append((path, exc.reason))
            continue
        frame = (min(h, w), max(h, w))
        if frame[0] < crop:
            skipped.append((path, f"{w}x{h} is smaller than the {crop}-px test crops"))
            continue
        groups.setdefault((label, device_of(fname, label), frame), []).append(path)
    return groups, skipped


def _terms_job(path: str) -> tuple[np.ndarray, np.ndarray] | str:
    try:
        img = read_image(path)
    except ImageReadError as exc:
        return exc.reason
    crop = _JOBS["crop"]
    frame = sensor_frame(img)
    if min(frame.shape[:2]) >= 2 * crop:  # where compose cuts a test crop of a photo this size
        y, x = crop_origin(frame.shape[0], frame.shape[1], crop)
        region = np.ascontiguousarray(frame[y:y + crop, x:x + crop])
    else:
        region = np.ascontiguousarray(centre_crop(frame, crop))
    if region.shape[:2] != (crop, crop):  # the header promised a size the pixel data did not deliver
        return f"decoded size {img.shape[1]}x{img.shape[0]} is smaller than the {crop}-px test crops"
    return prnu.fingerprint_terms(region)


def build_fingerprints(groups: dict[tuple[str, str, tuple[int, int]], list[str]], crop: int, workers: int
                       ) -> tuple[list[DeviceFingerprint], list[tuple[str, str]]]:
    """One fingerprint per (class, device, frame) group; unreadable photos are returned with the reason."""
    jobs = [(key, p) for key, paths in groups.items() for p in paths]
    outs = parallel_map(_terms_job, [p for _, p in jobs], workers, "device fingerprints", initializer=_share,
                        initargs=({"crop": crop},), unit="photo")
    sums: dict[tuple[str, str, tuple[int, int]], list[Any]] = {}
    skipped = []
    for (key, path), out in zip(jobs, outs, strict=True):
        if isinstance(out, str):
            skipped.append((path, out))
            continue
        if key in sums:
            sums[key][0] += out[0]
            sums[key][1] += out[1]
            sums[key][2] += 1
        else:
            sums[key] = [out[0], out[1], 1]
    return [DeviceFingerprint(label, device, frame, n, prnu.finish_fingerprint(num, den).astype(np.float32))
            for (label, device, frame), (num, den, n) in sums.items()], skipped


def train_fingerprints(data_dir: Path, classes: list[str], crop: int, cache: Path, workers: int
                       ) -> list[DeviceFingerprint]:
    """The fingerprints of every training device at the test crops' region, cached in ``cache``.

    The cache is reused while the training files (names, sizes, modification times), the crop
    and the residual definition are unchanged."""
    _, scan = scan_train(data_dir, classes)
    train = scan.table
    stamp = {"version": _FINGERPRINT_VERSION, "settings": asdict(prnu.PrnuSettings()), "crop": crop,
             "files": [[f, Path(p).stat().st_size, Path(p).stat().st_mtime_ns]
                       for f, p in zip(train["fname"], train["path"], strict=True)]}
    meta_path = cache.with_suffix(".json")
    if cache.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("stamp") == stamp:
            with np.load(cache, allow_pickle=False) as z:
                ks = z["fingerprints"]
            stage_log("blend", f"read {len(ks)} training-device fingerprints from {cache}")
            return [DeviceFingerprint(d["label"], d["device"], (d["frame"][0], d["frame"][1]), d["photos"], k)
                    for d, k in zip(meta["devices"], ks, strict=True)]
    t0 = time.perf_counter()
    groups, skipped = plan_devices(train, crop)
    devices, unreadable = build_fingerprints(groups, crop, workers)
    skipped += unreadable
    for path, reason in skipped[:5]:
        stage_log("blend", f"device fingerprints: skipped {path}: {reason}")
    if len(skipped) > 5:
        stage_log("blend", f"device fingerprints: skipped {len(skipped) - 5} more training photo(s)")
    ks = np.stack([d.k for d in devices]) if devices else np.zeros((0, crop, crop), np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to a temp name
            np.savez(fh, fingerprints=ks)

    write_atomic(cache, save)
    write_json(meta_path, {"stamp": stamp, "skipped": skipped,
                           "devices": [{"label": d.label, "device": d.device, "frame": list(d.frame),
                                        "photos": d.photos} for d in devices]})
    stage_log("blend", f"wrote {len(devices)} training-device fingerprints ({crop}-px centre crops of "
                       f"{sum(d.photos for d in devices)} photos) to {cache} in {time.perf_counter() - t0:.1f} s")
    return devices


# ------------------------------------------------------------------ scoring

@dataclass
class Evidence:
    """Every test crop scored against every training-device fingerprint."""

    devices: list[DeviceFingerprint]
    test: pd.DataFrame  # scan_test's fname, path, manip
    pce: np.ndarray  # (n, d) best PCE of each crop against each device (nan: not compared)
    ncc: np.ndarray  # (n, d) normalised correlation of W I with the fingerprint at that best
    scale: np.ndarray  # (n, d) resize factor of that best (1.0: none)
    note: list[str]  # why a crop was not compared ("" when it was)


def _spectra(ks: np.ndarray, scales: list[float]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Conjugate spectra and norms of the zero-mean fingerprints, as they are and warped by each scale."""
    # Warped on one OpenCV thread: once OpenCV's thread pool has started in a process, workers
    # forked from it later (the scoring pool, a simulator) deadlock in their first OpenCV call.
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        variants = [ks] + [np.stack([warp_fingerprint(k, s)[0] for k in ks]) for s in scales]
    finally:
        cv2.setNumThreads(threads)
    spectra, norms = [], []
    for v in variants:
        v = v.astype(np.float64) - v.mean(axis=(1, 2), keepdims=True)
        spectra.append(np.conj(sfft.rfft2(v)).astype(np.complex64))
        norms.append(np.linalg.norm(v.reshape(len(v), -1), axis=1))
    return spectra, norms


def _score_job(item: tuple[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | str:
    path, manip = item
    try:
        img = read_image(path)
    except ImageReadError as exc:
        return exc.reason
    shape = _JOBS["shape"]
    if img.shape[:2] != shape:
        return f"{img.shape[1]}x{img.shape[0]}: the fingerprints are {shape[1]}x{shape[0]} centre crops"
    residual, grey = prnu.query_residual(img)
    a = residual.astype(np.float64) * grey
    a -= a.mean()
    spec = sfft.rfft2(a)
    a_norm = float(np.linalg.norm(a))
    factors = _JOBS["factors"]
    d = len(_JOBS["norms"][0])
    pce, ncc, scale = np.full(d, -np.inf), np.zeros(d), np.ones(d)
    for v in range(len(factors) if manip else 1):
        xc = sfft.irfft2(spec[None] * _JOBS["spectra"][v], s=shape)
        for j in range(d):
            p, dy, dx = prnu.peak_pce(xc[j], _JOBS["max_shift"] if v else 0)
            if p > pce[j]:
                norm = a_norm * _JOBS["norms"][v][j]
                pce[j], scale[j] = p, factors[v]
                ncc[j] = float(xc[j][dy, dx]) / norm if norm > 0 else 0.0
    return pce, ncc, scale


def score_test(data_dir: Path, devices: list[DeviceFingerprint], s: MatchConfig, workers: int,
               test: pd.DataFrame | None = None) -> Evidence:
    """PCE and NCC of every test crop against every device fingerprint (test crops of another size
    than the fingerprints are not compared, and say so in ``note``)."""
    test = scan_test(data_dir) if test is None else test
    n, d = len(test), len(devices)
    pce, ncc, scale = np.full((n, d), np.nan), np.full((n, d), np.nan), np.full((n, d), np.nan)
    note = [""] * n
    if not d:
        return Evidence(devices, test, pce, ncc, scale, ["no training-device fingerprint"] * n)
    ks = np.stack([dev.k for dev in devices])
    spectra, norms = _spectra(ks, list(s.scales))
    shared = {"shape": ks.shape[1:], "spectra": spectra, "norms": norms, "factors": [1.0, *s.scales],
              "max_shift": s.max_shift}
    items = list(zip(test["path"].tolist(), test["manip"].astype(int).tolist(), strict=True))
    outs = parallel_map(_score_job, items, workers, "match test crops", initializer=_share, initargs=(shared,),
                        unit="crop")
    for i, out in enumerate(outs):
        if isinstance(out, str):
            note[i] = out
        else:
            pce[i], ncc[i], scale[i] = out
    return Evidence(devices, test, pce, ncc, scale, note)


def decide(ev: Evidence, s: MatchConfig) -> pd.DataFrame:
    """One row per test crop: its best device, PCE, NCC and scale, the runner-up among the other
    classes' devices, and ``decided_by`` (``prnu-match`` when the crop takes the device's class)."""
    labels = np.array([dev.label for dev in ev.devices])
    rows = []
    for i, fname in enumerate(ev.test["fname"]):
        row: dict[str, Any] = {"fname": fname, "manip": int(ev.test["manip"].iloc[i]), "best_device": "",
                               "best_class": "", "pce": np.nan, "ncc": np.nan, "scale": np.nan,
                               "second_device": "", "second_pce": np.nan, "decided_by": DECIDED_BASE,
                               "class": "", "note": ev.note[i]}
        p = ev.pce[i]
        if ev.note[i] or not np.isfinite(p).any():
            rows.append(row)
            continue
        j = int(np.nanargmax(p))
        row.update(best_device=ev.devices[j].name, best_class=labels[j], pce=round(float(p[j]), 2),
                   ncc=round(float(ev.ncc[i, j]), 5), scale=float(ev.scale[i, j]))
        others = np.flatnonzero(labels != labels[j])
        runner_up = 0.0
        if len(others):
            o = int(others[np.nanargmax(p[others])])
            row.update(second_device=ev.devices[o].name, second_pce=round(float(p[o]), 2))
            runner_up = max(float(p[o]), 0.0)
        if p[j] >= s.threshold and p[j] >= s.margin * runner_up:
            row.update(decided_by=DECIDED_MATCH, **{"class": labels[j]})
        rows.append(row)
    return pd.DataFrame(rows)


def apply_matches(probs: np.ndarray, report: pd.DataFrame, classes: list[str], floor: float) -> np.ndarray:
    """Matched crops become (near) one-hot on their device's class; the others are unchanged."""
    hit = np.flatnonzero((report["decided_by"] == DECIDED_MATCH).to_numpy())
    cols = np.array([classes.index(c) for c in report["class"].to_numpy()[hit]], dtype=int)
    return confirm_rows(probs, hit, cols, floor)


def crop_side(test: pd.DataFrame) -> int | None:
    """The side of the (square) test crops, the most common size; None when that is not square."""
    sizes = Counter(probe_image(p) for p in test["path"])
    (w, h), _ = sizes.most_common(1)[0]
    return w if w == h else None


def match_evidence(data_dir: Path, classes: list[str], cache: Path, s: MatchConfig) -> Evidence | None:
    """Fingerprints of the training devices (cached) and every test crop scored against them;
    None when the test crops are not square (the fingerprints are square centre crops)."""
    workers = s.workers or (os.cpu_count() or 1)
    test = scan_test(data_dir)
    side = crop_side(test)
    if side is None:
        stage_log("blend", "PRNU matching needs square test crops: nothing changed")
        return None
    devices = train_fingerprints(data_dir, classes, side, cache, workers)
    # The scores are cached beside the fingerprints, valid for these fingerprints, test files and settings.
    scores = cache.with_name(f"{cache.stem}.scores.npz")
    fingerprints = json.loads(cache.with_suffix(".json").read_text())["stamp"]
    stamp = {"version": _FINGERPRINT_VERSION, "fingerprints": fingerprints,
             "match": {"scales": list(s.scales), "max_shift": s.max_shift},
             "test": files_stamp(test)}
    z = read_stamped(scores, stamp)
    if z is not None:
        stage_log("blend", f"read the PRNU match scores of {len(test)} test crops from {scores}")
        return Evidence(devices, test, z["pce"], z["ncc"], z["scale"], z["note"].tolist())
    t0 = time.perf_counter()
    ev = score_test(data_dir, devices, s, workers, test)
    write_stamped(scores, stamp, pce=ev.pce, ncc=ev.ncc, scale=ev.scale, note=np.array(ev.note, dtype=str))
    stage_log("blend", f"PRNU matching: {len(test)} test crops against {len(devices)} training-device "
                       f"fingerprints in {time.perf_counter() - t0:.1f} s; scores cached in {scores}")
    return ev


def refine_table(table: pd.DataFrame, classes: list[str], data_dir: Path, cache: Path, s: MatchConfig,
                 floor: float, evidence: dict[str, Evidence | None] | None = None,
                 ) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """The ``+match`` step on a level-2 table: test rows whose crop matches a training device take
    its class; OOF rows and every other test row are unchanged. Returns the table, a summary and
    the per-crop report for ``oof/blend/<strategy>.match.csv``. ``evidence`` (keyed by ``cache``)
    shares one scoring between the strategies of one blend run."""
    evidence = {} if evidence is None else evidence
    if str(cache) not in evidence:
        evidence[str(cache)] = match_evidence(data_dir, classes, cache, s)
    ev = evidence[str(cache)]
    if ev is None:
        return table, {"skipped": "test crops are not square"}, pd.DataFrame()
    order = rows_of_test(table, ev.test["fname"])
    probs = table[classes].to_numpy(dtype=np.float64)[order]
    report = decide(ev, s)
    refined = apply_matches(probs, report, classes, floor)
    out = table.copy()
    out.loc[out.index[order], classes] = refined
    report["before"] = [classes[c] for c in probs.argmax(axis=1)]
    report["after"] = [classes[c] for c in refined.argmax(axis=1)]
    hit = (report["decided_by"] == DECIDED_MATCH).to_numpy()
    manip = report["manip"].to_numpy()
    info: dict[str, Any] = {
        "devices": len(ev.devices), "matched": int(hit.sum()), "matched_unalt": int((hit & (manip == 0)).sum()),
        "matched_manip": int((hit & (manip == 1)).sum()), "not_compared": int(sum(bool(x) for x in ev.note)),
        "per_class": {c: int(v) for c, v in report.loc[hit, "class"].value_counts().sort_index().items()},
        "changed": int((report["before"] != report["after"]).sum())}
    truth = solution_labels(data_dir)
    if truth is not None and hit.any() and set(report["fname"]) <= set(truth.index):
        # for the log only: nothing is chosen by it
        y = truth.loc[report["fname"]].to_numpy()
        info["match_precision"] = round(float((report["class"].to_numpy()[hit] == y[hit]).mean()), 4)
    if not hit.any():
        stage_log("blend", f"PRNU matching: no test crop matches a training device (PCE >= {s.threshold:g}): "
                           "nothing changed (expected when the test devices are not training devices, as on Kaggle)")
    else:
        per_class = ", ".join(f"{c} {v}" for c, v in info["per_class"].items())
        stage_log("blend", f"PRNU matching: {info['matched_unalt']}/{int((manip == 0).sum())} unaltered and "
                           f"{info['matched_manip']}/{int((manip == 1).sum())} manipulated crops matched a training "
                           f"device ({per_class}); {info['changed']} predictions changed"
                           + (f"; precision against the solution {info['match_precision']:.3f}"
                              if "match_precision" in info else ""))
    if info["not_compared"]:
        first = next(f"{f}: {x}" for f, x in zip(ev.test["fname"], ev.note, strict=True) if x)
        stage_log("blend", f"PRNU matching: {info['not_compared']} test crop(s) not compared, e.g. {first}")
    return out, info, report

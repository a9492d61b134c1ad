"""A sensor-fingerprint (PRNU) baseline (``camid prnu evaluate``) for DEVICE verification (docs/recipe.md, "PRNU").

Lukas, Fridrich and Goljan (2006), with the refinements of the Binghamton reference code:

- noise residual ``W = I - F(I)``, ``F`` a wavelet (db4, 4 levels) Wiener-type denoiser:
  in every detail subband the local signal variance is estimated with 3/5/7/9 windows
  and the minimum is kept (Mihcak et al.), so edges are not mistaken for noise;
- maximum-likelihood fingerprint ``K = sum(W_k I_k) / sum(I_k^2)`` per device (the PRNU is
  multiplicative, so bright pixels carry more of it and clipped ones none);
- post-processing of fingerprints and residuals: zero-mean rows and columns on each of
  the four colour-filter sub-lattices, then Wiener filtering in the DFT domain. Both
  remove NON-unique artefacts (demosaicing, JPEG blocks, row/column readout) that every
  device of a model shares and that would otherwise make two devices look alike;
- detection: normalised correlation (NCC) between a query's residual and ``I * K``,
  and the peak-to-correlation energy (PCE) at zero shift, the correlation energy being
  measured outside an 11x11 window around the peak;
- Li (2010) enhanced residual as an option (``--enhance li``, alpha = 7): strong
  residual components are more likely scene detail than PRNU, so they are attenuated.

The evaluation reproduces the forensic point of the competition's design: PRNU links a
photo to its DEVICE (device A's fingerprint matches held-out device-A photos) but not to
a camera MODEL (device B of the same model looks like any other camera); the CNN learns
the model. Output: ``scores.csv`` (every query x fingerprint pair), ``roc.csv``,
``roc.png`` and ``summary.json`` in ``--out``.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pywt
from scipy import fft as sfft
from scipy import ndimage

from ..data.crops import centre_crop
from ..data.images import probe_image, read_image
from ..data.layout import SOLUTION, TEST_DIR, read_solution, scan_train
from ..errors import DataError, ImageReadError, TableError, UsageError
from ..infer.table import class_columns, read_table
from ..util.io import write_atomic, write_csv, write_json
from ..util.log import stage_log
from ..util.pool import parallel_map
from ..workspace import Workspace

WINDOWS = (3, 5, 7, 9)  # local-variance windows of the wavelet Wiener filter
PCE_EXCLUDE = 11  # side of the window around the peak left out of the correlation energy
# MATLAB rgb2gray weights, as in the reference implementation.
GRAY = np.array([0.29893602, 0.58704307, 0.11402090], dtype=np.float32)
SATURATED = 250  # pixels at or above this are clipped: they carry no PRNU


@dataclass(frozen=True)
class PrnuSettings:
    sigma: float = 3.0  # std of the noise the denoiser removes (grey levels); 3 as in Goljan's fingerprint code
    levels: int = 4
    wavelet: str = "db4"
    channels: str = "rgb"  # "rgb": residual per channel, then grey; "luma": residual of the luminance
    enhance: str = "none"  # "li": Li's model 5 on the residual's wavelet coefficients
    alpha: float = 7.0  # Li's alpha, in grey levels

    def __post_init__(self) -> None:
        if self.channels not in ("rgb", "luma"):
            raise UsageError(f"channels must be rgb or luma, got {self.channels!r}")
        if self.enhance not in ("none", "li"):
            raise UsageError(f"enhance must be none or li, got {self.enhance!r}")
        if self.sigma <= 0 or self.alpha <= 0 or self.levels < 1:
            raise UsageError("sigma and alpha must be positive and levels >= 1")


# ------------------------------------------------------------------ residuals

def _levels(shape: tuple[int, int], s: PrnuSettings) -> int:
    # Fewer levels on small crops: deeper ones would be all boundary effect.
    return max(1, min(s.levels, pywt.dwt_max_level(min(shape), pywt.Wavelet(s.wavelet).dec_len)))


def wiener_noise(coef: np.ndarray, noise_var: float, mode: str = "reflect") -> np.ndarray:
    """The noise part of one subband: ``c * s0^2 / (var + s0^2)``, ``var`` the smallest local
    signal variance over the 3/5/7/9 windows (small windows track edges, large ones flat areas)."""
    energy = coef * coef
    local = np.min([ndimage.uniform_filter(energy, w, mode=mode) for w in WINDOWS], axis=0)
    signal_var = np.maximum(local - noise_var, 0.0)
    return coef * (noise_var / (signal_var + noise_var))


def li_enhance(n: np.ndarray, alpha: float = 7.0) -> np.ndarray:
    """Li's model 5: ``+-exp(-0.5 n^2 / alpha^2)``; large (scene) components -> 0, small -> +-1."""
    e = np.exp(-0.5 * (n / alpha) ** 2)
    return np.where(n >= 0, e, -e).astype(n.dtype)


def _residual_2d(x: np.ndarray, s: PrnuSettings) -> np.ndarray:
    coeffs = pywt.wavedec2(x, s.wavelet, mode="symmetric", level=_levels(x.shape, s))
    noise_var = float(s.sigma) ** 2
    out: list[Any] = [np.zeros_like(coeffs[0])]  # approximation = scene content: not noise
    for detail in coeffs[1:]:
        bands = [wiener_noise(d, noise_var) for d in detail]
        if s.enhance == "li":
            # Li applies the model where the residual is extracted, the wavelet domain.
            bands = [li_enhance(b, s.alpha) for b in bands]
        out.append(tuple(bands))
    w = pywt.waverec2(out, s.wavelet, mode="symmetric")
    return np.ascontiguousarray(w[:x.shape[0], :x.shape[1]], dtype=np.float32)


def luminance(img: np.ndarray) -> np.ndarray:
    """HxWx3 -> HxW float32 grey levels (0-255); 2-D input is returned as float32."""
    x = np.asarray(img, dtype=np.float32)
    return x if x.ndim == 2 else x @ GRAY


def noise_residual(img: np.ndarray, s: PrnuSettings = PrnuSettings()) -> np.ndarray:
    """Raw residual ``W = I - F(I)`` in grey levels, same shape as ``img`` (HxW or HxWxC).

    With ``channels='luma'`` a colour image gives the HxW residual of its luminance."""
    x = np.asarray(img, dtype=np.float32)
    if x.ndim == 2:
        return _residual_2d(x, s)
    if s.channels == "luma":
        return _residual_2d(luminance(x), s)
    return np.stack([_residual_2d(np.ascontiguousarray(x[..., c]), s) for c in range(x.shape[2])], axis=-1)


def zero_mean(x: np.ndarray) -> np.ndarray:
    """Subtract the mean, then row and column means: removes row/column readout patterns."""
    x = x - x.mean()
    x = x - x.mean(axis=1, keepdims=True)
    return x - x.mean(axis=0, keepdims=True)


def zero_mean_total(x: np.ndarray) -> np.ndarray:
    """``zero_mean`` on each 2x2 colour-filter sub-lattice: also removes demosaicing's
    periodic pattern. The whole array then has zero-mean rows and columns too."""
    out = np.empty_like(x, dtype=np.float32)
    for dy in (0, 1):
        for dx in (0, 1):
            out[dy::2, dx::2] = zero_mean(x[dy::2, dx::2])
    return out


def wiener_dft(x: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Wiener filter on the DFT magnitude: peaks (periodic, non-unique artefacts such as
    JPEG 8x8 blocks) are flattened, the white-noise-like PRNU spectrum is kept."""
    sigma = float(x.std()) if sigma is None else sigma
    if sigma <= 0:
        return np.zeros_like(x, dtype=np.float32)
    f = sfft.fft2(x.astype(np.float64))
    mag = np.abs(f) / np.sqrt(x.size)
    kept = wiener_noise(mag, sigma ** 2, mode="wrap")  # the spectrum is periodic
    ratio = np.divide(kept, mag, out=np.zeros_like(mag), where=mag > 0)
    return np.real(sfft.ifft2(f * ratio)).astype(np.float32)


def postprocess(w: np.ndarray) -> np.ndarray:
    """Residual or fingerprint (HxW or HxWx3) -> grey, zero-mean, Wiener-in-DFT (HxW)."""
    g = luminance(w)
    return wiener_dft(zero_mean_total(g))


def intensity(img: np.ndarray, s: PrnuSettings) -> np.ndarray:
    """Per-pixel weight I/255 of the ML estimator, 0 where clipped; HxWxC or HxW like the residual."""
    x = np.asarray(img, dtype=np.float32)
    if x.ndim == 3 and s.channels == "luma":
        x = luminance(x)
    return np.where(x < SATURATED, x / 255.0, 0.0).astype(np.float32)


def query_residual(img: np.ndarray, s: PrnuSettings = PrnuSettings()) -> tuple[np.ndarray, np.ndarray]:
    """The post-processed residual of a query photo and its grey intensity (both HxW)."""
    return postprocess(noise_residual(img, s)), luminance(intensity(img, s))


def fingerprint_terms(img: np.ndarray, s: PrnuSettings = PrnuSettings()) -> tuple[np.ndarray, np.ndarray]:
    """One photo's contribution ``(W * I, I^2)`` to the ML fingerprint sums.

    Never enhanced (docs/recipe.md, "PRNU"): the enhancement is for the single query
    photo, where scene detail dominates; the reference is an average that already suppresses it."""
    w, i = noise_residual(img, replace(s, enhance="none")), intensity(img, s)
    return w * i, i * i


def finish_fingerprint(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``K = sum(W I) / (sum(I^2) + 1)``, post-processed. The +1 (as in the reference code)
    tames dark pixels, where the estimate's variance ``sigma^2 / sum(I^2)`` explodes."""
    return postprocess(num / (den + 1.0))


def estimate_fingerprint(images: Iterable[np.ndarray], s: PrnuSettings = PrnuSettings()) -> np.ndarray:
    """ML fingerprint of one device from aligned, same-size photos (HxW)."""
    sums: tuple[np.ndarray, np.ndarray] | None = None
    for img in images:
        a, b = fingerprint_terms(img, s)
        sums = (a, b) if sums is None else (sums[0] + a, sums[1] + b)
    if sums is None:
        raise DataError("a fingerprint needs at least one image")
    return finish_fingerprint(*sums)


# ------------------------------------------------------------------ detection

def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised correlation at zero shift."""
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / norm) if norm > 0 else 0.0


def pce(a: np.ndarray, b: np.ndarray, exclude: int = PCE_EXCLUDE) -> float:
    """Peak-to-correlation energy at zero shift (aligned photos: the peak is at (0, 0)).

    Signed: ``sign(C0) C0^2 / mean(C^2)`` over all circular shifts outside an
    ``exclude x exclude`` window around (0, 0)."""
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    h, w = a.shape
    xc = sfft.irfft2(sfft.rfft2(a) * np.conj(sfft.rfft2(b)), s=(h, w))
    return peak_pce(xc, 0, exclude)[0]


def peak_pce(xc: np.ndarray, max_shift: int = 0, exclude: int = PCE_EXCLUDE) -> tuple[float, int, int]:
    """(signed PCE, dy, dx) of a circular cross-correlation's highest value within +-``max_shift``
    of zero shift (0: the value at zero shift, signed); the energy is the mean square of ``xc``
    outside an ``exclude x exclude`` window around that value."""
    h, w = xc.shape
    if max_shift:
        win = np.r_[0:max_shift + 1, -max_shift:0]
        local = xc[np.ix_(win % h, win % w)]
        i, j = np.unravel_index(int(np.argmax(local)), local.shape)
        dy, dx = int(win[i]), int(win[j])
    else:
        dy = dx = 0
    peak = float(xc[dy % h, dx % w])
    r = exclude // 2
    near = xc[np.ix_(np.unique(np.arange(dy - r, dy + r + 1) % h), np.unique(np.arange(dx - r, dx + r + 1) % w))]
    rest = xc.size - near.size
    # total minus the window rather than a masked mean: this runs once per (crop, fingerprint, scale)
    energy = float((np.einsum("ij,ij->", xc, xc) - np.einsum("ij,ij->", near, near)) / rest) if rest else 0.0
    return (float(np.sign(peak) * peak ** 2 / energy) if energy > 0 else 0.0), dy, dx


def match(residual: np.ndarray, grey: np.ndarray, fingerprint: np.ndarray) -> tuple[float, float]:
    """(NCC, PCE) of a query residual against ``I * K``: the PRNU term the residual should contain."""
    expected = grey * fingerprint
    return ncc(residual, expected), pce(residual, expected)


def crop_residuals(images: Iterable[np.ndarray], crop: int, s: PrnuSettings = PrnuSettings()) -> np.ndarray:
    """(n, crop, crop) post-processed residuals of the images' centre crops (the residual the
    ``+prnu`` step clusters); centre crops of same-size photos share their sensor pixels."""
    return np.stack([query_residual(np.ascontiguousarray(centre_crop(img, crop)), s)[0] for img in images])


def residual_ncc_pairs(residuals: np.ndarray, devices: Sequence[str]) -> pd.DataFrame:
    """NCC of every pair of residuals (``i < j``) with the two devices: the same-device pairs
    measure how much PRNU survives in one crop, the others the chance level (~ 1/side)."""
    if len(residuals) != len(devices):
        raise DataError(f"{len(residuals)} residuals but {len(devices)} device names")
    n = len(residuals)
    rows = [{"i": i, "j": j, "device_i": devices[i], "device_j": devices[j],
             "same_device": devices[i] == devices[j], "ncc": ncc(residuals[i], residuals[j])}
            for i in range(n) for j in range(i + 1, n)]
    return pd.DataFrame(rows, columns=["i", "j", "device_i", "device_j", "same_device", "ncc"])


# ------------------------------------------------------------------ ROC

def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with ties grouped; thresholds decrease, the first point is (0, 0)."""
    scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        raise DataError(f"a ROC needs positives and negatives, got {n_pos} and {n_neg}")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each tie group
    tps = np.cumsum(y)[last]
    fps = last + 1 - tps
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos], np.r_[np.inf, s[last]]


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    return float(np.trapezoid(tpr, fpr))


def eer(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Equal error rate: where the false-positive and false-negative rates cross (interpolated)."""
    d = fpr - (1.0 - tpr)  # non-decreasing along the curve
    i = int(np.argmax(d >= 0))
    if i == 0:
        return float(fpr[0])
    t = d[i - 1] / (d[i - 1] - d[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def roc_summary(scores: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    fpr, tpr, _ = roc_curve(scores, positive)
    return {"auc": auc(fpr, tpr), "eer": eer(fpr, tpr), "positives": int(np.sum(positive)),
            "negatives": int(np.sum(~np.asarray(positive, bool)))}


# ------------------------------------------------------------------ evaluation plan

KIND_A, KIND_B = "device_A_heldout", "device_B_test"


@dataclass(frozen=True)
class Plan:
    classes: list[str]
    references: dict[str, list[str]]  # class -> device-A photo paths for the fingerprint
    queries: pd.DataFrame  # fname, path, label, kind
    crop: int


def _test_queries(data_dir: Path, classes: Sequence[str], n_query: int) -> pd.DataFrame:
    solution = data_dir / SOLUTION
    if not solution.is_file():
        raise DataError(f"{solution} not found: device-B queries need the true labels of the test "
                        "crops (a simulated competition has them; `camid simulate`)")
    sol = read_solution(solution)
    sol = sol[sol["fname"].map(lambda f: Path(f).stem.endswith("_unalt"))]
    sol = sol[sol["camera"].isin(classes)].sort_values("fname")
    sol = sol.groupby("camera", sort=False).head(n_query)
    return pd.DataFrame({"fname": sol["fname"], "path": [str(data_dir / TEST_DIR / f) for f in sol["fname"]],
                         "label": sol["camera"], "kind": KIND_B})


def make_plan(data_dir: Path, classes: Sequence[str], n_ref: int, n_query: int, crop: int | None) -> Plan:
    """Fingerprints from the first ``n_ref`` device-A photos of each class (sorted by name);
    queries: the next ``n_query`` device-A photos and ``n_query`` device-B ``_unalt`` crops."""
    _, scan = scan_train(data_dir, classes)
    refs, held = {}, []
    for cls, group in scan.table.groupby("label", sort=False):
        paths = group.sort_values("fname")["path"].tolist()
        k = min(n_ref, len(paths) - 1)
        if k < 1:
            raise DataError(f"class {cls}: {len(paths)} training photo(s); need >= 2 (fingerprint + query)")
        if k < n_ref:
            stage_log("prnu", f"class {cls}: only {len(paths)} photos, fingerprint from {k}")
        refs[cls] = paths[:k]
        held.append(group.sort_values("fname").iloc[k:k + n_query].assign(kind=KIND_A))
    queries = pd.concat([*held, _test_queries(data_dir, classes, n_query)], ignore_index=True)
    queries = queries[["fname", "path", "label", "kind"]].reset_index(drop=True)
    if crop is None:
        crop = _test_crop_size(queries)
    return Plan(list(classes), refs, queries, crop)


def _test_crop_size(queries: pd.DataFrame) -> int:
    """The test crops' side: device-A photos are centre-cropped to it so pixels align."""
    tests = queries[queries["kind"] == KIND_B]
    if tests.empty:
        raise DataError("no device-B _unalt test crops found; pass --crop")
    w, h = probe_image(tests["path"].iloc[0])  # header only
    if h != w:
        raise DataError(f"{tests['path'].iloc[0]}: test crops are not square ({w}x{h}); pass --crop")
    return int(h)


# ------------------------------------------------------------------ workers

def _load(path: str, crop: int) -> np.ndarray:
    # Same centre crop (even offsets) as the simulator and the organisers: full-size
    # device-A photos line up pixel for pixel with the device-B test crops.
    return np.ascontiguousarray(centre_crop(read_image(path), crop))


# What every job of one pass shares (set once per worker process by ``_init_jobs``).
_JOBS: dict[str, Any] = {}


def _init_jobs(crop: int, s: PrnuSettings, fingerprints: np.ndarray | None = None) -> None:
    _JOBS.update(crop=crop, settings=s, fingerprints=fingerprints)


def _ref_job(path: str) -> tuple[np.ndarray, np.ndarray, float] | str:
    try:
        img = _load(path, _JOBS["crop"])
    except ImageReadError as exc:
        return exc.reason
    t0 = time.perf_counter()
    num, den = fingerprint_terms(img, _JOBS["settings"])
    return num, den, time.perf_counter() - t0


def _query_job(path: str) -> list[tuple[float, float]] | str:
    try:
        img = _load(path, _JOBS["crop"])
    except ImageReadError as exc:
        return exc.reason
    residual, grey = query_residual(img, _JOBS["settings"])
    return [match(residual, grey, k) for k in _JOBS["fingerprints"]]


def build_fingerprints(plan: Plan, s: PrnuSettings, workers: int) -> tuple[np.ndarray, list[float]]:
    """(classes, crop, crop) fingerprints and the per-photo residual times."""
    prints, times = [], []
    for cls in plan.classes:
        sums: tuple[np.ndarray, np.ndarray] | None = None
        paths = plan.references[cls]
        outs = parallel_map(_ref_job, paths, workers, f"fingerprint {cls}", initializer=_init_jobs,
                            initargs=(plan.crop, s))
        for path, out in zip(paths, outs, strict=True):
            if isinstance(out, str):
                stage_log("prnu", f"skipped unreadable {path}: {out}")
                continue
            sums = (out[0], out[1]) if sums is None else (sums[0] + out[0], sums[1] + out[1])
            times.append(out[2])
        if sums is None:
            raise DataError(f"class {cls}: no readable reference photo")
        prints.append(finish_fingerprint(*sums))
    return np.stack(prints), times


def score_queries(plan: Plan, fingerprints: np.ndarray, s: PrnuSettings, workers: int) -> pd.DataFrame:
    """One row per (query, fingerprint) pair with NCC, PCE and the ground truth."""
    outs = parallel_map(_query_job, plan.queries["path"].tolist(), workers, "queries", initializer=_init_jobs,
                        initargs=(plan.crop, s, fingerprints))
    rows = []
    for q, out in zip(plan.queries.itertuples(), outs, strict=True):
        if isinstance(out, str):
            stage_log("prnu", f"skipped unreadable {q.path}: {out}")
            continue
        for cls, (c, p) in zip(plan.classes, out, strict=True):
            same_model = q.label == cls
            rows.append({"query": q.fname, "kind": q.kind, "query_class": q.label, "fingerprint": cls,
                         "same_device": same_model and q.kind == KIND_A, "same_model": same_model,
                         "ncc": c, "pce": p})
    if not rows:
        raise DataError("no readable query photo")
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ reports

def verification_tests(scores: pd.DataFrame) -> dict[str, tuple[pd.Series, pd.Series]]:
    """Pairs and their truth for each question.

    ``device``: same device (held-out device-A photo vs its own device's fingerprint) against
    every other pair. ``model``: the device-B test crops only (the CNN is scored on the same
    pairs): same model but the OTHER device against other models; same-device pairs would let
    a device match pass for a model match."""
    model_pairs = scores[scores["kind"] == KIND_B]
    return {"device": (scores.index, scores["same_device"]),
            "model": (model_pairs.index, model_pairs["same_model"])}


def evaluate_scores(scores: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    """AUC/EER per (question, statistic), closed-set accuracy per query kind, ROC points."""
    summary: dict[str, Any] = {}
    curves = []
    for test, (idx, truth) in verification_tests(scores).items():
        for stat in ("pce", "ncc"):
            values = scores.loc[idx, stat].to_numpy()
            summary[f"{test}/{stat}"] = roc_summary(values, truth.to_numpy())
            fpr, tpr, thr = roc_curve(values, truth.to_numpy())
            curves.append(pd.DataFrame({"test": test, "statistic": stat, "fpr": fpr, "tpr": tpr, "threshold": thr}))
    for kind, group in scores.groupby("kind"):
        best = group.loc[group.groupby("query")["pce"].idxmax()]
        summary[f"accuracy/{kind}"] = float((best["fingerprint"] == best["query_class"]).mean())
    return summary, pd.concat(curves, ignore_index=True)


def cnn_comparison(ws: Workspace, plan: Plan) -> tuple[dict[str, dict], list[pd.DataFrame]]:
    """The CNN's model verification on the same device-B crops, from every probability table of
    ``ws``'s round whose test rows cover them (score of a pair = the probability of the
    fingerprint's class)."""
    queries = plan.queries[plan.queries["kind"] == KIND_B]
    out, curves = {}, []
    for path in ws.tables():
        try:
            table = read_table(path)
        except TableError as exc:
            stage_log("prnu", f"CNN comparison: skipped {path}: {exc}")
            continue
        test = table[table["split"] == "test"].set_index("fname")
        if class_columns(table) != list(plan.classes) or not set(queries["fname"]) <= set(test.index):
            stage_log("prnu", f"CNN comparison: {path} does not cover these classes and test crops; skipped")
            continue
        probs = test.loc[queries["fname"], plan.classes].to_numpy()
        truth = np.asarray(plan.classes)[None, :] == queries["label"].to_numpy()[:, None]
        res = roc_summary(probs.ravel(), truth.ravel())
        res["accuracy"] = float((probs.argmax(1) == truth.argmax(1)).mean())
        out[path.stem] = res
        fpr, tpr, thr = roc_curve(probs.ravel(), truth.ravel())
        curves.append(pd.DataFrame({"test": "model", "statistic": f"cnn:{path.stem}", "fpr": fpr, "tpr": tpr,
                                    "threshold": thr}))
    return out, curves


def plot_roc(curves: pd.DataFrame, summary: dict, path: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 5.5))
    labels = {"device": "same device vs other", "model": "same model (other device) vs other model"}
    for (test, stat), c in curves.groupby(["test", "statistic"], sort=False):
        cnn = stat.startswith("cnn:")
        r = summary["cnn"][stat[4:]] if cnn else summary[f"{test}/{stat}"]
        name = f"CNN {stat[4:]}" if cnn else f"PRNU {stat.upper()}"
        color = "tab:green" if cnn else {"device": "tab:blue", "model": "tab:red"}[test]
        ax.plot(c["fpr"], c["tpr"], color=color, ls="--" if stat == "ncc" else "-",
                label=f"{labels[test]}, {name}: AUC {r['auc']:.3f}, EER {r['eer']:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))  # below: the curves hug the corners
    fig.tight_layout()
    write_atomic(path, lambda p: fig.savefig(p, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def run_evaluation(plan: Plan, s: PrnuSettings, workers: int) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    t0 = time.perf_counter()
    fingerprints, times = build_fingerprints(plan, s, workers)
    t1 = time.perf_counter()
    scores = score_queries(plan, fingerprints, s, workers)
    summary, curves = evaluate_scores(scores)
    summary["timing"] = {"fingerprints_s": round(t1 - t0, 2), "queries_s": round(time.perf_counter() - t1, 2),
                         "residual_s_per_photo": round(float(np.mean(times)), 4) if times else None,
                         "crop": plan.crop, "workers": workers}
    return scores, summary, curves


def print_summary(summary: dict) -> None:
    """The AUC/EER table of ``evaluate_devices``, one line per question and statistic."""
    cnn = summary["cnn"]
    print(f"{'question':<44}{'statistic':>10}{'AUC':>8}{'EER':>8}{'pairs +/-':>14}")
    names = {"device": "same device vs other", "model": "same model, other device vs other model"}
    for key, r in summary.items():
        if key.count("/") == 1 and isinstance(r, dict) and "auc" in r:
            test, stat = key.split("/")
            print(f"{names[test]:<44}{stat.upper():>10}{r['auc']:>8.3f}{r['eer']:>8.3f}"
                  f"{r['positives']:>7}/{r['negatives']}")
    for run, r in cnn.items():
        print(f"{names['model']:<44}{'CNN':>10}{r['auc']:>8.3f}{r['eer']:>8.3f}"
              f"{r['positives']:>7}/{r['negatives']}  {run}, accuracy {r['accuracy']:.3f}")
    for key, acc in summary.items():
        if key.startswith("accuracy/"):
            print(f"closed-set identification by max PCE, {key.split('/')[1]}: {acc:.3f}")


def evaluate_devices(ws: Workspace, classes: Sequence[str], s: PrnuSettings, n_ref: int,
                     n_query: int, crop: int | None, workers: int, out: Path) -> dict:
    """The whole evaluation on ``ws``'s data folder: plan, fingerprints, queries, the CNN (this
    round's tables) on the same pairs; writes ``scores.csv``, ``roc.csv``, ``roc.png`` and
    ``summary.json`` to ``out``; returns the summary."""
    data_dir = ws.data_dir
    if n_ref < 1 or n_query < 1:
        raise UsageError("--n-ref and --n-query must be >= 1")
    plan = make_plan(data_dir, classes, n_ref, n_query, crop)
    n_kind = plan.queries["kind"].value_counts().to_dict()
    stage_log("prnu", f"read {data_dir}: {len(plan.classes)} devices A, {sum(map(len, plan.references.values()))} "
                      f"reference photos, queries {n_kind}, crop {plan.crop} px, {workers} worker(s)")
    scores, summary, curves = run_evaluation(plan, s, workers)
    cnn, cnn_curves = cnn_comparison(ws, plan)
    curves = pd.concat([curves, *cnn_curves], ignore_index=True)
    summary.update({"settings": asdict(s), "n_ref": n_ref, "n_query": n_query, "cnn": cnn, "data": str(data_dir)})
    write_csv(out / "scores.csv", scores)
    write_csv(out / "roc.csv", curves)
    write_json(out / "summary.json", summary)
    plot_roc(curves, summary, out / "roc.png", f"PRNU ({s.channels}, enhance {s.enhance}), crop {plan.crop}")
    return summary

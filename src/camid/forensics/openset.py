"""Open-set ``camid identify``: "unknown camera" when the evidence is below a calibrated threshold.

The score is the **maximum softmax probability** (MSP; Hendrycks & Gimpel, ICLR 2017) of
the photo's combined probabilities, the same geometric mean over TTA views, checkpoints,
folds and runs that ``identify`` ranks classes by. Why this score and not another:

- It is exactly what the OOF table stores. ``oof/<run>.<tta>.parquet`` holds, for every
  training photo, the probabilities of the model that never saw it, predicted like a test
  photo; the threshold is calibrated on those rows with no extra forward pass, and the
  score of a new photo is computed by the same reduction.
- The geometric mean of softmax outputs, renormalised, *is* the softmax of the mean logits,
  so MSP of the combined probabilities already uses the ensemble's averaged logits. The
  energy score ``logsumexp(logits)`` (Liu et al., NeurIPS 2020) needs the logits' absolute
  level, which the tables do not keep and which an average over views and checkpoints
  does not define uniquely; it would need a second calibration pass over the OOF photos.
- ``camid.bench.open_set_loco`` compares it with the margin and the entropy of the same
  probabilities and with the energy of the mean logits, on leave-one-class-out runs
  (BENCHMARKS.md, "Unknown cameras").

Calibration: OOF rows are photos of known cameras held out from training. The threshold
is the largest value that accepts at least ``tpr`` of them (default 95%): a photo scoring
below it is "unknown camera". Unaltered OOF rows (``aug == none``) calibrate photos
identified with manip flag 0, manipulated rows those identified with ``--manipulated``.
With several runs the rows are combined by geometric mean over runs, as identify does.

Caveat stated where it is printed: an OOF row is one fold's model on one centre crop,
while identify averages every fold's model over several crops, which sharpens confident
predictions; the rate of known photos accepted is therefore measured, not assumed, in the
benchmark (BENCHMARKS.md, "Unknown cameras").
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import TableError
from ..infer.ensemble import Ensemble
from ..infer.table import read_meta, read_table
from ..infer.tta import reduce_probs
from ..workspace import Workspace

UNKNOWN = "unknown"  # the verdict (and CSV value) for a photo below the threshold
SCORE_NAME = "max probability"
DEFAULT_TPR = 0.95


def msp(probs: np.ndarray) -> np.ndarray:
    """(N, classes) -> (N,): the maximum probability of each row (the open-set score)."""
    return np.asarray(probs, dtype=np.float64).max(axis=-1)


def threshold_at_tpr(scores: Sequence[float] | np.ndarray, tpr: float) -> float:
    """The largest threshold t such that at least ``tpr`` of ``scores`` are ``>= t``.

    With the scores sorted ascending s_1 <= ... <= s_n, that is s_k for
    k = floor(n * (1 - tpr)) + 1: rejecting the k-1 lowest keeps n-k+1 >= tpr * n.
    """
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if not len(s):
        raise ValueError("no scores to calibrate on")
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    k = math.floor(len(s) * (1.0 - tpr) + 1e-9)  # 0-based index of s_{k+1}; the epsilon absorbs 0.05*20=1.0000001
    return float(s[min(k, len(s) - 1)])


@dataclass(frozen=True)
class OpenSet:
    """The unknown-camera threshold of one identify call, or why there is none."""

    tpr: float  # requested share of known photos accepted
    manip: bool  # calibrated on manipulated (True) or unaltered OOF rows
    threshold: float | None = None  # None: the open-set check is off
    accepted: float = float("nan")  # share of the calibration photos accepted at the threshold
    n: int = 0  # calibration photos
    tables: tuple[str, ...] = ()
    reason: str = ""  # why the check is off

    @property
    def on(self) -> bool:
        return self.threshold is not None

    def known(self, score: float) -> bool:
        """Accepted as one of the known cameras (always, when the check is off)."""
        return self.threshold is None or score >= self.threshold

    def describe(self) -> str:
        if not self.on:
            return f"open-set check off: {self.reason}; every photo gets its most probable class"
        rows = "manipulated" if self.manip else "unaltered"
        return (f"open-set check on: unknown camera when the {SCORE_NAME} is below {self.threshold:.4f}, "
                f"calibrated to accept {self.tpr:.0%} of {self.n} {rows} OOF photos of the known cameras "
                f"({self.accepted:.1%} accepted) in {', '.join(self.tables)}")


def off(tpr: float, manip: bool, reason: str) -> OpenSet:
    return OpenSet(tpr=tpr, manip=manip, reason=reason)


def _checkpoint_keys(files: Sequence[Path | str]) -> set[tuple[str, str, int, int]]:
    """(fold folder, file name, size, mtime in s), as ``camid predict`` records them: the
    work dir may be spelled differently (relative, absolute) between predict and identify."""
    out = set()
    for f in files:
        p = Path(f)
        st = p.stat()
        out.add((p.parent.name, p.name, st.st_size, int(st.st_mtime)))
    return out


def _stale_reason(path: Path, ensembles: Sequence[Ensemble]) -> str:
    """Why the table was not predicted by these checkpoints ("" when it was)."""
    try:
        recorded = read_meta(path).get("checkpoints")
    except (OSError, ValueError) as exc:
        return f"{path}: unreadable .json sidecar ({exc})"
    if not isinstance(recorded, dict):
        return f"{path} has no checkpoint record in its .json sidecar"
    try:
        table_keys = {(Path(r["file"]).parent.name, Path(r["file"]).name, int(r["size"]), int(r["mtime"]))
                      for fold in recorded.values() for r in fold}
    except (KeyError, TypeError, ValueError):
        return f"{path}: unreadable checkpoint record in its .json sidecar"
    loaded = _checkpoint_keys([f for e in ensembles for f in e.files])
    if table_keys != loaded:
        return (f"{path} was predicted with other checkpoints than the {len(loaded)} loaded "
                f"(retrained since `camid predict`?); run `camid predict` again")
    return ""


def calibration_rows(table: pd.DataFrame, manip: bool) -> pd.DataFrame:
    """The OOF rows that calibrate photos identified with this manip flag."""
    oof = table[(table["split"] == "oof") & (table["manip"] == int(manip))]
    return oof[oof["aug"] != "none"] if manip else oof[oof["aug"] == "none"]


def calibrate(ws: Workspace, runs: Mapping[str, Sequence[Ensemble]], tta: str, classes: Sequence[str],
              manip: bool, tpr: float = DEFAULT_TPR) -> OpenSet:
    """The threshold from the OOF tables of ``runs`` (never raises for a missing or stale table:
    the check is then off and the reason says why)."""
    if not 0.0 < tpr <= 1.0:
        return off(tpr, manip, f"--unknown-tpr must be in (0, 1], got {tpr}")
    per_run = []
    for run, ensembles in runs.items():
        path = ws.table(run, tta)
        if not path.is_file():
            return off(tpr, manip, f"no OOF table {path} for run {run} (run `camid predict` to make one)")
        try:
            table = read_table(path, classes)
        except TableError as exc:
            return off(tpr, manip, f"OOF table unusable: {exc}")
        stale = _stale_reason(path, ensembles)
        if stale:
            return off(tpr, manip, stale)
        rows = calibration_rows(table, manip)
        if rows.empty:
            kind = "manipulated" if manip else "unaltered"
            return off(tpr, manip, f"{path} has no {kind} OOF rows")
        per_run.append((str(path), rows.set_index(["fname", "aug"])[list(classes)]))
    if not per_run:
        return off(tpr, manip, "no runs loaded")
    keys = per_run[0][1].index
    for _, frame in per_run[1:]:
        keys = keys.intersection(frame.index)
    if not len(keys):
        return off(tpr, manip, "the runs' OOF tables share no photos")
    probs = torch.from_numpy(np.stack([frame.loc[keys].to_numpy(dtype=np.float64) for _, frame in per_run]))
    scores = msp(reduce_probs(probs, "gmean", dim=0).numpy())
    t = threshold_at_tpr(scores, tpr)
    return OpenSet(tpr=tpr, manip=manip, threshold=t, accepted=float((scores >= t).mean()), n=len(scores),
                   tables=tuple(p for p, _ in per_run))

"""The competition metric and submission validation (``camid score``).

Score = 0.7 x accuracy on unaltered images + 0.3 x accuracy on manipulated ones
(the Kaggle weighting). If one half is empty (e.g. OOF tables without
manipulated variants) the score is the other half's accuracy alone, so a score
is always an accuracy in [0, 1] rather than silently capped at 0.7.

Submission format: header exactly ``fname,camera``, one row per expected file,
camera names from the class list. ``validate_submission`` is the one check
used both before writing (``camid submission``) and before scoring (``camid score``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.competition import MANIP_WEIGHT, UNALT_WEIGHT, manip_flag, weighted
from ..data.layout import check_solution
from ..data.manipulations import MANIPULATION_NAMES
from ..errors import DataError, SubmissionError, few
from ..util.io import atomic_path

SUBMISSION_COLUMNS = ["fname", "camera"]
Labels = Sequence[str] | np.ndarray  # class names (or manipulation names), one per row


# ---------------------------------------------------------------- metric

def weighted_score(acc_unalt: float | None, acc_manip: float | None) -> float:
    """0.7 unalt + 0.3 manip; an absent half (None) leaves the other alone."""
    if acc_unalt is None:
        return float("nan") if acc_manip is None else float(acc_manip)
    if acc_manip is None:
        return float(acc_unalt)
    return weighted(acc_unalt, acc_manip)


def _acc(correct: np.ndarray) -> float | None:
    return float(correct.mean()) if len(correct) else None


@dataclass
class ScoreReport:
    score: float
    acc_unalt: float | None
    acc_manip: float | None
    n_unalt: int
    n_manip: int
    per_class: pd.DataFrame  # index class: accuracy (recall), n
    per_manip: pd.DataFrame  # index manipulation: accuracy, n
    confusion: pd.DataFrame  # rows true class, columns predicted class
    extra: dict = field(default_factory=dict)


def score_predictions(y_true: Labels, y_pred: Labels, manipulation: Labels,
                      classes: Sequence[str]) -> ScoreReport:
    """Score aligned label arrays; ``manipulation`` is ``none`` for unaltered rows."""
    truth, pred = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    manips = np.asarray(manipulation, dtype=object)
    correct: np.ndarray = truth == pred
    unalt: np.ndarray = manips == "none"
    acc_u, acc_m = _acc(correct[unalt]), _acc(correct[~unalt])
    frame = pd.DataFrame({"true": truth, "manip": manips, "ok": correct})
    per_class = frame.groupby("true")["ok"].agg(accuracy="mean", n="size").reindex(list(classes))
    per_class["n"] = per_class["n"].fillna(0).astype(int)
    per_manip = frame.groupby("manip")["ok"].agg(accuracy="mean", n="size")
    # competition order: unaltered first, then the 8 manipulations, then anything else
    known = ["none", *MANIPULATION_NAMES]
    order = sorted(per_manip.index, key=lambda m: (known.index(m) if m in known else len(known), m))
    per_manip = per_manip.loc[order]
    return ScoreReport(
        score=weighted_score(acc_u, acc_m), acc_unalt=acc_u, acc_manip=acc_m,
        n_unalt=int(unalt.sum()), n_manip=int((~unalt).sum()),
        per_class=per_class, per_manip=per_manip,
        confusion=confusion_matrix(truth, pred, classes),
    )


def confusion_matrix(y_true: Labels, y_pred: Labels, classes: Sequence[str]) -> pd.DataFrame:
    """Counts with true classes as rows and predicted classes as columns."""
    index = {c: i for i, c in enumerate(classes)}
    cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        cm[index[t], index[p]] += 1
    return pd.DataFrame(cm, index=pd.Index(list(classes), name="true"),
                        columns=pd.Index(list(classes), name="predicted"))


def score_table(df: pd.DataFrame, classes: Sequence[str]) -> ScoreReport:
    """Local CV score of a probability table's OOF rows (argmax; aug ``none`` = unaltered)."""
    oof = df[df["split"] == "oof"]
    pred = np.asarray(classes, dtype=object)[oof[list(classes)].to_numpy().argmax(axis=1)]
    return score_predictions(oof["label"].to_numpy(), pred, oof["aug"].to_numpy(), classes)


# ---------------------------------------------------------------- CSV validation

def validate_submission(sub: pd.DataFrame, fnames: Sequence[str], classes: Sequence[str],
                        name: str = "submission") -> None:
    """Refuse a submission that is not exactly one known class per expected file."""
    if list(sub.columns) != SUBMISSION_COLUMNS:
        raise SubmissionError(f"{name}: header must be exactly {','.join(SUBMISSION_COLUMNS)}, "
                              f"got {','.join(map(str, sub.columns))}")
    empty = sub["fname"].isna() | (sub["fname"].astype(str) == "")
    if empty.any():
        raise SubmissionError(f"{name}: {int(empty.sum())} row(s) with an empty fname")
    dup = sub.loc[sub["fname"].duplicated(), "fname"].unique()
    if len(dup):
        raise SubmissionError(f"{name}: duplicate file names: {few(dup)}")
    expected = set(fnames)
    unknown = sorted(set(sub["fname"]) - expected)
    if unknown:
        raise SubmissionError(f"{name}: unknown file names: {few(unknown)}")
    missing = sorted(expected - set(sub["fname"]))
    if missing:
        raise SubmissionError(f"{name}: {len(missing)} file(s) missing: {few(missing)}")
    bad = sorted(set(sub["camera"].astype(str)) - set(classes))
    if bad:
        raise SubmissionError(f"{name}: unknown class name(s) {few(bad)}; known: {', '.join(classes)}")


def solution_manipulation(solution: pd.DataFrame) -> np.ndarray:
    """``manipulation`` column if present, else ``none``/``manip`` from the file name."""
    if "manipulation" in solution.columns:
        return solution["manipulation"].replace("", "none").to_numpy(dtype=object)
    try:
        flags = [manip_flag(f) for f in solution["fname"]]
    except DataError as exc:
        raise SubmissionError(f"solution has no manipulation column and {exc}") from exc
    return np.where(np.asarray(flags) == 1, "manip", "none").astype(object)


def score_submission(sub: pd.DataFrame, solution: pd.DataFrame, classes: Sequence[str] | None = None,
                     name: str = "submission") -> ScoreReport:
    """Validate ``sub`` against ``solution`` and score it."""
    check_solution(solution, classes)
    classes = list(classes) if classes is not None else sorted(set(solution["camera"]))
    validate_submission(sub, solution["fname"].tolist(), classes, name)
    pred = sub.set_index("fname")["camera"].reindex(solution["fname"]).to_numpy(dtype=object)
    return score_predictions(solution["camera"].to_numpy(dtype=object), pred,
                             solution_manipulation(solution), classes)


# ---------------------------------------------------------------- reporting

def _fmt(x: float | None) -> str:
    return "  n/a " if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.4f}"


def format_report(rep: ScoreReport) -> str:
    lines = [f"score {_fmt(rep.score)}  ({UNALT_WEIGHT:g} x unalt {_fmt(rep.acc_unalt)} on {rep.n_unalt}, "
             f"{MANIP_WEIGHT:g} x manip {_fmt(rep.acc_manip)} on {rep.n_manip})", "per class (recall):"]
    width = max([len(str(c)) for c in rep.per_class.index] + [len(str(m)) for m in rep.per_manip.index] + [4])
    for cls, row in rep.per_class.iterrows():
        lines.append(f"  {cls:<{width}}  {_fmt(row['accuracy'] if row['n'] else None)}  ({int(row['n'])})")
    lines.append("per manipulation:")
    for m, row in rep.per_manip.iterrows():
        lines.append(f"  {m:<{width}}  {_fmt(row['accuracy'])}  ({int(row['n'])})")
    return "\n".join(lines)


def plot_confusion(cm: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Confusion matrix PNG (row-normalised colours, raw counts printed)."""
    import matplotlib
    matplotlib.use("Agg")  # headless: no display on servers and CI
    import matplotlib.pyplot as plt

    counts = cm.to_numpy()
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    k = len(cm)
    fig, ax = plt.subplots(figsize=(1.0 + 0.65 * k, 0.8 + 0.6 * k))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if counts[i, j]:
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), cm.columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), cm.index, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path

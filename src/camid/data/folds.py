"""Deterministic stratified folds over the training images, and the folds CSV (``models/folds.csv``)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from ..util.io import write_csv
from .layout import DEVICES_FILE


def _assign_folds(labels: pd.Series, n_folds: int, seed: int) -> np.ndarray:
    """Stratified round-robin over a seeded shuffle of each class; classes continue
    the rotation so fold sizes differ by at most one overall."""
    rng = np.random.default_rng(seed)
    folds = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for cls in sorted(labels.unique()):
        idx = np.flatnonzero(labels.to_numpy() == cls)
        idx = idx[rng.permutation(len(idx))]
        folds[idx] = (np.arange(len(idx)) + offset) % n_folds
        offset += len(idx)
    return folds


# The `case` column of the folds file: what a fold's held-out photo measures.
CASE_DEVICE = "unseen device"  # its class has >= 2 training devices: its device is not in the fold's training set
CASE_PHOTO = "photo-disjoint"  # other photos of the same device(s) train
CASE_EXTERNAL = "train only"  # an extra folder's photo: always trains, never validated


def group_by_device(table: pd.DataFrame, group: str = "auto") -> pd.DataFrame:
    """``table`` with ``case`` and ``group`` columns for ``make_folds(group_col="group")``.

    ``group``: ``photo``: every photo its own group (each class photo-disjoint); ``device`` /
    ``auto``: a class with >= 2 known devices (column ``device``, "" when unknown) is grouped by
    device, so a fold's held-out photos come from a device the fold does not train on; other
    classes are photo-grouped. ``device`` refuses a table where no class has two devices."""
    if group not in ("auto", "device", "photo"):
        raise DataError(f"unknown folds.group {group!r}; choose auto, device or photo")
    out = table.copy()
    devices = out["device"] if "device" in out.columns else pd.Series("", index=out.index)
    out["device"] = devices.fillna("").astype(str)
    n_devices = out[out["device"] != ""].groupby("label")["device"].nunique()
    by_device = set(n_devices[n_devices >= 2].index) if group != "photo" else set()
    if group == "device" and not by_device:
        raise DataError("folds.group is device, but no class has photos of two known devices "
                        f"(devices come from DATA/{DEVICES_FILE} or <class>_<n>_<shot> names); use auto or photo")
    device_rows = out["label"].isin(by_device) & (out["device"] != "")
    out["case"] = np.where(device_rows, CASE_DEVICE, CASE_PHOTO)
    out["group"] = np.where(device_rows, "device:" + out["label"] + "/" + out["device"], "photo:" + out["fname"])
    return out


def make_folds(table: pd.DataFrame, mode: str = "kfold", n_folds: int = 5,
               holdout_fraction: float = 0.2, seed: int = 42,
               group_col: str | None = None, external: str = "train_only") -> pd.DataFrame:
    """Deterministic stratified folds.

    ``kfold``: every image gets a fold in ``0..n_folds-1`` and is validated once.
    ``holdout``: ``fold=0`` is the held-out set, ``fold=-1`` always trains.
    With ``group_col`` (e.g. near-duplicate clusters) a whole group shares one fold.
    ``external``: photos of the extra folders (``source`` other than ``train``) get
    ``fold=-1`` with ``train_only`` (the default): they always train and are never OOF rows,
    so the out-of-fold score keeps meaning "photos of the competition's training devices,
    held out"; with ``kfold`` they are split like the rest.
    """
    table = table.sort_values("fname", ignore_index=True)
    if table["fname"].duplicated().any():
        dup = table.loc[table["fname"].duplicated(), "fname"].tolist()[:5]
        raise DataError(f"duplicate file keys in training table: {dup}")
    if external not in ("train_only", "kfold"):
        raise DataError(f"unknown external-folds rule {external!r}; choose train_only or kfold")
    if external == "train_only" and "source" in table.columns and (table["source"] != "train").any():
        own = table[table["source"] == "train"]
        if own.empty:
            raise DataError("every training image comes from an extra folder: nothing is left to validate on")
        folded = make_folds(own, mode, n_folds, holdout_fraction, seed, group_col, "kfold")
        rest = table[table["source"] != "train"].assign(fold=-1)
        if "case" in rest.columns:
            rest["case"] = CASE_EXTERNAL
        return pd.concat([folded, rest], ignore_index=True).sort_values("fname", ignore_index=True)
    groups = table[group_col] if group_col else table["fname"]
    # One row per group, labelled by its most common class, so stratification still holds.
    per_group = (table.assign(_g=groups).groupby("_g", sort=True)["label"]
                 .agg(lambda s: s.value_counts().index[0]))
    if mode == "kfold":
        g_folds = _assign_folds(per_group, n_folds, seed)
    elif mode == "holdout":
        rng = np.random.default_rng(seed)
        g_folds = np.full(len(per_group), -1, dtype=np.int64)
        for cls in sorted(per_group.unique()):
            idx = np.flatnonzero(per_group.to_numpy() == cls)
            k = max(1, int(round(holdout_fraction * len(idx))))
            g_folds[idx[rng.permutation(len(idx))[:k]]] = 0
    else:
        raise DataError(f"unknown fold mode {mode!r}")
    fold_of = dict(zip(per_group.index, g_folds, strict=True))
    out = table.copy()
    out["fold"] = [int(fold_of[g]) for g in groups]
    return out


def fold_ids(folds: pd.DataFrame) -> list[int]:
    """The validation folds that define training jobs (holdout: just fold 0)."""
    return sorted(int(f) for f in folds["fold"].unique() if f >= 0)


FOLDS_COLUMNS = ["fname", "path", "label", "source", "fold"]
# Written when known: the photo's device and what its validation measures (group_by_device).
OPTIONAL_COLUMNS = ["device", "case"]


def write_folds(folds: pd.DataFrame, path: str | Path) -> Path:
    return write_csv(path, folds[FOLDS_COLUMNS + [c for c in OPTIONAL_COLUMNS if c in folds.columns]])


def read_folds(path: str | Path, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a folds CSV and check it is usable (columns, unique keys, known classes)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"folds file not found: {path} (run `camid folds` / `make folds` first)")
    try:
        df = pd.read_csv(path, dtype={"fname": str, "path": str, "label": str, "source": str, "device": str,
                                       "case": str},
                         keep_default_na=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:  # EmptyDataError is a ValueError
        raise DataError(f"{path}: cannot parse folds CSV ({exc})") from exc
    missing = set(FOLDS_COLUMNS) - set(df.columns)
    if missing:
        raise DataError(f"{path}: missing columns {sorted(missing)}")
    if df.empty:
        raise DataError(f"{path}: no images listed (run `camid folds` again)")
    if df["fname"].duplicated().any():
        raise DataError(f"{path}: an image appears more than once, e.g. "
                        f"{df.loc[df['fname'].duplicated(), 'fname'].head(3).tolist()}")
    empty = (df[["fname", "path", "label"]] == "").any(axis=1)
    if empty.any():
        raise DataError(f"{path}: {int(empty.sum())} row(s) with an empty fname, path or label")
    folds = pd.to_numeric(df["fold"], errors="coerce")
    if folds.isna().any() or (folds != folds.round()).any() or (folds < -1).any():
        bad = df.loc[folds.isna() | (folds != folds.round()) | (folds < -1), "fold"].head(3).tolist()
        raise DataError(f"{path}: fold must be an integer >= -1, got {bad}")
    df["fold"] = folds.astype(np.int64)
    if classes is not None:
        unknown = sorted(set(df["label"]) - set(classes))
        if unknown:
            raise DataError(f"{path}: labels not in the class list: {unknown}")
    return df


def check_folds_cover(folds: pd.DataFrame, table: pd.DataFrame, name: str = "folds.csv") -> None:
    """The folds must describe the training data as it is now: same images, same labels.

    ``table`` is ``scan_train(...)[1].table`` (what is on disk now). An image added
    since ``camid folds`` would be silently left out of every run; one listed but gone
    would be skipped as unreadable; a changed label would train the wrong class.
    """
    listed, present = set(folds["fname"]), set(table["fname"])
    new = sorted(present - listed)
    gone = sorted(listed - present)
    hint = ("re-run `camid folds` (this reassigns folds, so finished runs must be retrained) "
            "or restore the data the folds were made from")
    if new:
        raise DataError(f"{name}: {len(new)} training image(s) on disk are not in any fold, "
                        f"e.g. {new[:3]}; {hint}")
    if gone:
        raise DataError(f"{name}: {len(gone)} image(s) listed no longer exist under the data folder, "
                        f"e.g. {gone[:3]}; {hint}")
    merged = folds[["fname", "label", "path"]].merge(table[["fname", "label"]], on="fname", suffixes=("", "_now"))
    relabelled = merged[merged["label"] != merged["label_now"]]
    if len(relabelled):
        raise DataError(f"{name}: {len(relabelled)} image(s) changed class since the folds were made, "
                        f"e.g. {relabelled['fname'].head(3).tolist()}; {hint}")
    missing_paths = [p for p in merged["path"] if not Path(p).is_file()]
    if missing_paths:
        raise DataError(f"{name}: {len(missing_paths)} listed path(s) do not exist, e.g. {missing_paths[:3]} "
                        "(data folder moved, or camid run from another directory?); re-run `camid folds`")

"""Probability tables: the long-format files in ``oof/`` that every level-2 stage reads.

One row per image x variant, keyed and sorted by ``(fname, aug)``:

- ``fname``  training key (``train/<class>/<file>``) or bare test file name
- ``split``  ``oof`` or ``test``
- ``fold``   the fold whose model predicted the row (-1 for test rows: averaged over folds)
- ``manip``  0/1, the flag given to the network
- ``aug``    manipulation name (``jpeg70`` ...), ``none`` for unaltered OOF rows, ``unknown`` for test
- ``label``  true class for OOF rows, empty string for test rows
- one float column per class, in class-list order, rows summing to 1
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import TableError
from ..util.io import write_json, write_parquet

KEY_COLUMNS = ["fname", "split", "fold", "manip", "aug", "label"]
ROW_SUM_TOL = 1e-4


def class_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in KEY_COLUMNS]


def validate_table(df: pd.DataFrame, classes: Sequence[str] | None = None, name: str = "table") -> list[str]:
    """Check schema, keys, finiteness and row sums; return the class columns."""
    missing = [c for c in KEY_COLUMNS if c not in df.columns]
    if missing:
        raise TableError(f"{name}: missing key columns {missing}")
    cls = class_columns(df)
    if classes is not None and list(cls) != list(classes):
        raise TableError(f"{name}: class columns {cls} differ from the class list {list(classes)}")
    if len(cls) < 2:
        raise TableError(f"{name}: needs at least two class columns, has {cls}")
    if df.duplicated(["fname", "aug"]).any():
        dup = df.loc[df.duplicated(["fname", "aug"]), ["fname", "aug"]].head(3).values.tolist()
        raise TableError(f"{name}: duplicate (fname, aug) rows, e.g. {dup}")
    if not set(df["split"].unique()) <= {"oof", "test"}:
        raise TableError(f"{name}: split must be oof or test, got {sorted(df['split'].unique())}")
    not_numeric = [c for c in cls if not pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c])]
    if not_numeric:
        raise TableError(f"{name}: class columns must hold numbers; not numeric: {not_numeric}")
    if len(df) and not df["manip"].isin([0, 1]).all():
        raise TableError(f"{name}: manip must be 0 or 1, got {sorted(set(df['manip']) - {0, 1})[:5]}")
    probs = df[cls].to_numpy(dtype=np.float64)
    if not np.isfinite(probs).all():
        bad = df.loc[~np.isfinite(probs).all(axis=1), "fname"].head(3).tolist()
        raise TableError(f"{name}: NaN or infinite probabilities in rows {bad}")
    if (probs < 0).any():
        raise TableError(f"{name}: negative probabilities")
    sums = probs.sum(axis=1)
    if len(sums) and np.abs(sums - 1.0).max() > ROW_SUM_TOL:
        worst = int(np.abs(sums - 1.0).argmax())
        raise TableError(f"{name}: rows must sum to 1 (row {df['fname'].iloc[worst]!r} sums to {sums[worst]:.6f})")
    oof = df["split"] == "oof"
    unlabelled = oof & (df["label"].isna() | (df["label"].astype(str) == ""))
    if unlabelled.any():
        raise TableError(f"{name}: OOF rows without a label, e.g. {df.loc[unlabelled, 'fname'].head(3).tolist()}")
    if oof.any() and classes is not None:
        bad_labels = sorted(set(df.loc[oof, "label"]) - set(classes))
        if bad_labels:
            raise TableError(f"{name}: OOF labels not in the class list: {bad_labels}")
    return cls


def sort_table(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["fname", "aug"], kind="mergesort", ignore_index=True)


def sidecar(path: str | Path) -> Path:
    """The JSON sidecar of a table (checkpoints, settings, timings), written after the table."""
    return Path(path).with_suffix(".json")


def write_table(df: pd.DataFrame, path: str | Path, classes: Sequence[str], meta: dict | None = None) -> Path:
    """Validate, sort and atomically write a table plus its JSON sidecar (``.json``)."""
    df = sort_table(df[KEY_COLUMNS + list(classes)])
    df["fold"] = df["fold"].astype(np.int64)
    df["manip"] = df["manip"].astype(np.int64)
    df["label"] = df["label"].fillna("").astype(str)
    validate_table(df, classes, name=str(path))
    path = Path(path)
    write_parquet(path, df)
    if meta is not None:
        write_json(sidecar(path), {**meta, "classes": list(classes), "rows": len(df)})
    return path


def read_table(path: str | Path, classes: Sequence[str] | None = None) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise TableError(f"probability table not found: {path}")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
        raise TableError(f"{path}: cannot read parquet ({exc})") from exc
    if "label" in df.columns:  # a missing column is reported by validate_table
        df["label"] = df["label"].fillna("").astype(str)
    validate_table(df, classes, name=str(path))
    return df


def read_meta(path: str | Path) -> dict:
    side = sidecar(path)
    return json.loads(side.read_text()) if side.is_file() else {}

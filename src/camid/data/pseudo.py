"""Pseudo-labelled test crops: the training source of a second round (docs/recipe.md §9a).

``oof/pseudo-r<N>.csv`` (written by ``camid pseudo`` from round N's level-2 table, read by the
training of round N+1) has one row per selected test crop::

    fname       the test file name (as in the submission)
    path        where the crop is
    label       the class it was given
    manip       0 for ``_unalt``, 1 for ``_manip`` (a manipulated crop is never manipulated again)
    confidence  the level-2 probability of that class (1.0: confirmed by PRNU clustering)
    half        unalt / manip
    group       the fold whose round-(N+1) model never trains on this crop and alone predicts it

Pseudo-labelled crops only ever train: they are never validation or OOF rows, so round N+1's
out-of-fold score still means "photos of the training devices, held out". They are cross-fitted:
fold k of round N+1 trains on every group but k, and a test crop of group k is predicted by fold
k's model only, so no round-(N+1) probability of a crop comes from a model that was taught its
round-N label (which would echo that label back, right or wrong, with confidence ~1).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..errors import DataError
from ..util.io import write_csv

COLUMNS = ["fname", "path", "label", "manip", "confidence", "half", "group"]


def write_pseudo(df: pd.DataFrame, path: Path) -> Path:
    return write_csv(path, df[COLUMNS])


def read_pseudo(path: str | Path, classes: Sequence[str]) -> pd.DataFrame:
    """Read and check a pseudo-label file: columns, known classes, 0/1 flags, files present."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"pseudo-label file not found: {path} (run `camid pseudo` for the previous round first)")
    try:
        df = pd.read_csv(path, dtype={"fname": str, "path": str, "label": str, "half": str}, keep_default_na=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot parse pseudo-label CSV ({exc})") from exc
    missing = set(COLUMNS) - set(df.columns)
    if missing == {"group"}:
        raise DataError(f"{path}: no cross-fitting groups (written before they existed): run `camid pseudo` again")
    if missing:
        raise DataError(f"{path}: missing columns {sorted(missing)}")
    if not pd.api.types.is_integer_dtype(df["group"]) and len(df):
        raise DataError(f"{path}: group must be a fold number")
    if df["fname"].duplicated().any():
        twice = df.loc[df["fname"].duplicated(), "fname"].iloc[0]
        raise DataError(f"{path}: a test crop is listed twice, e.g. {twice}")
    unknown = sorted(set(df["label"]) - set(classes))
    if unknown:
        raise DataError(f"{path}: labels not in the class list: {unknown}")
    if not df["manip"].isin([0, 1]).all():
        raise DataError(f"{path}: manip must be 0 or 1")
    gone = [p for p in df["path"] if not Path(p).is_file()]
    if gone:
        raise DataError(f"{path}: {len(gone)} listed crop(s) do not exist, e.g. {gone[:3]}")
    return df

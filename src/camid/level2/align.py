"""Level-2 inputs must describe the same thing: aligning probability tables before combining them."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import TableError
from ..infer.table import KEY_COLUMNS, class_columns, sort_table


def _same(a: pd.Series, b: pd.Series) -> bool:
    return len(a) == len(b) and bool((a.to_numpy() == b.to_numpy()).all())


def _differences(a: pd.Series, b: pd.Series) -> str:
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    return f"{len(only_a)} only in the first (e.g. {only_a[:3]}), {len(only_b)} only in this one (e.g. {only_b[:3]})"


def align_tables(tables: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, list[np.ndarray], list[str]]:
    """Check the tables describe the same rows; return (key columns, probability arrays, classes)."""
    if not tables:
        raise TableError("no tables to blend")
    names = list(tables)
    ref_name = names[0]
    ref = sort_table(tables[ref_name])
    classes = class_columns(ref)
    arrays = [ref[classes].to_numpy(dtype=np.float64)]
    for name in names[1:]:
        df = sort_table(tables[name])
        cls = class_columns(df)
        if cls != classes:
            how = "the same classes in a different order" if sorted(cls) == sorted(classes) else "different classes"
            raise TableError(f"{name}: {how} than {ref_name}: {cls} vs {classes}")
        if not _same(ref["fname"].drop_duplicates(), df["fname"].drop_duplicates()):
            raise TableError(f"{name}: file names differ from {ref_name}: "
                             f"{_differences(ref['fname'], df['fname'])}")
        ref_var = ref["fname"] + "|" + ref["aug"]
        var = df["fname"] + "|" + df["aug"]
        if not _same(ref_var, var):
            raise TableError(f"{name}: variants (fname, aug) differ from {ref_name}: {_differences(ref_var, var)}")
        for col in ("split", "manip", "label"):
            bad = ref[col].to_numpy() != df[col].to_numpy()
            if bad.any():
                raise TableError(f"{name}: column {col!r} differs from {ref_name} in {int(bad.sum())} rows, "
                                 f"e.g. {df.loc[bad, 'fname'].head(3).tolist()}")
        arrays.append(df[classes].to_numpy(dtype=np.float64))
    return ref[KEY_COLUMNS].reset_index(drop=True), arrays, classes

"""The report of ``camid filter-external`` (one row per file) and its caches: the report is
the only state, so a re-run reuses the analysis of files whose size and mtime are unchanged,
and the training images' hashes are cached next to it."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..data.layout import TRAIN_DIR, scan_train
from ..util.io import write_csv
from ..util.log import stage_log
from ..util.pool import parallel_map
from .filter_analysis import ANALYSIS_COLUMNS, ANALYZER_VERSION, hash_file

STAGE = "filter-external"
REPORT_COLUMNS = [
    "path", "class", "decision", "reasons", "exif_make", "exif_model", "exif_software",
    "width", "height", "quality", "resave", "resave_evidence", "duplicate_of", "dest",
    "format", "mode", "ijg_quality", "quality_exact", "exif_error", "creator_tool",
    "adobe_app14", "read_error", "decoded", "phash", "size", "mtime_ns", "analyzer"]
_INT_COLUMNS = ("size", "mtime_ns", "width", "height", "quality", "ijg_quality")
_BOOL_COLUMNS = ("adobe_app14", "quality_exact", "resave", "decoded")


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def write_report(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    records = [{c: _csv_value(row.get(c, "")) for c in REPORT_COLUMNS} for row in rows]
    return write_csv(path, pd.DataFrame(records, columns=REPORT_COLUMNS))


def _from_csv(rec: dict[str, str]) -> dict[str, Any]:
    row: dict[str, Any] = {c: rec.get(c, "") for c in ANALYSIS_COLUMNS}
    for col in _INT_COLUMNS:
        row[col] = int(row[col]) if row[col] not in ("", None) else None
    for col in _BOOL_COLUMNS:
        if col in row:  # "" (never measured) stays empty, so a resumed report is byte-identical
            row[col] = {"1": True, "0": False}.get(row[col])
    return row


def read_previous(path: Path) -> dict[str, dict[str, Any]]:
    """Rows of an earlier report by path ({} when absent or unusable: then re-read all)."""
    if not path.is_file():
        return {}
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = set(ANALYSIS_COLUMNS) - set(df.columns)
        if missing:
            raise ValueError(f"missing columns {sorted(missing)}")
        return {rec["path"]: {**_from_csv(rec), "dest": rec.get("dest", "")}
                for rec in df.to_dict("records")}
    except (ValueError, pd.errors.ParserError) as exc:
        stage_log(STAGE, f"ignoring previous report {path}: {exc}")
        return {}


def unchanged(prev: dict[str, Any] | None, path: str) -> bool:
    if prev is None or prev.get("analyzer") != ANALYZER_VERSION:
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    return prev["size"] == st.st_size and prev["mtime_ns"] == st.st_mtime_ns


def train_hashes(data_dir: Path, cache: Path, workers: int) -> list[tuple[str, str]]:
    """(path, pHash variants) of every training image, cached next to the report."""
    _, scan = scan_train(data_dir)
    paths = [os.path.abspath(p) for p in scan.table["path"]]
    previous = {}
    if cache.is_file():
        try:
            df = pd.read_csv(cache, dtype=str, keep_default_na=False)
            previous = {r["path"]: r for r in df.to_dict("records")}
        except (ValueError, KeyError, pd.errors.ParserError):
            previous = {}  # a damaged cache only costs re-hashing
    rows, todo = [], []
    for p in paths:
        st = os.stat(p)
        rec = previous.get(p)
        if rec and rec.get("size") == str(st.st_size) and rec.get("mtime_ns") == str(st.st_mtime_ns):
            rows.append(rec)
        else:
            todo.append(p)
            rows.append({"path": p, "size": str(st.st_size), "mtime_ns": str(st.st_mtime_ns)})
    done = dict(zip(todo, parallel_map(hash_file, todo, workers, "hash train", unit="file"), strict=True))
    for rec in rows:
        rec["phash"] = rec.get("phash", "") if rec["path"] not in done else done[rec["path"]]
    write_csv(cache, pd.DataFrame(rows, columns=["path", "size", "mtime_ns", "phash"]))
    stage_log(STAGE, f"hashed {len(todo)} training images under {data_dir / TRAIN_DIR} "
                     f"({len(paths) - len(todo)} cached in {cache})")
    return [(r["path"], r["phash"]) for r in rows]

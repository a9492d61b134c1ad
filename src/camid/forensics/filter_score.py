"""Score a `camid filter-external` report against a pool's truth (``external_truth.csv``).

``camid filter-external SRC ... --truth OUT/external_truth.csv`` calls this after the
report is written; the demo can call :func:`score_files` directly. It prints and writes
(next to the report):

- precision and recall of "keep" against the truth's expected verdicts, where a liar
  (correct-looking EXIF of model X, pixels of model Y) counts as an expected keep: no
  metadata filter can tell it, so it is reported apart ("should keep by metadata,
  wrong pixels"), together with the label precision of the kept files (kept files whose
  pixels are the model the filter assigned);
- the confusion of reject reasons, expected (rows) vs given (columns): a rejected file's
  given reason is the expected one when the filter gave it among others, else its first;
- a per-kind table (files, kept, as expected).

Truth paths are relative to the truth file's folder; report paths are absolute.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import TruthError
from ..util.io import write_csv, write_json
from ..util.log import stage_log
from .filter_report import STAGE
from .rules import reason_code  # the filter's own parser: codes here are the ones its log prints

SCORE_NAME = "filter_score.json"
REASONS_NAME = "filter_reasons.csv"
KINDS_NAME = "filter_kinds.csv"
_TRUTH_REQUIRED = ("file", "kind", "expected", "expected_reason", "label_ok", "true_model")


@dataclass
class FilterScore:
    summary: dict[str, Any]
    reasons: pd.DataFrame  # expected reason x given reason counts ("keep" for kept files)
    kinds: pd.DataFrame  # per kind: files, expected verdict, kept, as expected


def load_truth(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise TruthError(f"truth file not found: {path}")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in _TRUTH_REQUIRED if c not in df.columns]
    if missing:
        raise TruthError(f"{path}: missing column(s) {missing}")
    root = path.parent
    df["key"] = [os.path.realpath(root / f) for f in df["file"]]
    return df


def _given(decision: str, reasons: str, expected_reason: str) -> str:
    if decision == "keep":
        return "keep"
    if decision != "reject":
        return decision or "missing"
    codes = [reason_code(r) for r in reasons.split(";") if r]
    if expected_reason in codes:
        return expected_reason
    return codes[0] if codes else "reject (no reason)"


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def score(report: pd.DataFrame, truth: pd.DataFrame) -> FilterScore:
    """Compare report rows (``path, class, decision, reasons``) with ``load_truth`` rows."""
    rep = report.assign(key=[os.path.realpath(p) for p in report["path"]])
    rep = rep.drop_duplicates("key").set_index("key")
    t = truth.copy()
    t["decision"] = [rep["decision"].get(k, "missing") for k in t["key"]]
    t["class_given"] = [rep["class"].get(k, "") for k in t["key"]]
    t["reasons_given"] = [rep["reasons"].get(k, "") for k in t["key"]]
    t["given"] = [_given(d, r, e)
                  for d, r, e in zip(t["decision"], t["reasons_given"], t["expected_reason"], strict=True)]
    t["expected_code"] = [e if v == "reject" else "keep"
                          for v, e in zip(t["expected"], t["expected_reason"], strict=True)]
    scored = t[t["decision"] != "missing"]
    kept = scored["decision"] == "keep"
    should = scored["expected"] == "keep"
    tp, fp, fn = int((kept & should).sum()), int((kept & ~should).sum()), int((~kept & should).sum())
    liars = scored["kind"] == "liar"
    right_pixels = scored["true_model"] == scored["class_given"]
    summary = {
        "files": int(len(t)), "scored": int(len(scored)),
        "missing_from_report": int((t["decision"] == "missing").sum()),
        "not_in_truth": int(len(set(rep.index) - set(t["key"]))),
        "expected_keep": int(should.sum()), "kept": int(kept.sum()),
        "true_keep": tp, "false_keep": fp, "false_reject": fn,
        "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
        "as_expected": _ratio(int((scored["given"] == scored["expected_code"]).sum()), len(scored)),
        "liars": int(liars.sum()), "liars_kept": int((liars & kept).sum()),
        "label_precision": _ratio(int((kept & right_pixels).sum()), int(kept.sum())),
    }
    reasons = pd.crosstab(scored["expected_code"], scored["given"]).rename_axis(index="expected", columns="given")
    kinds = (scored.assign(kept=kept, as_expected=scored["given"] == scored["expected_code"])
             .groupby("kind", sort=True)
             .agg(files=("file", "size"), expected=("expected_code", "first"), kept=("kept", "sum"),
                  as_expected=("as_expected", "sum"))
             .reset_index())
    return FilterScore(summary, reasons, kinds)


def format_score(s: FilterScore) -> list[str]:
    m = s.summary
    lines = [(f"against the truth: keep precision {m['precision']} recall {m['recall']} "
              f"({m['true_keep']} kept as expected, {m['false_keep']} kept that should not be, "
              f"{m['false_reject']} rejected that should be kept); {m['as_expected']} of files "
              "got the expected verdict and reason"),
             (f"liars (EXIF of one model, pixels of another; no metadata filter can tell): "
              f"{m['liars_kept']}/{m['liars']} kept; label precision of the kept files "
              f"{m['label_precision']}")]
    if m["missing_from_report"] or m["not_in_truth"]:
        lines.append(f"{m['missing_from_report']} truth files absent from the report, "
                     f"{m['not_in_truth']} report files absent from the truth")
    lines.append("reasons, expected (rows) x given (columns):")
    lines += ["  " + row for row in s.reasons.to_string().splitlines()]
    return lines


def score_files(report_csv: str | Path, truth_csv: str | Path, out_dir: str | Path) -> FilterScore:
    """Score, print, and write filter_score.json / filter_reasons.csv / filter_kinds.csv to ``out_dir``."""
    report = pd.read_csv(report_csv, dtype=str, keep_default_na=False)
    result = score(report, load_truth(truth_csv))
    for line in format_score(result):
        stage_log(STAGE, line)
    out_dir = Path(out_dir)
    write_json(out_dir / SCORE_NAME, {**result.summary, "truth": str(truth_csv), "report": str(report_csv),
                                      "kinds": result.kinds.to_dict("records")})
    write_csv(out_dir / REASONS_NAME, result.reasons.reset_index())
    write_csv(out_dir / KINDS_NAME, result.kinds)
    stage_log(STAGE, f"wrote {out_dir / SCORE_NAME}, {out_dir / REASONS_NAME} and {out_dir / KINDS_NAME}")
    return result

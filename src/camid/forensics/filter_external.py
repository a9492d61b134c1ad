"""The external-data filter (``camid filter-external``): keep only untouched camera originals of the known classes.

The winners scraped ~80k photos (Flickr, Yandex.Fotki, Wikimedia) and kept those whose
EXIF model, size, JPEG quality and software tags say "straight out of the phone"
(docs/competition.md, "External data"). This does that for every file under SRC:

1. read each file's header (EXIF, size, quantisation tables: ``camid.forensics.exif``), in parallel;
2. judge it against the rules (``configs/external_rules.yaml``; every failed check is a
   reason); files that pass are decoded (entropy-decoded in full at 1/8 scale, which
   catches truncation) and perceptually hashed -- the others need no pixel reads;
3. drop near-duplicates of training images and of earlier kept files;
4. hard-link (or copy) kept files to ``OUT/<class>/`` and write one report row per file.

Re-running with the same report reuses the analysis of files whose size and mtime are
unchanged, so a killed run or a rules change costs only the new work. Decisions are
always recomputed from the cached facts, so editing the rules needs no re-reading.
The report is the only state: ``dest`` says which outputs a run placed, so a later
run can remove those that are no longer kept.

This module runs the command; the steps live in ``rules`` (the rules file and reason codes),
``filter_analysis`` (1), ``phash`` (the hash and its index), ``filter_decision`` (2, 3),
``filter_place`` (4) and ``filter_report`` (the report and the caches).
"""
from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..util.io import remove_stale_temps
from ..util.log import stage_log
from ..util.pool import parallel_map
from .filter_analysis import ANALYSIS_COLUMNS, analyse_file, decode_file
from .filter_decision import decide, judge
from .filter_place import list_inputs, place_kept
from .filter_report import STAGE, read_previous, train_hashes, unchanged, write_report
from .rules import Rules, load_rules, reason_code

DEFAULT_REPORT_NAME = "filter_report.csv"
CHECKPOINT_SECONDS = 60.0


class _Checkpoint:
    """Write the analysis done so far every CHECKPOINT_SECONDS, so a killed run resumes."""

    def __init__(self, write: Callable[[list[dict[str, Any]]], None]):
        self.write, self.last = write, time.monotonic()

    def __call__(self, rows: Iterable[dict[str, Any]]) -> None:
        if time.monotonic() - self.last > CHECKPOINT_SECONDS:
            # dest too: the next run removes outputs that are no longer kept
            self.write([{c: r.get(c, "") for c in [*ANALYSIS_COLUMNS, "dest"]} for r in rows])
            self.last = time.monotonic()


def _wants_pixels(row: dict[str, Any], rules: Rules, src: Path, decode_all: bool) -> bool:
    """Decode a readable JPEG only if it passes every header check (or with decode_all):
    most scraped photos fail on model or size, and skipping them avoids reading
    hundreds of GB of pixel data."""
    if row["decoded"] or row["read_error"] or row["format"] not in ("JPEG", "MPO"):
        return False
    if decode_all:
        return True
    judge(row, rules, src)
    return not row["reasons"]


def analyse_all(paths: Sequence[str], previous: dict[str, dict[str, Any]], rules: Rules,
                src: Path, workers: int = 1,
                checkpoint: Callable[[list[dict[str, Any]]], None] = lambda rows: None,
                decode_all: bool = False) -> tuple[list[dict[str, Any]], Counter]:
    """Header pass over new/changed files, then a pixel pass over the candidates.

    Returns rows in ``paths`` order and counts (reused, read, decoded).
    """
    reused = {p: dict(previous[p]) for p in paths if unchanged(previous.get(p), p)}
    todo = [p for p in paths if p not in reused]
    save = _Checkpoint(checkpoint)
    fresh: dict[str, dict[str, Any]] = {}
    for row in parallel_map(analyse_file, todo, workers, "read headers", unit="file"):
        fresh[row["path"]] = row
        save([*reused.values(), *fresh.values()])
    rows = [reused.get(p) or fresh[p] for p in paths]
    need = [r for r in rows if _wants_pixels(r, rules, src, decode_all)]
    for row, result in zip(need, parallel_map(decode_file, [r["path"] for r in need],
                                              workers, "decode", unit="file"), strict=True):
        row.update(result)
        save(rows)
    return rows, Counter(reused=len(reused), read=len(todo), decoded=len(need))


def _log_outcome(rows: Sequence[dict[str, Any]], duplicates: int, placed: Counter,
                 out: Path, copy: bool) -> None:
    kept = Counter(r["class"] for r in rows if r["decision"] == "keep")
    codes = Counter(reason_code(x) for r in rows if r["reasons"] for x in r["reasons"].split(";"))
    stage_log(STAGE, f"kept {sum(kept.values())}/{len(rows)}: "
                     + (", ".join(f"{k}={v}" for k, v in sorted(kept.items())) or "none"))
    stage_log(STAGE, "rejection reasons (a file can have several): "
                     + (", ".join(f"{k}={v}" for k, v in codes.most_common()) or "none")
                     + f"; {duplicates} near-duplicates")
    fallback = placed["copied_instead_of_link"]
    stage_log(STAGE, f"{'copied' if copy else 'linked'} {placed['placed']} new files into "
                     f"{out}/<class>/ ({placed['unchanged']} already there, "
                     f"{placed['stale_removed']} stale removed"
                     + (f", {fallback} copied: hard links impossible" if fallback else "") + ")")


def filter_external(src: Path, rules_path: Path, out: Path, train: Path | None = None, copy: bool = False,
                    workers: int = 1, report: Path | None = None, decode_all: bool = False) -> Path:
    """Judge every file under ``src``, place the kept ones under ``out/<class>/`` and write the report
    (default ``out/filter_report.csv``); returns the report's path."""
    given, src = src, Path(os.path.abspath(src))
    if not src.is_dir():
        raise UsageError(f"source folder not found: {given}")
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    rules = load_rules(rules_path)
    report = Path(report) if report else out / DEFAULT_REPORT_NAME
    cache = report.with_name(report.stem + ".train_hashes.csv")
    remove_stale_temps(out, recursive=True)  # links/reports a killed earlier run left half-made
    if report.parent != out:
        remove_stale_temps(report.parent)
    previous = read_previous(report)
    paths = list_inputs(src, exclude=[out, report, cache])
    stage_log(STAGE, f"rules {rules_path}: {len(rules.classes)} classes; {len(paths)} files under {src}")

    def checkpoint(done: list[dict[str, Any]]) -> None:
        write_report(report, [{**r, "decision": "pending"} for r in done])

    train_rows = train_hashes(train, cache, workers) if train else []
    start = time.monotonic()
    rows, n = analyse_all(paths, previous, rules, src, workers, checkpoint, decode_all)
    took = time.monotonic() - start
    stage_log(STAGE, f"read {n['read']} files, reused {n['reused']} unchanged from {report}; "
                     f"decoded {n['decoded']} candidates ({took:.1f} s, "
                     f"{n['read'] / max(took, 1e-9):.0f} files/s on {workers} worker(s))")
    duplicates = decide(rows, rules, src, train_rows)
    placed = place_kept(rows, out, copy, previous)
    write_report(report, rows)
    _log_outcome(rows, duplicates, placed, out, copy)
    stage_log(STAGE, f"wrote {report}")
    return report

"""`camid prnu match FILE.npz PHOTO...`: NCC/PCE of query photos against a fingerprint, with the
decision at a PCE threshold and what it means.

Reads no config and no data layout: the photos may be in any folder.
"""
from __future__ import annotations

import argparse

from ..errors import UsageError
from ..forensics.prnu_tools import (
    DEFAULT_THRESHOLD,
    MatchResult,
    Meaning,
    collect_images,
    load_fingerprint,
    match_paths,
    parse_scales,
    results_frame,
)
from ..util.io import write_csv
from ..util.log import stage_log
from .common import workers

STAGE = "prnu"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Match query photos against a fingerprint made by `camid prnu fingerprint`. "
                          "Queries are cropped like the fingerprint; portrait ones are tried in both "
                          "rotations. One CSV row per query; unreadable ones are reported and skipped "
                          "(exit code 1).")
    parser.add_argument("fingerprint", help="fingerprint .npz")
    parser.add_argument("queries", nargs="+", help="photos and/or folders of photos (not recursive)")
    parser.add_argument("--out", default=None, help="CSV to write, one row per query")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="PCE decision threshold (default 60, the common practice)")
    parser.add_argument("--search", action="store_true",
                        help="take the PCE peak over every shift (queries cropped from an unknown position, "
                             "or shifted); reports the shift found")
    parser.add_argument("--scales", default=None,
                        help="also try queries resized by these factors, e.g. 0.5,0.8 (each is scaled back by "
                             "1/s; implies --search)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")


def _line(r: MatchResult, search: bool) -> str:
    if r.error:
        return f"{r.file}: cannot match ({r.error}); skipped"
    where = ""
    if search:
        where = f"  at y={r.shift_y} x={r.shift_x}"
        where += f", scale {r.scale:g}" if r.scale != 1 else ""
    where += f", rotated {r.rotation} ccw" if r.rotation else ""
    return (f"{r.file}  {r.width}x{r.height}  NCC {r.ncc:.4f}  PCE {r.pce:9.1f}  log10 P_FA {r.log10_p_fa:7.1f}"
            f"{where}  -> {r.decision}")


def _queries(n: int) -> str:
    return f"quer{'y' if n == 1 else 'ies'}"


def main(args: argparse.Namespace) -> int:
    if not args.threshold > 0:
        raise UsageError(f"--threshold must be positive, got {args.threshold}")
    fp = load_fingerprint(args.fingerprint)
    scales = parse_scales(args.scales)
    search = args.search or len(scales) > 1
    queries = collect_images(args.queries, strict=False)
    stage_log(STAGE, f"fingerprint {args.fingerprint}: {fp.describe()}")
    how = ", zero shift (pass --search for cropped or shifted photos)"
    if search:
        how = ", search over shifts" + (f", scales {','.join(f'{s:g}' for s in scales)}" if len(scales) > 1 else "")
    stage_log(STAGE, f"{len(queries)} {_queries(len(queries))}{how}")
    results = [r[0] for r in match_paths([fp], queries, search, scales, args.threshold, workers(args.workers))]
    for r in results:
        print(_line(r, search))
    if args.out:
        write_csv(args.out, results_frame(results))
        stage_log(STAGE, f"wrote {args.out}: {len(results)} row(s)")
    for line in Meaning(args.threshold).lines:
        print(line)
    bad = [r.file for r in results if r.error]
    n_match = sum(r.decision == "match" for r in results)
    n_read = len(results) - len(bad)
    print(f"{n_match} of {n_read} readable {'query reaches' if n_read == 1 else 'queries reach'} "
          f"PCE >= {args.threshold:g}")
    if bad:
        stage_log(STAGE, f"{len(bad)} of {len(results)} {_queries(len(results))} could not be matched: {bad}")
        return 1
    return 0

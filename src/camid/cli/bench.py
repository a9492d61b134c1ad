"""`camid bench`: speed-ups measured against their baselines in one run."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..bench.suite import OPTIONAL_SECTIONS, SECTIONS, format_table, machine_info, run, write_results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="small sizes for a smoke test (seconds); ratios are then not meaningful")
    parser.add_argument("--out", default="bench_out", help="folder for bench.csv and bench.json (default: bench_out)")
    parser.add_argument("--only", nargs="+", choices=(*SECTIONS, *OPTIONAL_SECTIONS), default=list(SECTIONS),
                        help=f"run only these sections (default: {' '.join(SECTIONS)}; "
                             f"{' '.join(OPTIONAL_SECTIONS)} only when named: it needs ray and submitit)")
    parser.add_argument("--backbones", nargs="+", default=None,
                        help="GPU section: backbones to time (default: the recipe's eight; --quick: the first)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="GPU section: dense bf16 peak of this GPU, when it is not in the built-in table")


def main(args: argparse.Namespace) -> int:
    info = machine_info()
    info["command"] = "camid bench" + (" --quick" if args.quick else "") + (
        f" --only {' '.join(args.only)}" if list(args.only) != list(SECTIONS) else "")
    start = time.perf_counter()
    rows = run(args.quick, args.only, args.backbones, args.peak_tflops)
    info["seconds"] = round(time.perf_counter() - start, 1)
    print(f"camid bench ({info['date']}; {info['cpu']}, {info['cores']} cores; GPU: {info['gpu']}; "
          f"{info['seconds']} s{'; --quick: sizes too small for meaningful ratios' if args.quick else ''})")
    print(format_table(rows))
    out = Path(args.out)
    write_results(out, info, rows)
    print(f"[camid bench] wrote {out / 'bench.csv'} and {out / 'bench.json'}")
    return 0

"""`camid robustness`: accuracy of a run against manipulation strength and crop size."""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ..forensics.robustness import run_report
from ..train.runtime import pick_device
from ..util.runtime import configure_threads
from .common import add_common_arguments, resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--model", default=None, help="run name (default: the config's first)")
    parser.add_argument("--fold", type=int, default=0, help="the fold whose held-out photos are used (default 0)")
    parser.add_argument("--out", default=None, help="output folder (default: WORKDIR/reports/robustness/<run>-fold<k>)")
    parser.add_argument("--max-images", type=int, default=None,
                        help="evaluate a seeded sample of the held-out photos (default: robustness.max_images; "
                             "equal to train.max_val_images it is the validation sample)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the config's device)")


def main(args: argparse.Namespace) -> int:
    cfg, ws = resolve(args)
    run_name = cfg.model(args.model).run_name if args.model else cfg.models[0].run_name
    device = pick_device(args.device or cfg.device)
    configure_threads(device)
    out = Path(args.out) if args.out else ws.robustness_dir(run_name, args.fold)
    max_images = args.max_images if args.max_images is not None else cfg.robustness.max_images
    df = run_report(cfg, ws, run_name, args.fold, out, device, max_images)
    with pd.option_context("display.width", 120, "display.max_rows", 200):
        print(df[["kind", "value", "aug", "crop", "n", "accuracy", "in_training_range"]].to_string(index=False))
    return 0

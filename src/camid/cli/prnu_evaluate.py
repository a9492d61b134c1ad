"""`camid prnu evaluate`: the PRNU sensor-fingerprint baseline on the competition folders, device
verification ROC/AUC/EER (plain `camid prnu` before the `prnu` group)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..data.layout import resolve_classes
from ..forensics.prnu import PrnuSettings, evaluate_devices, print_summary
from ..util.log import stage_log
from .common import add_common_arguments, resolve, workers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Device verification on DATA/train (device A) and the device-B test crops: "
                          "ROC, AUC, EER of PCE/NCC, and the CNN on the same pairs.")
    add_common_arguments(parser)
    parser.add_argument("--out", default=None, help="output folder (default: WORKDIR/reports/prnu)")
    parser.add_argument("--n-ref", type=int, default=30, help="device-A photos per fingerprint (default 30)")
    parser.add_argument("--n-query", type=int, default=20,
                        help="queries per class and kind: held-out device-A photos, device-B crops (default 20)")
    parser.add_argument("--crop", type=int, default=None, help="analysis crop (default: the test crops' size)")
    parser.add_argument("--enhance", choices=["none", "li"], default="none", help="Li's enhanced residual (alpha 7)")
    parser.add_argument("--channels", choices=["rgb", "luma"], default="rgb",
                        help="residual per colour channel (default) or of the luminance")
    parser.add_argument("--sigma", type=float, default=3.0, help="denoiser noise std in grey levels (default 3)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")


def main(args: argparse.Namespace) -> int:
    cfg, ws = resolve(args)
    s = PrnuSettings(sigma=args.sigma, channels=args.channels, enhance=args.enhance)
    out = Path(args.out) if args.out else ws.prnu_dir
    summary = evaluate_devices(ws, resolve_classes(cfg, ws.data_dir), s, args.n_ref, args.n_query, args.crop,
                               workers(args.workers), out)
    print_summary(summary)
    t = summary["timing"]
    stage_log("prnu", f"residual {t['residual_s_per_photo']} s per {t['crop']}x{t['crop']} photo; "
                      f"wrote scores.csv, roc.csv, roc.png, summary.json to {out}")
    return 0

"""`camid simulate OUT [--external N]`: a simulated competition in the Kaggle layout (and an external pool)."""
from __future__ import annotations

import argparse
from dataclasses import fields

from ..config import SimulateConfig, load_config
from ..data.layout import POOL_DIR, POOL_RULES, POOL_TRUTH
from ..errors import UsageError
from ..sim.competition import SimOptions
from ..sim.external_pool import simulate_with_pool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder (Kaggle layout: train/, test/, CSVs)")
    parser.add_argument("--config", metavar="CONFIG", help="YAML profile; its `simulate` section gives the defaults")
    parser.add_argument("--n-classes", type=int, metavar="N", help="number of camera models (>= 2)")
    parser.add_argument("--train-per-class", type=int, metavar="N", help="training photos per class (device A)")
    parser.add_argument("--test-per-class", type=int, metavar="N",
                        help="test crops per class in EACH half (_unalt and _manip)")
    parser.add_argument("--width", type=int, metavar="W", help="photo width in pixels (even)")
    parser.add_argument("--height", type=int, metavar="H", help="photo height in pixels (even)")
    parser.add_argument("--test-crop", type=int, metavar="C", help="side of the centre test crops")
    parser.add_argument("--seed", type=int, metavar="S", help="master seed (>= 0)")
    parser.add_argument("--external", dest="external_per_class", type=int, metavar="N",
                        help=f"also write OUT/{POOL_DIR}/, a scrape-like pool of N files per class from "
                             f"further devices (plus {POOL_TRUTH}, {POOL_RULES}); 0: none")
    parser.add_argument("--external-devices", dest="external_devices", type=int, metavar="K",
                        help="devices per class in the external pool (C, D, ...; never A or B)")
    parser.add_argument("--workers", type=int, metavar="W", default=None,
                        help="worker processes (default: all CPU cores); does not change the output")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a simulated dataset written with different options")


def options_from_args(args: argparse.Namespace) -> SimOptions:
    """Config `simulate` section (or the defaults), overridden by the command-line options."""
    cfg = load_config(args.config).simulate if args.config else SimulateConfig()
    return SimOptions.from_config(cfg, **{f.name: getattr(args, f.name, None) for f in fields(SimOptions)})


def main(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    simulate_with_pool(args.out, options_from_args(args), workers=args.workers, overwrite=args.overwrite)
    return 0

"""`camid compose SRC... --out DATA`: a competition in the Kaggle layout from your own photos (`data.compose`)."""
from __future__ import annotations

import argparse

from ..data.compose import ComposeOptions, compose


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SRC",
                        help="a folder of <class>/* photos, or a manifest CSV (file, camera[, device, scene]; "
                             "paths relative to the manifest's folder)")
    parser.add_argument("--out", required=True, help="data folder to write (Kaggle layout); empty or new")
    parser.add_argument("--test-devices", default="", metavar="D1,D2",
                        help="devices whose photos form the test set; a class with >= 2 devices none of which is "
                             "named gets one seeded test device; classes with one device are split by photo")
    parser.add_argument("--test-fraction", type=float, default=ComposeOptions.test_fraction, metavar="F",
                        help="share of each single-device class's photos (per scene) that go to test "
                             "(default %(default)s)")
    parser.add_argument("--crop", type=int, default=ComposeOptions.crop, metavar="C",
                        help="test crop side; _manip crops come from the centre 2C window (default %(default)s)")
    parser.add_argument("--windows", type=int, default=ComposeOptions.windows, metavar="N",
                        help="windows per test photo: the centre, then N-1 seeded places (default 1; "
                             "more than 1 and +prnu cannot apply)")
    parser.add_argument("--seed", type=int, default=ComposeOptions.seed, metavar="S", help="split and name seed")
    parser.add_argument("--overwrite", action="store_true", help="replace a composition of other inputs/options")


def main(args: argparse.Namespace) -> int:
    devices = tuple(d.strip() for d in args.test_devices.split(",") if d.strip())
    opts = ComposeOptions(test_fraction=args.test_fraction, test_devices=devices, crop=args.crop,
                          windows=args.windows, seed=args.seed)
    compose(args.sources, args.out, opts, overwrite=args.overwrite)
    return 0

"""`camid identify PHOTO...`: top-k camera models of arbitrary photos."""
from __future__ import annotations

import argparse

from ..errors import UsageError
from ..forensics.identify import (
    format_photo,
    identify_photo,
    load_ensembles,
    results_frame,
)
from ..train.runtime import pick_device
from ..util.io import write_csv
from ..util.log import stage_log
from ..util.runtime import configure_threads
from .common import add_common_arguments, names, resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("photos", nargs="+", metavar="PHOTO", help="image files (JPEG, TIFF, PNG, ...)")
    add_common_arguments(parser)
    parser.add_argument("--models", default="", help="comma-separated run names (default: every run of the config)")
    parser.add_argument("--top-k", type=int, default=3, help="camera models printed per photo (default 3)")
    parser.add_argument("--manipulated", action="store_true",
                        help="set the network's manip flag (photo known to be re-compressed, resized or "
                             "gamma-adjusted)")
    parser.add_argument("--tiles", type=int, default=4,
                        help="extra non-overlapping tiles per photo (default 4; 0: centre only)")
    parser.add_argument("--out", default=None, help="also write the probabilities to this CSV")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the config's device)")


def main(args: argparse.Namespace) -> int:
    cfg, ws = resolve(args)
    if args.top_k < 1 or args.tiles < 0:
        raise UsageError("--top-k must be >= 1 and --tiles >= 0")
    device = pick_device(args.device or cfg.device)
    configure_threads(device)
    runs, classes = load_ensembles(cfg, ws, names(args.models), device)
    size = cfg.predict.crop
    n_networks = sum(len(e.nets) for ens in runs.values() for e in ens)
    stage_log("identify", f"loaded {', '.join(f'{r} ({len(e)} fold(s))' for r, e in runs.items())}: "
                          f"{n_networks} network(s), TTA {cfg.predict.tta}, crops of {size} px, "
                          f"manip flag {int(args.manipulated)}")
    photos = []
    for path in args.photos:
        p = identify_photo(path, runs, size, args.tiles, args.manipulated, cfg.predict.batch_size)
        print(format_photo(p, classes, min(args.top_k, len(classes)), size), flush=True)
        photos.append(p)
    if args.out:
        write_csv(args.out, results_frame(photos, classes))
        stage_log("identify", f"wrote {args.out}: {len(photos)} row(s)")
    failed = [p.path for p in photos if p.error]
    if failed:
        stage_log("identify", f"{len(failed)} of {len(photos)} photo(s) could not be read: {failed}")
        return 1
    return 0

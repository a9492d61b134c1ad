"""`camid identify PHOTO...`: top-k camera models of arbitrary photos, an "unknown camera"
verdict below the threshold calibrated on the OOF tables, and the EXIF cross-check."""
from __future__ import annotations

import argparse
from collections import Counter

from ..errors import UsageError
from ..forensics.identify import (
    examine_photo,
    expand_inputs,
    format_photo,
    load_ensembles,
    results_frame,
)
from ..forensics.metacheck import find_rules
from ..forensics.openset import UNKNOWN, calibrate, off
from ..train.runtime import pick_device
from ..util.io import write_csv
from ..util.log import stage_log
from ..util.runtime import configure_threads
from .common import add_common_arguments, names, resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("photos", nargs="+", metavar="PHOTO",
                        help="image files (JPEG, TIFF, PNG, ...) or folders of them")
    add_common_arguments(parser)
    parser.add_argument("--models", default="", help="comma-separated run names (default: every run of the config)")
    parser.add_argument("--top-k", type=int, default=3, help="camera models printed per photo (default 3)")
    parser.add_argument("--manipulated", action="store_true",
                        help="set the network's manip flag (photo known to be re-compressed, resized or "
                             "gamma-adjusted); the unknown threshold then comes from the manipulated OOF rows")
    parser.add_argument("--tiles", type=int, default=4,
                        help="extra non-overlapping tiles per photo (default 4; 0: centre only)")
    parser.add_argument("--unknown-tpr", type=float, default=None, metavar="RATE",
                        help="share of the known cameras' OOF photos the unknown-camera threshold accepts "
                             "(default: the config's identify.unknown_tpr, 0.95)")
    parser.add_argument("--no-unknown", action="store_true",
                        help="closed set: always name the most probable class (no unknown-camera verdict)")
    parser.add_argument("--rules", default=None, metavar="FILE",
                        help="EXIF model -> class rules (default: the config's identify.rules, "
                             "configs/external_rules.yaml, camid filter-external's file)")
    parser.add_argument("--out", default=None,
                        help="also write the probabilities, verdicts and EXIF checks to this CSV")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the config's device)")


def main(args: argparse.Namespace) -> int:
    cfg, ws = resolve(args)
    tpr = cfg.identify.unknown_tpr if args.unknown_tpr is None else args.unknown_tpr
    if args.top_k < 1 or args.tiles < 0:
        raise UsageError("--top-k must be >= 1 and --tiles >= 0")
    if not 0.0 < tpr <= 1.0:
        raise UsageError(f"--unknown-tpr must be in (0, 1], got {tpr}")
    files, notes = expand_inputs(args.photos)
    if not files:
        raise UsageError("no photos to identify: " + "; ".join(notes))
    for note in notes:
        stage_log("identify", note)
    rules = find_rules(args.rules, cfg.identify.rules, args.config)
    device = pick_device(args.device or cfg.device)
    configure_threads(device)
    runs, classes = load_ensembles(cfg, ws, names(args.models), device)
    size = cfg.predict.crop
    n_networks = sum(len(e.nets) for ens in runs.values() for e in ens)
    stage_log("identify", f"loaded {', '.join(f'{r} ({len(e)} fold(s))' for r, e in runs.items())}: "
                          f"{n_networks} network(s), TTA {cfg.predict.tta}, crops of {size} px, "
                          f"manip flag {int(args.manipulated)}")
    open_set = (off(tpr, args.manipulated, "--no-unknown given") if args.no_unknown
                else calibrate(ws, runs, cfg.predict.tta, classes, args.manipulated, tpr))
    stage_log("identify", open_set.describe())
    stage_log("identify", f"EXIF check: rules {rules.path}" if rules.rules else f"EXIF check: {rules.note}")
    photos = []
    for path in files:
        p = examine_photo(path, runs, size, args.tiles, args.manipulated, cfg.predict.batch_size, open_set, rules)
        print(format_photo(p, classes, min(args.top_k, len(classes)), size), flush=True)
        photos.append(p)
    if args.out:
        write_csv(args.out, results_frame(photos, classes))
        stage_log("identify", f"wrote {args.out}: {len(photos)} row(s)")
    read = [p for p in photos if not p.error]
    checks = Counter(p.meta.status for p in read if p.meta is not None)
    stage_log("identify", f"{len(read)} photo(s) identified: {sum(p.verdict == UNKNOWN for p in read)} unknown camera, "
                          f"EXIF {', '.join(f'{k} {v}' for k, v in sorted(checks.items())) or 'not checked'}")
    failed = [p.path for p in photos if p.error]
    if failed or notes:
        if failed:
            stage_log("identify", f"{len(failed)} of {len(photos)} photo(s) could not be read: {failed}")
        return 1
    return 0

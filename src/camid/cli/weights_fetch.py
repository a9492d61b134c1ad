"""`camid weights fetch`: the ImageNet weights of a config's backbones (or of named ones) into
``weights_dir``, from the URLs their libraries publish, a mirror or a local folder, verified."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import load_config
from ..errors import JobError, UsageError
from ..models.registry import get_spec
from ..models.weights import WeightsFile, backbones_of, fetch, published, read_sums
from ..util.log import stage_log
from .common import names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/kaggle.yaml",
                        help="YAML profile: its backbones and train.weights_dir (default: configs/kaggle.yaml)")
    parser.add_argument("--backbones", default="", help="comma-separated backbone names instead of the config's")
    parser.add_argument("--weights-dir", default=None, help="target folder (default: the config's train.weights_dir)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--base-url", default=None, metavar="URL",
                        help="a mirror: read URL/<file name> instead of each library's own URL")
    source.add_argument("--from", dest="mirror", default=None, metavar="DIR",
                        help="copy the files from this folder (same names) instead of downloading them")
    parser.add_argument("--sums", default=None, metavar="FILE",
                        help="sha256sum-style digests ('<sha256>  <file name>') that replace the published ones, "
                             "e.g. for a mirror's own copies")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds without data before a try fails")
    parser.add_argument("--retries", type=int, default=3, help="resumed tries after an interrupted transfer")


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    wanted = names(args.backbones) or backbones_of(cfg)
    files: list[WeightsFile] = []
    for backbone in wanted:
        spec = get_spec(backbone)
        wf = published(spec)
        if wf is not None:
            files.append(wf)
        elif spec.weights_files:
            raise UsageError(f"backbone {backbone!r}: its library publishes no weights URL; put "
                             f"{spec.weights_files[0]} under the weights folder by hand")
        else:
            stage_log("weights", f"{backbone}: trains from scratch, no ImageNet weights")
    if args.mirror and not Path(args.mirror).is_dir():
        raise UsageError(f"--from {args.mirror}: no such folder")
    sums = read_sums(args.sums) if args.sums else None
    weights_dir = Path(args.weights_dir or cfg.train.weights_dir)
    outcomes = fetch(files, weights_dir, args.base_url, args.mirror, sums, args.timeout, max(0, args.retries))
    failed = [o.wf.name for o in outcomes if not o.ok]
    if failed:
        raise JobError(f"{len(failed)} of {len(outcomes)} weights file(s) not in place: {', '.join(failed)} "
                       "(reasons above)")
    stage_log("weights", f"{len(outcomes)} weights file(s) verified under {weights_dir}")
    return 0

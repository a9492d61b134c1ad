"""`camid prnu fingerprint PHOTO... -o FILE.npz`: a device's PRNU fingerprint from an examiner's photos.

Reads no config and no data layout: the photos may be in any folder.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from ..forensics.prnu import PrnuSettings
from ..forensics.prnu_tools import build_fingerprint, save_fingerprint
from ..util.log import stage_log
from .common import workers

STAGE = "prnu"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("ML PRNU fingerprint of ONE device from its photos: flat-fields (a uniform, "
                          "out-of-focus surface; 10-20 suffice) or natural scenes (more needed). "
                          "All photos must have one size; portrait pixel arrays are turned to the "
                          "landscape sensor frame.")
    parser.add_argument("images", nargs="+", help="photos and/or folders of photos (not recursive)")
    parser.add_argument("-o", "--out", required=True, help="fingerprint file to write (.npz; metadata copy in .json)")
    parser.add_argument("--crop", type=int, default=None,
                        help="analyse the centre NxN crop (even offsets) instead of the whole frame: faster, weaker")
    parser.add_argument("--portrait", choices=["ccw", "cw", "refuse"], default="ccw",
                        help="portrait pixel arrays: turn 90 degrees counter-clockwise (default: undoes EXIF "
                             "orientation 6), clockwise (undoes 8), or refuse them")
    d = PrnuSettings()
    parser.add_argument("--sigma", type=float, default=d.sigma,
                        help=f"noise std the wavelet denoiser removes, grey levels (default {d.sigma:g})")
    parser.add_argument("--levels", type=int, default=d.levels, help=f"wavelet levels (default {d.levels})")
    parser.add_argument("--wavelet", default=d.wavelet,
                        help=f"wavelet (default {d.wavelet}; prnu-python uses db8)")
    parser.add_argument("--channels", choices=["rgb", "luma"], default=d.channels,
                        help="residual per colour channel, then grey (default), or of the luminance")
    parser.add_argument("--enhance", choices=["none", "li"], default=d.enhance,
                        help="Li's enhanced residual for the QUERIES matched against this fingerprint "
                             "(the fingerprint itself is never enhanced); stored in the file")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".npz":
        raise UsageError(f"-o {out}: the fingerprint file must end in .npz")
    s = PrnuSettings(sigma=args.sigma, levels=args.levels, wavelet=args.wavelet, channels=args.channels,
                     enhance=args.enhance)
    fp = build_fingerprint(args.images, s, args.crop, args.portrait, workers(args.workers))
    npz, sidecar = save_fingerprint(fp, out)
    stage_log(STAGE, f"wrote {npz} (metadata copy {sidecar.name}): {fp.describe()}")
    if fp.meta["skipped"]:
        stage_log(STAGE, f"{len(fp.meta['skipped'])} photo(s) could not be read and were left out: "
                         f"{[s['path'] for s in fp.meta['skipped']]}")
        return 1
    return 0

"""JPEG grid phase figures for BENCHMARKS.md: ``camid.data.jpeg_grid.estimate_phase`` on 512-px
crops cut at known phases near the centre of every real photo, and the phase each photo size
gives its centre crop (what a test crop of that camera has).

    PYTHONPATH=src python -m camid.bench.jpeg_grid_phase [--window 128] [--crops 3] [--data ../shared/data]

Prints, per camera: crops whose phase was found, crops with a clear grid (margin >= MIN_MARGIN),
the median and smallest margin, and the photo sizes with their centre-crop phase (row, col).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from camid.data import jpeg_grid
from camid.data.crops import centre_offset
from camid.data.images import read_image


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--window", type=int, default=jpeg_grid.WINDOW)
    ap.add_argument("--crops", type=int, default=3, help="crops per photo, each at a random phase")
    args = ap.parse_args()
    root = Path(args.data)
    files = sorted((root / "real_cameras").glob("*/*.jpg")) + sorted((root / "dresden_prnu").glob("*/*.JPG"))
    rng = np.random.default_rng(0)
    per_cam: dict[str, dict] = {}
    secs = 0.0
    for f in files:
        img = read_image(f)
        h, w = img.shape[:2]
        cam = f.parent.name if f.parent.parent.name == "real_cameras" else "Dresden " + f.name.split("_")[0]
        d = per_cam.setdefault(cam, {"n": 0, "right": 0, "clear": 0, "clear_right": 0, "margins": [], "sizes": set()})
        d["sizes"].add((h, w, centre_offset(h, 512) % 8, centre_offset(w, 512) % 8))
        for _ in range(args.crops):
            p = (int(rng.integers(8)), int(rng.integers(8)))
            y, x = centre_offset(h, 512) // 8 * 8 + p[0], centre_offset(w, 512) // 8 * 8 + p[1]
            t0 = time.time()
            found, margin = jpeg_grid.estimate_phase(img[y:y + 512, x:x + 512], args.window)
            secs += time.time() - t0
            clear = margin >= jpeg_grid.MIN_MARGIN
            d["n"] += 1
            d["right"] += found == p
            d["clear"] += clear
            d["clear_right"] += clear and found == p
            d["margins"].append(margin)
    n = sum(d["n"] for d in per_cam.values())
    print(f"{len(files)} photos, {n} crops of 512 px, window {args.window}: "
          f"{1000 * secs / n:.1f} ms per crop\n")
    print("| camera | found | clear grid | right when clear | margin median (min) | size (h x w): centre-crop phase |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for cam, d in sorted(per_cam.items()):
        sizes = ", ".join(f"{h}x{w}: ({a}, {b})" for h, w, a, b in sorted(d["sizes"]))
        print(f"| {cam} | {d['right']}/{d['n']} | {d['clear']}/{d['n']} | {d['clear_right']}/{d['clear']} | "
              f"{np.median(d['margins']):.3f} ({min(d['margins']):.3f}) | {sizes} |")


if __name__ == "__main__":
    main()

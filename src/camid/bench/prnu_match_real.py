"""`+match` figures for BENCHMARKS.md: real test crops matched against the fingerprints of training devices.

    PYTHONPATH=src python -m camid.bench.prnu_match_real [--shared ../shared/data] [--workers 2]
                                                         [--out bench_out/prnu_match]

Training devices: the six phone/tablet models of ``real_cameras`` (fingerprint from each model's
flat-fields) and Nikon_D70_0 and Nikon_D70s_0 of ``dresden_prnu`` (their flat-fields). Test
crops, made as the real-photo benchmark makes them: the centre 512 of a photo (``_unalt``), and
the centre 1024 window, manipulated (each of the 8), then its centre 512 (``_manip``).

- real_cameras: every photo (flat-field or natural) is held out in turn; its own model's
  fingerprint is rebuilt without it, so a crop never meets a fingerprint it is part of;
- dresden: the natural photos of all four Nikons, against fingerprints of device 0 only: the
  device-1 crops are the device-disjoint case (Kaggle's): a match there is a false match.

The step's own code scores the crops (``prnu_match.score_test`` and ``decide`` with the default
``blend.match`` settings). Writes ``OUT/crops.csv`` (one row per crop) and prints the tables.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from camid.bench.common import REPO
from camid.config import MatchConfig
from camid.data.crops import centre_crop, manipulated_centre_crop
from camid.data.images import read_image
from camid.data.manipulations import MANIPULATION_NAMES
from camid.data.orientation import sensor_frame
from camid.forensics import prnu
from camid.level2 import prnu_match as pm
from camid.util.io import write_csv

CROP, WINDOW = 512, 1024


def _terms(path: str) -> tuple[np.ndarray, np.ndarray]:
    return prnu.fingerprint_terms(np.ascontiguousarray(centre_crop(sensor_frame(read_image(path)), CROP)))


def _crops(path: str, folder: Path) -> list[dict]:
    """The nine test crops of one photo, written as lossless PNG files like the benchmark's TIFFs."""
    img = sensor_frame(read_image(path))
    window = centre_crop(img, WINDOW)
    rows = []
    for manip in ("none", *MANIPULATION_NAMES):
        crop = centre_crop(img, CROP) if manip == "none" else manipulated_centre_crop(window, manip, CROP)
        fname = f"{Path(path).stem}_{manip}_{'unalt' if manip == 'none' else 'manip'}.png"
        Image.fromarray(np.ascontiguousarray(crop)).save(folder / fname)
        rows.append({"fname": fname, "path": str(folder / fname), "manip": int(manip != "none"),
                     "manipulation": manip})
    return rows


def _device(label: str, device: str, terms: list[tuple[np.ndarray, np.ndarray]]) -> pm.DeviceFingerprint:
    num = np.sum([t[0] for t in terms], axis=0)
    den = np.sum([t[1] for t in terms], axis=0)
    return pm.DeviceFingerprint(label, device, (CROP, CROP), len(terms), prnu.finish_fingerprint(num, den))


def run(shared: Path, workers: int, out: Path) -> pd.DataFrame:
    s = MatchConfig()
    real = pd.read_csv(shared / "real_cameras" / "manifest.csv")
    real["path"] = [str(shared / "real_cameras" / f) for f in real["file"]]
    dresden = shared / "dresden_prnu"
    terms = {p: _terms(p) for p in real["path"]}
    flats = {m: g.loc[g["scene"] == "flatfield", "path"].tolist() for m, g in real.groupby("camera")}
    nikon = {d: [_terms(str(p)) for p in sorted((dresden / "flatfield").glob(f"{d}_*.JPG"))]
             for d in ("Nikon_D70_0", "Nikon_D70s_0")}
    nikon_devices = [_device(d.rsplit("_", 1)[0], d, t) for d, t in nikon.items()]
    full = {m: _device(m, m, [terms[p] for p in paths]) for m, paths in flats.items()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        queries = [(r.path, r.camera, r.scene, r.camera) for r in real.itertuples()]
        queries += [(str(p), p.stem.rsplit("_", 2)[0], "natural", p.stem.rsplit("_", 1)[0])
                    for p in sorted((dresden / "natural").glob("*.JPG"))]
        for path, label, scene, device in queries:
            own = [p for p in flats.get(label, []) if p != path]
            devices = [(_device(m, m, [terms[p] for p in own]) if m == label else fp) for m, fp in full.items()]
            test = pd.DataFrame(_crops(path, folder))
            ev = pm.score_test(folder, devices + nikon_devices, s, workers, test[["fname", "path", "manip"]])
            report = pm.decide(ev, s)
            for manip, r in zip(test["manipulation"], report.to_dict("records"), strict=True):
                rows.append({"photo": Path(path).name, "camera": label, "device": device, "scene": scene,
                             "manipulation": manip, **{k: r[k] for k in ("best_device", "pce", "second_pce", "scale",
                                                                         "decided_by", "class")}})
            for f in test["path"]:
                Path(f).unlink()
    df = pd.DataFrame(rows)
    write_csv(out / "crops.csv", df)
    return df


def summarise(df: pd.DataFrame) -> str:
    df = df.assign(matched=df["decided_by"] == pm.DECIDED_MATCH, right=df["class"] == df["camera"],
                   in_training=~df["device"].isin(["Nikon_D70_1", "Nikon_D70s_1"]))
    lines = ["| test device | photos | crops | matched unaltered | matched manipulated | precision | "
             "median PCE unaltered |", "|---|---|---|---|---|---|---|"]
    for dev, g in df.groupby("device"):
        u, m = g[g["manipulation"] == "none"], g[g["manipulation"] != "none"]
        hit = g[g["matched"]]
        prec = f"{hit['right'].mean():.3f}" if len(hit) else "-"
        lines.append(f"| {dev}{'' if g['in_training'].iloc[0] else ' (not in training)'} | {g['photo'].nunique()} | "
                     f"{len(g)} | {int(u['matched'].sum())}/{len(u)} | {int(m['matched'].sum())}/{len(m)} | {prec} | "
                     f"{u['pce'].median():.0f} |")
    lines += ["", "| manipulation | crops of training devices matched | precision |", "|---|---|---|"]
    t = df[df["in_training"]]
    for manip, g in t.groupby("manipulation", sort=False):
        hit = g[g["matched"]]
        lines.append(f"| {manip} | {int(g['matched'].sum())}/{len(g)} | "
                     f"{hit['right'].mean():.3f} |" if len(hit) else f"| {manip} | 0/{len(g)} | - |")
    hit = df[df["matched"]]
    lines += ["", f"all: {len(hit)} of {len(df)} crops matched, {int(hit['right'].sum())} to the right class; "
                  f"crops of devices not in training matched: {int(df.loc[~df['in_training'], 'matched'].sum())}"]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "prnu_match")
    args = ap.parse_args()
    t0 = time.perf_counter()
    df = run(args.shared, args.workers, args.out)
    print(summarise(df))
    machine = platform.processor() or platform.machine()
    print(f"\n{time.perf_counter() - t0:.0f} s, {args.workers} worker(s), {machine}, python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

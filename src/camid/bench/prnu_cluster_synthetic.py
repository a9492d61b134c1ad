"""The ``+prnu`` step on synthetic sensor residuals (BENCHMARKS.md, "PRNU clustering on synthetic devices").

    PYTHONPATH=src python -m camid.bench.prnu_cluster_synthetic [--real ../shared/data/real_cameras]

Each case: ``devices`` sensors, 12 unaltered 64-px crops each (residual = strength x the
device's pattern + unit noise: strength 0.35 gives a same-device pair z-score of ~7, the audit's
pure clusters; 0.13 ~1, too weak to trust), device d belongs to class d mod ``classes``, a base
that is ~70% right (true-class logit +2). Printed per case and mode (balanced_test false/true):
clusters found, share of them from one device, share of crops confirmed, precision of the
confirmed classes, base accuracy and accuracy after ``+prnu``. Also the naming reproduction of
audit #21 (two clusters of 16, argmax votes 11/5 and 12/4, the wrong votes overconfident).
With ``--real``: the same step on the 512-px centre crops of real photos (the real_cameras set:
six phones, one device each; its natural scenes alone, then with its flat-fields), with the
same kind of synthetic base (true-class logit +1 or +2).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from camid.config import PrnuClusterConfig
from camid.data.crops import centre_crop
from camid.data.images import read_image
from camid.forensics import prnu
from camid.level2 import prnu_cluster as pc
from camid.util.pool import parallel_map


def devices(n_devices: int, per_device: int, strength: float, side: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    pattern = rng.standard_normal((n_devices, side, side)).astype(np.float32)
    device = np.repeat(np.arange(n_devices), per_device)
    res = rng.standard_normal((len(device), side, side)).astype(np.float32) + strength * pattern[device]
    return res, device


def base(y: np.ndarray, k: int, strength: float = 2.0, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = strength * np.eye(k)[y] + rng.standard_normal((len(y), k))
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def row(res: np.ndarray, y: np.ndarray, k: int, p: np.ndarray, balanced: bool) -> str:
    out = pc.cluster_test(res, np.zeros(len(y), int), p, PrnuClusterConfig(scales=[]), balanced=balanced)
    cl = out.cluster_of_unalt
    found = np.unique(cl[cl >= 0])
    one = np.mean([len(set(y[cl == c])) == 1 for c in found]) if len(found) else float("nan")
    acc = out.accepted
    prec = (out.label[acc] == y[acc]).mean() if acc.any() else float("nan")
    after = pc.apply_clusters(p, out).argmax(axis=1)
    return (f"{str(balanced).lower()} | {len(found)} | {one:.2f} | {acc.mean():.3f} | {prec:.3f} | "
            f"{(p.argmax(1) == y).mean():.3f} | {(after == y).mean():.3f} |"
            + (f" skipped: {out.info['skipped']}" if out.info.get("skipped") else ""))


def _residual(path: str) -> np.ndarray:
    img = read_image(path)
    if img.shape[0] > img.shape[1]:  # portrait files: the landscape sensor frame, as the test crops
        img = np.ascontiguousarray(np.rot90(img))
    return prnu.query_residual(centre_crop(img, 512))[0].astype(np.float32)


def real(root: Path) -> None:
    man = pd.read_csv(root / "manifest.csv")
    res = np.stack(list(parallel_map(_residual, [str(root / f) for f in man["file"]], 2, "residuals")))
    cams = sorted(man["camera"].unique())
    y = man["camera"].map(cams.index).to_numpy()
    print("| crops | n | base strength | balanced_test | clusters | one-device share | confirmed | precision "
          "| base acc | +prnu acc |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    natural = (man["scene"] == "natural").to_numpy()
    for scene, m in (("natural", natural), ("natural + flat-field", np.ones(len(y), bool))):
        for strength in (1.0, 2.0):
            p = base(y[m], len(cams), strength)
            for balanced in (False, True):
                print(f"| {scene} | {m.sum()} | {strength} | " + row(res[m], y[m], len(cams), p, balanced))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", type=Path, help="the real_cameras folder (manifest.csv)")
    args = ap.parse_args()
    right, wrong = [0.8, 0.2], [1e-9, 1 - 1e-9]
    probs = np.array([right] * 11 + [wrong] * 5 + [right[::-1]] * 12 + [wrong[::-1]] * 4)
    members = np.repeat([0, 1], 16)
    print(f"naming 11/5 + 12/4 (true names [0, 1]): {pc.name_clusters(members, probs, 2).tolist()}")
    print("| devices | classes | strength | balanced_test | clusters | one-device share | confirmed | precision "
          "| base acc | +prnu acc |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for n_dev, k, strength in ((10, 10, 0.35), (12, 10, 0.35), (8, 10, 0.35), (10, 10, 0.13)):
        res, dev = devices(n_dev, 12, strength)
        y = dev % k
        p = base(y, k)
        for balanced in (False, True):
            print(f"| {n_dev} | {k} | {strength} | " + row(res, y, k, p, balanced))
    if args.real:
        real(args.real)

if __name__ == "__main__":
    main()

"""The ``+prnu`` step on synthetic sensor residuals (BENCHMARKS.md, "PRNU clustering on synthetic devices").

    PYTHONPATH=src python benchmarks/prnu_cluster_synthetic.py

Each case: ``devices`` sensors, 12 unaltered 64-px crops each (residual = strength x the
device's pattern + unit noise: strength 0.35 gives a same-device pair z-score of ~7, the audit's
pure clusters; 0.13 ~1, too weak to trust), device d belongs to class d mod ``classes``, a base
that is ~70% right (true-class logit +2). Printed per case and mode (balanced_test false/true):
clusters found, share of them from one device, share of crops confirmed, precision of the
confirmed classes, base accuracy and accuracy after ``+prnu``. Also the naming reproduction of
audit #21 (two clusters of 16, argmax votes 11/5 and 12/4, the wrong votes overconfident).
"""
from __future__ import annotations

import numpy as np

from camid.config import PrnuClusterConfig
from camid.level2 import prnu_cluster as pc


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


def main() -> None:
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
            out = pc.cluster_test(res, np.zeros(len(y), int), p, PrnuClusterConfig(scales=[]), balanced=balanced)
            cl = out.cluster_of_unalt
            found = np.unique(cl[cl >= 0])
            one = np.mean([len(set(dev[cl == c])) == 1 for c in found]) if len(found) else float("nan")
            acc = out.accepted
            prec = (out.label[acc] == y[acc]).mean() if acc.any() else float("nan")
            after = pc.apply_clusters(p, out).argmax(axis=1)
            print(f"| {n_dev} | {k} | {strength} | {str(balanced).lower()} | {len(found)} | {one:.2f} | "
                  f"{acc.mean():.3f} | {prec:.3f} | {(p.argmax(1) == y).mean():.3f} | {(after == y).mean():.3f} |"
                  + (f" skipped: {out.info['skipped']}" if out.info.get("skipped") else ""))


if __name__ == "__main__":
    main()

"""``camid bench`` section ``prnu``: the noise residual of one 512-px test crop (one thread), and the
``+prnu`` clustering step on synthetic residuals shaped like the demo's and the Kaggle test set
(160 + 160 crops of 256 px; 1,320 + 1,320 of 512 px with ``--quick`` off)."""
from __future__ import annotations

from functools import partial

import numpy as np

from .common import Row, one_core, seconds


def bench_prnu(quick: bool) -> list[Row]:
    from ..forensics import prnu
    from ..level2 import prnu_cluster

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    with one_core():
        prnu.query_residual(img)  # warm-up: wavelet tables, FFT plans
        secs = min(seconds(lambda: prnu.query_residual(img)) for _ in range(3))
    rows = [Row("prnu", "noise residual of a 512-px crop", "", None, 1 / secs, "crops/s/core", None,
                f"{secs * 1000:.0f} ms per crop (wavelet denoiser + zero-mean + DFT Wiener)")]
    for n, side, k in ((160, 256, 10),) + (() if quick else ((1320, 512, 10),)):
        # k devices, n unaltered + n manipulated crops each sharing its device's pattern
        pattern = rng.standard_normal((k, side, side), dtype=np.float32)
        res = np.empty((2 * n, side, side), np.float32)  # filled in place: the Kaggle size is 2.8 GB
        for i in range(2 * n):
            res[i] = rng.standard_normal((side, side), dtype=np.float32)
            res[i] += 0.15 * pattern[i % k]
        manip = (np.arange(2 * n) >= n).astype(int)
        probs = np.full((2 * n, k), 1.0 / k)
        secs = seconds(partial(prnu_cluster.cluster_test, res, manip, probs))
        rows.append(Row("prnu", f"+prnu clustering, {n} + {n} crops of {side} px", "", None, 2 * n / secs,
                        "crops/s", None, f"{secs:.1f} s for the step (residuals cached separately)"))
    return rows

"""A tiny trained run (camid_tiny, 3 classes, fold 0) in a tmp workdir, for the tests of
`camid identify` and `camid robustness`. Seconds on a CPU."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from camid import cli
from tiny_config import tiny_config

CLASSES = ["cam-a", "cam-b", "cam-c"]


def photo(h: int, w: int, cls: int, seed: int) -> np.ndarray:
    """Learnable toy classes: a smooth scene plus sensor-like noise whose strength is the class
    (camid_tiny's first layer only sees residuals, so a colour cast would be invisible to it)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    scene = 128 + 60 * np.sin(x / rng.uniform(5, 15) + rng.uniform(0, 6)) * np.cos(y / rng.uniform(5, 15))
    img = scene[..., None] + rng.normal(0, (2.0, 8.0, 20.0)[cls % 3], (h, w, 3))
    return img.round().clip(0, 255).astype(np.uint8)


def train_tiny(root: Path, top_n: int = 2) -> list[str]:
    """Write data, folds and a trained fold-0 run under ``root``; returns the common CLI options."""
    torch.set_num_threads(1)  # 2 threads are much slower on a loaded 2-core machine
    data = root / "data"
    for c, cls in enumerate(CLASSES):
        (data / "train" / cls).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            Image.fromarray(photo(64, 80, c, 10 * c + i)).save(data / "train" / cls / f"{i}.jpg", quality=95)
    cfg = tiny_config(root / "tiny.yaml", data, train={"keep_top": 2},
                      predict={"tta": "tta10", "top_n": top_n, "crop": 48, "batch_size": 40})
    common = ["--config", str(cfg), "--workdir", str(root)]
    assert cli.main(["folds", *common]) == 0
    assert cli.main(["train", *common, "--fold", "0"]) == 0
    return common

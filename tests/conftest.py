from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def with_prnu(scene: np.ndarray, k: np.ndarray, seed: int) -> np.ndarray:
    """A synthetic device's photo of ``scene``: multiplicative PRNU ``k`` plus seeded shot noise."""
    img = scene * (1 + k[..., None])
    img += np.random.default_rng(seed + 999).normal(0, 1.0, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


@contextmanager
def strong_sensor_noise() -> Iterator[None]:
    """The simulator before its calibration to real photos (BENCHMARKS.md, "Sensor noise: real vs
    simulated"): every device's PRNU std uniform in 0.007-0.013, no model without PRNU, the
    temporal noise of then (a fifth of today's). For tests
    of what PRNU matching does when the evidence is there. It patches this process only (the
    pool's workers are fresh processes): simulate with ``workers=1`` under it."""
    from camid.sim import camera
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(camera, "prnu_level", lambda class_index, seed: 0.01)
        mp.setattr(camera, "PRNU_DEVICE_SPREAD", 0.3)
        mp.setattr(camera, "READ_NOISE", (0.0005, 0.002))
        mp.setattr(camera, "SHOT_NOISE", (2e-5, 8e-5))
        yield


def write_jpeg(path: Path, h: int = 64, w: int = 80, seed: int = 0, quality: int = 95) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(img).save(path, quality=quality)
    return path


@pytest.fixture
def kaggle_layout(tmp_path: Path) -> Path:
    """A tiny DATA folder: 3 classes x 7 train JPEGs, a few test TIFFs."""
    data = tmp_path / "data"
    for c, cls in enumerate(["cam-a", "cam-b", "cam-c"]):
        for i in range(7):
            write_jpeg(data / "train" / cls / f"{cls}_{i}.jpg", seed=100 * c + i)
    for i, kind in enumerate(["unalt", "manip", "unalt", "manip"]):
        img = np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        (data / "test").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(data / "test" / f"img_{i:07x}_{kind}.tif")
    return data

"""Process-wide runtime settings, applied explicitly when a command starts (never at import)."""
from __future__ import annotations

import os
from typing import Any


def configure_threads(device: Any = None, reserve: int = 0, share: int = 1) -> None:
    """OpenCV on one thread (parallelism comes from DataLoader workers and process pools);
    on a CPU ``device``, torch gets the cores left after ``reserve`` (one per DataLoader
    worker: oversubscribing is several times slower), split over ``share`` processes."""
    import cv2

    cv2.setNumThreads(1)
    if device is not None and device.type == "cpu":
        import torch

        torch.set_num_threads(max(1, ((os.cpu_count() or 1) - reserve) // share))

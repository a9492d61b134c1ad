"""Process-wide runtime settings, applied explicitly when a command starts (never at import)."""
from __future__ import annotations

import os
from typing import Any

# Set by the ray and slurm backends for each job they start (camid.jobs.backends): the CPUs the
# job was given on a node it may share with other jobs.
CPUS_ENV = "CAMID_NUM_CPUS"


def available_cpus() -> int:
    """The cores this process may use: ``$CAMID_NUM_CPUS`` when a backend set it, else the machine's."""
    given = os.environ.get(CPUS_ENV, "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    return os.cpu_count() or 1


def configure_threads(device: Any = None, reserve: int = 0, share: int = 1) -> None:
    """OpenCV on one thread (parallelism comes from DataLoader workers and process pools);
    on a CPU ``device``, torch gets the cores left after ``reserve`` (one per DataLoader
    worker: oversubscribing is several times slower), split over ``share`` processes."""
    import cv2

    cv2.setNumThreads(1)
    if device is not None and device.type == "cpu":
        import torch

        torch.set_num_threads(max(1, (available_cpus() - reserve) // share))

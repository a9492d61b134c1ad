"""The one tiny config the CPU tests train with (seconds per run); each test overrides what it
needs, section by section."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

TRAIN: dict[str, Any] = {"input_size": 32, "batch_size": 8, "epochs": 2, "steps_per_epoch": 2, "lr": 0.002,
                         "cycles": 0, "keep_top": 1, "val_crop": 48, "num_workers": 0, "orientation": "flips"}


def tiny_config(path: Path, data: Path | str, *, runs: Sequence[str] | None = None, train: dict[str, Any] | None = None,
                predict: dict[str, Any] | None = None, **top: Any) -> Path:
    """Write a config to ``path``: the camid_tiny backbone (one run, or one per name in ``runs``),
    2 folds, ``TRAIN`` updated with ``train``, a ``predict`` section only when given, and any
    other top-level keys (``name``, ``seed``, ``blend``...) as they are."""
    models = ([{"backbone": "camid_tiny", "dropout": 0.0}] if runs is None else
              [{"backbone": "camid_tiny", "name": r, "dropout": 0.0} for r in runs])
    cfg: dict[str, Any] = {"name": "tiny", "data_dir": str(data), "device": "cpu", "folds": {"n_folds": 2, "seed": 1},
                           "models": models, "train": {**TRAIN, **(train or {})}}
    if predict is not None:
        # The tiny runs have no LR cycles, hence no snapshots: they average their top_n epochs.
        cfg["predict"] = {"checkpoints": "top_n", **predict}
    cfg.update(top)
    if "blend" in cfg:  # last, so a test can replace the section by cutting the text at "blend:"
        cfg["blend"] = cfg.pop("blend")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path

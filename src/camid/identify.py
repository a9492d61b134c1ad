"""`camid identify`: the camera model of arbitrary photos, with the trained ensemble.

For each photo (any size; JPEG, TIFF, PNG, ...) the network sees what it saw at test
time: crops of ``predict.crop`` pixels (the centre crop, plus up to ``--tiles``
non-overlapping tiles of a grid, nearest the centre first), each with the config's TTA.
Probabilities are geometric means over TTA views and top-N checkpoints (inside each
fold's ``Ensemble``), then over folds, runs and crops. ``agree`` is the share of crops
whose own top-1 is the photo's top-1: a low value says the evidence is mixed.

No pixel is resampled: a photo is never resized or rotated (EXIF orientation is
ignored on purpose), because the traces live on the sensor grid.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .config import Config
from .crops import GRID, centre_crop, pad_to
from .data import DataError, ImageReadError, read_image
from .io_utils import stage_log, write_csv
from .predict import Ensemble, checkpoint_files
from .train import pick_device
from .tta import reduce_probs
from .workspace import Workspace, add_common_arguments, resolve


@dataclass
class Photo:
    path: str
    width: int = 0
    height: int = 0
    crops: int = 0
    probs: np.ndarray | None = None
    agree: float = float("nan")
    error: str = ""


@dataclass
class Models:
    """Every (run, fold) ensemble of the config that has checkpoints; all share one class list."""

    runs: dict[str, list[Ensemble]] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)

    @property
    def n_networks(self) -> int:
        return sum(len(e.nets) for ens in self.runs.values() for e in ens)


def _fold_dirs(ws: Workspace, run: str) -> list[Path]:
    root = ws.models / run
    dirs = [d for d in root.glob("fold*") if d.is_dir() and d.name[4:].isdigit()] if root.is_dir() else []
    return sorted(dirs, key=lambda d: int(d.name[4:]))


def load_models(cfg: Config, ws: Workspace, names: Sequence[str], device: torch.device) -> Models:
    """All folds' top-N checkpoints of each run; a run without checkpoints is skipped."""
    runs = [cfg.model(n) for n in names] if names else cfg.models
    models = Models()
    for mcfg in runs:
        ens = [Ensemble(files, device, cfg.predict.tta, cfg.predict.reduce, cfg.train.amp)
               for d in _fold_dirs(ws, mcfg.run_name) if (files := checkpoint_files(d, cfg.predict.top_n))]
        if not ens:
            stage_log("identify", f"{mcfg.run_name}: no checkpoints under {ws.models / mcfg.run_name}; skipped")
            continue
        for e in ens:
            if models.classes and e.classes != models.classes:
                raise DataError(f"{e.files[0]} was trained on classes {e.classes}, other runs on {models.classes}")
            models.classes = list(e.classes)
        models.runs[mcfg.run_name] = ens
    if not models.runs:
        raise DataError(f"no trained models under {ws.models} for config {cfg.name!r} "
                        f"(runs {[m.run_name for m in runs]}); train first: `make train-all` or `camid train`")
    return models


def tile_boxes(height: int, width: int, size: int, max_tiles: int) -> list[tuple[int, int]]:
    """Top-left corners of a centred grid of non-overlapping ``size`` tiles on even offsets,
    the ``max_tiles`` nearest the photo's centre (ties in row-major order)."""
    ny, nx = height // size, width // size
    if max_tiles <= 0 or not ny or not nx:
        return []
    y0 = (height - ny * size) // 2 // GRID * GRID
    x0 = (width - nx * size) // 2 // GRID * GRID
    boxes = [(y0 + i * size, x0 + j * size) for i in range(ny) for j in range(nx)]
    cy, cx = (height - size) / 2, (width - size) / 2
    boxes.sort(key=lambda b: (b[0] - cy) ** 2 + (b[1] - cx) ** 2)
    return boxes[:max_tiles]


def photo_crops(img: np.ndarray, size: int, max_tiles: int) -> torch.Tensor:
    """(K, 3, size, size) uint8: the centre crop, then the tiles (a tile equal to it is dropped)."""
    centre = centre_crop(img, size)
    crops = [centre]
    for y, x in tile_boxes(img.shape[0], img.shape[1], size, max_tiles):
        tile = img[y:y + size, x:x + size]
        if not np.array_equal(tile, centre):
            crops.append(tile)
    return torch.from_numpy(np.stack([np.ascontiguousarray(pad_to(c, size)) for c in crops])).permute(0, 3, 1, 2)


def predict_crops(models: Models, crops: torch.Tensor, manip: bool, batch_size: int) -> np.ndarray:
    """(K, classes): gmean over each run's folds, then over runs (each run counts once)."""
    flags = torch.full((len(crops),), float(manip))
    per_run = []
    for ens in models.runs.values():
        folds = torch.stack([torch.from_numpy(e.predict(crops, flags, batch_size)) for e in ens])
        per_run.append(reduce_probs(folds, "gmean", dim=0))
    return reduce_probs(torch.stack(per_run), "gmean", dim=0).numpy()


def identify_photo(path: str, models: Models, size: int, max_tiles: int, manip: bool, batch_size: int) -> Photo:
    try:
        img = read_image(path)
    except ImageReadError as exc:
        return Photo(path, error=exc.reason)
    crops = photo_crops(img, size, max_tiles)
    per_crop = predict_crops(models, crops, manip, batch_size)
    probs = reduce_probs(torch.from_numpy(per_crop), "gmean", dim=0).numpy()
    agree = float((per_crop.argmax(1) == probs.argmax()).mean())
    return Photo(path, img.shape[1], img.shape[0], len(crops), probs, agree)


def format_photo(p: Photo, classes: Sequence[str], top_k: int, size: int) -> str:
    if p.error:
        return f"{p.path}: cannot read ({p.error}); skipped"
    small = " (smaller than the crop: padded)" if min(p.width, p.height) < size else ""
    lines = [f"{p.path}  {p.width}x{p.height}, {p.crops} crop(s) of {size} px{small}, "
             f"top-1 agreement {p.agree:.2f}"]
    for rank, i in enumerate(np.argsort(-p.probs)[:top_k], start=1):
        lines.append(f"  {rank}. {classes[i]:<28} {p.probs[i]:.4f}")
    return "\n".join(lines)


def results_frame(photos: Sequence[Photo], classes: Sequence[str]) -> pd.DataFrame:
    """One row per photo (unreadable ones too, with ``error``) and one column per class."""
    rows = []
    for p in photos:
        row = {"photo": p.path, "width": p.width, "height": p.height, "crops": p.crops,
               "prediction": "", "probability": np.nan, "agree": p.agree, "error": p.error}
        if p.probs is not None:
            best = int(p.probs.argmax())
            row.update(prediction=classes[best], probability=float(p.probs[best]))
        row.update({c: (float(p.probs[i]) if p.probs is not None else np.nan) for i, c in enumerate(classes)})
        rows.append(row)
    return pd.DataFrame(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("photos", nargs="+", metavar="PHOTO", help="image files (JPEG, TIFF, PNG, ...)")
    add_common_arguments(parser)
    parser.add_argument("--models", default="", help="comma-separated run names (default: every run of the config)")
    parser.add_argument("--top-k", type=int, default=3, help="camera models printed per photo (default 3)")
    parser.add_argument("--manipulated", action="store_true",
                        help="set the network's manip flag (photo known to be re-compressed, resized or gamma-adjusted)")
    parser.add_argument("--tiles", type=int, default=4, help="extra non-overlapping tiles per photo (default 4; 0: centre only)")
    parser.add_argument("--out", default=None, help="also write the probabilities to this CSV")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the config's device)")


def main(args: argparse.Namespace) -> int:
    cfg, ws = resolve(args)
    if args.top_k < 1 or args.tiles < 0:
        raise DataError("--top-k must be >= 1 and --tiles >= 0")
    device = pick_device(args.device or cfg.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    models = load_models(cfg, ws, [m for m in args.models.split(",") if m], device)
    size = cfg.predict.crop
    stage_log("identify", f"loaded {', '.join(f'{r} ({len(e)} fold(s))' for r, e in models.runs.items())}: "
                          f"{models.n_networks} network(s), TTA {cfg.predict.tta}, crops of {size} px, "
                          f"manip flag {int(args.manipulated)}")
    photos = []
    for path in args.photos:
        p = identify_photo(path, models, size, args.tiles, args.manipulated, cfg.predict.batch_size)
        print(format_photo(p, models.classes, min(args.top_k, len(models.classes)), size), flush=True)
        photos.append(p)
    if args.out:
        write_csv(args.out, results_frame(photos, models.classes))
        stage_log("identify", f"wrote {args.out}: {len(photos)} row(s)")
    failed = [p.path for p in photos if p.error]
    if failed:
        stage_log("identify", f"{len(failed)} of {len(photos)} photo(s) could not be read: {failed}")
        return 1
    return 0

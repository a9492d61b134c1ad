"""The camera model of arbitrary photos (``camid identify``), with the trained ensemble.

For each photo (any size; JPEG, TIFF, PNG, ...) the network sees what it saw at test
time: crops of ``predict.crop`` pixels (the centre crop, plus up to ``--tiles``
non-overlapping tiles of a grid, nearest the centre first), each with the config's TTA.
Probabilities are geometric means over TTA views and top-N checkpoints (inside each
fold's ``Ensemble``), then over folds, runs and crops. ``agree`` is the share of crops
whose own top-1 is the photo's top-1: a low value says the evidence is mixed.

No pixel is resampled: a photo is never resized or rotated (EXIF orientation is
ignored on purpose), because the traces live on the sensor grid.

Open set (``camid.forensics.openset``): the photo's score is its top probability; below
the threshold calibrated on the runs' OOF tables the verdict is "unknown camera" instead
of the top-1 class. Metadata (``camid.forensics.metacheck``): the EXIF Make/Model/Software
are printed next to the verdict and the EXIF model's class is compared with it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import Config
from ..data.crops import GRID, centre_crop, pad_to
from ..data.images import IMAGE_EXTENSIONS, is_image_file, read_image
from ..errors import CheckpointError, ImageReadError, UsageError
from ..infer.ensemble import Ensemble
from ..infer.tta import reduce_probs
from ..train.rundir import RunDir
from ..util.log import stage_log
from ..workspace import Workspace
from .metacheck import MetaCheck, RulesSource, cross_check
from .openset import UNKNOWN, OpenSet, msp


@dataclass
class Photo:
    path: str
    width: int = 0
    height: int = 0
    crops: int = 0
    probs: np.ndarray | None = None
    agree: float = float("nan")
    error: str = ""
    top1: str = ""  # the most probable class
    score: float = float("nan")  # the open-set score (top probability)
    verdict: str = ""  # top1, or UNKNOWN below the open-set threshold
    open_set: OpenSet | None = None
    meta: MetaCheck | None = None


def expand_inputs(paths: Sequence[str]) -> tuple[list[str], list[str]]:
    """Files as given; a folder becomes its image files (recursively, sorted, hidden ones
    skipped). Returns (files, notes): a note for each folder without images."""
    files, notes = [], []
    for given in paths:
        p = Path(given)
        if not p.is_dir():
            files.append(given)
            continue
        found = sorted(str(f) for f in p.rglob("*") if is_image_file(f)
                       and not any(part.startswith(".") for part in f.relative_to(p).parts))
        if not found:
            notes.append(f"{given}: folder holds no image files ({' '.join(IMAGE_EXTENSIONS)})")
        files += found
    return files, notes


def load_ensembles(cfg: Config, ws: Workspace, names: Sequence[str],
                   device: torch.device) -> tuple[dict[str, list[Ensemble]], list[str]]:
    """Every fold's ensemble of each run (a run without checkpoints is skipped), and their
    shared class list."""
    runs = [cfg.model(n) for n in names] if names else cfg.models
    found: dict[str, list[Ensemble]] = {}
    classes: list[str] = []
    for mcfg in runs:
        ens = [Ensemble(files, device, cfg.predict.tta, cfg.predict.reduce, cfg.predict.amp)
               for d in ws.fold_dirs(mcfg.run_name).values()
               if (files := RunDir(d).inference_checkpoints(cfg.predict))]
        if not ens:
            stage_log("identify", f"{mcfg.run_name}: no checkpoints under {ws.run_root(mcfg.run_name)}; skipped")
            continue
        for e in ens:
            if classes and e.classes != classes:
                raise CheckpointError(f"{e.files[0]} was trained on classes {e.classes}, other runs on {classes}")
            classes = list(e.classes)
        found[mcfg.run_name] = ens
    if not found:
        raise UsageError(f"no trained models under {ws.models} for config {cfg.name!r} "
                        f"(runs {[m.run_name for m in runs]}); train first: `make train-all` or `camid train`")
    return found, classes


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


def predict_crops(runs: dict[str, list[Ensemble]], crops: torch.Tensor, manip: bool, batch_size: int) -> np.ndarray:
    """(K, classes): gmean over each run's folds, then over runs (each run counts once)."""
    flags = torch.full((len(crops),), float(manip))
    per_run = []
    for ens in runs.values():
        folds = torch.stack([torch.from_numpy(e.predict(crops, flags, batch_size)) for e in ens])
        per_run.append(reduce_probs(folds, "gmean", dim=0))
    return reduce_probs(torch.stack(per_run), "gmean", dim=0).numpy()


def identify_photo(path: str, runs: dict[str, list[Ensemble]], size: int, max_tiles: int, manip: bool,
                   batch_size: int, open_set: OpenSet | None = None) -> Photo:
    """The pixels' evidence for one photo, and its verdict under ``open_set`` (None: top-1)."""
    try:
        img = read_image(path)
    except ImageReadError as exc:
        return Photo(path, error=exc.reason, open_set=open_set)
    crops = photo_crops(img, size, max_tiles)
    per_crop = predict_crops(runs, crops, manip, batch_size)
    probs = reduce_probs(torch.from_numpy(per_crop), "gmean", dim=0).numpy()
    agree = float((per_crop.argmax(1) == probs.argmax()).mean())
    classes = next(iter(runs.values()))[0].classes
    top1, score = classes[int(probs.argmax())], float(msp(probs))
    verdict = top1 if open_set is None or open_set.known(score) else UNKNOWN
    return Photo(path, img.shape[1], img.shape[0], len(crops), probs, agree, top1=top1, score=score,
                 verdict=verdict, open_set=open_set)


def examine_photo(path: str, runs: dict[str, list[Ensemble]], size: int, max_tiles: int, manip: bool,
                  batch_size: int, open_set: OpenSet, rules: RulesSource) -> Photo:
    """``identify_photo`` plus the EXIF cross-check against its verdict."""
    p = identify_photo(path, runs, size, max_tiles, manip, batch_size, open_set)
    if not p.error:
        p.meta = cross_check(path, p.verdict, p.top1, next(iter(runs.values()))[0].classes, rules)
    return p


def verdict_line(p: Photo) -> str:
    o = p.open_set
    if o is None or not o.on or o.threshold is None:
        return f"verdict: {p.top1} (most probable class; open-set check off)"
    if p.verdict == UNKNOWN:
        return f"verdict: unknown camera (score {p.score:.4f} < threshold {o.threshold:.4f}; closest: {p.top1})"
    return f"verdict: {p.verdict} (score {p.score:.4f} >= threshold {o.threshold:.4f})"


def format_photo(p: Photo, classes: Sequence[str], top_k: int, size: int) -> str:
    probs = p.probs
    if p.error or probs is None:
        return f"{p.path}: cannot read ({p.error}); skipped"
    small = " (smaller than the crop: padded)" if min(p.width, p.height) < size else ""
    lines = [f"{p.path}  {p.width}x{p.height}, {p.crops} crop(s) of {size} px{small}, "
             f"top-1 agreement {p.agree:.2f}"]
    for rank, i in enumerate(np.argsort(-probs)[:top_k], start=1):
        lines.append(f"  {rank}. {classes[i]:<28} {probs[i]:.4f}")
    if p.verdict:
        lines.append(f"  {verdict_line(p)}")
    if p.meta is not None:
        lines += [f"  {line}" for line in p.meta.lines()]
    return "\n".join(lines)


def results_frame(photos: Sequence[Photo], classes: Sequence[str]) -> pd.DataFrame:
    """One row per photo (unreadable ones too, with ``error``) and one column per class.

    ``score`` is the open-set score, ``threshold`` the unknown-camera threshold (empty when
    the check is off, ``open_set`` 0), ``verdict`` the class or ``unknown``; the ``exif_*``
    columns are the metadata cross-check (``exif_check``: ``metacheck.STATUSES``)."""
    rows = []
    for p in photos:
        o = p.open_set
        row = {"photo": p.path, "width": p.width, "height": p.height, "crops": p.crops,
               "prediction": "", "probability": np.nan, "score": p.score,
               "threshold": o.threshold if o is not None and o.on else np.nan,
               "unknown_tpr": o.tpr if o is not None and o.on else np.nan,
               "open_set": int(bool(o is not None and o.on)), "verdict": p.verdict,
               "agree": p.agree, "error": p.error}
        if p.probs is not None:
            best = int(p.probs.argmax())
            row.update(prediction=classes[best], probability=float(p.probs[best]))
        m = p.meta
        row.update({"exif_make": m.make if m else "", "exif_model": m.model if m else "",
                    "exif_software": m.software if m else "", "exif_class": m.exif_class if m else "",
                    "exif_check": m.status if m else "", "edited": int(bool(m and m.edited)),
                    "edit_evidence": "; ".join(m.edited) if m else ""})
        row.update({c: (float(p.probs[i]) if p.probs is not None else np.nan) for i, c in enumerate(classes)})
        rows.append(row)
    return pd.DataFrame(rows)

"""Accuracy of a trained run (``camid robustness``) against manipulation strength and crop size.

The held-out images of one fold (never seen in training) are evaluated exactly like
validation does it: ``manipulated_centre_crop`` (manipulate the photo, then take the
centre crop the run was validated on, the one implementation shared with validation and
out-of-fold prediction), the whole crop through the network (no TTA), flag 1 for a
manipulated variant, 0 for the unaltered one. Probabilities are averaged (geometric
mean) over the run's top-N checkpoints, so with one checkpoint the accuracy at a
competition point (``jpeg70``, ``none``...) is the validation accuracy of that
checkpoint on that variant. Curves (docs/recipe.md, "Robustness curves"): JPEG quality 5..95, gamma
0.25..1.75, resize 0.5..2.0 and crop size 64..512 (unaltered), with the training ranges
shaded. Identity points (gamma 1, resize 1) are the unaltered images, flag 0.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import Config, from_dict
from ..data.crops import centre_offset, manipulated_centre_crop
from ..data.folds import read_folds
from ..data.images import probe_image, read_image
from ..data.manipulations import CONTINUOUS_RANGES, KINDS, MANIPULATION_NAMES, MANIPULATIONS
from ..data.orientation import sensor_frame
from ..errors import ConfigError, DataError, ImageReadError, UsageError
from ..infer.ensemble import Ensemble
from ..train.rundir import RunDir
from ..util.io import write_atomic, write_csv, write_json
from ..util.log import progress, stage_log
from ..workspace import Workspace

CROP_SIZES = (64, 128, 256, 384, 448, 512)
CHUNK = 16  # photos decoded at a time


@dataclass(frozen=True)
class Point:
    """One point of a curve: ``kind`` (jpeg, gamma, resize, crop, none) at ``value``."""

    kind: str
    value: float
    aug: str  # manipulation name given to manipulated_centre_crop ("none": unaltered)
    crop: int

    @property
    def manip(self) -> int:
        return int(self.aug != "none")


def values(kind: str) -> tuple[float, ...]:
    """The points of a manipulation's curve: the write-up's grid plus the competition's values."""
    return tuple(sorted({*KINDS[kind].curve, *trained_values(kind)}))


def grid(val_crop: int, input_size: int, max_side: int) -> list[Point]:
    """Every point of the four curves, plus the unaltered baseline; crop sizes are
    limited by the smallest held-out photo and include the validation and input sizes."""
    pts = [Point("none", 0, "none", val_crop)]
    pts += [Point(kind, v, KINDS[kind].name_of(v), val_crop) for kind in KINDS for v in values(kind)]
    sizes = sorted({c for c in (*CROP_SIZES, val_crop, input_size) if c <= max_side})
    pts += [Point("crop", c, "none", c) for c in sizes]
    return pts


def trained_values(kind: str) -> tuple[float, ...]:
    """The discrete values a ``competition``-mode run was trained on (the 8 manipulations)."""
    return tuple(float(m.value) for m in MANIPULATIONS.values() if m.kind.name == kind)


def training_range(kind: str, value: float, input_size: int, mode: str = "continuous") -> bool:
    """Whether a point was seen in training: the input size, the continuous ranges, or in
    ``competition`` mode only the 8 discrete values."""
    if kind == "crop":
        return value == input_size
    if kind == "none":
        return True
    if mode == "competition":
        return any(abs(value - v) < 1e-9 for v in trained_values(kind))
    lo, hi = CONTINUOUS_RANGES[kind]
    return lo <= value <= hi


def evaluate_points(ens: Ensemble, photos: pd.DataFrame, points: Sequence[Point],
                    batch_size: int, view: str = "whole", portrait: str = "keep") -> dict[tuple[str, int], list[int]]:
    """(aug, crop) -> [correct, total] over the photos; each photo is decoded once. Every crop
    is seen through ``view`` (the run's validation view: whole, or its centre at the input
    size), so points of the training range reproduce the validation numbers."""
    variants = sorted({(p.aug, p.crop) for p in points})
    index = {c: i for i, c in enumerate(ens.classes)}
    counts = {v: [0, 0] for v in variants}
    for start in progress(range(0, len(photos), CHUNK), "robustness"):
        chunk = photos.iloc[start:start + CHUNK]
        imgs, labels = [], []
        for row in chunk.itertuples():
            try:
                img = read_image(row.path)
                imgs.append(sensor_frame(img) if portrait == "rotate" else img)
                labels.append(index[row.label])
            except ImageReadError as exc:
                stage_log("robustness", f"skipped unreadable {row.path}: {exc.reason}")
        if not imgs:
            continue
        y = np.asarray(labels)
        for aug, crop in variants:
            x = torch.stack([torch.from_numpy(manipulated_centre_crop(im, aug, crop)).permute(2, 0, 1) for im in imgs])
            if view == "centre" and crop > ens.input_size:
                oy, ox = centre_offset(crop, ens.input_size), centre_offset(crop, ens.input_size)
                x = x[..., oy:oy + ens.input_size, ox:ox + ens.input_size]
            flags = torch.full((len(imgs),), float(aug != "none"))
            pred = ens.predict_whole(x, flags, batch_size).argmax(1).numpy()
            counts[(aug, crop)][0] += int((pred == y).sum())
            counts[(aug, crop)][1] += len(y)
    return counts


def results_frame(points: Sequence[Point], counts: dict, input_size: int, run: str, fold: int,
                  mode: str = "continuous") -> pd.DataFrame:
    rows = []
    for p in points:
        correct, total = counts[(p.aug, p.crop)]
        rows.append({"run": run, "fold": fold, "kind": p.kind, "value": p.value, "aug": p.aug, "crop": p.crop,
                     "manip": p.manip, "n": total, "correct": correct,
                     "accuracy": correct / total if total else float("nan"),
                     "in_training_range": training_range(p.kind, p.value, input_size, mode),
                     "competition_point": p.aug in MANIPULATION_NAMES})
    return pd.DataFrame(rows)


PANELS = {**{k.name: k.label for k in KINDS.values()}, "crop": "crop size (px, unaltered)"}


def plot(df: pd.DataFrame, path: Path, title: str, input_size: int, mode: str = "continuous") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    base = float(df.loc[df["kind"] == "none", "accuracy"].iloc[0])
    cols = -(-len(PANELS) // 2)  # two rows: a panel per kind of manipulation, and crop size
    fig, axes = plt.subplots(2, cols, figsize=(5 * cols, 7.5), squeeze=False)
    for ax, (kind, label) in zip(axes.ravel(), PANELS.items(), strict=False):
        d = df[df["kind"] == kind].sort_values("value")
        if kind == "crop":
            ax.axvline(input_size, color="tab:green", alpha=0.4, lw=6, label=f"train input {input_size}")
            ax.set_xscale("log", base=2)
        elif mode == "competition":  # only the 8 discrete values were trained: mark them, shade no range
            for i, v in enumerate(trained_values(kind)):
                ax.axvline(v, color="tab:green", alpha=0.35, lw=6, label="trained values" if i == 0 else None)
        else:
            lo, hi = CONTINUOUS_RANGES[kind]
            ax.axvspan(lo, hi, color="tab:green", alpha=0.15, label=f"training range {lo:g}-{hi:g}")
        ax.plot(d["value"], d["accuracy"], "o-", color="tab:blue", ms=4)
        comp = d[d["competition_point"]]
        ax.plot(comp["value"], comp["accuracy"], "s", color="tab:orange", ms=6, label="competition manipulations")
        ax.axhline(base, color="grey", ls="--", lw=0.8, label=f"unaltered {base:.3f}")
        ticks = [v for v in d["value"].unique() if kind == "crop" or v in KINDS[kind].curve]
        ax.set_xticks(ticks)  # the write-up's grid; the competition points are the orange squares
        ax.set_xticklabels([f"{v:g}" for v in ticks], rotation=45 if len(ticks) > 8 else 0, fontsize=7)
        ax.set(xlabel=label, ylabel="accuracy", ylim=(0, 1.02))
        ax.legend(fontsize=7, loc="best")
    for ax in axes.ravel()[len(PANELS):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    write_atomic(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
    return path


def held_out(ws: Workspace, fold: int, classes: Sequence[str], max_images: int | None, seed: int) -> pd.DataFrame:
    folds = read_folds(ws.folds_csv, classes)
    photos = folds[folds["fold"] == fold]
    if photos.empty:
        raise DataError(f"fold {fold} has no held-out images in {ws.folds_csv}")
    if max_images and len(photos) > max_images:  # the same draw as the trainer's validation sample
        photos = photos.sample(max_images, random_state=seed).sort_values("fname")
    return photos


def _max_side(photos: pd.DataFrame) -> int:
    sides = []
    for path in photos["path"]:
        try:
            sides.append(min(probe_image(path)))
        except ImageReadError:
            continue
    if not sides:
        raise DataError("no readable held-out image")
    return min(sides)


def run_report(cfg: Config, ws: Workspace, run_name: str, fold: int, out: Path, device: torch.device,
               max_images: int | None = None) -> pd.DataFrame:
    files = RunDir(ws.run_dir(run_name, fold)).inference_checkpoints(cfg.predict)
    if not files:
        raise UsageError(f"no trained checkpoints in {ws.run_dir(run_name, fold)}; train it first "
                        f"(`camid train --model {run_name} --fold {fold}`)")
    ens = Ensemble(files, device, cfg.predict.tta, cfg.predict.reduce, cfg.predict.amp)
    try:  # the crop, view and manipulation mode this run was validated and trained with
        run_cfg = from_dict(Config, ens.train_config, "checkpoint config")
    except ConfigError:
        run_cfg = cfg  # a checkpoint of another camid version: the current settings are the best guess
    val_crop, view, mode = run_cfg.val_crop(), run_cfg.val_view(), run_cfg.train.manip_mode
    photos = held_out(ws, fold, ens.classes, max_images, cfg.seed)
    points = grid(val_crop, ens.input_size, _max_side(photos))
    stage_log("robustness", f"{run_name} fold {fold}: {len(files)} checkpoint(s), {len(photos)} held-out photos "
                            f"from {ws.folds_csv}, {len({(p.aug, p.crop) for p in points})} variants, "
                            f"{view} view like its validation")
    counts = evaluate_points(ens, photos, points, cfg.predict.batch_size, view, cfg.portrait)
    df = results_frame(points, counts, ens.input_size, run_name, fold, mode)
    write_csv(out / "robustness.csv", df)
    write_json(out / "robustness.json", {"run": run_name, "fold": fold, "checkpoints": [str(f) for f in files],
                                         "val_crop": val_crop, "input_size": ens.input_size,
                                         "images": len(photos), "view": view, "manip_mode": mode,
                                         "training_ranges": CONTINUOUS_RANGES if mode == "continuous" else
                                         {k: trained_values(k) for k in KINDS}})
    plot(df, out / "robustness.png", f"{run_name} fold {fold}: {len(photos)} held-out photos, "
                                     f"{len(files)} checkpoint(s), centre crops of {val_crop} px",
         ens.input_size, mode)
    stage_log("robustness", f"wrote robustness.csv, robustness.json and robustness.png to {out}")
    return df

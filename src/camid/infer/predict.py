"""Out-of-fold and test probability tables (docs/recipe.md §5-6; ``camid predict``).

Every training image is predicted by the model of the fold that held it out,
exactly like a test image: the centre crop unaltered (``manip=0, aug=none``) and
manipulated variants (``manip=1, aug=<name>``). Test images are predicted by
every fold's model and averaged, except in a round trained on pseudo-labels: a crop of
cross-fitting group k (``data.pseudo``) by fold k's model alone, the one that never trained on it.
Within a run, predictions are the geometric mean
over TTA views and over the top-N snapshot checkpoints. Output:
``oof/<run>.<tta>.parquet`` (schema in ``camid.infer.table``) plus a JSON sidecar.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import Config, ModelConfig, section_digest
from ..data import jpeg_grid, manipulations
from ..data.folds import read_folds
from ..data.images import read_image
from ..data.layout import TEST_DIR, resolve_classes, scan_test
from ..data.pseudo import read_pseudo
from ..data.samples import build_variants
from ..errors import ConfigError, DataError, ImageReadError, UsageError
from ..train.preflight import crop_size_problem
from ..train.rundir import RunDir, folds_sha256
from ..train.trainer import crop_phases
from ..util.log import progress, stage_log
from ..workspace import Workspace
from .ensemble import Ensemble
from .table import read_meta, sidecar, write_table
from .tta import reduce_probs

CHUNK = 32  # images decoded and cropped at a time: bounds memory on 12 MP photos


def oof_augs(cfg: Config, fname: str) -> list[str]:
    """Variants predicted for one OOF image: ``none`` plus all 8, a listed subset, or a seeded draw."""
    names = cfg.predict.oof_augs
    manips = list(manipulations.MANIPULATION_NAMES) if names == ["all"] else list(names)
    unknown = [m for m in manips if m not in manipulations.MANIPULATIONS]
    if unknown:
        raise ConfigError(f"predict.oof_augs: unknown manipulation(s) {unknown}")
    k = cfg.predict.oof_manip_per_image
    if k is not None and k < len(manips):
        rng = np.random.default_rng([cfg.seed, int.from_bytes(fname.encode()[-8:].rjust(8, b"\0"), "little")])
        manips = sorted(rng.choice(manips, size=k, replace=False).tolist(), key=manips.index)
    return ["none", *manips]


def _chunks(df: pd.DataFrame, size: int = CHUNK) -> Iterator[pd.DataFrame]:
    for i in range(0, len(df), size):
        yield df.iloc[i:i + size]


def predict_oof(cfg: Config, ens: Ensemble, fold_df: pd.DataFrame, fold: int,
                skipped: dict[str, str] | None = None, phases: jpeg_grid.PhaseSet | None = None) -> pd.DataFrame:
    """OOF rows of one fold. Training images that cannot be read were skipped by training
    too: they get no rows and are recorded in ``skipped`` (path -> reason) for the sidecar.
    ``phases``: the test crops' JPEG grid phases, at which each OOF crop is placed (None: centre)."""
    index = {c: i for i, c in enumerate(ens.classes)}
    rows = []
    skipped = {} if skipped is None else skipped
    for chunk in progress(list(_chunks(fold_df)), f"{ens.tta} oof fold {fold}"):
        try:
            var = build_variants(chunk["path"].tolist(), chunk["fname"].tolist(),
                                 chunk["label"].map(index).tolist(), lambda f: oof_augs(cfg, f),
                                 cfg.predict.crop, desc=None, portrait=cfg.portrait, phases=phases)
        except ImageReadError:  # not one image of the chunk is readable
            skipped.update({p: "unreadable" for p in chunk["path"] if p not in skipped})
            continue
        skipped.update(dict(var.skipped))
        probs = ens.predict(var.images, var.manip, cfg.predict.batch_size)
        labels = [ens.classes[i] for i in var.labels.tolist()]
        rows.append(_frame(var.fnames, "oof", fold, var.manip.int().tolist(), var.aug, labels, probs, ens.classes))
    if not rows:
        raise DataError(f"fold {fold}: none of its {len(fold_df)} images can be read")
    return pd.concat(rows, ignore_index=True)


def _frame(fnames, split, fold, manip, aug, labels, probs, classes) -> pd.DataFrame:
    df = pd.DataFrame(probs, columns=classes)
    df.insert(0, "fname", list(fnames))
    df.insert(1, "split", split)
    df.insert(2, "fold", fold)
    df.insert(3, "manip", manip)
    df.insert(4, "aug", aug)
    df.insert(5, "label", labels)
    return df


def load_test_images(test: pd.DataFrame) -> list[tuple[str, int, np.ndarray]]:
    """Every test file must be usable: a submission has to cover all of them."""
    out = []
    for row in progress(test.itertuples(), "read test", total=len(test)):
        try:
            out.append((row.fname, int(row.manip), read_image(row.path)))
        except ImageReadError as exc:
            raise DataError(f"test file {row.fname} cannot be used: {exc.reason}") from exc
    return out


def predict_test(ens: Ensemble, images: list[tuple[str, int, np.ndarray]], batch_size: int) -> np.ndarray:
    """Probabilities in the order of ``images``; same-shape images are batched together."""
    probs = np.zeros((len(images), len(ens.classes)))
    by_shape: dict[tuple, list[int]] = {}
    for i, (_, _, img) in enumerate(images):
        by_shape.setdefault(img.shape, []).append(i)
    for idx in by_shape.values():
        for j in range(0, len(idx), CHUNK):
            part = idx[j:j + CHUNK]
            x = torch.stack([torch.from_numpy(images[i][2]).permute(2, 0, 1) for i in part])
            m = torch.tensor([float(images[i][1]) for i in part])
            probs[part] = ens.predict(x, m, batch_size)
    return probs


def _fingerprint(files: Sequence[Path]) -> list[dict]:
    return [{"file": str(f), "size": f.stat().st_size, "mtime": int(f.stat().st_mtime)} for f in files]


def predict_run(cfg: Config, ws: Workspace, mcfg: ModelConfig, device: torch.device,
                force: bool = False) -> Path | None:
    classes = resolve_classes(cfg, ws.data_dir)
    folds = read_folds(ws.folds_csv, classes)
    tta, out = cfg.predict.tta, ws.table(mcfg.run_name, cfg.predict.tta)
    run_dirs = {int(k): RunDir(ws.run_dir(mcfg.run_name, int(k))) for k in sorted(folds["fold"].unique()) if k >= 0}
    policy = cfg.predict.checkpoints
    per_fold = {k: files for k, d in run_dirs.items() if (files := d.inference_checkpoints(cfg.predict))}
    folds_hash = folds_sha256(ws.folds_csv)
    for k in per_fold:
        run_dirs[k].check_folds(folds_hash, ws.folds_csv)
    if not per_fold:
        stage_log("predict", f"{mcfg.run_name}: no finished training run under {ws.run_root(mcfg.run_name)}; skipped")
        return None
    stamp = {"predict_digest": section_digest(cfg.predict, mcfg),
             "checkpoints": {str(k): _fingerprint(v) for k, v in per_fold.items()}}
    if not force and out.is_file() and {k: read_meta(out).get(k) for k in stamp} == stamp:
        stage_log("predict", f"{out} is up to date with its checkpoints; skipped")
        return out
    t0 = time.time()
    test = scan_test(ws.data_dir)
    test_images = load_test_images(test)
    problem, note = crop_size_problem([(img.shape[1], img.shape[0]) for _, _, img in test_images], cfg.predict.crop)
    if problem:
        raise DataError(f"{ws.data_dir / TEST_DIR}: {problem}")
    if note:
        stage_log("predict", note)
    stage_log("predict", f"read {len(test_images)} test images from {ws.data_dir / TEST_DIR}")
    grid = None
    if cfg.train.jpeg_phase != "zero":  # the trainer's measurement (trainer.measure_test_grid), on the loaded crops
        sample = set(jpeg_grid.sample_names([f for f, m, _ in test_images if m == 0]))
        grid = jpeg_grid.measure([(f, img) for f, _, img in test_images if f in sample])
    place = crop_phases(cfg, grid, mcfg.input_size or cfg.train.input_size).place
    stage_log("predict", "OOF crops at " + (f"the test crops' JPEG grid phases {place.describe()}" if place else
                                            "the centre of each photo (train.jpeg_phase)"))
    frames: list[pd.DataFrame] = []
    test_probs: list[np.ndarray] = []
    skipped: dict[str, str] = {}
    for k, files in per_fold.items():
        ens = Ensemble(files, device, tta, cfg.predict.reduce, cfg.predict.amp)
        if ens.classes != classes:
            raise DataError(f"{files[0]}: trained on classes {ens.classes}, data has {classes}")
        stage_log("predict", f"{mcfg.run_name} fold {k}: {len(files)} checkpoint(s) by predict.checkpoints = "
                             f"{policy} ({', '.join(f.name for f in files)}), TTA {tta}")
        frames.append(predict_oof(cfg, ens, folds[folds["fold"] == k], k, skipped, place))
        test_probs.append(predict_test(ens, test_images, cfg.predict.batch_size))
    names = [f for f, _, _ in test_images]
    groups: dict[str, int] = {}
    if cfg.train.pseudo_labels:
        pseudo = read_pseudo(cfg.train.pseudo_labels, classes)
        groups = dict(zip(pseudo["fname"], pseudo["group"].astype(int), strict=True))
    fold_avg = reduce_probs(torch.from_numpy(np.stack(test_probs)), "gmean", dim=0).numpy()
    # a pseudo-labelled crop: its group's fold model alone, when that fold has one (else every fold)
    position = {k: i for i, k in enumerate(per_fold)}
    own = [i for i, f in enumerate(names) if groups.get(f) in position]
    for i in own:
        fold_avg[i] = test_probs[position[groups[names[i]]]][i]
    orphans = sum(f in groups for f in names) - len(own)
    if groups:
        stage_log("predict", f"{mcfg.run_name}: {len(own)} pseudo-labelled test crops predicted by their own "
                             "group's fold model alone (cross-fitted)" + (f"; {orphans} by every fold, their "
                             "group's fold has no model yet" if orphans else ""))
    frames.append(_frame(names, "test", -1, [m for _, m, _ in test_images],
                         "unknown", [""] * len(test_images), fold_avg, classes))
    table = pd.concat(frames, ignore_index=True)
    meta = {**stamp, "checkpoint_policy": policy, "run": mcfg.run_name, "backbone": mcfg.backbone, "tta": tta,
            "reduce": cfg.predict.reduce,
            "folds": sorted(per_fold), "seconds": round(time.time() - t0, 2), "device": str(device),
            "skipped": dict(sorted(skipped.items())),
            "cross_fitted": {"own_fold": len(own), "every_fold": orphans} if groups else None}
    if skipped:
        stage_log("predict", f"{mcfg.run_name}: {len(skipped)} unreadable training image(s) have no OOF rows "
                             f"(listed under 'skipped' in {sidecar(out)})")
    write_table(table, out, classes, meta)
    n_oof = int((table["split"] == "oof").sum())
    stage_log("predict", f"wrote {out}: {n_oof} OOF rows, {len(test_images)} test rows "
                         f"in {time.time() - t0:.1f} s")
    return out


def predict_runs(cfg: Config, ws: Workspace, runs: Sequence[ModelConfig], device: torch.device,
                 force: bool = False) -> list[Path]:
    """``predict_run`` for every run; at least one must have finished training."""
    written = [p for m in runs if (p := predict_run(cfg, ws, m, device, force)) is not None]
    if not written:
        raise UsageError(f"no trained runs to predict under {ws.models} (run `make train-all` first)")
    return written

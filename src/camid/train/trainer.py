"""Training one backbone on one fold (docs/recipe.md §2-4; ``camid train``).

Schedule: Adam with reduce-on-plateau on the metric-weighted validation loss for
``train.epochs`` epochs, then ``train.cycles`` cosine cycles whose ends are saved
as snapshot checkpoints (Huang et al.). Checkpoints hold the model arguments,
class list, resolved config, epoch and optimizer state, and are written atomically;
``last.pt`` lets ``--resume`` continue an interrupted run; ``done.json`` marks a
finished run so ``train-all`` skips it.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from ..config import Config, ModelConfig, dump_config, section_digest
from ..data import fastjpeg, jpeg_grid, manipulations
from ..data.competition import weighted
from ..data.crops import BLOCK, centre_offset
from ..data.folds import check_folds_cover, read_folds
from ..data.images import probe_image
from ..data.layout import resolve_classes, scan_test, scan_train
from ..data.pseudo import read_pseudo
from ..data.samples import SampleSpec, TrainSamples, VariantSet, build_variants, collate
from ..errors import DataError, ImageReadError
from ..models.classifier import CamidNet, build_model
from ..util.io import sha256_file
from ..util.log import progress, stage_log
from ..workspace import Workspace
from . import rundir
from .rundir import Checkpoint, RunDir, folds_sha256
from .runtime import Dist, autocast, forward_batches, seed_everything


@dataclass
class ValResult:
    loss_unalt: float
    loss_manip: float
    acc_unalt: float
    acc_manip: float

    @property
    def loss(self) -> float:
        return weighted(self.loss_unalt, self.loss_manip)

    @property
    def score(self) -> float:
        return weighted(self.acc_unalt, self.acc_manip)


def evaluate(model: CamidNet, val: VariantSet, device: torch.device, batch_size: int,
             amp: bool, dist: Dist | None = None) -> ValResult:
    """Loss and accuracy on unaltered and on manipulated variants, weighted like the metric.

    Under DDP each rank holds a shard of the variants and the sums are all-reduced, so
    every rank sees the same result and the LR schedules stay in step.
    """
    model.eval()
    logits = forward_batches(model, val.images, val.manip, device, batch_size, amp)
    labels, unalt = val.labels, val.manip == 0
    losses = F.cross_entropy(logits, labels, reduction="none")
    correct = (logits.argmax(1) == labels).float()
    sums = torch.tensor([losses[unalt].sum(), correct[unalt].sum(), unalt.sum(),
                         losses[~unalt].sum(), correct[~unalt].sum(), (~unalt).sum()], dtype=torch.float64)
    if dist is not None and dist.world > 1:
        import torch.distributed as tdist
        sums = sums.to(device)
        tdist.all_reduce(sums)
        sums = sums.cpu()
    lu, cu, nu, lm, cm, nm = sums.tolist()
    if nm == 0:  # no manipulated variants configured: score on unaltered only
        lm, cm, nm = lu, cu, nu
    return ValResult(lu / max(nu, 1), lm / max(nm, 1), cu / max(nu, 1), cm / max(nm, 1))


_NO_VAL = ValResult(float("nan"), float("nan"), float("nan"), float("nan"))  # an epoch that was not validated


@dataclass
class RunState:
    epoch: int = 0
    best: list[dict] = field(default_factory=list)  # kept checkpoints: file, epoch, score, loss, kind
    history: list[dict] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def view_phase(cfg: Config, crop: int, input_size: int) -> int:
    """Where the first view of ``predict.tta`` starts in a ``crop`` px image, mod 8: the network
    sees the crop's JPEG blocks shifted by this."""
    if cfg.val_view() == "whole" or input_size >= crop:
        return 0
    return centre_offset(crop, input_size) % BLOCK


@dataclass(frozen=True)
class CropPhases:
    """The JPEG grid phases of one run's crops (``train.jpeg_phase``): ``train`` those the final
    training crop of a photo is drawn at; ``place`` those the validation/OOF crops are placed at
    (None: at the centre); ``pseudo`` a test crop's own offset for its training crops."""

    train: jpeg_grid.PhaseSet
    place: jpeg_grid.PhaseSet | None
    pseudo: jpeg_grid.Phase
    note: str


def measure_test_grid(cfg: Config, data_dir: str | Path) -> jpeg_grid.GridSurvey | None:
    """The test crops' grid (None: ``jpeg_phase: zero`` needs none, or there is no test folder)."""
    if cfg.train.jpeg_phase == "zero":
        return None
    try:
        test = scan_test(data_dir)
    except DataError:
        return None
    return jpeg_grid.survey_test_set(test)


def crop_phases(cfg: Config, grid: jpeg_grid.GridSurvey | None, input_size: int) -> CropPhases:
    """The phases training, validation and OOF crops use, from the test crops' ``grid``.

    A test crop of ``predict.crop`` px at phase p, seen through the first view (starting v px in),
    shows the network blocks at p + v; a training crop is the network input, so it is drawn at
    p + v; a validation/OOF crop is placed at p (its view adds the same v)."""
    mode, v = cfg.train.jpeg_phase, view_phase(cfg, cfg.predict.crop, input_size)
    if mode == "zero":
        return CropPhases(jpeg_grid.ZERO, None, (0, 0), "phase (0, 0): the photo's own grid (train.jpeg_phase: zero)")
    place = grid.phases if grid is not None else None
    if grid is None:
        seen = "no test folder"
    else:
        seen = f"{grid.clear} of {grid.measured} _unalt test crops measured show a clear grid"
    if mode == "test" and place is not None:
        return CropPhases(place.shifted(v, v), place, (v, v),
                          f"the test crops' phases {place.describe()} ({seen}), + {v} px of the first view")
    why = "train.jpeg_phase: all" if mode == "all" else f"no test phase found: {seen}"
    placed = f"; validation/OOF crops at the test phases {place.describe()}" if place is not None else ""
    return CropPhases(jpeg_grid.ALL_EVEN, place, (v, v), f"every even phase ({why}){placed}")


class Trainer:
    """Owns the model, optimiser, schedule and checkpoints of one (backbone, fold) run."""

    def __init__(self, cfg: Config, ws: Workspace, mcfg: ModelConfig, fold: int, device: torch.device,
                 dist: Dist | None = None):
        self.cfg, self.ws, self.mcfg, self.fold, self.device = cfg, ws, mcfg, fold, device
        self.dist = dist or Dist()
        self.t = cfg.train
        self.input_size = mcfg.input_size or self.t.input_size
        self.batch_size = mcfg.batch_size or self.t.batch_size
        self.lr = mcfg.lr or self.t.lr
        self.run_dir = RunDir(ws.run_dir(mcfg.run_name, fold))
        self.dir = self.run_dir.path
        self.classes = resolve_classes(cfg, ws.data_dir)
        self.state = RunState()

    # -- setup -------------------------------------------------------------------------------
    def _split(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        self.folds_sha256 = folds_sha256(self.ws.folds_csv)
        folds = read_folds(self.ws.folds_csv, self.classes)
        # Images added, removed or moved since `camid folds` would silently change the run.
        _, scan = scan_train(self.ws.data_dir, self.classes, self.cfg.extra_train_dirs)
        check_folds_cover(folds, scan.table, str(self.ws.folds_csv))
        train_df, val_df = folds[folds["fold"] != self.fold], folds[folds["fold"] == self.fold]
        if val_df.empty:
            raise DataError(f"fold {self.fold} has no images in {self.ws.folds_csv}")
        stage_log("train", f"read {self.ws.folds_csv}: {len(train_df)} train / {len(val_df)} validation images")
        return train_df, val_df

    def _build(self) -> None:
        seed_everything(self.cfg.seed + self.fold)
        self.model = build_model(self.mcfg.backbone, len(self.classes), self.mcfg.dropout,
                                        self.t.weights_dir, pretrained=True).to(self.device)
        if self.device.type == "cuda" and self.t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net: torch.nn.Module = self.model
        if self.dist.world > 1:  # gradients averaged across ranks; checkpoints keep the bare model
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.lr, weight_decay=self.t.weight_decay)
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.opt, mode="min", factor=self.t.plateau_factor, patience=self.t.plateau_patience)

    def _datasets(self) -> None:
        train_df, val_df = self._split()
        train_df = train_df.assign(fixed_manip=False, test_crop=False)
        if self.t.pseudo_labels:
            pseudo = read_pseudo(self.t.pseudo_labels, self.classes)
            held = pseudo["group"] == self.fold  # cross-fitting: this fold's model alone predicts them
            used = pseudo[~held]
            train_df = pd.concat([train_df, used.assign(fixed_manip=used["manip"] == 1, test_crop=True)[
                ["fname", "path", "label", "fixed_manip", "test_crop"]]], ignore_index=True)
            per_half = used.groupby("half").size().to_dict()
            stage_log("train", f"read {self.t.pseudo_labels}: {len(used)} pseudo-labelled test crops {per_half} "
                               f"join the training photos (train only, never validated); {int(held.sum())} of group "
                               f"{self.fold} left out: this fold's model predicts them")
        index = {c: i for i, c in enumerate(self.classes)}
        self.phases = crop_phases(self.cfg, measure_test_grid(self.cfg, self.ws.data_dir), self.input_size)
        stage_log("train", f"JPEG grid: training crops at {self.phases.note}")
        spec = SampleSpec(self.input_size, self.t.crop_factor, self.t.manip_prob, self.t.manip_mode,
                          self.t.orientation, self.phases.train, self.phases.pseudo)
        length = self.t.steps_per_epoch * self.batch_size * self.dist.world
        self._report_small(train_df["path"], spec.input_size * spec.crop_factor, spec.input_size)
        # The config's cache folder, else $CAMID_DECODE_CACHE's (read where each photo is opened).
        cache = fastjpeg.DecodeCache(self.t.decode_cache) if self.t.decode_cache else "default"
        self.train_set = TrainSamples(train_df["path"].tolist(), train_df["label"].map(index).tolist(),
                                      len(self.classes), length, spec, self.cfg.seed + 1000 * self.fold,
                                      fixed_manip=train_df["fixed_manip"].tolist(), portrait=self.cfg.portrait,
                                      test_crops=train_df["test_crop"].tolist(), decode_cache=cache)
        if self.t.preload:
            t0 = time.time()
            for path, reason in self.train_set.preload("preload"):
                self.state.skipped[path] = reason
            stage_log("train", f"preloaded {len(self.train_set.images)} training photos into memory "
                               f"in {time.time() - t0:.1f} s (train.preload)"
                               + (f"; {self.train_set.turned} portrait photo(s) turned to the landscape sensor "
                                  "frame (portrait: rotate)" if self.train_set.turned else ""))
        if self.t.max_val_images and len(val_df) > self.t.max_val_images:
            val_df = val_df.sample(self.t.max_val_images, random_state=self.cfg.seed).sort_values("fname")
        augs = ["none", *manipulations.MANIPULATION_NAMES]
        val_df = val_df.iloc[self.dist.rank::self.dist.world]  # DDP: each rank scores a shard
        crop, rule = self.cfg.val_crop(), self.cfg.val_view()
        place = self.phases.place
        if place is not None:  # the validation crop's view must start at the phase the OOF crop's does
            shift = view_phase(self.cfg, self.cfg.predict.crop, self.input_size) - view_phase(self.cfg, crop,
                                                                                              self.input_size)
            place = place.shifted(shift, shift)
        self.val = build_variants(val_df["path"].tolist(), val_df["fname"].tolist(),
                                  val_df["label"].map(index).tolist(), augs, crop,
                                  desc="validation", portrait=self.cfg.portrait, phases=place).view(rule,
                                                                                                    self.input_size)
        for path, reason in self.val.skipped:
            self.state.skipped[path] = reason
        seen = "the whole crop" if rule == "whole" else f"its centre {self.input_size} px"
        stage_log("train", f"validation: {len(self.val.images)} centre crops of {crop} px ({len(augs)} variants "
                           f"per image), scored on {seen}: the first view of predict.tta = {self.cfg.predict.tta}")

    def input_size_at(self, epoch: int) -> int:
        """Progressive resizing: ``warmup_input_size`` for the first ``warmup_epochs`` epochs."""
        if self.t.warmup_input_size and epoch < self.t.warmup_epochs:
            return self.t.warmup_input_size
        return self.input_size

    def _report_small(self, paths: pd.Series, crop: int, input_size: int) -> None:
        """Say how many photos are smaller than the first crop (taken whole, fewer resizes drawn)
        or than the input (reflect-padded); header reads only."""
        small, tiny = [], []
        for path in progress(paths, "image sizes"):
            try:
                side = min(probe_image(path))
            except ImageReadError as exc:  # empty, not an image, corrupt header, decompression bomb
                self.state.skipped[path] = exc.reason
                continue
            if side < input_size:
                tiny.append(path)
            elif side < crop:
                small.append(path)
        if small:
            stage_log("train", f"{len(small)} of {len(paths)} training images are smaller than the {crop} px first "
                               f"crop: taken whole, with only the resizes that keep {input_size} px, e.g. {small[0]}")
        if tiny:
            stage_log("train", f"{len(tiny)} of {len(paths)} training images are smaller than the {input_size} px "
                               f"input and will be reflect-padded, e.g. {tiny[0]}")

    def _loader(self, epoch: int) -> torch.utils.data.DataLoader:
        self.train_set.set_epoch(epoch)
        self.train_set.spec = replace(self.train_set.spec, input_size=self.input_size_at(epoch))
        workers = min(self.t.num_workers, os.cpu_count() or 1)
        # Each rank takes every world-th sample of the same seeded epoch plan: disjoint, same total.
        data = (self.train_set if self.dist.world == 1 else
                torch.utils.data.Subset(self.train_set, range(self.dist.rank, len(self.train_set), self.dist.world)))
        return torch.utils.data.DataLoader(
            data, batch_size=self.batch_size, shuffle=False, num_workers=workers,
            collate_fn=collate, pin_memory=self.device.type == "cuda", drop_last=False,
            persistent_workers=False)

    # -- schedule ----------------------------------------------------------------------------
    @property
    def total_epochs(self) -> int:
        return self.t.epochs + self.t.cycles * self.t.cycle_epochs

    def _cycle_position(self, epoch: int) -> tuple[int, int] | None:
        """(cycle index, epoch within cycle) in the snapshot phase, else None."""
        if epoch < self.t.epochs:
            return None
        k = epoch - self.t.epochs
        return k // self.t.cycle_epochs, k % self.t.cycle_epochs

    def _validates(self, epoch: int) -> bool:
        """Every ``val_every`` epochs, at every cycle end (a snapshot needs its numbers) and at the end."""
        pos = self._cycle_position(epoch)
        cycle_end = pos is not None and pos[1] == self.t.cycle_epochs - 1
        return (epoch + 1) % self.t.val_every == 0 or cycle_end or epoch == self.total_epochs - 1

    def _lr_for_step(self, epoch: int, step: int, steps: int) -> float | None:
        pos = self._cycle_position(epoch)
        if pos is None:
            return None  # the plateau scheduler owns the LR
        frac = (pos[1] * steps + step) / (self.t.cycle_epochs * steps)
        return 0.5 * self.lr * (1 + math.cos(math.pi * frac))

    # -- loop --------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> dict:
        self.model.train()
        loader = self._loader(epoch)
        total, correct, loss_sum, t0 = 0, 0, 0.0, time.time()
        bar = progress(loader, f"{self.mcfg.run_name} fold{self.fold} epoch {epoch + 1}/{self.total_epochs}")
        for step, batch in enumerate(bar):
            for path, reason in batch["skipped"]:
                self.state.skipped[path] = reason
            if "image" not in batch:
                continue
            lr = self._lr_for_step(epoch, step, len(loader))
            if lr is not None:
                for g in self.opt.param_groups:
                    g["lr"] = lr
            loss, hits = self._step(batch)
            n = len(batch["label"])
            total, correct, loss_sum = total + n, correct + hits, loss_sum + loss * n
            bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
        self._check_skips()
        secs = time.time() - t0
        return {"train_loss": loss_sum / max(total, 1), "train_acc": correct / max(total, 1),
                "images_per_s": total / max(secs, 1e-9), "seconds": secs}

    def _step(self, batch: dict) -> tuple[float, int]:
        x = self.model.normalize(batch["image"].to(self.device, non_blocking=True))
        if self.device.type == "cuda" and self.t.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = batch["label"].to(self.device)
        with autocast(self.device, self.t.amp):
            logits = self.net(x, batch["manip"].to(self.device))
            loss = F.cross_entropy(logits.float(), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss in {self.dir}; lower train.lr")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach()), int((logits.argmax(1) == y).sum())

    def _check_skips(self) -> None:
        n_files, limit = len(self.train_set.paths), self.t.max_skip_fraction
        if self.state.skipped and len(self.state.skipped) > limit * n_files:
            if self.dist.main:
                self._write_skips()  # the error points at this report: it must exist
            raise DataError(f"{len(self.state.skipped)} of {n_files} training files are unreadable "
                            f"(more than train.max_skip_fraction = {limit:g}); see {self.run_dir.skipped_csv}")

    def _checkpoint(self, epoch: int, val: ValResult, with_optimizer: bool) -> Checkpoint:
        ck = Checkpoint(
            model_args=self.model.model_args, state_dict=self.model.state_dict(), classes=list(self.classes),
            config=self.cfg.to_dict(), run=self.mcfg.run_name, fold=self.fold, epoch=epoch,
            input_size=self.input_size,
            val={"score": val.score, "loss": val.loss, "acc_unalt": val.acc_unalt, "acc_manip": val.acc_manip})
        if with_optimizer:
            ck.optimizer = self.opt.state_dict()
            ck.plateau = self.plateau.state_dict()
            ck.state = {"epoch": epoch, "best": self.state.best, "history": self.state.history,
                        "skipped": self.state.skipped, "folds_sha256": self.folds_sha256}
        return ck

    def _keep(self, epoch: int, val: ValResult) -> None:
        """Top-N checkpoints by validation score, plus every cycle-end snapshot."""
        pos = self._cycle_position(epoch)
        cycle = pos[0] if pos is not None and pos[1] == self.t.cycle_epochs - 1 else None
        self.state.best = self.run_dir.keep(self.state.best, epoch, cycle, val.score, val.loss, self.t.keep_top,
                                            lambda: self._checkpoint(epoch, val, with_optimizer=False))

    def _log(self, epoch: int, stats: dict, val: ValResult | None) -> None:
        v = val or _NO_VAL
        row = {"epoch": epoch + 1, "phase": "plateau" if self._cycle_position(epoch) is None else "cycle",
               "lr": self.opt.param_groups[0]["lr"], **stats, "val_loss": v.loss,
               "val_acc_unalt": v.acc_unalt, "val_acc_manip": v.acc_manip, "val_score": v.score}
        self.state.history.append(row)
        self.run_dir.write_log(self.state.history)
        scored = (f"val_loss {v.loss:.4f} val_acc unalt {v.acc_unalt:.3f} manip {v.acc_manip:.3f} "
                  f"score {v.score:.4f}") if val is not None else "not validated (train.val_every)"
        stage_log("train", f"{self.mcfg.run_name} fold{self.fold} epoch {epoch + 1}: loss {stats['train_loss']:.4f} "
                           f"{scored} ({stats['images_per_s']:.0f} img/s)")

    def _resume(self) -> int:
        resumed = self.run_dir.resume(self.classes, self.folds_sha256, self.ws.folds_csv)
        if resumed is None:
            return 0
        self.model.load_state_dict(resumed.checkpoint.state_dict)
        self.opt.load_state_dict(resumed.optimizer)
        self.plateau.load_state_dict(resumed.plateau)
        st = resumed.state
        self.state = RunState(st["epoch"] + 1, st["best"], st["history"], st["skipped"])
        stage_log("train", f"resuming {self.dir} after epoch {st['epoch'] + 1}")
        return self.state.epoch

    def run(self, resume: bool = False) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.dist.main:
            self.run_dir.start(dump_config(self.cfg))
        self._build()
        self._datasets()
        start = self._resume() if resume else 0
        stage_log("train", f"{self.mcfg.backbone} fold {self.fold} on {self.device}: {self.total_epochs} epochs x "
                           f"{self.t.steps_per_epoch} steps x batch {self.batch_size}, input {self.input_size}")
        for epoch in range(start, self.total_epochs):
            stats = self._train_epoch(epoch)
            val = None
            if self._validates(epoch):
                val = evaluate(self.model, self.val, self.device, self.batch_size, self.t.amp, self.dist)
                if self._cycle_position(epoch) is None:
                    self.plateau.step(val.loss)
            self.state.epoch = epoch
            if self.dist.main:  # one writer; the other ranks hold identical weights
                self._log(epoch, stats, val)
                if val is not None:
                    self._keep(epoch, val)
                self.run_dir.save_last(self._checkpoint(epoch, val or _NO_VAL, with_optimizer=True))
                self._write_skips()
        if self.dist.main:
            self._finish()
        return self.dir

    def _write_skips(self) -> None:
        self.run_dir.write_skipped(self.state.skipped)

    def _finish(self) -> None:
        best = self.run_dir.finish(self.state.best, self.classes, train_digest(self.cfg, self.mcfg), self.total_epochs,
                                   self.folds_sha256)
        stage_log("train", f"wrote {len(best)} checkpoint(s), {rundir.LOG} and {rundir.DONE} to {self.dir}")


# train settings that say how a run is executed, not what it learns (the same samples, pixels and
# weights): changing the worker count on another machine must not mark finished runs as not done.
_EXECUTION_ONLY = ("num_workers", "preload", "decode_cache", "max_skip_fraction", "allow_random_init")


def train_digest(cfg: Config, mcfg: ModelConfig) -> str:
    """What makes a run's checkpoints: changing blend or predict settings, or how training is
    executed (``_EXECUTION_ONLY``), must not retrain; new pseudo-labels (their content, not only
    their path) must."""
    pseudo = cfg.train.pseudo_labels
    pseudo_hash = sha256_file(Path(pseudo)) if pseudo and Path(pseudo).is_file() else pseudo
    train = {k: v for k, v in asdict(cfg.train).items() if k not in _EXECUTION_ONLY}
    return section_digest(train, cfg.folds, mcfg, cfg.seed, cfg.classes, cfg.extra_train_dirs, pseudo_hash,
                          cfg.portrait)


def is_done(ws: Workspace, cfg: Config, run_name: str, fold: int) -> bool:
    """The run finished with the config's training settings, on the current folds."""
    return RunDir(ws.run_dir(run_name, fold)).is_done(train_digest(cfg, cfg.model(run_name)),
                                                      folds_sha256(ws.folds_csv))

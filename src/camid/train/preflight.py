"""`camid check`: what a run needs before it starts, checked in minutes rather than found
hours into a night of GPUs. Each part returns plan lines and blockers (what must be fixed
before `train-all`); the command prints both and exits non-zero on a blocker."""
from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Config, ModelConfig
from ..data.images import probe_image
from ..data.layout import SAMPLE_SUBMISSION, TEST_DIR, resolve_classes, scan_test, scan_train
from ..errors import CheckpointError, DataError, ImageReadError
from ..models.classifier import build_model
from ..models.registry import find_weights, get_spec, load_pretrained
from .rundir import LAST


def crop_size_problem(sizes: Iterable[tuple[int, int]], crop: int) -> tuple[str, str]:
    """(problem, note) for test crops of these (width, height) sizes against ``predict.crop``.

    problem (a blocker): the test crops' usual size is not ``crop`` x ``crop``; level 2 learns from
    OOF rows (centre crops of ``predict.crop``) what the test rows look like, so both must be
    crops of one size. note: a few test files of another size (predicted as they are)."""
    counts = Counter(sizes)
    if not counts:
        return "", ""
    usual, _ = counts.most_common(1)[0]
    seen = ", ".join(f"{n} of {w}x{h}" for (w, h), n in counts.most_common())
    if usual != (crop, crop):
        return (f"test crops are {seen} px but predict.crop is {crop}: OOF rows would be made at another size "
                f"than the test rows they stand in for; set predict.crop to the test crops' side"), ""
    odd = sum(n for size, n in counts.items() if size != usual)
    return "", (f"{odd} test file(s) are not {crop}x{crop} ({seen}); they are predicted at their own size"
                if odd else "")


@dataclass
class Report:
    """The plan, section by section, and what blocks it."""

    lines: list[str] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)

    def section(self, title: str) -> None:
        self.lines.append(f"== {title}")

    def say(self, line: str) -> None:
        self.lines.append(f"   {line}")

    def block(self, line: str) -> None:
        self.blockers.append(line)
        self.lines.append(f"   BLOCKER: {line}")


def check_data(cfg: Config, data_dir: Path, sample_fnames: Sequence[str] | None, report: Report) -> list[str]:
    """Classes and photo counts, test files and their halves, the sample submission against
    ``test/``, the test crops' size against ``predict.crop``; returns the classes ([] if none)."""
    report.section(f"data: {data_dir}")
    try:
        classes, scan = scan_train(data_dir, resolve_classes(cfg, data_dir), cfg.extra_train_dirs)
    except DataError as exc:
        report.block(str(exc))
        return []
    counts = scan.table.groupby("label").size()
    report.say(f"{len(classes)} classes, {len(scan.table)} training photos "
               f"({counts.min()}-{counts.max()} per class): "
               + ", ".join(f"{c} {counts.get(c, 0)}" for c in classes))
    if scan.skipped:
        report.say(f"{len(scan.skipped)} file(s) not used, e.g. {scan.skipped[0][0]} ({scan.skipped[0][1]})")
    try:
        test = scan_test(data_dir)
    except DataError as exc:
        report.block(str(exc))
        return classes
    halves = test["manip"].value_counts()
    report.say(f"{len(test)} test files: {halves.get(0, 0)} _unalt, {halves.get(1, 0)} _manip")
    if sample_fnames is None:
        report.block(f"{data_dir / SAMPLE_SUBMISSION} not found: submissions are written in its order")
    else:
        absent = sorted(set(test["fname"]) - set(sample_fnames))
        extra = sorted(set(sample_fnames) - set(test["fname"]))
        if absent or extra:
            report.block(f"{SAMPLE_SUBMISSION} and {TEST_DIR}/ differ: {len(extra)} listed file(s) not in {TEST_DIR}/ "
                         f"{extra[:3]}, {len(absent)} test file(s) not listed {absent[:3]}")
        else:
            report.say(f"{SAMPLE_SUBMISSION} lists exactly the {len(test)} test files")
    sizes, unreadable = [], []
    for path in test["path"]:
        try:
            sizes.append(probe_image(path))
        except ImageReadError as exc:
            unreadable.append(f"{Path(path).name} ({exc.reason})")
    if unreadable:
        report.block(f"{len(unreadable)} unreadable test file(s): {', '.join(unreadable[:3])}")
    problem, note = crop_size_problem(sizes, cfg.predict.crop)
    if problem:
        report.block(problem)
    else:
        side = cfg.predict.crop
        report.say(f"test crops are {side}x{side} = predict.crop" + (f"; {note}" if note else ""))
    return classes


def check_weights(cfg: Config, runs: Sequence[ModelConfig], load: bool, report: Report,
                  config_path: str | None = None) -> None:
    """Every backbone's ImageNet weights present (and, with ``load``, fitting its architecture)."""
    report.section(f"ImageNet weights: {Path(cfg.train.weights_dir).resolve()}")
    missing = []
    for backbone in dict.fromkeys(m.backbone for m in runs):
        spec = get_spec(backbone)
        if not spec.weights_files:
            report.say(f"{backbone}: trains from scratch, no weights needed")
            continue
        path = find_weights(spec, cfg.train.weights_dir)
        if path is None:
            missing.append(spec.weights_files[0])
            line = f"{backbone}: {Path(cfg.train.weights_dir) / spec.weights_files[0]} missing"
            if cfg.train.allow_random_init:
                report.say(line + " (train.allow_random_init: it trains from RANDOM INIT)")
            else:
                report.block(line)
            continue
        if load:
            try:
                backbone_net, _ = spec.build()
                load_pretrained(backbone_net, spec, cfg.train.weights_dir)
            except CheckpointError as exc:  # its first line names the file and the mismatch; the key lists follow
                report.block(f"{backbone}: {str(exc).splitlines()[0][:300]}")
                continue
        report.say(f"{backbone}: {path} ({path.stat().st_size / 1e6:.0f} MB){', loads' if load else ''}")
    if missing and not cfg.train.allow_random_init:
        report.say(f"fetch them: camid weights fetch --config {config_path or '<config>'} (make weights CONFIG=...)")


def check_gpus(cfg: Config, gpus: Sequence[str], backend: str, report: Report) -> int:
    """CUDA devices and their free memory; returns how many jobs run at once on this machine."""
    report.section("GPUs")
    if cfg.device == "cpu":
        report.say("device: cpu (the profile trains on the CPU, one job at a time)")
        return 1
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for i in range(n):
        free, total = torch.cuda.mem_get_info(i)
        report.say(f"cuda:{i} {torch.cuda.get_device_name(i)}: {free / 2**30:.1f} of {total / 2**30:.1f} GiB free"
                   + (" (another process holds the rest)" if free < 0.8 * total else ""))
    if backend != "local":
        report.say(f"backend {backend}: jobs run on the cluster's GPUs (cluster.num_gpus per job), not checked here")
        return 0
    if n == 0:
        report.block(f"no CUDA GPU visible (device: {cfg.device}); train-all would "
                     + ("fail" if cfg.device == "cuda" else "train on the CPU"))
        return 1
    bad = [g for g in gpus if not g.isdigit() or int(g) >= n]
    if bad:
        report.block(f"--gpus {','.join(gpus)}: {bad} not among the {n} visible GPU(s)")
    return len(gpus) if gpus else 1


def checkpoint_bytes(backbone: str, num_classes: int, dropout: float) -> int:
    """Bytes of one checkpoint's weights (float32 state dict), counted on the meta device."""
    with torch.device("meta"):
        net = build_model(backbone, num_classes, dropout, weights_dir=None, pretrained=False)
    return sum(t.numel() * t.element_size() for t in net.state_dict().values())


def check_disk(cfg: Config, runs: Sequence[ModelConfig], n_folds: int, rounds: int, num_classes: int,
               models_dir: Path, report: Report) -> None:
    """Free disk against every checkpoint the runs keep: the top ``keep_top`` epochs and the
    cycle snapshots per fold, plus ``last.pt`` (weights and Adam's two moments: 3x)."""
    report.section(f"disk: {models_dir}")
    kept = cfg.train.keep_top + cfg.train.cycles
    need = 0
    for m in runs:
        size = checkpoint_bytes(m.backbone, num_classes, m.dropout)
        per_run = n_folds * (kept + 3) * size * rounds
        need += per_run
        report.say(f"{m.run_name}: {size / 1e6:.0f} MB per checkpoint x ({kept} kept + {LAST} 3x) x {n_folds} folds "
                   f"x {rounds} round(s) = {per_run / 1e9:.1f} GB")
    where = next(p for p in (models_dir, *models_dir.resolve().parents) if p.exists())
    free = shutil.disk_usage(where).free
    line = f"checkpoints need {need / 1e9:.1f} GB; {free / 1e9:.1f} GB free on {where}"
    if need > free:
        report.block(line)
    else:
        report.say(line)


def plan_jobs(cfg: Config, runs: Sequence[ModelConfig], n_folds: int, rounds: int, backend: str,
              gpus: Sequence[str], parallel: int, rates: dict[str, tuple[float, int]], report: Report) -> None:
    """The job list and, from measured training images/s (``camid bench --only gpu``: backbone ->
    (images/s, input size)), the training time per job and the wall time on ``parallel`` GPUs."""
    report.section("jobs")
    report.say(f"train-all: {len(runs)} run(s) x {n_folds} fold(s) = {len(runs) * n_folds} job(s) per round, "
               f"{rounds} round(s): {len(runs) * n_folds * rounds} jobs; predict: {len(runs)} job(s) per round")
    where = f"GPUs {','.join(gpus)}, one job per GPU at a time" if gpus else "one job at a time"
    report.say(f"backend {backend}" + (f": {where}" if backend == "local" else ""))
    epochs = cfg.train.epochs + cfg.train.cycles * cfg.train.cycle_epochs
    total_h, unknown = 0.0, []
    for m in runs:
        batch = m.batch_size or cfg.train.batch_size
        size = m.input_size or cfg.train.input_size
        images = epochs * cfg.train.steps_per_epoch * batch
        if m.backbone not in rates:
            unknown.append(m.backbone)
            continue
        rate, measured_at = rates[m.backbone]
        hours = images / (rate * (measured_at / size) ** 2) / 3600
        total_h += hours * n_folds * rounds
        report.say(f"{m.run_name}: {epochs} epochs x {cfg.train.steps_per_epoch} steps x batch {batch} = "
                   f"{images:,} images at {rate:.0f} images/s ({measured_at} px) -> {hours:.1f} h per job")
    if unknown:
        report.say(f"no measured training rate for {', '.join(unknown)}: run `camid bench --only gpu` on this "
                   "machine for a time estimate")
    if total_h and backend == "local":
        report.say(f"estimated training wall time: {total_h:.0f} GPU-hours / {max(1, parallel)} GPU(s) = "
                   f"{total_h / max(1, parallel):.1f} h (training steps only: validation and predict come on top)")
    elif total_h:
        report.say(f"estimated training: {total_h:.0f} GPU-hours (validation and predict come on top)")

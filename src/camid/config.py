"""Run configuration: YAML profiles validated at load time.

Unknown keys and wrong types are errors (a typo in a multi-day run's config must
not be silently ignored). Each stage owns one section; defaults are the Kaggle recipe.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError

# Ways to average probabilities (over TTA views, checkpoints, folds, and level-2 models):
# each is the power mean with this exponent (0: the geometric mean, its limit).
REDUCTION_POWERS: dict[str, float] = {"gmean": 0.0, "mean": 1.0, "rms": 2.0}
# Probabilities are clipped to this before a log or a negative power, so a single zero does not
# veto a class (geometric means, equaliser costs, stacker features, the sensor-noise steps' rows).
PROB_FLOOR = 1e-7
# The smallest factor a training manipulation resizes by (resize0.5, the continuous policy's 0.5):
# train.crop_factor makes up for it. The manipulations are data.manipulations'; a test holds them to it.
SMALLEST_TRAINING_SCALE = 0.5
TtaPolicy = Literal["none", "tta10", "tta40", "full", "full_d4"]
TTA_POLICIES: tuple[str, ...] = typing.get_args(TtaPolicy)


# SimulateConfig fields that only shape the external pool: they never change train/ or test/.
EXTERNAL_FIELDS: tuple[str, ...] = ("external_per_class", "external_devices")
# The pool's devices are C..Z (A shoots train/, B test/).
MAX_EXTERNAL_DEVICES = 24


@dataclass(frozen=True)
class SimulateConfig:
    """`camid simulate` defaults (command-line options override them)."""

    n_classes: int = 10
    train_per_class: int = 275
    test_per_class: int = 132  # per half: this many _unalt and this many _manip per class
    width: int = 1600
    height: int = 1200
    test_crop: int = 512
    seed: int = 2018
    # External pool (OUT/external/, camid.sim.external_pool): files per class, 0 = no pool,
    # and how many further devices (C, D, ...) of each model shoot it.
    external_per_class: int = 0
    external_devices: int = 4

    def external_problem(self) -> str:
        """Why the external-pool keys cannot work ("" when they can)."""
        if self.external_per_class < 0:
            return f"simulate.external_per_class (--external) must be >= 0, got {self.external_per_class}"
        if not 1 <= self.external_devices <= MAX_EXTERNAL_DEVICES:
            return (f"simulate.external_devices (--external-devices) must be in [1, {MAX_EXTERNAL_DEVICES}], "
                    f"got {self.external_devices}")
        return ""


@dataclass
class FoldsConfig:
    mode: Literal["kfold", "holdout"] = "kfold"
    n_folds: int = 5
    holdout_fraction: float = 0.2
    seed: int = 42
    # Photos of extra_train_dirs: train_only (fold -1, never OOF rows) or split like train/.
    external: Literal["train_only", "kfold"] = "train_only"
    # device: a class with >= 2 known devices validates each fold on a device it does not train on
    # (DATA/train_devices.csv or <class>_<n>_<shot> names); photo: photo-grouped; auto: device where known.
    group: Literal["auto", "device", "photo"] = "auto"


@dataclass
class ModelConfig:
    """One trained backbone (run): models/<name>/fold<k>/."""

    backbone: str = "densenet201"
    name: str | None = None  # directory name under models/; defaults to the backbone
    dropout: float = 0.3
    input_size: int | None = None  # overrides train.input_size for this backbone
    batch_size: int | None = None  # overrides train.batch_size for this backbone
    lr: float | None = None  # overrides train.lr for this backbone

    @property
    def run_name(self) -> str:
        return self.name or self.backbone.replace("/", "-")


@dataclass
class TrainConfig:
    input_size: int = 480
    warmup_input_size: int | None = None  # progressive resizing: e.g. 256 for the first epochs...
    warmup_epochs: int = 0  # ...then input_size (1st place: 256 pretraining, then 512)
    crop_factor: int = 2  # first random crop is crop_factor x input_size (960 for 480)
    batch_size: int = 16
    epochs: int = 60
    steps_per_epoch: int = 1000
    lr: float = 1e-4
    weight_decay: float = 0.0
    manip_prob: float = 0.5
    manip_mode: Literal["competition", "continuous"] = "competition"
    orientation: Literal["none", "flips", "d4"] = "d4"
    plateau_patience: int = 3
    plateau_factor: float = 0.5
    cycles: int = 0  # cosine cycles after the plateau phase; each cycle end is a snapshot
    cycle_epochs: int = 5
    keep_top: int = 3
    # Validation mirrors inference: centre crops of this size (None: predict.crop, the size
    # predict's OOF rows use), seen through the first view of predict.tta (``val_view``).
    val_crop: int | None = None
    val_every: int = 1  # validate every k epochs (and always at cycle ends and the last epoch)
    preload: bool = False  # decode every training photo into memory once (small data sets: the demo)
    # Pseudo-labelled test crops (camid.data.pseudo) added to the training photos; rounds >= 2
    # set it to the previous round's oof/pseudo-r<N>.csv. They only ever train.
    pseudo_labels: str | None = None
    # The 8-px JPEG block phase of the training crops (camid.data.jpeg_grid; a test crop's is its
    # offset in the photo mod 8, set by the photo size): "test" draws it from the phases measured
    # on the _unalt test crops (every even phase when no test crop shows a clear grid), "all" from
    # every even phase, "zero" keeps the photo's own grid origin (the behaviour before this key).
    # Validation and OOF crops sit near the centre at the test crops' phase, except with "zero".
    jpeg_phase: Literal["test", "all", "zero"] = "test"
    num_workers: int = 4
    amp: bool = True  # autocast on CUDA only
    channels_last: bool = True
    weights_dir: str = "weights"
    max_val_images: int | None = None
    # A run stops with an error once more than this fraction of its training files
    # are unusable (listed with reasons in models/<run>/fold<k>/skipped.csv).
    max_skip_fraction: float = 0.05
    # Folder for one-time lossless restart-marker copies of training JPEGs, so each sample
    # decodes only its crop (fastjpeg.py, ~18x faster on 12 MP photos); None: full decodes.
    decode_cache: str | None = None
    # Backbones that expect ImageNet weights refuse to train while a weights file is missing
    # (`camid weights fetch`); true: train them from random init (far lower accuracy).
    allow_random_init: bool = False


@dataclass
class PredictConfig:
    """Inference (``camid predict``, ``identify``, ``robustness``): how checkpoints are applied."""

    tta: TtaPolicy = "tta10"
    reduce: str = "gmean"  # one of REDUCTION_POWERS: over TTA views
    # Which checkpoints of a run are averaged: the cycle-end snapshots (the recipe's snapshot
    # ensemble), the top_n by validation score, or both (snapshots + top_n epochs).
    checkpoints: Literal["snapshots", "top_n", "both"] = "snapshots"
    top_n: int = 3
    oof_augs: list[str] = field(default_factory=lambda: ["all"])
    oof_manip_per_image: int | None = None  # None: every listed manipulation; k: a seeded subset of k
    crop: int = 512  # OOF images are centre crops of this size, like the test set
    batch_size: int = 80  # network inputs per forward pass (images x TTA views)
    amp: bool = True  # autocast on CUDA only


@dataclass
class RobustnessConfig:
    """`camid robustness` defaults (command-line options override them)."""

    # Held-out photos evaluated (a seeded sample, the same draw as train.max_val_images);
    # None: all of them. Equal to train.max_val_images, the accuracy at a competition
    # point is the validation accuracy of the checkpoint.
    max_images: int | None = None


@dataclass
class IdentifyConfig:
    """`camid identify` defaults (command-line options override them)."""

    # Unknown-camera threshold: the share of known cameras' OOF photos it accepts
    # (camid.forensics.openset); the rest of the score range is "unknown camera".
    unknown_tpr: float = 0.95
    # EXIF model -> class rules for the metadata cross-check: camid filter-external's file.
    # A relative path is looked up from the current folder, then next to the config file.
    rules: str = "configs/external_rules.yaml"


@dataclass
class StackConfig:
    """Level-2 stackers (strategies xgb, lgb, mlp): bags over seeds x folds grouped by image."""

    seeds: int = 4  # seeds x folds models per stacker (the 2nd-place team bagged 20 XGB + 20 LGB)
    folds: int = 5
    log_features: bool = True  # add log(max(p, floor)) of every model's probabilities
    class_weights: list[float] = field(default_factory=list)  # one per class, class order; empty = all 1
    rounds: int = 300  # boosting rounds (fixed: no early stopping on the fold that scores the OOF)
    learning_rate: float = 0.05
    max_depth: int = 4
    mlp_hidden: int = 128
    mlp_epochs: int = 40
    threads: int = 0  # 0: all cores
    # OOF rows come from one fold model, test rows from the geometric mean of K (flatter): raise each
    # model's test rows to the power that gives them the OOF rows' mean top probability before
    # stacking (level2.stack.match_sharpness; label-free). Off until a benchmark has measured it.
    match_sharpness: bool = False


@dataclass
class PrnuClusterConfig:
    """The ``+prnu`` level-2 step (``camid.level2.prnu_cluster``): test crops clustered by sensor noise."""

    scales: list[float] = field(default_factory=lambda: [0.5, 0.8, 1.5, 2.0])  # resizes tried for _manip crops
    max_shift: int = 2  # +- pixels searched around a resized crop's expected position
    accept_z: float = 5.0  # a crop takes a cluster's class when its z-score reaches this...
    margin_z: float = 2.5  # ...and beats the runner-up cluster by this
    member_z: float = 1.5  # an unaltered crop in a usable cluster takes its name above this z
    # two groups of crops are merged into one sensor cluster while the mean z-score of their cross
    # links reaches min_cluster_z and their sum / sqrt(links) reaches merge_z: the number of
    # clusters comes from the data (level2.prnu_cluster.agglomerate)
    min_cluster_z: float = 1.0
    merge_z: float | None = None  # None: the 5% Bonferroni bound over the pairs of unaltered test crops
    min_cluster_size: int = 3
    # below this share of unaltered test crops in coherent clusters the noise is too weak to trust
    # (real natural scenes, crops from different sensor positions): the step changes nothing
    min_clustered: float = 0.5
    max_size_ratio: float = 1.5  # blend.balanced_test: a cluster above this x a class's share mixes classes
    name_confidence: float = 0.9  # a cluster is used only when its name survives this share of bootstrap draws
    name_draws: int = 200  # bootstrap draws (members and bases resampled) behind name_confidence
    # The test holds one device of each class, so two sensors never share a class and the names are
    # claimed one class per sensor (level2.prnu_cluster.claim_names). None: when blend.balanced_test,
    # or when `camid compose` recorded one known test device for every class (its compose.json).
    one_device_per_class: bool | None = None
    seed: int = 0
    workers: int = 0  # residual extraction processes; 0: all cores


@dataclass
class MatchConfig:
    """The ``+match`` level-2 step (``camid.level2.prnu_match``): test crops matched against the
    sensor fingerprints of the training devices."""

    threshold: float = 60.0  # a crop takes a device's class when its PCE reaches this (the usual decision threshold)...
    margin: float = 4.0  # ...and is at least this many times the best PCE of any other class's device
    scales: list[float] = field(default_factory=lambda: [0.5, 0.8, 1.5, 2.0])  # resizes tried for _manip crops
    max_shift: int = 2  # +- pixels searched around a resized crop's expected position
    workers: int = 0  # residual extraction processes; 0: all cores

    def problem(self) -> str:
        """Why these settings cannot work ("" when they can)."""
        if self.threshold <= 0:
            return f"blend.match.threshold must be > 0 (a PCE), got {self.threshold}"
        if self.margin < 1:
            return f"blend.match.margin must be >= 1 (best PCE / other classes' best), got {self.margin}"
        if self.max_shift < 0 or self.workers < 0:
            return "blend.match.max_shift and blend.match.workers must be >= 0"
        bad = [v for v in self.scales if not 0.1 <= v <= 4 or v == 1]
        if bad:
            return f"blend.match.scales: {bad} not in 0.1..4 or equal to 1 (1 is always tried)"
        return ""


@dataclass
class BlendConfig:
    strategies: list[str] = field(default_factory=lambda: ["gmean", "gmean+hungarian"])
    models: list[str] = field(default_factory=list)  # table stems in oof/; empty = all
    tta: str | None = None  # which <tta> tables to blend; default predict.tta
    weights: list[float] = field(default_factory=list)  # one per entry of `models`; empty = equal
    floor: float = PROB_FLOOR  # probabilities are clipped to this before logs (gmean, equalisers)
    stack: StackConfig = field(default_factory=StackConfig)
    prnu: PrnuClusterConfig = field(default_factory=PrnuClusterConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    # The test set has as many crops of every class in each half (the competition, the demo): the
    # equalisers (+greedy, +hungarian, +flow) give every class the same quota. False (a user's own
    # photos): the equalisers leave the test rows as their base had them, and say so.
    balanced_test: bool = False
    # The steps `submissions/final.csv` may add to the base of best local CV (level2.submission.pick_final):
    # +match when a test crop matched a training device, +prnu when the clustering was coherent and its
    # names stable, the equaliser when balanced_test.
    final: str = "+match+prnu+hungarian"


@dataclass
class PseudoConfig:
    """``camid pseudo``: balanced pseudo-labels from a round's level 2 for the next round."""

    # the level-2 table whose test predictions are taken; "final": the one `submissions/final.csv`
    # is made from (level2.submission.pick_final)
    strategy: str = "final"
    per_class: int | None = None  # crops per class and per half (unalt/manip); None: fraction
    fraction: float = 0.8  # of each class's share of a half (the 2nd place: 105 of 132)
    min_confidence: float = 0.0  # and never a crop below this level-2 probability
    # Only the crops a sensor step of the strategy confirmed (+match against a training device, a
    # named +prnu cluster) are candidates: their label is evidence, while the CNN's confidence on a
    # device it never saw is not what the OOF rows (training devices) say it is.
    confirmed_only: bool = False
    # The precision the selection is expected to have, from the OOF rows of the confidence strategy
    # (their labels are known): below this, only the surest crops that reach it are kept (none when
    # even the surest is below: round 2 then trains on the photos alone). OOF photos come from the
    # training devices, so on the test device it is an upper bound.
    min_expected_precision: float = 0.8


@dataclass
class ClusterConfig:
    """Where `train-all` and `predict` jobs run with `--backend ray|slurm` (``camid.jobs.backends``);
    the command-line options of the same names override these."""

    num_gpus: float = 1.0  # GPUs per job (Ray: fractional allowed, e.g. 0.5 for small backbones); 0 when device: cpu
    num_cpus: int | None = None  # CPUs per job; None: train.num_workers + 1 (the DataLoader workers + the trainer)
    # shared: the work dir is on a filesystem every node sees at the same path; copy: each job works in
    # scratch_dir on its node and its outputs come back to the driver's work dir. DATA: on every node, same path.
    storage: Literal["shared", "copy"] = "shared"
    scratch_dir: str | None = None  # storage: copy: the jobs' folder on each node (None: the system temp folder)
    max_retries: int = 3  # Ray: reruns of a job whose worker or node died (each resumes from last.pt)
    ray_address: str | None = None  # None: $RAY_ADDRESS if set, else a new local instance; "auto": the running cluster
    slurm_executor: Literal["slurm", "local"] = "slurm"  # local: submitit's LocalExecutor (same code path, no cluster)
    slurm_partition: str | None = None
    slurm_gpus_per_job: int = 1  # 0 when device: cpu; more than 1: the job trains with DDP (torchrun) on them
    slurm_time_min: int = 1440  # time limit per job; a job that reaches it is requeued and resumes
    slurm_max_requeues: int = 10  # times a job may be requeued after a time-out or preemption
    slurm_array_parallelism: int = 64  # array jobs running at once
    slurm_mem_gb: float | None = None
    slurm_setup: list[str] = field(default_factory=list)  # shell lines each job runs first (source .venv/bin/activate)


@dataclass
class Config:
    name: str = "kaggle"
    data_dir: str = "data/simulated"
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    classes: list[str] | None = None  # None: the folder names under train/
    extra_train_dirs: list[str] = field(default_factory=list)  # external data, <dir>/<class>/*
    # Training photos taller than wide (train/, extra_train_dirs; test crops are square) are turned
    # a quarter turn to the landscape sensor frame before any crop, in training, validation and OOF
    # ("rotate"), or used as stored ("keep"): a portrait shot stored with rotated pixels shows its
    # camera's colour-filter grid transposed, a pattern the landscape test crops never have.
    portrait: Literal["rotate", "keep"] = "rotate"
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    models: list[ModelConfig] = field(default_factory=lambda: [ModelConfig()])
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    identify: IdentifyConfig = field(default_factory=IdentifyConfig)
    blend: BlendConfig = field(default_factory=BlendConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def for_round(self, round_: int, pseudo_labels: str) -> Config:
        """The config of training round ``round_ >= 2``: the same runs, named ``<run>-r<N>``,
        trained on the photos plus the pseudo-labelled crops in ``pseudo_labels``."""
        out = copy.deepcopy(self)
        if round_ <= 1:
            return out
        for m in out.models:
            m.name = f"{m.run_name}-r{round_}"
        if out.train.pseudo_labels is None:
            out.train.pseudo_labels = pseudo_labels
        out.blend.models = [f"{m}-r{round_}" for m in self.blend.models]
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Stable hash of the resolved config, recorded next to every output."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def val_crop(self) -> int:
        """Side of the validation centre crops: ``train.val_crop``, else ``predict.crop``."""
        return self.train.val_crop or self.predict.crop

    def val_view(self) -> Literal["whole", "centre"]:
        """The first view of ``predict.tta``, the one validation scores: the whole crop for the
        ``full`` policies, else its centre crop at the network's input size."""
        return "whole" if self.predict.tta in ("full", "full_d4") else "centre"

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.run_name == name:
                return m
        raise ConfigError(f"no model named {name!r} in config {self.name!r}; "
                          f"known: {[m.run_name for m in self.models]}")


def section_digest(*sections: Any) -> str:
    """Stable hash of config sections: outputs record the settings that made them."""
    blob = json.dumps([dataclasses.asdict(s) if dataclasses.is_dataclass(s) and not isinstance(s, type) else s
                       for s in sections],
                      sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError("; ".join(errors))
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")


def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys and bad types raise ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def _check(cfg: Config) -> None:
    problem = cfg.simulate.external_problem() or cfg.blend.match.problem()
    if problem:
        raise ConfigError(problem)
    if cfg.folds.mode == "kfold" and cfg.folds.n_folds < 2:
        raise ConfigError("folds.n_folds must be >= 2 for kfold")
    if not 0.0 < cfg.folds.holdout_fraction < 1.0:
        raise ConfigError("folds.holdout_fraction must be in (0, 1)")
    if not 0.0 <= cfg.train.max_skip_fraction <= 1.0:
        raise ConfigError("train.max_skip_fraction must be in [0, 1]")
    if not 0.0 <= cfg.train.manip_prob <= 1.0:
        raise ConfigError("train.manip_prob must be in [0, 1]")
    if cfg.train.input_size % 2 or cfg.train.input_size < 8:
        raise ConfigError("train.input_size must be even (colour-filter grid) and >= 8")
    for m in cfg.models:
        if m.input_size is not None and (m.input_size % 2 or m.input_size < 8):
            raise ConfigError(f"models[{m.run_name}].input_size must be even (colour-filter grid) and >= 8, "
                              f"got {m.input_size}")
    if cfg.train.warmup_input_size is not None and (cfg.train.warmup_input_size % 2 or cfg.train.warmup_input_size < 8):
        raise ConfigError(f"train.warmup_input_size must be even (colour-filter grid) and >= 8, "
                          f"got {cfg.train.warmup_input_size}")
    if cfg.train.manip_prob > 0 and cfg.train.crop_factor * SMALLEST_TRAINING_SCALE < 1:
        # the smallest resize of a crop_factor x input crop must still cover the input
        raise ConfigError(f"train.crop_factor must be >= {1 / SMALLEST_TRAINING_SCALE:g} when manipulations are "
                          f"drawn (manip_prob > 0): a {SMALLEST_TRAINING_SCALE:g} resize of a "
                          f"{cfg.train.crop_factor}x crop is smaller than the input and would be padded")
    p = cfg.pseudo
    if p.per_class is not None and p.per_class < 1:
        raise ConfigError(f"pseudo.per_class must be >= 1, got {p.per_class}")
    if not 0.0 < p.fraction <= 1.0:
        raise ConfigError(f"pseudo.fraction must be in (0, 1], got {p.fraction}")
    if not 0.0 <= p.min_expected_precision <= 1.0:
        raise ConfigError(f"pseudo.min_expected_precision must be in [0, 1], got {p.min_expected_precision}")
    if cfg.train.val_every < 1:
        raise ConfigError(f"train.val_every must be >= 1, got {cfg.train.val_every}")
    inputs = {m.run_name: m.input_size or cfg.train.input_size for m in cfg.models}
    too_small = {run: size for run, size in inputs.items() if size > cfg.val_crop()}
    if cfg.val_view() == "centre" and too_small:
        where = "train.val_crop" if cfg.train.val_crop else "predict.crop"
        raise ConfigError(f"validation crops ({where}: {cfg.val_crop()} px) are smaller than the network input of "
                          + ", ".join(f"{run} ({size} px)" for run, size in too_small.items())
                          + "; raise predict.crop or train.val_crop, or lower train.input_size / models[].input_size")
    if cfg.predict.reduce not in REDUCTION_POWERS:
        raise ConfigError(f"predict.reduce: {cfg.predict.reduce!r} is not one of {list(REDUCTION_POWERS)}")
    if not 0.0 < cfg.identify.unknown_tpr <= 1.0:
        raise ConfigError(f"identify.unknown_tpr must be in (0, 1], got {cfg.identify.unknown_tpr}")
    names = [m.run_name for m in cfg.models]
    if len(set(names)) != len(names):
        raise ConfigError(f"models: duplicate run names {names}")
    if cfg.classes is not None and len(set(cfg.classes)) != len(cfg.classes):
        raise ConfigError("classes: duplicate class names")
    pc = cfg.blend.prnu
    if not 0.0 <= pc.min_clustered <= 1.0:
        raise ConfigError(f"blend.prnu.min_clustered must be in [0, 1], got {pc.min_clustered}")
    if not 0.5 <= pc.name_confidence <= 1.0:
        raise ConfigError(f"blend.prnu.name_confidence must be in [0.5, 1], got {pc.name_confidence}")
    if pc.name_draws < 1 or pc.min_cluster_size < 2 or pc.max_size_ratio <= 0:
        raise ConfigError("blend.prnu: name_draws must be >= 1, min_cluster_size >= 2 and max_size_ratio > 0")
    check_cluster(cfg.cluster)


def check_cluster(c: ClusterConfig, where: str = "cluster") -> None:
    """Also run on the values after the command line has overridden them."""
    if c.num_gpus < 0:
        raise ConfigError(f"{where}.num_gpus must be >= 0")
    if c.num_gpus > 1 and c.num_gpus != int(c.num_gpus):
        raise ConfigError(f"{where}.num_gpus: fractions are for sharing one GPU; above 1 use a whole number")
    for key in ("num_cpus", "slurm_time_min", "slurm_array_parallelism"):
        value = getattr(c, key)
        if value is not None and value < 1:
            raise ConfigError(f"{where}.{key} must be >= 1")
    for key in ("max_retries", "slurm_gpus_per_job", "slurm_max_requeues"):
        if getattr(c, key) < 0:
            raise ConfigError(f"{where}.{key} must be >= 0")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load and validate a YAML profile (None: all defaults). ``overrides`` use dotted keys."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    for key, value in (overrides or {}).items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    cfg = from_dict(Config, data, where=str(path or "config"))
    _check(cfg)
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)

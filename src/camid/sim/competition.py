"""The simulated competition (``camid simulate``) written in the exact Kaggle layout::

    OUT/train/<class>/<class>_<nnnn>.jpg       full-size JPEGs from device A of each model
    OUT/test/img_<7 hex>_{unalt,manip}.tif      centre crops of device-B photos (uint8 RGB TIFF)
    OUT/sample_submission.csv                   fname,camera (camera = first class)
    OUT/solution.csv                            fname,camera,manipulation (`none` for _unalt)
    OUT/simulate.json                           options, camera models, completion marker
    OUT/external/, external_truth.csv, ...      only with --external N: camid.sim.external_pool,
                                                whose simulate_with_pool writes both

The photos come from ``sim.camera``: train photos from device A of each model, test
photos from device B, as in the competition. Every image is seeded from (seed, class,
device, index), never from worker order, so the same options give byte-identical files
for any number of workers.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import cv2

from ..config import EXTERNAL_FIELDS, SimulateConfig
from ..data import images
from ..data.layout import SAMPLE_SUBMISSION, SIMULATE_MARKER, SOLUTION, TEST_DIR, TRAIN_DIR, claim_output
from ..data.testcrops import (
    make_test_crop,
    rotating_manipulation,
    test_fname,
    unique_names,
    write_answer_tables,
    write_test_crop,
)
from ..errors import SimulateError
from ..util.io import atomic_path, write_json
from ..util.log import stage_log
from ..util.pool import parallel_map
from .camera import S_NAMES, CameraModel, make_models, seeded_rng, shoot

# Bump when the generator (this module or sim.camera) changes, so an old dataset is not mistaken for a current one.
FORMAT_VERSION = 4  # 2: resizes by the exact factor (manipulations.resize); 3: calibrated PRNU strength;
# 4: temporal noise and PRNU calibrated on flat-fields too

# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class SimOptions(SimulateConfig):
    """Everything that determines the generated files (the worker count does not).

    The fields and defaults are the config's ``simulate`` section; this adds validation.
    """

    @classmethod
    def from_config(cls, cfg: SimulateConfig, **overrides: Any) -> SimOptions:
        values = {f.name: getattr(cfg, f.name) for f in fields(cls)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def validate(self) -> None:
        """Raise SimulateError with a one-line reason for options that cannot work."""
        if self.n_classes < 2:
            raise SimulateError(f"n_classes must be >= 2, got {self.n_classes}")
        if self.train_per_class < 1 or self.test_per_class < 1:
            raise SimulateError("train_per_class and test_per_class must be >= 1, got "
                                f"{self.train_per_class} and {self.test_per_class}")
        if self.width % 2 or self.height % 2:
            raise SimulateError(f"width and height must be even (2x2 colour-filter grid), "
                                f"got {self.width}x{self.height}")
        if self.test_crop < 16:
            raise SimulateError(f"test_crop must be >= 16, got {self.test_crop}")
        if min(self.width, self.height) < 2 * self.test_crop:
            # resize0.5 halves the full photo before the centre crop is taken.
            raise SimulateError(
                f"photos of {self.width}x{self.height} are too small for test_crop {self.test_crop}: "
                f"the resize0.5 manipulation needs both sides >= 2*test_crop = {2 * self.test_crop}")
        if self.seed < 0:
            raise SimulateError(f"seed must be >= 0, got {self.seed}")
        if self.n_classes * self.test_per_class * 2 > 16 ** 7 // 4:
            raise SimulateError("too many test images for unique 7-hex-digit names")
        problem = self.external_problem()
        if problem:
            raise SimulateError(problem)

    def to_dict(self) -> dict[str, int]:
        """The options that determine train/ and test/ (the marker's). The external pool has
        its own marker, so changing its size never invalidates the competition files."""
        return {k: v for k, v in asdict(self).items() if k not in EXTERNAL_FIELDS}


# --------------------------------------------------------------------------- the dataset


@dataclass(frozen=True)
class PlanItem:
    fname: str
    class_index: int
    photo_index: int  # index among device B's photos of this class
    manipulation: str  # "none" for _unalt


def make_test_plan(opts: SimOptions) -> list[PlanItem]:
    """Every test file: per class ``test_per_class`` unaltered and as many manipulated,
    the manipulations rotating over one global sequence so they are balanced overall and
    within each class; names are seeded random hex, unique."""
    n, t = opts.n_classes, opts.test_per_class
    names = unique_names(seeded_rng(opts.seed, S_NAMES), 2 * n * t)
    items = []
    for c in range(n):
        for j in range(t):
            k = 2 * (c * t + j)
            items.append(PlanItem(test_fname(names[k], "none"), c, j, "none"))
            manip = rotating_manipulation(c * t + j)
            items.append(PlanItem(test_fname(names[k + 1], manip), c, t + j, manip))
    return items


def train_fname(name: str, index: int) -> str:
    return f"{TRAIN_DIR}/{name}/{name}_{index:04d}.jpg"


_WORKER: dict[str, Any] = {}


def keep_heap() -> None:
    """Stop glibc from returning every large numpy temporary to the OS after each photo:
    re-faulting those pages cost ~15% of the run in kernel time. No-op elsewhere."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_trim_threshold, 1 << 30)
        libc.mallopt(m_mmap_threshold, 1 << 30)
    except (OSError, AttributeError):
        pass


def _init_worker(opts: SimOptions, models: list[CameraModel], out: str) -> None:
    cv2.setNumThreads(1)  # one process per core already
    keep_heap()
    _WORKER.update(opts=opts, models=models, out=Path(out))


def _run_job(job: tuple[str, Any]) -> str:
    kind, payload = job
    opts: SimOptions = _WORKER["opts"]
    out: Path = _WORKER["out"]
    if kind == "train":
        c, i = payload
        model = _WORKER["models"][c]
        data = shoot(model, "A", i, opts.width, opts.height, opts.seed)
        rel = train_fname(model.name, i)
        with atomic_path(out / rel) as tmp:
            tmp.write_bytes(data)
        return rel
    item: PlanItem = payload
    data = shoot(_WORKER["models"][item.class_index], "B", item.photo_index, opts.width, opts.height,
                 opts.seed)
    # The whole photo is manipulated, then centre-cropped (the simulated photos are small).
    crop = make_test_crop(images.decode_bytes(data), item.manipulation, opts.test_crop)
    return write_test_crop(out, item.fname, crop)


def _jobs(opts: SimOptions, plan: list[PlanItem]) -> list[tuple[str, Any]]:
    train = [("train", (c, i)) for c in range(opts.n_classes) for i in range(opts.train_per_class)]
    return train + [("test", item) for item in plan]


def _run_all(jobs: list[tuple[str, Any]], opts: SimOptions, models: list[CameraModel], out: Path,
             workers: int) -> None:
    for _ in parallel_map(_run_job, jobs, workers, "camid simulate", ordered=False, initializer=_init_worker,
                          initargs=(opts, models, str(out)), unit="img"):
        pass


MARKER = SIMULATE_MARKER
_OWNED = (TRAIN_DIR, TEST_DIR, SAMPLE_SUBMISSION, SOLUTION, MARKER)


def _marker_payload(opts: SimOptions, models: list[CameraModel], complete: bool) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "options": opts.to_dict(), "complete": complete,
            "classes": [m.name for m in models], "models": [asdict(m) for m in models]}


def _prepare_out(out: Path, opts: SimOptions, overwrite: bool) -> bool:
    """Decide what to do with an existing OUT. Returns True when it is already complete."""
    return claim_output(
        out, MARKER, _OWNED, "camid simulate", overwrite=overwrite, error=SimulateError,
        remedy="delete the folder and re-run",
        same=lambda m: m.get("options") == opts.to_dict() and m.get("format_version") == FORMAT_VERSION,
        mismatch=lambda m: f"{out} holds a simulated dataset with different options {m.get('options')} "
                           f"(format {m.get('format_version')}); pass --overwrite to replace it, "
                           "or choose another folder")


def simulate(out: str | Path, opts: SimOptions, workers: int | None = None,
             overwrite: bool = False) -> dict[str, Any]:
    """Write the simulated competition into ``out``; returns a summary (``skipped`` when
    ``out`` already holds a complete dataset for the same options). The external pool
    (``opts.external_per_class``) is not written here: ``external_pool.simulate_with_pool``."""
    opts.validate()
    out = Path(out)
    workers = max(1, int(workers or os.cpu_count() or 1))
    if _prepare_out(out, opts, overwrite):
        stage_log("simulate", f"{out} already holds a complete simulated dataset for these options; "
                              "skipped (pass --overwrite to regenerate)")
        return {"skipped": True, "out": str(out)}
    start = time.perf_counter()
    models = make_models(opts.n_classes, opts.seed)
    write_json(out / MARKER, _marker_payload(opts, models, complete=False))
    plan = make_test_plan(opts)
    stage_log("simulate", f"writing {opts.n_classes} classes x {opts.train_per_class} train photos "
                          f"({opts.width}x{opts.height}) and {len(plan)} test crops "
                          f"({opts.test_crop}x{opts.test_crop}) to {out} with {workers} worker(s)")
    _run_all(_jobs(opts, plan), opts, models, out, workers)
    _write_tables(out, plan, models)
    write_json(out / MARKER, _marker_payload(opts, models, complete=True))
    wall = time.perf_counter() - start
    n_train = opts.n_classes * opts.train_per_class
    stage_log("simulate", f"wrote {n_train} train JPEGs to {out / TRAIN_DIR}, {len(plan)} test TIFFs "
                          f"({len(plan) // 2} unalt + {len(plan) // 2} manip) to {out / TEST_DIR}, "
                          f"{SAMPLE_SUBMISSION}, {SOLUTION} and {MARKER} in {wall:.1f}s")
    return {"skipped": False, "out": str(out), "n_train": n_train, "n_test": len(plan),
            "classes": [m.name for m in models], "wall_s": wall}


def _write_tables(out: Path, plan: list[PlanItem], models: list[CameraModel]) -> None:
    write_answer_tables(out, [p.fname for p in plan], [models[p.class_index].name for p in plan],
                        [p.manipulation for p in plan], models[0].name)

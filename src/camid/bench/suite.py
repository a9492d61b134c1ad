"""Benchmarks (``camid bench``): speed-ups measured against their baselines, side by side in one run.

Sections (each row: baseline, faster variant, ratio):

- ``sample``: the training-sample pipeline (2x crop -> manipulation -> crop -> D4) on
  synthetic 12-megapixel quality-95 JPEGs, region decoding (``fastjpeg``) vs decoding
  the whole photo first. One process with one torch/OpenCV thread = one core, like a
  DataLoader worker. Rounds alternate baseline and fast on the same seeds (so both
  see the same load on a shared machine); the best round counts. Every fast sample is
  compared with its baseline sample, pixel for pixel.
- ``equalise``: the Hungarian solver vs the scalable min-cost-flow solver at 2,640
  (the test set) and 100,000 images (Hungarian cannot run there: its n x n matrix).
- ``stack``: time of one stacker bag (seeds x folds models) per learner on a synthetic
  OOF table, one thread.
- ``prnu``: the noise residual of one 512-px test crop (one thread), and the ``+prnu``
  clustering step on synthetic residuals shaped like the demo's and the Kaggle test set
  (160 + 160 crops of 256 px; 1,320 + 1,320 of 512 px with ``--quick`` off).
- ``backends`` (only with ``--only backends``): the job backends of ``train-all`` on a tiny
  config (camid_tiny at 32 px, 3 epochs of one step): seconds from submitting one job to
  its first training step (and to its process starting), and jobs/hour for 2 runs x 2
  folds, for the local queue, Ray (a local instance) and submitit's LocalExecutor.
- ``gpu`` (CUDA only): training images/s per backbone at 480 with bf16 autocast +
  channels-last vs fp32 NCHW (TF32 off), model FLOP utilisation against the GPU's
  dense bf16 peak, and TTA40 vs single-view inference images/s.

Writes ``bench.csv`` and ``bench.json`` (rows plus machine facts) under ``--out``.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..util.io import write_csv, write_json
from . import backends, equalise, gpu, prnu, sample, stack
from .common import Row

SECTIONS = ("sample", "equalise", "stack", "prnu", "gpu")
# Run only when asked for (`--only backends`): needs ray and submitit, and minutes.
OPTIONAL_SECTIONS = ("backends",)


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu,
            "cores": os.cpu_count(), "python": platform.python_version(), "gpu": "none"}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    with contextlib.suppress(OSError):
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    return info


def _fmt(v: float | None, ratio: bool = False) -> str:
    if v is None:
        return "-"
    if ratio:
        return f"{v:.1f}x"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def format_table(rows: Sequence[Row]) -> str:
    head = ("section", "what", "baseline", "base", "new", "unit", "ratio", "note")
    body = [(r.section, r.item, r.baseline, _fmt(r.baseline_value), _fmt(r.value), r.unit,
             _fmt(r.ratio, ratio=True), r.note) for r in rows]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head) - 1)]
    lines = []
    for cells in [head, *body]:
        lines.append("  ".join(str(c).ljust(wd) for c, wd in zip(cells, widths, strict=False)) + "  " + cells[-1])
        if cells is head:
            lines.append("-" * min(160, sum(widths) + 2 * len(widths) + 4))
    return "\n".join(lines)


def run(quick: bool, only: Sequence[str] = SECTIONS, backbones: Sequence[str] | None = None,
        peak_tflops: float | None = None) -> list[Row]:
    rows: list[Row] = []
    for section in (*SECTIONS, *OPTIONAL_SECTIONS):
        if section not in only:
            continue
        start = time.perf_counter()
        if section == "sample":
            with tempfile.TemporaryDirectory(prefix="camid-bench-") as tmp:
                rows += sample.bench_samples(quick, Path(tmp))
        elif section == "equalise":
            rows += equalise.bench_equalise(quick)
        elif section == "stack":
            rows += stack.bench_stack(quick)
        elif section == "prnu":
            rows += prnu.bench_prnu(quick)
        elif section == "backends":
            with tempfile.TemporaryDirectory(prefix="camid-bench-") as tmp:
                rows += backends.bench_backends(quick, Path(tmp))
        else:
            rows += gpu.gpu_rows(quick, backbones, peak_tflops)
        print(f"[camid bench] {section}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return rows


def write_results(out: Path, info: dict, rows: Sequence[Row]) -> None:
    """``bench.csv`` (one row per measurement) and ``bench.json`` (the rows plus machine facts)."""
    import pandas as pd

    write_csv(out / "bench.csv", pd.DataFrame([asdict(r) for r in rows]))
    write_json(out / "bench.json", {"machine": info, "rows": [asdict(r) for r in rows]})

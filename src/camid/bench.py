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
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from .util.io import write_csv, write_json

if TYPE_CHECKING:
    from .data.fastjpeg import DecodeCache

SECTIONS = ("sample", "equalise", "stack", "prnu", "gpu")
# Run only when asked for (`--only backends`): needs ray and submitit, and minutes.
OPTIONAL_SECTIONS = ("backends",)

# Dense (no sparsity) bf16 tensor-core peak in TFLOP/s, by a substring of the CUDA
# device name; first match wins, so the specific names come before the general ones.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("GH200", 989.0), ("H200", 989.0), ("H100", 989.0),
    ("H800", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
    ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("A30", 165.0),
)


@dataclass
class Row:
    section: str
    item: str
    baseline: str  # what the ratio is measured against
    baseline_value: float | None
    value: float | None
    unit: str
    ratio: float | None  # > 1: faster than the baseline
    note: str = ""


# ---------------------------------------------------------------- helpers

@contextlib.contextmanager
def one_core() -> Iterator[None]:
    """torch and OpenCV on one thread, as inside a DataLoader worker."""
    import cv2
    import torch

    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def synthetic_photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Photo-like content: smooth shading, texture, hard-edged shapes, blur, sensor noise."""
    import cv2

    rng = np.random.default_rng(seed)
    field = rng.uniform(0, 255, (h // 200 + 2, w // 200 + 2, 3)).astype(np.float32)
    img: np.ndarray = cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC)
    tex = rng.normal(0, 18, (h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)
    img += cv2.resize(tex, (w, h), interpolation=cv2.INTER_LINEAR)
    for _ in range(40):
        colour = [float(v) for v in rng.uniform(0, 255, 3)]
        radius = int(rng.integers(max(2, min(h, w) // 150), max(3, min(h, w) // 8)))
        cv2.circle(img, (int(rng.integers(w)), int(rng.integers(h))), radius, colour, -1)
    img = cv2.GaussianBlur(img, (0, 0), 1.0)
    img = img + 3.0 * rng.standard_normal((h, w, 3), dtype=np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


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


# ---------------------------------------------------------------- sample pipeline

def _full_region(path: Path, box: tuple[slice, slice]) -> np.ndarray:
    from .data.images import read_image

    return read_image(path)[box]


def _lazy_region(path: Path, box: tuple[slice, slice], cache: DecodeCache) -> np.ndarray:
    from .data import fastjpeg

    return np.asarray(fastjpeg.open_image(path, cache)[box])


def bench_samples(quick: bool, workdir: Path) -> list[Row]:
    from PIL import Image

    from .data import fastjpeg
    from .data.images import read_image
    from .data.samples import SampleSpec, training_sample

    if quick:
        h, w, size, n_images, rounds, per_round = 600, 800, 96, 2, 2, 4
    else:
        h, w, size, n_images, rounds, per_round = 3000, 4000, 480, 3, 5, 8
    spec = SampleSpec(input_size=size)  # recipe defaults: 2x crop, p=0.5 manipulation, D4
    if fastjpeg.libjpeg() is None:
        return [Row("sample", "training sample", "full decode", None, None, "samples/s/core", None,
                    "skipped: no libjpeg (v6.2 ABI) found for the lossless restart-marker copy")]
    rows = []
    for subsampling, label in ((2, "4:2:0"), (0, "4:4:4")):
        paths = []
        for i in range(n_images):
            path = workdir / f"photo{label.replace(':', '')}_{i}.jpg"
            Image.fromarray(synthetic_photo(h, w, seed=i)).save(path, quality=95, subsampling=subsampling)
            paths.append(path)
        mb = np.mean([p.stat().st_size for p in paths]) / 1e6
        cache = fastjpeg.DecodeCache(workdir / "cache")
        with one_core():
            t_full = min(_seconds(partial(read_image, p)) for p in paths)
            first = [_seconds(partial(fastjpeg.open_image, p, cache)) for p in paths]
            if not all(isinstance(fastjpeg.open_image(p, cache), fastjpeg.LazyCrop) for p in paths):
                raise RuntimeError("bench: the synthetic photos did not take the region-decoding path")
            base_t, fast_t, compared = [], [], 0
            for r in range(rounds):
                jobs = [(paths[(r * per_round + k) % n_images], r * per_round + k) for k in range(per_round)]
                start = time.perf_counter()
                ref = [training_sample(read_image(p), np.random.default_rng(s), spec) for p, s in jobs]
                base_t.append((time.perf_counter() - start) / per_round)
                start = time.perf_counter()
                got = [training_sample(fastjpeg.open_image(p, cache), np.random.default_rng(s), spec)
                       for p, s in jobs]
                fast_t.append((time.perf_counter() - start) / per_round)
                for (xa, fa), (xb, fb) in zip(ref, got, strict=True):
                    if fa != fb or not np.array_equal(xa.numpy(), xb.numpy()):
                        raise RuntimeError("bench: region-decoded sample differs from the full-decode sample")
                    compared += 1
            rng = np.random.default_rng(0)
            big = 2 * size
            full_t, region_t = [], []
            for r in range(rounds):  # decoding alone, alternating like the rounds above
                p = paths[r % n_images]
                y, x = int(rng.integers((h - big) // 2 + 1)) * 2, int(rng.integers((w - big) // 2 + 1)) * 2
                box = (slice(y, y + big), slice(x, x + big))
                full_t.append(_seconds(partial(_full_region, p, box)))
                region_t.append(_seconds(partial(_lazy_region, p, box, cache)))
            t_full, t_region = min(t_full, *full_t), min(region_t)
        tb, tf = min(base_t), min(fast_t)
        name = f"{w}x{h} q95 {label}"
        rows.append(Row("sample", f"training sample, {name} ({mb:.1f} MB)", "full decode + crop",
                        1 / tb, 1 / tf, "samples/s/core", tb / tf,
                        f"best of {rounds} interleaved rounds x {per_round}; median rounds "
                        f"{1 / np.median(base_t):.1f} vs {1 / np.median(fast_t):.1f}/s "
                        f"({np.median(base_t) / np.median(fast_t):.1f}x); "
                        f"{compared} samples pixel-identical"))
        rows.append(Row("sample", f"decode {big}x{big} region, {name}", "decode whole photo",
                        1 / t_full, 1 / t_region, "decodes/s/core", t_full / t_region,
                        f"best of {rounds}, alternating; restart-marker copy, region + {fastjpeg.MARGIN} px margin "
                        "decoded by Pillow"))
        t_first = float(np.mean(first))
        rows.append(Row("sample", f"first use of a photo, {name}", "full decode", 1 / t_full, 1 / t_first,
                        "photos/s/core", t_full / t_first,
                        f"once per photo: full decode + lossless restart-marker copy + check = {t_first:.2f} s; "
                        f"repaid after {max(1, int(np.ceil((t_first - tb) / max(tb - tf, 1e-9))))} samples "
                        "of that photo"))
    return rows


# ---------------------------------------------------------------- equalisation

def bench_equalise(quick: bool) -> list[Row]:
    from .level2 import equalise

    rows = []
    probs = equalise.synthetic_probs(2640, 10, seed=0)
    q = equalise.quotas(probs)
    timed: dict[int, float] = {}
    for n in ((2640,) if quick else (2640, 6000)):
        runs = [equalise.benchmark(n, methods=("hungarian", "flow")) for _ in range(1 if quick else 3)]
        res = {m: min(float(r[m]) for r in runs) for m in ("hungarian", "flow")}  # type: ignore[arg-type]
        timed[n] = res["hungarian"]
        if n == 2640:
            same = abs(equalise.assignment_cost(probs, equalise.hungarian(probs, q))
                       - equalise.assignment_cost(probs, equalise.flow(probs, q)))
            rows.append(Row("equalise", "2,640 images x 10 classes", "hungarian (linear_sum_assignment)",
                            1 / timed[n], 1 / res["flow"], "solves/s", timed[n] / res["flow"],
                            f"flow solver; same optimum (cost difference {same:.1e})"))
    big = equalise.benchmark(100_000, methods=("greedy", "flow"))
    note = "Hungarian not run: its 100,000^2 cost matrix is 80 GB"
    if 6000 in timed:
        k = np.log(timed[6000] / timed[2640]) / np.log(6000 / 2640)
        note += f"; t ~ n^{k:.2f} from 2,640 and 6,000 gives ~{timed[6000] * (100_000 / 6000) ** k:.0f} s (estimate)"
    flow_s, greedy_s = big["flow"], big["greedy"]
    if flow_s is None or greedy_s is None:
        raise RuntimeError("bench: equalise.benchmark did not time the flow and greedy solvers")
    rows.append(Row("equalise", "100,000 images x 10 classes", "hungarian", None, 1 / flow_s,
                    "solves/s", None, note + f"; flow {flow_s:.2f} s, greedy {greedy_s:.2f} s"))
    return rows


# ---------------------------------------------------------------- PRNU


def bench_prnu(quick: bool) -> list[Row]:
    from .forensics import prnu
    from .level2 import prnu_cluster

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    with one_core():
        prnu.query_residual(img)  # warm-up: wavelet tables, FFT plans
        secs = min(_seconds(lambda: prnu.query_residual(img)) for _ in range(3))
    rows = [Row("prnu", "noise residual of a 512-px crop", "", None, 1 / secs, "crops/s/core", None,
                f"{secs * 1000:.0f} ms per crop (wavelet denoiser + zero-mean + DFT Wiener)")]
    for n, side, k in ((160, 256, 10),) + (() if quick else ((1320, 512, 10),)):
        # k devices, n unaltered + n manipulated crops each sharing its device's pattern
        pattern = rng.standard_normal((k, side, side), dtype=np.float32)
        res = np.empty((2 * n, side, side), np.float32)  # filled in place: the Kaggle size is 2.8 GB
        for i in range(2 * n):
            res[i] = rng.standard_normal((side, side), dtype=np.float32)
            res[i] += 0.15 * pattern[i % k]
        manip = (np.arange(2 * n) >= n).astype(int)
        probs = np.full((2 * n, k), 1.0 / k)
        secs = _seconds(partial(prnu_cluster.cluster_test, res, manip, probs))
        rows.append(Row("prnu", f"+prnu clustering, {n} + {n} crops of {side} px", "", None, 2 * n / secs,
                        "crops/s", None, f"{secs:.1f} s for the step (residuals cached separately)"))
    return rows


# ---------------------------------------------------------------- stackers

def bench_stack(quick: bool) -> list[Row]:
    from .config import StackConfig
    from .data.layout import TRAIN_DIR
    from .level2 import stack
    from .level2.equalise import synthetic_probs

    n_img, n_test, variants, n_models, k = (120, 60, 3, 2, 10) if quick else (800, 400, 3, 4, 10)
    rng = np.random.default_rng(0)
    y_img = np.arange(n_img) % k
    fnames = np.repeat([f"{TRAIN_DIR}/c{c}/img{i}.jpg" for i, c in enumerate(y_img)], variants)
    fnames = np.concatenate([fnames, [f"img_{i}_unalt.tif" for i in range(n_test)]])
    truth = np.concatenate([np.repeat(y_img, variants), rng.integers(0, k, n_test)])
    n = len(truth)
    is_test = np.arange(n) >= n - n_test
    y = np.where(is_test, 0, truth)  # test labels are unknown to the stacker (dummy 0, as stack.run)
    # each model: noisy logits with a bonus on the true class
    arrays = [synthetic_probs(n, k, seed=m + 1, strength=2.0, labels=truth) for m in range(n_models)]
    manip = np.tile(np.r_[0, np.ones(variants - 1)], n_img)
    X = stack.features(arrays, np.r_[manip, np.zeros(n_test)], log=True)
    w = np.ones(n)
    # One thread, like the sample section: on a shared machine extra OpenMP threads spin
    # against other work and the timing measures the neighbours instead of the stacker.
    cfg = StackConfig(seeds=1 if quick else 2, folds=2 if quick else 5, rounds=10 if quick else 100,
                      mlp_epochs=2 if quick else 20, threads=1)
    rows = []
    for kind in ("xgb", "lgb", "mlp"):
        start = time.perf_counter()
        _, info = stack.bag(kind, X, y, w, fnames, is_test, k, cfg, base_seed=0)
        sec = time.perf_counter() - start
        acc = float(np.mean(info["fold_accuracy"]))
        rows.append(Row("stack", f"{kind} bag, {info['models']} models", "-", None, sec, "s per bag", None,
                        f"{n - n_test} OOF rows ({n_img} images x {variants} variants) + {n_test} test, "
                        f"{X.shape[1]} features, {cfg.rounds} rounds/{cfg.mlp_epochs} epochs, 1 thread; "
                        f"{sec / info['models']:.2f} s/model; fold accuracy {acc:.3f}"))
    return rows


# ---------------------------------------------------------------- GPU

def peak_bf16_tflops(device_name: str) -> float | None:
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


def forward_flops(model, size: int, device) -> float:
    """Forward FLOPs of one image at ``size`` (FlopCounterMode: convolutions and matmuls)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    x = torch.zeros(1, 3, size, size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, torch.zeros(1, device=device))
    return float(counter.get_total_flops())


def train_rate(model, size: int, batch: int, steps: int, warmup: int, fast: bool, device) -> float:
    """Training images/s: fp32 NCHW (fast=False) or bf16 autocast + channels-last (fast=True)."""
    import torch
    import torch.nn.functional as F

    model.train()
    if fast:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device, generator=g)
    manip = (torch.rand(batch, device=device, generator=g) < 0.5).float()
    labels = torch.randint(0, model.num_classes, (batch,), device=device, generator=g)

    def step() -> None:
        inp = model.normalize(x)
        if fast:
            inp = inp.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            loss = F.cross_entropy(model(inp, manip), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    model.to(memory_format=torch.contiguous_format)
    return batch * steps / (time.perf_counter() - start)


def infer_rate(model, tta: str, images: int, reps: int, device, crop: int = 512, size: int = 480) -> float:
    """Inference images/s on ``crop`` test images with a TTA policy (bf16 + channels-last)."""
    import torch

    from .infer.tta import make_views, predict_views

    model.eval().to(memory_format=torch.channels_last)
    views = make_views(tta, crop, crop, size)
    x = torch.randint(0, 256, (images, 3, crop, crop), dtype=torch.uint8, device=device)
    mv = torch.zeros(images * len(views), device=device)

    def forward(batch):
        inp = model.normalize(batch).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return model(inp, mv)

    with torch.inference_mode():
        predict_views(forward, x, views)  # warm-up
        _sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            predict_views(forward, x, views)
        _sync(device)
    model.to(memory_format=torch.contiguous_format)
    return images * reps / (time.perf_counter() - start)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_gpu(device, backbones: Sequence[str], size: int = 480, batch: int = 32, steps: int = 10,
              warmup: int = 3, tta_images: int = 4, peak_tflops: float | None = None) -> list[Row]:
    """Training and inference rows per backbone on ``device`` (tests run it on the CPU, tiny)."""
    import torch

    from .models.classifier import build_model

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_tflops if peak_tflops is not None else peak_bf16_tflops(name)
    rows = []
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        torch.backends.cudnn.benchmark = True
        for backbone in backbones:
            torch.manual_seed(0)
            model = build_model(backbone, num_classes=10, pretrained=False, weights_dir=None).to(device)
            flops = 3 * forward_flops(model, size, device)  # forward + backward (2x forward)
            b = batch
            while True:
                try:
                    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
                    slow = train_rate(model, size, b, steps, warmup, fast=False, device=device)
                    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32[:2]
                    fast = train_rate(model, size, b, steps, warmup, fast=True, device=device)
                    break
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    if b <= 2:
                        raise
                    b //= 2
            mfu = fast * flops / (peak * 1e12) if peak else None
            mfu_note = (f"MFU {100 * mfu:.1f}% of {peak:.0f} TFLOP/s dense bf16 ({name})" if mfu is not None
                        else f"MFU n/a: no bf16 peak known for {name!r} (use --peak-tflops)")
            rows.append(Row("gpu", f"train {backbone} @{size}, batch {b}", "fp32 NCHW (TF32 off)", slow, fast,
                            "images/s", fast / slow,
                            f"bf16 autocast + channels-last; {mfu_note}; FLOPs/image = 3 x forward = "
                            f"{flops / 1e9:.1f} GFLOP (FlopCounterMode @{size})"))
            single = infer_rate(model, "none", tta_images * 8, max(2, steps // 2), device, size=size,
                                crop=size + 32)
            tta40 = infer_rate(model, "tta40", tta_images, max(2, steps // 2), device, size=size, crop=size + 32)
            rows.append(Row("gpu", f"infer {backbone} {size + 32}->{size}", "TTA40 (5 crops x D4)", tta40, single,
                            "images/s", single / tta40, "single centre view vs 40 views per image; bf16 + "
                            "channels-last; TTA40 costs the ratio in throughput"))
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = tf32
    return rows


def gpu_rows(quick: bool, backbones: Sequence[str] | None, peak_tflops: float | None) -> list[Row]:
    import torch

    from .models.registry import get_spec, list_backbones

    if not torch.cuda.is_available():
        return [Row("gpu", what, "-", None, None, "", None, "skipped (no CUDA)") for what in
                ("training images/s per backbone: bf16 + channels-last vs fp32 NCHW",
                 "model FLOP utilisation (MFU)", "inference: TTA40 vs single view")]
    recipe = [n for n in list_backbones() if get_spec(n).family == "pretrainedmodels"]
    names = list(backbones) if backbones else recipe
    if quick and not backbones:
        names = names[:1]
    return bench_gpu(torch.device("cuda"), names, steps=3 if quick else 10, warmup=2 if quick else 3,
                     peak_tflops=peak_tflops)


# ---------------------------------------------------------------- job backends

BACKEND_RUNS = {"local": [], "ray": ["--backend", "ray"],
                "submitit-local": ["--backend", "slurm", "--slurm-executor", "local"]}
_SUBMITTED = {"local": "start ", "ray": "submitted ", "submitit-local": "submitted "}
_FIRST_STEP = re.compile(r"fold \d+ on cpu: \d+ epochs")  # the trainer's line just before its first step
_PROCESS = "[camid node] "  # ray and slurm jobs: written just before the job's process starts


class _Timeline:
    """When the first job's process started and took its first training step: seen in the
    driver's output (read line by line; the local queue streams its one job there) or in a
    job's log (polled every 20 ms), in ``time.time()`` seconds."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.seen: dict[str, float] = {}
        self.lines: list[tuple[float, str]] = []
        self.done = threading.Event()
        self.poller = threading.Thread(target=self._poll, daemon=True)
        self.poller.start()

    def line(self, text: str, at: float) -> None:
        self.lines.append((at, text))
        if _FIRST_STEP.search(text):
            self.seen.setdefault("step", at)

    def _poll(self) -> None:
        from .train.rundir import RunDir
        from .workspace import Workspace

        ws = Workspace(self.workdir, self.workdir)
        while not self.done.is_set():
            now = time.time()
            for log in (RunDir(d).job_log for run in ("a", "b") for d in ws.fold_dirs(run).values()):
                try:
                    text = log.read_text(errors="replace")
                except FileNotFoundError:
                    continue
                if _PROCESS in text:
                    self.seen.setdefault("process", now)
                if _FIRST_STEP.search(text):
                    self.seen.setdefault("step", now)
            time.sleep(0.02)


def _camid_line(args: Sequence[str], env: dict[str, str], timeline: _Timeline) -> tuple[int, float]:
    """Run ``camid ARGS``, feeding its output to ``timeline``; (exit code, seconds)."""
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "camid.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    for text in proc.stdout:
        timeline.line(text, time.time())
    proc.wait()
    timeline.done.set()
    timeline.poller.join()
    return proc.returncode, time.time() - t0


def _tiny_world(root: Path, env: dict[str, str]) -> tuple[Path, Path]:
    data = root / "data"
    subprocess.run([sys.executable, "-m", "camid.cli", "simulate", str(data), "--n-classes", "3",
                    "--train-per-class", "3", "--test-per-class", "2", "--width", "128", "--height", "96",
                    "--test-crop", "32", "--workers", "1"], check=True, env=env, stdout=subprocess.DEVNULL)
    train = {"input_size": 32, "batch_size": 8, "epochs": 3, "steps_per_epoch": 1, "lr": 0.002, "keep_top": 1,
             "val_crop": 32, "num_workers": 0, "orientation": "flips"}
    models = [{"backbone": "camid_tiny", "name": r, "dropout": 0.0} for r in ("a", "b")]
    configs = []
    for name, folds in (("one", {"mode": "holdout", "seed": 1}), ("grid", {"n_folds": 2, "seed": 1})):
        cfg = {"name": name, "data_dir": str(data), "device": "cpu", "seed": 7, "folds": folds,
               "models": models[:1] if name == "one" else models, "train": train}
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        configs.append(path)
    return configs[0], configs[1]


def bench_backends(quick: bool, root: Path, reps: int = 3) -> list[Row]:
    """Scheduling overhead per job and jobs/hour of the three backends on the tiny config."""
    import statistics

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    one, grid = _tiny_world(root, env)
    reps = 1 if quick else reps
    rows: list[Row] = []
    base: dict[str, float] = {}
    for backend, flags in BACKEND_RUNS.items():
        overhead, process, starts = [], [], []
        for rep in range(reps):
            wd = root / f"{backend}-one-{rep}"
            subprocess.run([sys.executable, "-m", "camid.cli", "folds", "--config", str(one), "--workdir", str(wd)],
                           check=True, env=env, stdout=subprocess.DEVNULL)
            tl = _Timeline(wd)
            t0 = time.time()
            rc, _ = _camid_line(["train-all", "--config", str(one), "--workdir", str(wd), *flags], env, tl)
            submitted = next(at for at, text in tl.lines if f"] {_SUBMITTED[backend]}" in text)
            step = tl.seen.get("step")
            if rc or step is None:
                raise RuntimeError(f"{backend}: train-all failed:\n" + "".join(t for _, t in tl.lines[-20:]))
            overhead.append(step - submitted)
            process.append(tl.seen.get("process", submitted) - submitted)
            starts.append(submitted - t0)
        base.setdefault("local", statistics.median(overhead))
        ratio = base["local"] / statistics.median(overhead) if backend != "local" else None
        rows.append(Row("backends", f"submit to first training step, one job, {backend}", "local queue",
                        base["local"] if backend != "local" else None, statistics.median(overhead), "s", ratio,
                        f"median of {reps}: {', '.join(f'{v:.1f}' for v in overhead)} s; of which submit to the "
                        f"job's process: {statistics.median(process):.1f} s; the command's own start before "
                        f"submitting: {statistics.median(starts):.1f} s"))
    for backend, flags in BACKEND_RUNS.items():
        wd = root / f"{backend}-grid"
        subprocess.run([sys.executable, "-m", "camid.cli", "folds", "--config", str(grid), "--workdir", str(wd)],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        tl = _Timeline(wd)
        rc, seconds = _camid_line(["train-all", "--config", str(grid), "--workdir", str(wd), *flags], env, tl)
        if rc:
            raise RuntimeError(f"{backend}: train-all failed:\n" + "".join(t for _, t in tl.lines[-20:]))
        submitted = next(at for at, text in tl.lines if f"] {_SUBMITTED[backend]}" in text)
        last = max(at for at, text in tl.lines if "] finished " in text)
        rate = 4 / seconds * 3600
        base.setdefault("local-rate", rate)
        rows.append(Row("backends", f"jobs/hour, 2 runs x 2 folds, {backend}", "local queue",
                        base["local-rate"] if backend != "local" else None, rate, "jobs/h",
                        rate / base["local-rate"] if backend != "local" else None,
                        f"{seconds:.0f} s for the command; {last - submitted:.0f} s from submission to the last job "
                        f"done ({4 / (last - submitted) * 3600:.0f} jobs/h)"))
    return rows


# ---------------------------------------------------------------- table and CLI

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
                rows += bench_samples(quick, Path(tmp))
        elif section == "equalise":
            rows += bench_equalise(quick)
        elif section == "stack":
            rows += bench_stack(quick)
        elif section == "prnu":
            rows += bench_prnu(quick)
        elif section == "backends":
            with tempfile.TemporaryDirectory(prefix="camid-bench-") as tmp:
                rows += bench_backends(quick, Path(tmp))
        else:
            rows += gpu_rows(quick, backbones, peak_tflops)
        print(f"[camid bench] {section}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return rows


def write_results(out: Path, info: dict, rows: Sequence[Row]) -> None:
    """``bench.csv`` (one row per measurement) and ``bench.json`` (the rows plus machine facts)."""
    import pandas as pd

    write_csv(out / "bench.csv", pd.DataFrame([asdict(r) for r in rows]))
    write_json(out / "bench.json", {"machine": info, "rows": [asdict(r) for r in rows]})

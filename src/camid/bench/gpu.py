"""``camid bench`` section ``gpu`` (CUDA only): training images/s per backbone at 480 with bf16
autocast + channels-last vs fp32 NCHW (TF32 off), model FLOP utilisation against the GPU's dense
bf16 peak, and TTA40 vs single-view inference images/s."""
from __future__ import annotations

import time
from collections.abc import Sequence

from .common import Row

# Dense (no sparsity) bf16 tensor-core peak in TFLOP/s, by a substring of the CUDA
# device name; first match wins, so the specific names come before the general ones.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("GH200", 989.0), ("H200", 989.0), ("H100", 989.0),
    ("H800", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
    ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("A30", 165.0),
)


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

    from ..infer.tta import make_views, predict_views

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

    from ..models.classifier import build_model

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

    from ..models.registry import get_spec, list_backbones

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

"""`camid bench`: every row is printed and written; the GPU code path runs (tiny, on the CPU)."""
import json

import pandas as pd
import pytest
import torch

from camid.bench import equalise, gpu, suite
from camid.cli import main as cli_main
from camid.level2 import equalise as eq


def test_quick_bench_prints_every_row(tmp_path, capsys):
    assert cli_main(["bench", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for text in ("training sample", "4:2:0", "4:4:4", "pixel-identical", "decode 192x192 region",
                 "first use of a photo", "2,640 images", "100,000 images", "xgb bag", "lgb bag", "mlp bag",
                 "noise residual of a 512-px crop", "+prnu clustering, 160 + 160"):
        assert text in out, text
    table = pd.read_csv(tmp_path / "bench.csv")
    assert set(table["section"]) == set(suite.SECTIONS)
    sample = table[table["section"] == "sample"]
    assert (sample["ratio"] > 0).all() and sample["value"].notna().all()
    if not torch.cuda.is_available():
        gpu = table[table["section"] == "gpu"]
        assert len(gpu) == 3 and (gpu["note"] == "skipped (no CUDA)").all()
        assert out.count("skipped (no CUDA)") == 3
    info = json.loads((tmp_path / "bench.json").read_text())
    assert info["machine"]["cores"] >= 1 and info["machine"]["command"] == "camid bench --quick"
    assert len(info["rows"]) == len(table)


def test_gpu_rows_code_path_on_cpu():
    """The CUDA section's measurements, run tiny on the CPU so CI exercises them."""
    rows = gpu.bench_gpu(torch.device("cpu"), ["camid_tiny"], size=64, batch=4, steps=1, warmup=1,
                         tta_images=1, peak_tflops=1.0)
    train, infer = rows
    assert train.ratio > 0 and train.value > 0 and train.baseline_value > 0
    assert "MFU" in train.note and "GFLOP" in train.note
    assert infer.ratio > 0 and "40 views" in infer.note


def test_forward_flops_counts_convolutions():
    from camid.models.classifier import build_model

    model = build_model("camid_tiny", num_classes=10, pretrained=False, weights_dir=None)
    f64, f128 = gpu.forward_flops(model, 64, "cpu"), gpu.forward_flops(model, 128, "cpu")
    assert f64 > 0 and f128 == pytest.approx(4 * f64, rel=0.02)  # convolutions scale with pixels


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
                                        ("NVIDIA H200", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                        ("NVIDIA L40S", 362.0), ("NVIDIA L4", 121.0), ("Tesla T4", None)])
def test_peak_table(name, peak):
    assert gpu.peak_bf16_tflops(name) == peak


def test_benchmark_reports_seconds():
    res = equalise.benchmark(300, k=5)
    assert set(res) == set(eq.METHODS) and all(v >= 0 for v in res.values())
    assert equalise.benchmark(300, k=5, hungarian_max=100)["hungarian"] is None

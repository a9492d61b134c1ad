"""PRNU baseline: residual shapes and invariances, post-processing, detectors, ROC, and
device verification on a small simulated competition (`camid prnu evaluate`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from camid import cli
from camid.errors import DataError
from camid.forensics import prnu
from camid.sim import camera
from camid.sim import competition as sim
from camid.workspace import Workspace
from conftest import strong_sensor_noise, with_prnu

REPO = Path(__file__).resolve().parents[1]
SMALL = sim.SimOptions(n_classes=4, train_per_class=10, test_per_class=3, width=256, height=256,
                       test_crop=128, seed=11)


def scene(h: int = 128, w: int = 128, seed: int = 0, texture: float = 4.0) -> np.ndarray:
    """A smooth, unsaturated colour scene with some texture (values ~40-200)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 120 + 50 * np.sin(x / 9 + rng.uniform(0, 6)) * np.cos(y / 13 + rng.uniform(0, 6))
    tex = rng.normal(0, texture, (h, w)).astype(np.float32)
    return np.stack([base + tex, 0.9 * base + tex, 1.1 * base + tex], axis=-1)


def shoot(k: np.ndarray, seed: int) -> np.ndarray:
    """A photo of a synthetic device with multiplicative PRNU ``k`` and shot noise."""
    h, w = k.shape
    return with_prnu(scene(h, w, seed=seed), k, seed)


@pytest.fixture(scope="module")
def device_k() -> np.ndarray:
    return (np.random.default_rng(5).standard_normal((128, 128)) * 0.03).astype(np.float32)


@pytest.mark.parametrize("shape", [(64, 96, 3), (67, 45, 3), (50, 70)])
@pytest.mark.parametrize("channels", ["rgb", "luma"])
def test_residual_has_the_input_shape(shape, channels):
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    w = prnu.noise_residual(img, prnu.PrnuSettings(channels=channels))
    expected = shape[:2] if channels == "luma" or len(shape) == 2 else shape
    assert w.shape == expected and w.dtype == np.float32 and np.isfinite(w).all()
    assert prnu.postprocess(w).shape == shape[:2]


def test_residual_of_a_flat_image_is_zero():
    for value in (0, 37, 128, 255):
        w = prnu.noise_residual(np.full((64, 80, 3), value, np.uint8))
        assert np.abs(w).max() < 1e-3, value


def test_residual_removes_the_scene_and_keeps_the_noise():
    clean = scene(seed=3, texture=0.0)
    noise = np.random.default_rng(4).normal(0, 3, clean.shape).astype(np.float32)
    w = prnu.noise_residual(clean + noise)
    assert np.corrcoef(w.ravel(), noise.ravel())[0, 1] > 0.6
    assert np.abs(w).std() < 0.5 * clean.std()


def test_postprocessed_rows_and_columns_are_zero_mean():
    w = prnu.noise_residual(np.random.default_rng(1).integers(0, 256, (96, 128, 3), dtype=np.uint8))
    w = w + np.linspace(0, 5, 96, dtype=np.float32)[:, None, None]  # a row pattern to remove
    out = prnu.postprocess(w)
    assert np.abs(out.mean(axis=0)).max() < 1e-4 * out.std() + 1e-5
    assert np.abs(out.mean(axis=1)).max() < 1e-4 * out.std() + 1e-5
    zm = prnu.zero_mean_total(w[..., 0])
    for dy in (0, 1):
        for dx in (0, 1):  # each colour-filter sub-lattice too
            assert np.abs(zm[dy::2, dx::2].mean(axis=1)).max() < 1e-4


def test_wiener_dft_flattens_a_periodic_artefact_and_keeps_white_noise():
    rng = np.random.default_rng(2)
    noise = rng.normal(0, 1, (128, 128)).astype(np.float32)
    blocks = np.tile(np.r_[np.ones(4), -np.ones(4)].astype(np.float32), 16)[None, :] * 2.0  # an 8-px period
    out = prnu.wiener_dft(noise + blocks)
    assert np.corrcoef(out.ravel(), noise.ravel())[0, 1] > 0.9
    assert abs(np.corrcoef(out.ravel(), np.broadcast_to(blocks, out.shape).ravel())[0, 1]) < 0.2


def test_detection_is_invariant_to_brightness_offset_and_scale(device_k):
    k = prnu.estimate_fingerprint([shoot(device_k, s) for s in range(8)])
    query = shoot(device_k, 100)
    base = prnu.match(*prnu.query_residual(query), k)[0]
    assert base > 0.1  # the synthetic device is detected at all
    brighter = np.clip(query.astype(np.int16) + 20, 0, 255).astype(np.uint8)
    darker = np.round(query * 0.8).astype(np.uint8)
    for variant in (brighter, darker):
        rho = prnu.match(*prnu.query_residual(variant), k)[0]
        assert abs(rho - base) < 0.15 * base, (rho, base)
        r_base, _ = prnu.query_residual(query)
        r_var, _ = prnu.query_residual(variant)
        assert prnu.ncc(r_base, r_var) > 0.9


def test_same_device_scores_above_another_device(device_k):
    other = (np.random.default_rng(6).standard_normal(device_k.shape) * 0.03).astype(np.float32)
    k = prnu.estimate_fingerprint([shoot(device_k, s) for s in range(8)])
    same = [prnu.match(*prnu.query_residual(shoot(device_k, 50 + s)), k) for s in range(3)]
    diff = [prnu.match(*prnu.query_residual(shoot(other, 50 + s)), k) for s in range(3)]
    assert min(p for _, p in same) > 60 > max(abs(p) for _, p in diff)  # 60: the usual PCE threshold
    assert min(c for c, _ in same) > max(c for c, _ in diff)


def test_residual_ncc_pairs_separate_same_device_crops_from_other_devices(device_k):
    """Centre crops of photos line up on the sensor: same-device pairs correlate, others do not."""
    other = (np.random.default_rng(6).standard_normal(device_k.shape) * 0.03).astype(np.float32)
    photos = [shoot(device_k, s) for s in range(3)] + [shoot(other, 10 + s) for s in range(2)]
    residuals = prnu.crop_residuals(photos, 96)
    assert residuals.shape == (5, 96, 96)
    pairs = prnu.residual_ncc_pairs(residuals, ["a", "a", "a", "b", "b"])
    assert len(pairs) == 10 and pairs["same_device"].sum() == 3 + 1
    same, diff = pairs.loc[pairs["same_device"], "ncc"], pairs.loc[~pairs["same_device"], "ncc"]
    assert same.min() > 0.05 > diff.abs().max()
    with pytest.raises(DataError, match="2 residuals but 1 device"):
        prnu.residual_ncc_pairs(residuals[:2], ["a"])


def test_pce_at_zero_shift():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((64, 64))
    assert prnu.pce(a, a) > 1000 and prnu.pce(a, -a) < -1000
    nulls = [prnu.pce(a, rng.standard_normal((64, 64))) for _ in range(20)]
    assert max(abs(v) for v in nulls) < 20  # ~chi-square(1) under no match
    assert prnu.ncc(a, 2 * a + 5) == pytest.approx(1.0)


def test_li_enhancement_attenuates_strong_components_and_keeps_signs():
    n = np.array([-30.0, -7.0, -1.0, 0.0, 1.0, 7.0, 30.0], np.float32)
    e = prnu.li_enhance(n, 7.0)
    assert np.all(np.abs(e) <= 1) and np.all(np.sign(e[n != 0]) == np.sign(n[n != 0]))
    assert abs(e[0]) < 0.01 and abs(e[2]) > 0.98 and e[5] == pytest.approx(np.exp(-0.5))
    w = prnu.noise_residual(scene(), prnu.PrnuSettings(enhance="li"))
    assert w.shape == (128, 128, 3) and np.isfinite(w).all()


def test_roc_auc_eer():
    fpr, tpr, _ = prnu.roc_curve(np.array([3.0, 4.0, 1.0, 2.0]), np.array([1, 1, 0, 0], bool))
    assert prnu.auc(fpr, tpr) == 1.0 and prnu.eer(fpr, tpr) == 0.0
    r = prnu.roc_summary(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0, 1, 0, 1], bool))
    assert r["auc"] == pytest.approx(0.75) and r["eer"] == pytest.approx(0.5)
    ties = prnu.roc_summary(np.ones(6), np.array([1, 0, 1, 0, 1, 0], bool))
    assert ties["auc"] == pytest.approx(0.5) and ties["eer"] == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    s, y = rng.normal(size=4000), rng.random(4000) < 0.3
    assert abs(prnu.roc_summary(s, y)["auc"] - 0.5) < 0.05


def test_query_residual_of_a_512px_photo_is_a_zero_mean_grey_pattern():
    """(Its speed is a benchmark row: `camid bench --only prnu`.)"""
    img = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    w, grey = prnu.query_residual(img)
    assert w.shape == grey.shape == (512, 512) and w.dtype == np.float32
    assert np.isfinite(w).all() and abs(float(w.mean())) < 0.01 * float(np.abs(w).mean())


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prnu") / "data"
    with strong_sensor_noise():  # the device-vs-model contrast needs PRNU in every class
        sim.simulate(out, SMALL, workers=1)  # the patch is this process's: no pool workers
    return out


def test_prnu_command_separates_devices_on_simulated_data(simulated, tmp_path, capsys):
    out = tmp_path / "report"
    rc = cli.main(["prnu", "evaluate", "--config", str(REPO / "configs" / "demo.yaml"), "--data", str(simulated),
                   "--workdir", str(tmp_path), "--out", str(out), "--n-ref", "7", "--n-query", "3",
                   "--workers", "2"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    device, model = summary["device/pce"], summary["model/pce"]
    with capsys.disabled():  # reported numbers (pytest -s)
        print(f"\nPRNU simulated (4 classes, 7 refs, 128 px): device AUC {device['auc']:.3f} "
              f"EER {device['eer']:.3f}; model AUC {model['auc']:.3f} EER {model['eer']:.3f}")
    assert device["auc"] > 0.8  # the sensor fingerprint links a photo to its device
    assert device["auc"] > model["auc"] + 0.2  # ... but not to the other device of its model
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 4 * (3 + 3) * 4  # (held-out A + B crops) x fingerprints
    assert set(scores["kind"]) == {prnu.KIND_A, prnu.KIND_B}
    assert not scores.loc[scores["kind"] == prnu.KIND_B, "same_device"].any()
    assert (out / "roc.png").stat().st_size > 0 and (out / "roc.csv").is_file()
    assert "same device vs other" in capsys.readouterr().out


def _write_perfect_cnn(simulated: Path, path: Path) -> list[str]:
    """A probability table at ``path`` whose test rows put 0.7 on the true class; returns the classes."""
    from camid.infer.table import write_table
    classes = camera.class_names(SMALL.n_classes)
    sol = pd.read_csv(simulated / "solution.csv")
    probs = np.full((len(sol), len(classes)), 0.1)
    probs[np.arange(len(sol)), [classes.index(c) for c in sol["camera"]]] = 0.7  # a perfect CNN
    table = pd.DataFrame(probs / probs.sum(1, keepdims=True), columns=classes)
    table = pd.concat([pd.DataFrame({"fname": sol["fname"], "split": "test", "fold": -1, "manip": 0,
                                     "aug": "unknown", "label": ""}), table], axis=1)
    write_table(table, path, classes)
    return classes


def test_cnn_comparison_reads_the_oof_table_on_the_same_crops(simulated, tmp_path):
    classes = _write_perfect_cnn(simulated, tmp_path / "oof" / "cnn.tta10.parquet")
    plan = prnu.make_plan(simulated, classes, 7, 3, None)
    res, curves = prnu.cnn_comparison(Workspace(tmp_path, simulated), plan)
    assert res["cnn.tta10"]["auc"] == 1.0 and res["cnn.tta10"]["accuracy"] == 1.0
    assert res["cnn.tta10"]["positives"] == 4 * 3 and res["cnn.tta10"]["negatives"] == 4 * 3 * 3
    assert curves[0]["statistic"].iloc[0] == "cnn:cnn.tta10"


def test_cnn_comparison_reads_the_tables_of_its_own_round_only(simulated, tmp_path):
    """oof/ holds every round's tables side by side; round 1 must not mix in round 2's."""
    for name in ("cnn.tta10", "cnn-r2.tta10", "cnn-r2.none"):
        classes = _write_perfect_cnn(simulated, tmp_path / "oof" / f"{name}.parquet")
    plan = prnu.make_plan(simulated, classes, 7, 3, None)
    first, _ = prnu.cnn_comparison(Workspace(tmp_path, simulated), plan)
    second, _ = prnu.cnn_comparison(Workspace(tmp_path, simulated, round=2), plan)
    assert list(first) == ["cnn.tta10"]
    assert list(second) == ["cnn-r2.none", "cnn-r2.tta10"]


def test_prnu_without_solution_is_a_clear_error(simulated, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train").symlink_to(simulated / "train")
    rc = cli.main(["prnu", "evaluate", "--config", str(REPO / "configs" / "demo.yaml"), "--data", str(data),
                   "--workdir", str(tmp_path), "--workers", "1"])
    assert rc == 2 and "solution.csv" in capsys.readouterr().err

"""`camid simulate`: layout, determinism, balance, camera constraints, validation, re-runs."""
from __future__ import annotations

import collections
import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from camid import cli
from camid.data import crops, images
from camid.data.manipulations import MANIPULATION_NAMES, apply
from camid.forensics import prnu
from camid.sim import camera
from camid.sim import competition as sim

TINY = sim.SimOptions(n_classes=4, train_per_class=3, test_per_class=4, width=256, height=192,
                      test_crop=64, seed=7)
NAME_RE = re.compile(r"^img_[0-9a-f]{7}_(unalt|manip)\.tif$")


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "a"
    summary = sim.simulate(out, TINY, workers=2)
    assert summary["skipped"] is False
    return out


def test_class_names():
    assert camera.class_names(3) == ["HTC-1-M7", "iPhone-4s", "iPhone-6"]
    names = camera.class_names(12)
    assert names[:10] == list(camera.KAGGLE_CLASSES) and names[9] == "Sony-NEX-7"
    assert names[10:] == ["Camera-11", "Camera-12"]


def test_layout(dataset: Path):
    classes = camera.class_names(TINY.n_classes)
    assert sorted(p.name for p in (dataset / "train").iterdir()) == sorted(classes)
    for name in classes:
        photos = sorted((dataset / "train" / name).glob("*.jpg"))
        assert len(photos) == TINY.train_per_class
        for p in photos:
            with Image.open(p) as im:
                assert im.format == "JPEG" and im.mode == "RGB"
                assert im.size == (TINY.width, TINY.height)
    tests = sorted((dataset / "test").iterdir())
    assert len(tests) == 2 * TINY.n_classes * TINY.test_per_class
    assert all(NAME_RE.match(p.name) for p in tests), [p.name for p in tests if not NAME_RE.match(p.name)]
    assert len({p.name[4:11] for p in tests}) == len(tests)  # hex ids unique across both halves
    for p in tests:
        with Image.open(p) as im:
            assert im.format == "TIFF" and im.mode == "RGB"
            assert im.size == (TINY.test_crop, TINY.test_crop)
    assert not list(dataset.rglob("*.tmp")), "temporary files left behind"
    marker = json.loads((dataset / sim.MARKER).read_text())
    assert marker["complete"] is True and marker["options"] == TINY.to_dict()


def test_csvs_are_balanced(dataset: Path):
    tests = sorted(p.name for p in (dataset / "test").iterdir())
    sample = pd.read_csv(dataset / "sample_submission.csv")
    assert list(sample.columns) == ["fname", "camera"]
    assert sample.fname.tolist() == tests
    assert set(sample.camera) == {camera.class_names(TINY.n_classes)[0]}
    sol = pd.read_csv(dataset / "solution.csv")
    assert list(sol.columns) == ["fname", "camera", "manipulation"]
    assert sol.fname.tolist() == tests
    manip = sol.fname.str.endswith("_manip.tif")
    assert (sol.manipulation[~manip] == "none").all()
    assert set(sol.manipulation[manip]) <= set(MANIPULATION_NAMES)
    for half in (manip, ~manip):
        counts = sol[half].camera.value_counts()
        assert set(counts.index) == set(camera.class_names(TINY.n_classes))
        assert (counts == TINY.test_per_class).all()
    overall = collections.Counter(sol.manipulation[manip])
    assert set(overall) == set(MANIPULATION_NAMES)  # 16 manipulated crops: every one, twice
    assert max(overall.values()) - min(overall.values()) <= 1
    for _, group in sol[manip].groupby("camera"):
        per_class = collections.Counter(group.manipulation)
        assert max(per_class.values()) <= -(-TINY.test_per_class // len(MANIPULATION_NAMES))


@pytest.mark.parametrize("n,t", [(10, 132), (3, 5), (7, 13)])
def test_manipulation_rotation_is_balanced(n: int, t: int):
    plan = sim.make_test_plan(sim.SimOptions(n_classes=n, test_per_class=t))
    manips = [p for p in plan if p.manipulation != "none"]
    assert len(manips) == n * t and len(plan) == 2 * n * t
    overall = collections.Counter(p.manipulation for p in manips)
    assert max(overall.values()) - min(overall.values()) <= 1
    for c in range(n):
        per_class = collections.Counter(p.manipulation for p in manips if p.class_index == c)
        counts = [per_class.get(m, 0) for m in MANIPULATION_NAMES]
        assert max(counts) - min(counts) <= 1
    assert len({p.fname for p in plan}) == len(plan)
    # unaltered and manipulated crops come from different device-B photos
    for c in range(n):
        idx = [p.photo_index for p in plan if p.class_index == c]
        assert sorted(idx) == list(range(2 * t))


def test_byte_identical_across_runs_and_worker_counts(dataset: Path, tmp_path: Path):
    sim.simulate(tmp_path / "b", TINY, workers=1)
    assert _hashes(dataset) == _hashes(tmp_path / "b")


def test_other_seed_gives_other_data(tmp_path: Path):
    one = sim.SimOptions(n_classes=2, train_per_class=1, test_per_class=1, width=96, height=64,
                         test_crop=32, seed=3)
    two = sim.SimOptions(**{**one.to_dict(), "seed": 4})
    sim.simulate(tmp_path / "a", one, workers=1)
    sim.simulate(tmp_path / "b", two, workers=1)
    jpg = "train/HTC-1-M7/HTC-1-M7_0000.jpg"
    assert (tmp_path / "a" / jpg).read_bytes() != (tmp_path / "b" / jpg).read_bytes()
    names = [{p.name for p in (tmp_path / d / "test").iterdir()} for d in "ab"]
    assert not names[0] & names[1]


def test_manipulated_crop_is_taken_after_manipulating_the_full_photo(dataset: Path):
    models = camera.make_models(TINY.n_classes, TINY.seed)
    plan = sim.make_test_plan(TINY)
    item = next(p for p in plan if p.manipulation == "resize0.5")
    data = camera.shoot(models[item.class_index], "B", item.photo_index, TINY.width, TINY.height, TINY.seed)
    with Image.open(io.BytesIO(data)) as im:
        full = np.asarray(im.convert("RGB"))
    expected = crops.centre_crop(apply(full, "resize0.5"), TINY.test_crop)
    with Image.open(dataset / "test" / item.fname) as im:
        got = np.asarray(im)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("seed", [0, 1, 2018])
@pytest.mark.parametrize("n", [2, 3, 4, 5, 7, 10, 13, 23])
def test_no_single_discrete_cue_identifies_a_class(n: int, seed: int):
    models = camera.make_models(n, seed)
    assert [m.name for m in models] == camera.class_names(n)
    for key, pool in camera.DISCRETE_CHOICES.items():
        counts = collections.Counter(getattr(m, key) for m in models)
        assert set(counts) <= set(pool)
        assert min(counts.values()) >= 2, (key, counts)
    combos = {tuple(getattr(m, k) for k in camera.DISCRETE_CHOICES) for m in models}
    if n >= 4:  # only the combination identifies the model
        assert len(combos) == n
    # continuous settings differ between any two models
    assert len({(m.gamma, m.sharpen_amount, m.ccm) for m in models}) == n


def test_models_use_every_family_when_there_are_enough_classes():
    models = camera.make_models(10, 2018)
    assert {m.cfa for m in models} == set(camera.CFA_PATTERNS)
    assert {m.demosaic for m in models} == set(camera.DEMOSAIC_ALGORITHMS)
    assert {m.subsampling for m in models} == set(camera.SUBSAMPLINGS)
    assert camera.make_models(10, 2018) == models  # deterministic
    # per-class continuous settings do not depend on how many classes there are
    assert camera.make_models(12, 2018)[3].ccm == models[3].ccm


def test_devices_of_one_model_have_different_prnu():
    h, w = 96, 128
    assert camera.prnu_level(1, 5) > camera.PRNU_NONE_STD  # a model whose sensors carry PRNU
    a_dev, b_dev = camera.make_device(1, "A", 5), camera.make_device(1, "B", 5)
    assert (a_dev.prnu_std, a_dev.read_noise) != (b_dev.prnu_std, b_dev.read_noise)
    ka = camera.prnu(5, 1, "A", h, w, a_dev.prnu_std)
    kb = camera.prnu(5, 1, "B", h, w, b_dev.prnu_std)
    assert ka.shape == (h, w) and ka.dtype == np.float32
    lo, hi = camera.PRNU_LEVELS
    spread = camera.PRNU_DEVICE_SPREAD
    assert abs(ka.std() - a_dev.prnu_std) < 1e-4 and lo * (1 - spread) <= ka.std() <= hi * (1 + spread)
    assert abs(np.corrcoef(ka.ravel(), kb.ravel())[0, 1]) < 0.1
    np.testing.assert_array_equal(ka, camera.prnu(5, 1, "A", h, w, a_dev.prnu_std))  # shared by its photos
    other_model = camera.prnu(5, 3, "A", h, w, a_dev.prnu_std)
    assert abs(np.corrcoef(ka.ravel(), other_model.ravel())[0, 1]) < 0.1


def _flat_field_ncc(model: camera.CameraModel, seed: int, shots: int) -> pd.DataFrame:
    """Same-device NCC of 256-px mid-grey flat-fields of device B (cheap: no scene)."""
    residuals = [prnu.crop_residuals([images.decode_bytes(camera.flat_field(model, "B", i, 256, seed))], 256)[0]
                 for i in range(shots)]
    return prnu.residual_ncc_pairs(np.stack(residuals), [model.name] * shots)


def test_one_model_in_every_five_has_no_usable_prnu():
    """Computational-photography phones show no PRNU (issue #21): one seeded model per block of
    five classes; its flat-fields do not correlate, another model's do."""
    lo, hi = camera.PRNU_LEVELS
    for seed in (0, 1, 2018):
        levels = np.array([camera.prnu_level(c, seed) for c in range(20)])
        assert ((levels == camera.PRNU_NONE_STD).reshape(4, 5).sum(axis=1) == 1).all()
        assert ((levels[levels != camera.PRNU_NONE_STD] >= lo) & (levels[levels != camera.PRNU_NONE_STD] <= hi)).all()
        assert camera.prnu_level(7, seed) == levels[7]  # deterministic
    models = camera.make_models(5, 2018)
    none = [m for m in models if camera.prnu_level(m.index, 2018) == camera.PRNU_NONE_STD]
    some = [m for m in models if camera.prnu_level(m.index, 2018) != camera.PRNU_NONE_STD]
    assert len(none) == 1
    assert abs(_flat_field_ncc(none[0], 2018, 4)["ncc"].median()) < 0.004
    assert _flat_field_ncc(some[0], 2018, 4)["ncc"].median() > 0.008


def test_flat_fields_correlate_as_much_as_real_ones():
    """Issue #21: where no scene leaks into the residual, the same-device NCC of two real
    flat-fields is 0.013-0.047 per device (median 0.025; BENCHMARKS.md, "Sensor noise: real vs
    simulated"). Temporal noise too weak against PRNU gave the simulator 0.057-0.241."""
    medians = [_flat_field_ncc(m, 2018, 4)["ncc"].median() for m in camera.make_models(10, 2018)
               if camera.prnu_level(m.index, 2018) != camera.PRNU_NONE_STD]
    assert len(medians) == 8
    assert min(medians) >= 0.008 and max(medians) <= 0.055
    assert 0.015 <= float(np.median(medians)) <= 0.04


def test_same_device_ncc_of_test_crops_is_in_the_real_range():
    """Issue #21: the NCC of the residuals of two 256-px unaltered test crops of one device is
    0.000-0.018 on real natural photos, median about 0.005 (BENCHMARKS.md, "Sensor noise: real
    vs simulated"); the old simulator gave a median of 0.011 with devices up to 0.038."""
    seed, photos = 2018, 4
    models = camera.make_models(5, seed)
    residuals, devices = [], []
    for m in models:
        for i in range(photos):
            img = images.decode_bytes(camera.shoot(m, "B", i, 768, 576, seed))  # the demo's photo size
            residuals.append(prnu.crop_residuals([img], 256)[0])
            devices.append(m.name)
    pairs = prnu.residual_ncc_pairs(np.stack(residuals), devices)
    same = pairs[pairs["same_device"]]
    assert len(same) == len(models) * photos * (photos - 1) // 2
    assert 0.004 <= same["ncc"].median() <= 0.011
    assert same.groupby("device_i")["ncc"].median().max() < 0.02  # no device several times too strong
    assert abs(pairs.loc[~pairs["same_device"], "ncc"].median()) < 0.002


@pytest.mark.parametrize("pattern", camera.CFA_PATTERNS)
@pytest.mark.parametrize("algorithm", camera.DEMOSAIC_ALGORITHMS)
def test_demosaic_reconstructs_smooth_images(pattern: str, algorithm: str):
    yy, xx = np.mgrid[0:40, 0:48].astype(np.float32)
    rgb = np.stack([0.2 + 0.01 * xx, 0.3 + 0.005 * yy, 0.5 - 0.004 * (xx + yy)], axis=2).astype(np.float32)
    mosaic = camera.mosaic(rgb, pattern)
    masks = camera.cfa_masks(pattern, 40, 48)
    assert (masks["R"].sum(), masks["G"].sum(), masks["B"].sum()) == (480, 960, 480)
    for c in "RGB":
        np.testing.assert_array_equal(mosaic[masks[c]], rgb[..., "RGB".index(c)][masks[c]])
    out = camera.demosaic(mosaic, pattern, algorithm)
    assert out.shape == rgb.shape and out.dtype == np.float32
    assert np.abs(out - rgb)[3:-3, 3:-3].max() < 1e-3  # exact on linear ramps away from borders


def test_shot_is_a_uint8_photo_with_the_model_jpeg_settings():
    model = camera.make_models(4, 1)[0]
    data = camera.shoot(model, "A", 0, 128, 96, 1)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG" and im.size == (128, 96)
        layers = {"4:4:4": ((1, 1), (1, 1), (1, 1)), "4:2:2": ((2, 1), (1, 1), (1, 1)),
                  "4:2:0": ((2, 2), (1, 1), (1, 1))}[model.subsampling]
        assert tuple((s[1], s[2]) for s in im.layer) == layers
        arr = np.asarray(im)
    assert arr.std() > 5  # not a blank frame
    assert camera.shoot(model, "A", 0, 128, 96, 1) == data
    assert camera.shoot(model, "B", 0, 128, 96, 1) != data


@pytest.mark.parametrize("change,needle", [
    ({"n_classes": 1}, "n_classes"),
    ({"train_per_class": 0}, "train_per_class"),
    ({"test_per_class": 0}, "test_per_class"),
    ({"width": 255}, "even"),
    ({"test_crop": 8}, "test_crop"),
    ({"test_crop": 100}, "resize0.5"),  # 192 < 2 * 100
    ({"seed": -1}, "seed"),
])
def test_invalid_options_are_rejected(change: dict, needle: str, tmp_path: Path):
    opts = sim.SimOptions(**{**TINY.to_dict(), **change})
    with pytest.raises(sim.SimulateError, match=needle):
        sim.simulate(tmp_path / "out", opts, workers=1)
    assert not (tmp_path / "out").exists()


def test_cli_reports_errors_in_one_line(tmp_path: Path, capsys):
    rc = cli.main(["simulate", str(tmp_path / "o"), "--width", "256", "--height", "192", "--test-crop", "128"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("camid simulate: error:") and "2*test_crop" in err and "\n" not in err


def test_cli_config_and_overrides(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("simulate:\n  n_classes: 3\n  train_per_class: 1\n  test_per_class: 1\n"
                   "  width: 96\n  height: 64\n  test_crop: 32\n  seed: 11\n")
    out = tmp_path / "o"
    assert cli.main(["simulate", str(out), "--config", str(cfg), "--n-classes", "2", "--workers", "1"]) == 0
    options = json.loads((out / sim.MARKER).read_text())["options"]
    assert options == {"n_classes": 2, "train_per_class": 1, "test_per_class": 1, "width": 96,
                       "height": 64, "test_crop": 32, "seed": 11}
    assert sorted(p.name for p in (out / "train").iterdir()) == ["HTC-1-M7", "iPhone-4s"]


SMALL = sim.SimOptions(n_classes=2, train_per_class=1, test_per_class=1, width=96, height=64,
                       test_crop=32, seed=3)


def test_rerun_skips_refuses_and_overwrites(tmp_path: Path, capsys):
    out = tmp_path / "o"
    sim.simulate(out, SMALL, workers=1)
    before = _hashes(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert sim.simulate(out, SMALL, workers=1)["skipped"] is True
    assert "skipped" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == mtimes  # nothing rewritten
    other = sim.SimOptions(**{**SMALL.to_dict(), "seed": 4})
    with pytest.raises(sim.SimulateError, match="--overwrite"):
        sim.simulate(out, other, workers=1)
    assert _hashes(out) == before  # refusing touched nothing
    assert sim.simulate(out, other, workers=1, overwrite=True)["skipped"] is False
    after = _hashes(out)
    assert after != before and len(after) == len(before)  # old test crops removed, not mixed in
    assert json.loads((out / sim.MARKER).read_text())["options"]["seed"] == 4


def test_interrupted_run_is_redone(tmp_path: Path):
    out = tmp_path / "o"
    sim.simulate(out, SMALL, workers=1)
    marker = json.loads((out / sim.MARKER).read_text())
    marker["complete"] = False
    (out / sim.MARKER).write_text(json.dumps(marker))
    (out / "test" / "img_0000000_unalt.tif").write_bytes(b"partial leftover")
    assert sim.simulate(out, SMALL, workers=1)["skipped"] is False
    assert not (out / "test" / "img_0000000_unalt.tif").exists()
    assert json.loads((out / sim.MARKER).read_text())["complete"] is True


def test_refuses_a_file_as_output(tmp_path: Path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(sim.SimulateError, match="not a folder"):
        sim.simulate(tmp_path / "f", SMALL, workers=1)


def test_refuses_a_folder_it_did_not_write(tmp_path: Path):
    out = tmp_path / "kaggle"
    (out / "train").mkdir(parents=True)
    (out / "train" / "keep.jpg").write_bytes(b"x")
    for overwrite in (False, True):
        with pytest.raises(sim.SimulateError, match="not written by"):
            sim.simulate(out, SMALL, workers=1, overwrite=overwrite)
    assert (out / "train" / "keep.jpg").read_bytes() == b"x"

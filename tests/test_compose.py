"""`camid compose` (your own photos as a competition), the shared test-crop function, device-grouped folds."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from camid import errors
from camid.cli import main as cli_main
from camid.config import Config, load_config
from camid.data import crops, folds, layout, testcrops
from camid.data.compose import ComposeOptions, Photo, compose, one_device_each, one_test_device_per_class
from camid.data.manipulations import MANIPULATION_NAMES, apply
from camid.level2.strategies import one_device_per_class
from camid.sim import camera
from camid.sim import competition as sim
from conftest import SHARED, write_jpeg

CROP = 32  # window 64
OPTS = ComposeOptions(crop=CROP, test_fraction=0.4, seed=5)
NAME_RE = re.compile(r"^img_[0-9a-f]{7}_(unalt|manip)\.tif$")


def _sources(root: Path) -> list[Path]:
    """Three classes: `multi` (3 devices, in a manifest), `single` (manifest, one device, two scenes)
    and a `<class>/*` folder whose Dresden-style names give two devices of `Cam_X`."""
    rows = []
    for d in range(3):
        for i in range(3):
            path = write_jpeg(root / "m" / f"multi_{d}_{i}.jpg", h=80, w=96, seed=10 * d + i)
            rows.append({"file": f"m/{path.name}", "camera": "multi", "device": f"multi-d{d}", "scene": "flatfield"})
    for i in range(6):
        path = write_jpeg(root / "s" / f"single_{i}.jpg", h=72, w=88, seed=100 + i)
        rows.append({"file": f"s/{path.name}", "camera": "single", "device": "",
                     "scene": "natural" if i % 2 else "flatfield"})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    for d in range(2):
        for i in range(3):
            write_jpeg(root / "folder" / "Cam_X" / f"Cam_X_{d}_{100 + i}.JPG", h=70, w=90, seed=200 + 10 * d + i)
    return [manifest, root / "folder"]


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "compose.json"}


@pytest.fixture
def composed(tmp_path: Path) -> tuple[Path, list[Path]]:
    sources = _sources(tmp_path / "src")
    compose(sources, tmp_path / "out", OPTS)
    return tmp_path / "out", sources


def test_layout_and_answer_tables_match_the_test_folder(composed):
    out, _ = composed
    tests = sorted(p.name for p in (out / "test").iterdir())
    assert tests and all(NAME_RE.match(n) for n in tests)
    for name in tests:
        with Image.open(out / "test" / name) as im:
            assert im.size == (CROP, CROP) and im.mode == "RGB"
    solution = pd.read_csv(out / layout.SOLUTION)
    sample = pd.read_csv(out / layout.SAMPLE_SUBMISSION)
    info = pd.read_csv(out / layout.TEST_INFO_FILE, keep_default_na=False)
    assert sorted(solution["fname"]) == sorted(sample["fname"]) == sorted(info["fname"]) == tests
    assert list(sample.columns) == ["fname", "camera"] and set(sample["camera"]) == {"Cam_X"}
    # halves: one _unalt and one _manip crop per test photo, the manipulations rotating over the 8
    assert (solution["fname"].str.endswith("_unalt.tif") == (solution["manipulation"] == "none")).all()
    assert (info.groupby("source").size() == 2).all()
    manips = info.loc[info["manipulation"] != "none", "manipulation"]
    assert set(manips) <= set(MANIPULATION_NAMES) and manips.value_counts().max() <= -(-len(manips) // 8)
    assert set(layout.scan_test(out)["fname"]) == set(tests)


def test_training_photos_are_the_original_bytes_and_devices_are_listed(composed):
    out, _ = composed
    devices = pd.read_csv(out / layout.DEVICES_FILE, keep_default_na=False)
    _, scan = layout.scan_train(out)
    assert sorted(scan.table["fname"]) == sorted(devices["fname"])
    for r in devices.to_dict("records"):
        assert (out / r["fname"]).read_bytes() == Path(r["source"]).read_bytes()
        assert r["fname"].split("/")[1] == r["class"]
    assert set(devices.loc[devices["class"] == "Cam_X", "device"]) <= {"Cam_X_0", "Cam_X_1"}


def test_split_never_shares_a_photo_and_is_device_disjoint_where_it_can(composed):
    out, _ = composed
    devices = pd.read_csv(out / layout.DEVICES_FILE, keep_default_na=False)
    info = pd.read_csv(out / layout.TEST_INFO_FILE, keep_default_na=False)
    train_src, test_src = set(devices["source"]), set(info["source"])
    assert not train_src & test_src
    for cls in ("multi", "Cam_X"):  # >= 2 devices: no device on both sides
        train_dev = set(devices.loc[devices["class"] == cls, "device"])
        test_dev = set(info.loc[info["camera"] == cls, "device"])
        assert test_dev and train_dev and not train_dev & test_dev
        assert not info.loc[info["camera"] == cls, "device_seen"].any()
    single = info[info["camera"] == "single"]
    assert len(single) and single["device_seen"].all()
    assert set(single["scene"]) == {"natural", "flatfield"}  # stratified by scene


def test_compose_is_deterministic_for_a_seed(composed, tmp_path):
    out, sources = composed
    compose(sources, tmp_path / "again", OPTS)
    assert _hashes(out) == _hashes(tmp_path / "again")
    compose(sources, tmp_path / "other", ComposeOptions(crop=CROP, test_fraction=0.4, seed=6))
    assert _hashes(out) != _hashes(tmp_path / "other")


def test_named_test_devices_and_a_class_left_without_training_photos(tmp_path):
    sources = _sources(tmp_path / "src")
    compose(sources, tmp_path / "a", ComposeOptions(crop=CROP, test_devices=("multi-d0", "multi-d2", "Cam_X_1")))
    info = pd.read_csv(tmp_path / "a" / layout.TEST_INFO_FILE, keep_default_na=False)
    assert set(info.loc[info["camera"] == "multi", "device"]) == {"multi-d0", "multi-d2"}
    assert set(info.loc[info["camera"] == "Cam_X", "device"]) == {"Cam_X_1"}
    compose(sources, tmp_path / "d", ComposeOptions(crop=CROP, test_devices=("Cam_X_1",)))
    info = pd.read_csv(tmp_path / "d" / layout.TEST_INFO_FILE, keep_default_na=False)
    assert info.loc[info["camera"] == "multi", "device"].nunique() == 1  # not named: one seeded device
    with pytest.raises(errors.DataError, match="multi has no training photo"):
        compose(sources, tmp_path / "b", ComposeOptions(crop=CROP, test_devices=("multi-d0", "multi-d1", "multi-d2")))
    with pytest.raises(errors.UsageError, match="not devices of the input"):
        compose(sources, tmp_path / "c", ComposeOptions(crop=CROP, test_devices=("nope",)))


def test_bad_photos_are_reported_and_skipped(tmp_path, capsys):
    sources = _sources(tmp_path / "src")
    single = tmp_path / "src" / "s"
    (single / "corrupt.jpg").write_bytes(b"not a jpeg at all")
    good = (single / "single_0.jpg").read_bytes()
    (single / "truncated.jpg").write_bytes(good[: len(good) // 2])
    write_jpeg(single / "small.jpg", h=40, w=48, seed=9)  # below the 64 px window: may train, never test
    manifest = pd.read_csv(sources[0], keep_default_na=False)
    extra = pd.DataFrame([{"file": f"s/{n}", "camera": "single", "device": "", "scene": "natural"}
                          for n in ("corrupt.jpg", "truncated.jpg", "small.jpg", "missing.jpg")])
    pd.concat([manifest, extra]).to_csv(sources[0], index=False)
    summary = compose(sources, tmp_path / "out", OPTS)
    skipped = {Path(p).name: reason for p, reason in summary["skipped"]}
    assert set(skipped) == {"corrupt.jpg", "truncated.jpg", "missing.jpg"}
    assert "truncated" in skipped["truncated.jpg"] or "corrupt" in skipped["truncated.jpg"]
    log = capsys.readouterr().out
    assert all(f"skipped {single / n}: " in log for n in skipped)
    info = pd.read_csv(tmp_path / "out" / layout.TEST_INFO_FILE, keep_default_na=False)
    assert not info["source"].str.endswith("small.jpg").any()
    marker = json.loads((tmp_path / "out" / "compose.json").read_text())
    assert marker["complete"] and len(marker["skipped"]) == 3


def test_wrong_inputs_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"path": ["a.jpg"], "model": ["x"]}).to_csv(bad, index=False)
    with pytest.raises(errors.DataError, match="missing column"):
        compose([bad], tmp_path / "o1", OPTS)
    (tmp_path / "flat").mkdir()
    write_jpeg(tmp_path / "flat" / "a.jpg")
    with pytest.raises(errors.DataError, match="no class folders"):
        compose([tmp_path / "flat"], tmp_path / "o2", OPTS)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("mine")
    sources = _sources(tmp_path / "src")
    assert cli_main(["compose", *map(str, sources), "--out", str(tmp_path / "full"), "--crop", "32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0]


def test_shared_test_crop_equals_the_simulators_previous_crop():
    photo = np.random.default_rng(0).integers(0, 256, (150, 170, 3), dtype=np.uint8)
    for name in ("none", *MANIPULATION_NAMES):  # the simulator's code before data.testcrops
        before = np.ascontiguousarray(crops.centre_crop(apply(photo, name), 64))
        np.testing.assert_array_equal(testcrops.make_test_crop(photo, name, 64), before)


def test_simulator_test_plan_names_are_unchanged():
    opts = sim.SimOptions(n_classes=3, test_per_class=5, seed=11)
    rng = camera.seeded_rng(opts.seed, 7)  # the name stream (_S_NAMES), drawn as before data.testcrops
    names: list[str] = []
    while len(names) < 30:
        for v in rng.integers(0, 16 ** 7, size=30 - len(names)):
            if f"{int(v):07x}" not in names:
                names.append(f"{int(v):07x}")
    plan = sim.make_test_plan(opts)
    assert [p.fname for p in plan] == [f"img_{n}_{'unalt' if i % 2 == 0 else 'manip'}.tif"
                                       for i, n in enumerate(names)]
    assert [p.manipulation for p in plan[1::2]] == [MANIPULATION_NAMES[k % 8] for k in range(15)]


def test_windowed_crop_is_the_manipulated_centre_window():
    photo = np.random.default_rng(1).integers(0, 256, (300, 260, 3), dtype=np.uint8)
    y, x = testcrops.window_origin(300, 260, 128)
    assert y % 16 == 0 and x % 16 == 0
    window = photo[y:y + 128, x:x + 128]
    got = testcrops.make_test_crop(photo, "resize0.5", 64, window=128)
    np.testing.assert_array_equal(got, apply(window, "resize0.5"))
    np.testing.assert_array_equal(testcrops.make_test_crop(photo, "none", 64, window=128), window[32:96, 32:96])


def _device_table() -> pd.DataFrame:
    rows = [{"fname": f"train/x/{d}_{i}.jpg", "path": "", "label": "x", "source": "train", "device": d}
            for d in ("x0", "x1", "x2") for i in range(4)]
    rows += [{"fname": f"train/y/{i}.jpg", "path": "", "label": "y", "source": "train", "device": "y0"}
             for i in range(9)]
    rows += [{"fname": f"train/z/{i}.jpg", "path": "", "label": "z", "source": "train", "device": ""}
             for i in range(6)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("n_folds", [2, 3])
def test_a_fold_never_trains_on_a_device_it_validates(n_folds):
    f = folds.make_folds(folds.group_by_device(_device_table()), "kfold", n_folds, seed=3, group_col="group")
    x = f[f["label"] == "x"]
    assert (x["case"] == folds.CASE_DEVICE).all()
    assert (f.loc[f["label"] != "x", "case"] == folds.CASE_PHOTO).all()
    for k in range(n_folds):
        val, train = set(x.loc[x.fold == k, "device"]), set(x.loc[x.fold != k, "device"])
        assert not val & train and train
    assert x.groupby("device")["fold"].nunique().eq(1).all()
    y = f[f["label"] == "y"]  # one device: photo-grouped, spread over every fold
    assert set(y["fold"]) == set(range(n_folds))


def test_photo_grouping_keeps_the_old_folds():
    t = _device_table()
    old = folds.make_folds(t.drop(columns="device"), "kfold", 3, seed=3)
    new = folds.make_folds(folds.group_by_device(t, "photo"), "kfold", 3, seed=3, group_col="group")
    assert old["fold"].tolist() == new["fold"].tolist()
    assert (new["case"] == folds.CASE_PHOTO).all()
    with pytest.raises(errors.DataError, match="no class has photos of two known devices"):
        folds.group_by_device(t[t["label"] != "x"], "device")


def test_folds_command_groups_a_composed_folder_by_device(composed, tmp_path):
    out, _ = composed
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("folds: {n_folds: 2, group: auto}\n")
    assert cli_main(["folds", "--config", str(cfg), "--data", str(out), "--workdir", str(tmp_path / "w")]) == 0
    f = folds.read_folds(tmp_path / "w" / "models" / "folds.csv")
    # `multi` keeps 2 training devices (one went to test): device-grouped; the others one each
    assert set(f.loc[f["label"] == "multi", "case"]) == {folds.CASE_DEVICE}
    assert set(f.loc[f["label"] != "multi", "case"]) == {folds.CASE_PHOTO}
    multi = f[f["label"] == "multi"]
    assert multi.groupby("device")["fold"].nunique().eq(1).all() and multi["fold"].nunique() == 2
    cfg.write_text("folds: {group: devices}\n")
    with pytest.raises(errors.ConfigError):
        load_config(cfg)


@pytest.mark.skipif(not (SHARED / "data" / "dresden_prnu").is_dir() or
                    not (SHARED / "data" / "real_cameras").is_dir(),
                    reason="real photos (../shared/data) are not beside this clone")
def test_real_photos_compose_device_disjoint(tmp_path):
    data = SHARED / "data"
    real = pd.read_csv(data / "real_cameras" / "manifest.csv", dtype=str, keep_default_na=False)
    real = real[real["camera"] == "Samsung_GT-P5210"].head(2)
    rows = [{"file": str(data / "real_cameras" / r.file), "camera": r.camera, "device": r.device, "scene": r.scene}
            for r in real.itertuples(index=False)]
    for name in ("Nikon_D70_0_19445", "Nikon_D70_1_20543"):  # device from the Dresden name
        rows.append({"file": str(data / "dresden_prnu" / "natural" / f"{name}.JPG"), "camera": "Nikon_D70",
                     "device": "", "scene": "natural"})
    manifest = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    compose([manifest], tmp_path / "out", ComposeOptions(test_devices=("Nikon_D70_1",), test_fraction=0.5))
    info = pd.read_csv(tmp_path / "out" / layout.TEST_INFO_FILE, keep_default_na=False)
    assert set(info.loc[info["camera"] == "Nikon_D70", "device"]) == {"Nikon_D70_1"}  # from the Dresden name
    assert (~info.loc[info["camera"] == "Nikon_D70", "device_seen"]).all()
    for name in info["fname"]:
        with Image.open(tmp_path / "out" / "test" / name) as im:
            assert im.size == (512, 512)
    devices = pd.read_csv(tmp_path / "out" / layout.DEVICES_FILE, keep_default_na=False)
    assert set(devices.loc[devices["class"] == "Nikon_D70", "device"]) == {"Nikon_D70_0"}


def test_the_marker_says_whether_the_test_holds_one_known_device_per_class(composed, tmp_path):
    """``+prnu`` may claim one class per sensor only when every class's test photos come from one
    known device: `single` has no device in the manifest (it may be several), so not here."""
    out, sources = composed
    assert json.loads((out / layout.COMPOSE_MARKER).read_text())["one_test_device_per_class"] is False
    assert one_test_device_per_class(out) is False
    assert one_test_device_per_class(tmp_path) is None  # not composed: nothing recorded
    photo = Photo(Path("a.jpg"), "A", "A_0", "")
    assert one_device_each([photo, Photo(Path("b.jpg"), "A", "A_0", ""), Photo(Path("c.jpg"), "B", "B_1", "")])
    assert not one_device_each([photo, Photo(Path("b.jpg"), "A", "A_1", "")])  # two devices of A
    assert not one_device_each([photo, Photo(Path("c.jpg"), "B", "", "")])  # B's device unknown


def test_blend_claims_one_class_per_sensor_where_the_test_says_so(composed, tmp_path):
    out, _ = composed
    cfg = Config()
    assert one_device_per_class(cfg, out) == (False, "not known to hold one device per class")
    marker = out / layout.COMPOSE_MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "one_test_device_per_class": True}))
    assert one_device_per_class(cfg, out)[0]
    cfg.blend.prnu.one_device_per_class = False  # the user's word comes first
    assert one_device_per_class(cfg, out) == (False, "blend.prnu.one_device_per_class: false")
    cfg.blend.prnu.one_device_per_class = None
    cfg.blend.balanced_test = True
    assert one_device_per_class(cfg, tmp_path)[0]  # the competition's design

"""``+match``: test crops from a training device are matched to its class by PRNU, crops from any
other device are not, and nothing changes when the test devices are not training devices."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from camid.config import Config, MatchConfig
from camid.data.crops import centre_crop, manipulated_centre_crop
from camid.data.testcrops import make_test_crop
from camid.errors import StrategyError
from camid.infer.table import read_table, write_table
from camid.level2 import prnu_match as pm
from camid.level2.pseudo import confidence_strategy
from camid.level2.strategies import blend, parse_strategy
from camid.sim import camera
from camid.sim import competition as sim
from camid.workspace import Workspace
from conftest import SHARED, with_prnu

H, W, CROP = 320, 384, 256
CLASSES = ["Alpha", "Beta", "Gamma"]


def scene(seed: int, h: int = H, w: int = W) -> np.ndarray:
    """A smooth, unsaturated colour scene with some texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 120 + 50 * np.sin(x / 11 + rng.uniform(0, 6)) * np.cos(y / 17 + rng.uniform(0, 6))
    tex = rng.normal(0, 3.0, (h, w)).astype(np.float32)
    return np.stack([base + tex, 0.9 * base + tex, 1.1 * base + tex], axis=-1)


def sensor(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((h, w)) * 0.03).astype(np.float32)


def save(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """Three classes, one training device each (Gamma's photos stored portrait), and test crops from
    those devices (unaltered, JPEG 90, resized 1.5) and from an unseen second Alpha device."""
    root = tmp_path_factory.mktemp("match")
    devices = {"Alpha": sensor(1), "Beta": sensor(2), "Gamma": sensor(3)}
    unseen = sensor(4)
    for c, (cls, k) in enumerate(devices.items()):
        for shot in range(4):
            img = with_prnu(scene(100 * c + shot), k, shot)
            if cls == "Gamma":
                img = np.ascontiguousarray(np.rot90(img, -1))  # a portrait file: pixels turned clockwise
            save(root / "train" / cls / f"{cls}_{shot}.png", img)
    rows = []

    def crop(name: str, cls: str, img: np.ndarray, manip: str = "none") -> None:
        fname = f"img_{name}_{'unalt' if manip == 'none' else 'manip'}.tif"
        save(root / "test" / fname, manipulated_centre_crop(img, manip, CROP))
        rows.append({"fname": fname, "camera": cls, "source": name})

    for c, (cls, k) in enumerate(devices.items()):
        for shot in range(2):
            crop(f"{cls}{shot}", cls, with_prnu(scene(1000 + 10 * c + shot), k, 50 + shot))
    crop("AlphaJpeg", "Alpha", with_prnu(scene(2000), devices["Alpha"], 60), "jpeg90")
    crop("AlphaResize", "Alpha", with_prnu(scene(2001), devices["Alpha"], 61), "resize1.5")
    for shot in range(3):
        crop(f"Unseen{shot}", "Alpha", with_prnu(scene(3000 + shot), unseen, 70 + shot))
    # a crop of another size: no fingerprint is that size
    small = centre_crop(with_prnu(scene(4000), devices["Beta"], 80), 128)
    save(root / "test" / "img_Small_unalt.tif", small)
    rows.append({"fname": "img_Small_unalt.tif", "camera": "Beta", "source": "Small"})
    sol = pd.DataFrame(rows)
    sol[["fname", "camera"]].to_csv(root / "solution.csv", index=False)
    return root, sol


def _table(fnames: list[str], classes: list[str], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(len(classes)), size=len(fnames))
    t = pd.DataFrame({"fname": fnames, "split": "test", "fold": -1, "manip": [int("_manip" in f) for f in fnames],
                      "aug": "unknown", "label": ""})
    oof = pd.DataFrame({"fname": ["train/Alpha/Alpha_0.png"], "split": "oof", "fold": 0, "manip": 0,
                        "aug": "none", "label": "Alpha"})
    table = pd.concat([t, oof], ignore_index=True)
    table[classes] = np.vstack([p, np.full((1, len(classes)), 1 / len(classes))])
    return table


def test_training_device_crops_match_their_class_and_others_do_not(world):
    root, sol = world
    table = _table(sorted(sol["fname"]), CLASSES)
    cache = root / "cache" / "fp.npz"
    out, info, report = pm.refine_table(table, CLASSES, root, cache, MatchConfig(), 1e-7)
    rep = report.set_index("fname")
    by_source = sol.set_index("source")["fname"]
    for cls in CLASSES:  # Gamma: fingerprint from portrait files, turned to the sensor frame
        for shot in range(2):
            r = rep.loc[by_source[f"{cls}{shot}"]]
            assert r["decided_by"] == "prnu-match" and r["class"] == cls and r["pce"] > 60, r
            assert r["second_pce"] < 20
    assert rep.loc[by_source["AlphaJpeg"], "class"] == "Alpha"
    resized = rep.loc[by_source["AlphaResize"]]
    assert resized["decided_by"] == "prnu-match" and resized["class"] == "Alpha" and resized["scale"] == 1.5
    for shot in range(3):  # same class, another device: the CNN's job, not PRNU's
        r = rep.loc[by_source[f"Unseen{shot}"]]
        assert r["decided_by"] == "base" and r["pce"] < 60, r
    small = rep.loc["img_Small_unalt.tif"]
    assert small["decided_by"] == "base" and "128x128" in small["note"] and np.isnan(small["pce"])
    assert info["matched"] == 8 and info["match_precision"] == 1.0 and info["not_compared"] == 1
    assert info["per_class"] == {"Alpha": 4, "Beta": 2, "Gamma": 2}
    # matched rows are one-hot at the floor; every other row, OOF included, is untouched
    hit = out["fname"].isin(report.loc[report["decided_by"] == "prnu-match", "fname"]).to_numpy()
    assert np.allclose(out.loc[hit, CLASSES].max(axis=1), 1 - 2e-7)
    assert np.array_equal(out.loc[~hit, CLASSES].to_numpy(), table.loc[~hit, CLASSES].to_numpy())
    # the fingerprints and the scores are cached: a second run reads them and decides the same
    assert cache.is_file() and cache.with_name("fp.scores.npz").is_file()
    _, _, again = pm.refine_table(table, CLASSES, root, cache, MatchConfig(), 1e-7)
    pd.testing.assert_frame_equal(again, report)
    # other settings: the scores are computed again
    _, info2, _ = pm.refine_table(table, CLASSES, root, cache, MatchConfig(scales=[1.5]), 1e-7)
    assert info2["matched"] == 8


def test_camid_blend_writes_match_strategies_and_their_reports(world, tmp_path):
    root, sol = world
    ws = Workspace(tmp_path / "work", root)
    cfg = Config(classes=CLASSES)
    table = _table(sorted(sol["fname"]), CLASSES)
    write_table(table, ws.table("m", "none"), CLASSES)
    names = blend(cfg, ws, ["gmean+match+hungarian", "gmean+match", "gmean"], ["m"], "none")
    assert names == ["gmean+match+hungarian", "gmean+match", "gmean"]
    report = pd.read_csv(ws.step_report("gmean+match", "match"))
    assert (report["decided_by"] == "prnu-match").sum() == 8
    assert ws.match_fingerprints.is_file() and not ws.step_report("gmean", "match").exists()
    matched = read_table(ws.blend_table("gmean+match")).set_index("fname")
    plain = read_table(ws.blend_table("gmean")).set_index("fname")
    hit = report.loc[report["decided_by"] == "prnu-match", ["fname", "class"]]
    assert (matched.loc[hit["fname"], CLASSES].idxmax(axis=1).to_numpy() == hit["class"].to_numpy()).all()
    rest = report.loc[report["decided_by"] == "base", "fname"]
    assert np.allclose(matched.loc[rest, CLASSES], plain.loc[rest, CLASSES])
    assert confidence_strategy("gmean+match+prnu+hungarian") == "gmean+match+prnu"


def test_demo_simulator_test_devices_are_never_matched(tmp_path):
    """The simulator's test photos come from device B, its training photos from device A."""
    opts = sim.SimOptions(n_classes=2, train_per_class=2, test_per_class=3, width=576, height=512,
                          test_crop=256, seed=7)
    sim.simulate(tmp_path, opts, workers=2)
    classes = camera.class_names(opts.n_classes)
    fnames = sorted(p.name for p in (tmp_path / "test").iterdir())
    table = _table(fnames, classes)
    out, info, report = pm.refine_table(table, classes, tmp_path, tmp_path / "fp.npz", MatchConfig(), 1e-7)
    assert info["devices"] == 2 and info["matched"] == 0 and (report["decided_by"] == "base").all()
    assert report["pce"].max() < 60
    pd.testing.assert_frame_equal(out, table)


def test_strategy_names_put_match_right_after_the_base():
    st = parse_strategy("xgb+match+prnu+hungarian")
    assert (st.base, st.match, st.prnu, st.equaliser) == ("xgb", True, True, "hungarian")
    assert parse_strategy("gmean+match").match and not parse_strategy("gmean+prnu").match
    for bad in ("gmean+prnu+match", "gmean+match+match", "gmean+hungarian+match"):
        with pytest.raises(StrategyError):
            parse_strategy(bad)


def test_device_of_reads_dresden_names_and_falls_back_to_the_class():
    assert pm.device_of("train/Nikon_D70/Nikon_D70_0_19929.JPG", "Nikon_D70") == "Nikon_D70_0"
    assert pm.device_of("train/LG-D605/LG-D605_flatfield_01.jpg", "LG-D605") == "LG-D605"
    assert pm.device_of("train/HTC-1-M7/(HTC-1-M7)1.jpg", "HTC-1-M7") == "HTC-1-M7"


DRESDEN = SHARED / "data" / "dresden_prnu"


@pytest.mark.skipif(not DRESDEN.is_dir(), reason=f"{DRESDEN} not present (real Dresden photos)")
def test_dresden_d70_device_0_fingerprint_against_natural_photos(tmp_path):
    """Fingerprint from the flat-fields of Nikon_D70_0 where compose cuts 512 test crops; natural
    photos of the same device and of the other D70 (device 1) as compose's 512 test crops."""
    flats = sorted((DRESDEN / "flatfield").glob("Nikon_D70_0_*.JPG"))
    train = pd.DataFrame({"fname": [f"train/Nikon_D70/{p.name}" for p in flats], "path": [str(p) for p in flats],
                          "label": "Nikon_D70"})
    groups, skipped = pm.plan_devices(train, 512)
    devices, unreadable = pm.build_fingerprints(groups, 512, workers=2)
    assert not skipped and not unreadable and [d.device for d in devices] == ["Nikon_D70_0"]
    rows = []
    for p in sorted((DRESDEN / "natural").glob("Nikon_D70_[01]_*.JPG")):
        from camid.data.images import read_image
        from camid.data.orientation import sensor_frame
        # the test crop where camid compose cuts it (the centre 1024 window on the 16-px grid)
        save(tmp_path / f"{p.stem}_unalt.png", make_test_crop(sensor_frame(read_image(p)), "none", 512, window=1024))
        rows.append({"fname": f"{p.stem}_unalt.png", "path": str(tmp_path / f"{p.stem}_unalt.png"), "manip": 0})
    ev = pm.score_test(tmp_path, devices, MatchConfig(), workers=2, test=pd.DataFrame(rows))
    pce = pd.Series(ev.pce[:, 0], index=[r["fname"] for r in rows])
    same, other = pce[pce.index.str.startswith("Nikon_D70_0")], pce[pce.index.str.startswith("Nikon_D70_1")]
    print(f"Dresden D70_0 flat-field fingerprint, 512 px: same device PCE {same.round(1).tolist()}, "
          f"D70_1 PCE {other.round(1).tolist()}")
    assert len(same) == 2 and len(other) == 4
    assert other.max() < 60  # never a false match
    assert same.min() > other.max()


def test_a_composed_test_crop_is_matched_where_compose_cut_it(tmp_path):
    """compose cuts its test window on the photo's 16-px JPEG grid (data.testcrops.window_origin),
    up to 8 px per axis from the exact centre, and its crop at that window's centre: the training
    fingerprints must cover that very sensor region (a PCE at zero shift sees nothing 12 px off)."""
    h, w = 600, 712  # the exact centre crop and compose's crop are (12, 4) px apart
    keys = {"Alpha": sensor(11, h, w), "Beta": sensor(12, h, w)}
    rows = []
    for c, (cls, k) in enumerate(keys.items()):
        for shot in range(4):
            save(tmp_path / "train" / cls / f"{cls}_{shot}.png", with_prnu(scene(500 + 10 * c + shot, h, w), k, shot))
        fname = f"img_{cls}_unalt.tif"
        save(tmp_path / "test" / fname,
             make_test_crop(with_prnu(scene(900 + c, h, w), k, 40 + c), "none", CROP, window=2 * CROP))
        rows.append({"fname": fname, "camera": cls})
    pd.DataFrame(rows).to_csv(tmp_path / "solution.csv", index=False)
    table = _table([r["fname"] for r in rows], list(keys))
    _, info, report = pm.refine_table(table, list(keys), tmp_path, tmp_path / "fp.npz", MatchConfig(), 1e-7)
    rep = report.set_index("fname")
    for r in rows:
        assert rep.loc[r["fname"], "decided_by"] == "prnu-match" and rep.loc[r["fname"], "class"] == r["camera"]
    assert info["matched"] == 2

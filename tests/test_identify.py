"""`camid identify`: arbitrary photos (sizes, formats, unreadable files) through the trained ensemble, the
unknown-camera threshold calibrated on the OOF table, and the EXIF cross-check."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import piexif
import pytest
import torch
import yaml
from PIL import Image

from camid import cli
from camid.bench import open_set_loco
from camid.config import load_config
from camid.forensics import identify, metacheck, openset
from camid.infer.ensemble import Ensemble
from camid.infer.table import KEY_COLUMNS, write_table
from camid.train.rundir import RunDir
from camid.workspace import Workspace
from conftest import REPO, SHARED
from trained_tiny import CLASSES, photo, train_tiny


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("identify")
    return root, train_tiny(root)


@pytest.fixture
def photos(tmp_path) -> dict[str, Path]:
    out = {"jpeg": tmp_path / "a.jpg", "png": tmp_path / "b.png", "tiff": tmp_path / "c.tif",
           "small": tmp_path / "d.jpg"}
    Image.fromarray(photo(120, 150, 0, 1)).save(out["jpeg"], quality=92)
    Image.fromarray(photo(200, 100, 1, 2)).save(out["png"])
    Image.fromarray(photo(48, 48, 2, 3)).save(out["tiff"])
    Image.fromarray(photo(30, 40, 0, 4)).save(out["small"], quality=95)  # smaller than the 48-px crop
    return out


def _probs(df: pd.DataFrame) -> np.ndarray:
    return df[CLASSES].to_numpy(dtype=float)


def test_identify_prints_top_k_and_writes_valid_probabilities(trained, photos, tmp_path, capsys):
    _, common = trained
    csv = tmp_path / "out" / "ids.csv"
    rc = cli.main(["identify", *map(str, photos.values()), *common, "--top-k", "2", "--tiles", "3",
                   "--out", str(csv)])
    assert rc == 0
    out = capsys.readouterr().out
    for path in photos.values():
        assert str(path) in out
    assert out.count("  1. ") == len(photos) and out.count("  2. ") == len(photos) and "  3. " not in out
    df = pd.read_csv(csv)
    assert df["photo"].tolist() == [str(p) for p in photos.values()]
    probs = _probs(df)
    assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1, atol=1e-5) and (probs >= 0).all()
    assert (df["prediction"] == [CLASSES[i] for i in probs.argmax(1)]).all()
    assert df["crops"].tolist() == [1 + 3, 1 + 3, 1, 1]  # centre + tiles; 48 px and smaller: one crop
    assert df["error"].isna().all() and df["agree"].between(0, 1).all()


def test_unreadable_photos_are_reported_and_skipped(trained, photos, tmp_path, capsys):
    _, common = trained
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    csv = tmp_path / "ids.csv"
    rc = cli.main(["identify", str(photos["jpeg"]), str(corrupt), str(empty), str(tmp_path / "missing.tif"),
                   *common, "--out", str(csv)])
    assert rc == 1
    out = capsys.readouterr().out
    assert "cannot read" in out and "3 of 4 photo(s) could not be read" in out
    df = pd.read_csv(csv)
    assert df["error"].notna().tolist() == [False, True, True, True]
    assert np.allclose(_probs(df.iloc[:1]).sum(), 1) and df.loc[1:, CLASSES].isna().all().all()


def test_a_crop_sized_photo_gets_exactly_the_ensemble_prediction(trained, tmp_path, capsys):
    root, common = trained
    img = photo(48, 48, 1, 9)
    Image.fromarray(img).save(tmp_path / "x.png")
    csv = tmp_path / "x.csv"
    assert cli.main(["identify", str(tmp_path / "x.png"), *common, "--tiles", "0", "--out", str(csv)]) == 0
    files = RunDir(root / "models" / "camid_tiny" / "fold0").checkpoint_files(2, "top_n")
    ens = Ensemble(files, torch.device("cpu"), "tta10", "gmean")
    want = ens.predict(torch.from_numpy(img).permute(2, 0, 1)[None], torch.zeros(1), 40)[0]
    assert np.allclose(_probs(pd.read_csv(csv))[0], want, atol=1e-5)


def test_manipulated_flag_changes_the_network_input(trained, photos, tmp_path):
    _, common = trained
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert cli.main(["identify", str(photos["jpeg"]), *common, "--out", str(a)]) == 0
    assert cli.main(["identify", str(photos["jpeg"]), *common, "--manipulated", "--out", str(b)]) == 0
    assert not np.allclose(_probs(pd.read_csv(a)), _probs(pd.read_csv(b)))


def test_no_trained_models_is_a_clear_error(trained, photos, tmp_path, capsys):
    _, common = trained
    config = common[common.index("--config") + 1]
    rc = cli.main(["identify", str(photos["jpeg"]), "--config", config, "--workdir", str(tmp_path / "empty")])
    assert rc == 2 and "no trained models" in capsys.readouterr().err


@pytest.mark.parametrize("h,w,size,k", [(1200, 1600, 512, 4), (48, 48, 48, 4), (100, 300, 48, 9), (500, 40, 48, 2)])
def test_tiles_are_non_overlapping_on_the_grid_and_nearest_the_centre(h, w, size, k):
    boxes = identify.tile_boxes(h, w, size, k)
    assert len(boxes) == min(k, (h // size) * (w // size))
    for y, x in boxes:
        assert y % 2 == 0 and x % 2 == 0 and 0 <= y <= h - size and 0 <= x <= w - size
    for i, (y1, x1) in enumerate(boxes):
        for y2, x2 in boxes[i + 1:]:
            assert abs(y1 - y2) >= size or abs(x1 - x2) >= size
    dist = [(y - (h - size) / 2) ** 2 + (x - (w - size) / 2) ** 2 for y, x in boxes]
    assert dist == sorted(dist)
    assert identify.tile_boxes(h, w, size, 0) == []


# ------------------------------------------------------------------- open set

def test_threshold_accepts_the_requested_share_hand_computed():
    scores = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 1.0, 0.4, 0.8, 0.6]
    # 80% of 10: reject the 2 lowest (0.1, 0.2): t = 0.3, and 8 of 10 are >= 0.3
    assert openset.threshold_at_tpr(scores, 0.8) == 0.3
    assert openset.threshold_at_tpr(scores, 0.85) == 0.2  # 8.5 of 10 -> keep 9
    assert openset.threshold_at_tpr(scores, 1.0) == 0.1
    twenty = np.arange(1, 21) / 20  # 0.05 .. 1.00
    assert openset.threshold_at_tpr(twenty, 0.95) == 0.10  # 20 * 0.05 = 1 rejected, float noise absorbed
    assert openset.threshold_at_tpr([0.5, 0.5, 0.5, 0.9], 0.5) == 0.5  # ties are all accepted
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError):
            openset.threshold_at_tpr(scores, bad)
    assert open_set_loco.auroc([0.9, 0.8], [0.1, 0.2]) == 1.0 and open_set_loco.auroc([0.1], [0.9]) == 0.0
    assert open_set_loco.auroc([0.5, 0.9], [0.5, 0.1]) == 0.875  # one tie counts half: (1 + 1 + 1 + 0.5) / 4


def _peaked(top: float, label: int, n: int = 3) -> list[float]:
    row = [(1 - top) / (n - 1)] * n
    row[label] = top
    return row


def write_oof(root: Path, work: Path, unalt: list[float], manip: list[float], stale: bool = False) -> Path:
    """A hand-written OOF table for the trained tiny run: unaltered rows whose top probabilities
    are ``unalt`` and manipulated rows with ``manip``, plus a test row that must be ignored."""
    (work / "models").parent.mkdir(parents=True, exist_ok=True)
    if not (work / "models").exists():
        (work / "models").symlink_to(root / "models", target_is_directory=True)
    rows = []
    for i, top in enumerate(unalt):
        rows.append([f"train/{CLASSES[i % 3]}/{i}.jpg", "oof", 0, 0, "none", CLASSES[i % 3], *_peaked(top, i % 3)])
    for i, top in enumerate(manip):
        rows.append([f"train/{CLASSES[i % 3]}/{i}.jpg", "oof", 0, 1, "jpeg70", CLASSES[i % 3],
                     *_peaked(top, i % 3)])
    rows.append(["img_0000000_unalt.tif", "test", -1, 0, "unknown", "", *_peaked(0.01 + 1 / 3, 0)])
    df = pd.DataFrame(rows, columns=[*KEY_COLUMNS, *CLASSES])
    files = RunDir(root / "models" / "camid_tiny" / "fold0").checkpoint_files(2, "top_n")
    record = [{"file": str(f), "size": f.stat().st_size + int(stale), "mtime": int(f.stat().st_mtime)} for f in files]
    return write_table(df, Workspace(work, work).table("camid_tiny", "tta10"), CLASSES, {"checkpoints": {"0": record}})


def test_threshold_is_calibrated_on_the_given_oof_rows(trained, tmp_path):
    root, common = trained
    unalt = [0.40, 0.50, 0.60, 0.70, 0.80, 0.90, 0.95, 0.45, 0.55, 0.65]
    manip = [0.35, 0.36, 0.37, 0.38]
    write_oof(root, tmp_path, unalt, manip)
    ws = Workspace(tmp_path, tmp_path)
    runs, classes = identify.load_ensembles(load_config(root / "tiny.yaml"), ws, [], torch.device("cpu"))
    o = openset.calibrate(ws, runs, "tta10", classes, manip=False, tpr=0.8)
    # sorted: .40 .45 .50 .55 ...; 80% of 10 rejects the 2 lowest -> .50 (float32 write: approx)
    assert o.on and o.threshold == pytest.approx(0.50) and o.accepted == 0.8 and o.n == 10
    m = openset.calibrate(ws, runs, "tta10", classes, manip=True, tpr=0.75)
    assert m.threshold == pytest.approx(0.36) and m.n == 4 and m.manip  # the manipulated rows only
    assert "80% of 10 unaltered OOF photos" in o.describe() and "0.5000" in o.describe()


def test_a_photo_below_the_threshold_is_an_unknown_camera(trained, photos, tmp_path, capsys):
    root, common = trained
    work = tmp_path / "w"
    write_oof(root, work, [0.999] * 20, [0.999] * 4)  # known cameras are all but certain
    csv = tmp_path / "u.csv"
    rc = cli.main(["identify", str(photos["jpeg"]), "--config", str(root / "tiny.yaml"), "--workdir", str(work),
                   "--unknown-tpr", "0.9", "--out", str(csv)])
    assert rc == 0
    captured = capsys.readouterr()
    df = pd.read_csv(csv)
    row = df.iloc[0]
    assert row["verdict"] == "unknown" and row["open_set"] == 1 and row["unknown_tpr"] == 0.9
    assert row["score"] == pytest.approx(row["probability"]) and row["score"] < row["threshold"]
    assert row["threshold"] == pytest.approx(0.999, abs=1e-6)
    assert f"unknown camera (score {row['score']:.4f} < threshold {row['threshold']:.4f}" in captured.out
    assert "calibrated to accept 90% of 20 unaltered OOF photos" in captured.out
    # the same photo against a calibration it clears: its class is named
    write_oof(root, work, [1 / 3 + 0.001] * 20, [0.5] * 4)
    assert cli.main(["identify", str(photos["jpeg"]), "--config", str(root / "tiny.yaml"), "--workdir", str(work),
                     "--out", str(csv)]) == 0
    row = pd.read_csv(csv).iloc[0]
    assert row["verdict"] == row["prediction"] and row["score"] >= row["threshold"]
    assert ">= threshold" in capsys.readouterr().out


def test_without_an_oof_table_the_open_set_check_is_off_and_says_why(trained, photos, tmp_path, capsys):
    _, common = trained  # the shared work dir has models but no oof/ table
    csv = tmp_path / "o.csv"
    assert cli.main(["identify", str(photos["jpeg"]), *common, "--out", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "open-set check off: no OOF table" in out and "camid predict" in out
    assert "verdict: " in out and "(most probable class; open-set check off)" in out
    row = pd.read_csv(csv).iloc[0]
    assert row["open_set"] == 0 and np.isnan(row["threshold"]) and row["verdict"] == row["prediction"]
    assert cli.main(["identify", str(photos["jpeg"]), *common, "--unknown-tpr", "0"]) == 2
    assert "--unknown-tpr must be in (0, 1]" in capsys.readouterr().err


def test_a_table_from_other_checkpoints_turns_the_check_off(trained, photos, tmp_path, capsys):
    root, _ = trained
    write_oof(root, tmp_path, [0.9] * 20, [0.9] * 4, stale=True)
    assert cli.main(["identify", str(photos["jpeg"]), "--config", str(root / "tiny.yaml"),
                     "--workdir", str(tmp_path)]) == 0
    assert "open-set check off" in (out := capsys.readouterr().out) and "other checkpoints" in out


# ---------------------------------------------------------------- EXIF check

def _exif_jpeg(path: Path, seed: int, make: str = "", model: str = "", software: str = "") -> Path:
    ifd = {tag: value.encode() for tag, value in ((piexif.ImageIFD.Make, make), (piexif.ImageIFD.Model, model),
                                                 (piexif.ImageIFD.Software, software)) if value}
    kwargs = {"exif": piexif.dump({"0th": ifd})} if ifd else {}
    Image.fromarray(photo(96, 96, seed % 3, seed)).save(path, quality=95, **kwargs)
    return path


def _rules(path: Path, mapping: dict[str, list[str]]) -> Path:
    path.write_text(yaml.safe_dump({"classes": [{"name": c, "models": m} for c, m in mapping.items()]}))
    return path


def test_exif_agree_disagree_foreign_edited_and_missing(trained, tmp_path, capsys):
    _, common = trained
    files = {"plain": _exif_jpeg(tmp_path / "plain.jpg", 5),
             "agree": _exif_jpeg(tmp_path / "agree.jpg", 5, "Acme", "Acme One", "1.0"),
             "disagree": _exif_jpeg(tmp_path / "disagree.jpg", 5, "Acme", "Acme Two", "1.0"),
             "foreign": _exif_jpeg(tmp_path / "foreign.jpg", 5, "Canon", "Canon EOS 7D", ""),
             "edited": _exif_jpeg(tmp_path / "edited.jpg", 5, "Acme", "Acme One", "Adobe Photoshop CS6 (Windows)"),
             "nomodel": _exif_jpeg(tmp_path / "nomodel.jpg", 5, "", "", "GIMP 2.10.32"),
             "tiff": tmp_path / "tagged.tif"}
    with Image.open(files["plain"]) as im:  # a TIFF keeps Make/Model in its own first directory
        im.save(files["tiff"], tiffinfo={271: "Acme", 272: "Acme Two"})
    # the same pixels everywhere: the verdict is one class, whatever the metadata says
    assert cli.main(["identify", str(files["plain"]), *common, "--tiles", "0", "--out", str(tmp_path / "v.csv")]) == 0
    pixels = pd.read_csv(tmp_path / "v.csv")["verdict"].iloc[0]
    other = next(c for c in CLASSES if c != pixels)
    rules = _rules(tmp_path / "rules.yaml", {pixels: ["Acme One"], other: ["Acme Two"]})
    capsys.readouterr()
    csv = tmp_path / "e.csv"
    assert cli.main(["identify", *map(str, files.values()), *common, "--tiles", "0", "--rules", str(rules),
                     "--out", str(csv)]) == 0
    out = capsys.readouterr().out
    df = pd.read_csv(csv, keep_default_na=False).set_index("photo")
    got = {k: df.loc[str(p)] for k, p in files.items()}
    assert {k: r["exif_check"] for k, r in got.items()} == {
        "plain": "no_exif", "agree": "agree", "disagree": "disagree", "foreign": "foreign", "edited": "agree",
        "nomodel": "no_model", "tiff": "disagree"}
    assert {k: r["edited"] for k, r in got.items()} == {
        "plain": 0, "agree": 0, "disagree": 0, "foreign": 0, "edited": 1, "nomodel": 1, "tiff": 0}
    assert got["agree"]["exif_class"] == pixels and got["disagree"]["exif_class"] == other
    assert (got["agree"]["exif_make"], got["agree"]["exif_model"], got["agree"]["exif_software"]) == (
        "Acme", "Acme One", "1.0")
    assert "Photoshop" in got["edited"]["edit_evidence"] and "GIMP" in got["nomodel"]["edit_evidence"]
    assert "EXIF: none (no Make, Model or Software tag)" in out
    assert f"metadata disagrees: EXIF model 'Acme Two' says {other}, the pixels say {pixels}" in out
    assert "metadata is easy to edit, pixels less so" in out
    assert f"EXIF model 'Acme One' is {pixels} in {rules}: agrees with the pixels" in out
    assert "EXIF model 'Canon EOS 7D' is outside the known classes" in out
    assert "EXIF check: edited (EXIF Software 'Adobe Photoshop CS6 (Windows)')" in out


def test_exif_says_a_known_class_but_the_pixels_say_unknown(trained, tmp_path, capsys):
    root, _ = trained
    work = tmp_path / "w"
    write_oof(root, work, [0.999] * 20, [0.999] * 4)
    f = _exif_jpeg(tmp_path / "a.jpg", 4, "Acme", "Acme One")
    rules = _rules(tmp_path / "rules.yaml", {"cam-a": ["Acme One"]})
    assert cli.main(["identify", str(f), "--config", str(root / "tiny.yaml"), "--workdir", str(work),
                     "--rules", str(rules)]) == 0
    out = capsys.readouterr().out
    assert "unknown camera" in out and "metadata disagrees: EXIF model 'Acme One' says cam-a, the pixels match " \
                                      "no known camera" in out


REAL = SHARED / "data" / "real_jpegs"
RULES = REPO / "configs" / "external_rules.yaml"


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real camera JPEGs not found at {REAL}")
def test_real_photos_exif_against_the_external_data_rules(trained, tmp_path, capsys):
    _, common = trained
    names = ["Apple_iPhone_4.jpg", "Canon_EOS_D60.jpg", "Photoshop__3_.jpg", "Samsung_GT-I9000__Galaxy_S_.jpg"]
    csv = tmp_path / "r.csv"
    assert cli.main(["identify", *(str(REAL / n) for n in names), *common, "--tiles", "1", "--rules", str(RULES),
                     "--out", str(csv)]) == 0
    df = pd.read_csv(csv, keep_default_na=False).set_index("photo")
    rows = {n: df.loc[str(REAL / n)] for n in names}
    # the tiny model's classes are cam-a/b/c: every real camera model is foreign to it
    assert rows["Apple_iPhone_4.jpg"][["exif_model", "exif_software", "exif_check", "edited"]].tolist() == [
        "iPhone 4", "4.1", "foreign", 0]
    canon = rows["Canon_EOS_D60.jpg"]
    assert canon["edited"] == 1 and "Adobe Photoshop 7.0" in canon["edit_evidence"]
    assert rows["Photoshop__3_.jpg"][["exif_check", "edited"]].tolist() == ["no_model", 1]
    assert rows["Samsung_GT-I9000__Galaxy_S_.jpg"]["exif_software"] == "fw 05.15 prm 07.53"  # trailing blank stripped
    # a rules file that maps a real model string to a trained class: the check compares them
    pixels = rows["Apple_iPhone_4.jpg"]["verdict"]
    rules = _rules(tmp_path / "rules.yaml", {pixels: ["iPhone 4"], "cam-x": ["GT-I9000"]})
    assert cli.main(["identify", str(REAL / names[0]), str(REAL / names[3]), *common, "--tiles", "1",
                     "--rules", str(rules), "--out", str(csv)]) == 0
    df = pd.read_csv(csv, keep_default_na=False)
    assert df["exif_check"].tolist() == ["agree", "foreign"] and df["exif_class"].tolist() == [pixels, "cam-x"]
    assert "a class these models were not trained on" in capsys.readouterr().out


def test_corrupt_exif_is_reported(trained, tmp_path, capsys):
    _, common = trained
    good = piexif.dump({"0th": {piexif.ImageIFD.Model: b"Acme One"}})
    bad = good[:14] + bytes((7 * i + 200) % 256 for i in range(len(good) - 14))
    Image.fromarray(photo(64, 64, 0, 3)).save(tmp_path / "c.jpg", quality=95, exif=bad)
    assert cli.main(["identify", str(tmp_path / "c.jpg"), *common, "--out", str(tmp_path / "c.csv")]) == 0
    assert "EXIF unreadable" in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "c.csv")["exif_check"].iloc[0] == "exif_error"


# ------------------------------------------------------- inputs and locations

def test_folders_empty_folders_and_corrupt_files_are_reported(trained, tmp_path, capsys):
    _, common = trained
    folder, empty = tmp_path / "shots", tmp_path / "nothing"
    (folder / "sub").mkdir(parents=True)
    empty.mkdir()
    (empty / "notes.txt").write_text("not a photo")
    _exif_jpeg(folder / "a.jpg", 1)
    _exif_jpeg(folder / "sub" / "b.jpg", 2)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    csv = tmp_path / "f.csv"
    rc = cli.main(["identify", str(folder), str(empty), *common, "--out", str(csv)])
    assert rc == 1
    captured = capsys.readouterr()
    assert f"{empty}: folder holds no image files" in captured.out
    assert "cannot read" in captured.out and "1 of 3 photo(s) could not be read" in captured.out
    df = pd.read_csv(csv)
    assert sorted(df["photo"]) == sorted([str(folder / "a.jpg"), str(folder / "sub" / "b.jpg"),
                                          str(folder / "broken.jpg")])
    assert cli.main(["identify", str(empty), *common]) == 2
    assert "no photos to identify" in capsys.readouterr().err


def test_works_from_any_folder_without_the_repository(trained, tmp_path, monkeypatch, capsys):
    root, _ = trained
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    f = _exif_jpeg(elsewhere / "IMG_0001.jpg", 3, "Apple", "iPhone 6", "9.3")
    monkeypatch.chdir(elsewhere)  # no configs/ here, and the tiny config's folder has no rules file
    assert cli.main(["identify", f.name, "--config", str(root / "tiny.yaml"), "--workdir", str(root),
                     "--out", "out.csv"]) == 0
    out = capsys.readouterr().out
    assert "not mapped to classes" in out and "EXIF model 'iPhone 6' not mapped to a class" in out
    assert pd.read_csv(elsewhere / "out.csv")["exif_check"].iloc[0] == "no_rules"
    # with the repository's rules file named explicitly, the real class list maps it
    assert cli.main(["identify", f.name, "--config", str(root / "tiny.yaml"), "--workdir", str(root),
                     "--rules", str(RULES), "--out", "out.csv"]) == 0
    row = pd.read_csv(elsewhere / "out.csv", keep_default_na=False).iloc[0]
    assert row["exif_class"] == "iPhone-6" and row["exif_check"] == "foreign"  # not a class of this model
    assert cli.main(["identify", f.name, "--config", str(root / "tiny.yaml"), "--workdir", str(root),
                     "--rules", "missing.yaml"]) == 2
    assert "rules file not found: missing.yaml" in capsys.readouterr().err


def test_the_default_rules_are_found_next_to_the_config(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    _rules(tmp_path / "configs" / "external_rules.yaml", {"cam-a": ["Acme One"]})
    found = metacheck.find_rules(None, "configs/external_rules.yaml", str(tmp_path / "configs" / "tiny.yaml"))
    assert found.rules is not None and found.path == str(tmp_path / "configs" / "external_rules.yaml")
    missing = metacheck.find_rules(None, "configs/external_rules.yaml", str(tmp_path / "tiny.yaml"))
    assert missing.rules is None and "not found" in missing.note

"""`camid prnu fingerprint` / `camid prnu match` on synthetic devices: the file format, the
decision, geometry (portrait, crops, shifts, scales) and bad input. Every command runs from an
empty folder: no config, no data layout."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage, stats

from camid import cli
from camid.data import manipulations
from camid.forensics import prnu, prnu_tools
from conftest import with_prnu

H, W = 160, 240  # a small landscape "sensor"


def scene(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random scene with fine texture; no periodic structure that could leak into a
    fingerprint and correlate at some shift with another photo."""
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.standard_normal((h, w)), 6, mode="wrap")
    base = 120 + 50 * base / base.std()
    tex = rng.normal(0, 4.0, (h, w))
    return np.stack([base + tex, 0.9 * base + tex, 1.1 * base + tex], axis=-1)


def shoot(k: np.ndarray, seed: int) -> np.ndarray:
    """A photo of a synthetic device: multiplicative PRNU ``k`` plus shot noise."""
    h, w = k.shape
    return with_prnu(scene(h, w, seed=seed), k, seed)


def save(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(img)).save(path)
    return path


def camid(*argv: str) -> int:
    return cli.main(["prnu", *argv])


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path).fillna({"error": ""})


def one_line_error(err: str, command: str) -> str:
    assert err.startswith(f"camid prnu {command}: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def devices() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {d: (rng.standard_normal((H, W)) * 0.02).astype(np.float32) for d in ("A", "B")}


@pytest.fixture(scope="module")
def shots(tmp_path_factory, devices) -> Path:
    """root/<device>/ref_*.png (8 references each) and root/queries/<device>_*.png (2 each)."""
    root = tmp_path_factory.mktemp("shots")
    for d, k in devices.items():
        for i in range(8):
            save(root / d / f"ref_{i}.png", shoot(k, 10 * i + ord(d)))
        for i in range(2):
            save(root / "queries" / f"{d}_{i}.png", shoot(k, 1000 + 10 * i + ord(d)))
    return root


@pytest.fixture(scope="module")
def prints(shots, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("prints")
    paths = {}
    for d in ("A", "B"):
        paths[d] = out / f"{d}.npz"
        assert camid("fingerprint", str(shots / d), "-o", str(paths[d]), "--workers", "1") == 0
    return paths


@pytest.fixture(autouse=True)
def empty_cwd(tmp_path, monkeypatch):
    """Run every command from a folder without configs/: the examiner's situation."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


# ------------------------------------------------------------------ the fingerprint file

def test_fingerprint_file_stores_settings_photos_and_versions(prints, shots):
    with np.load(prints["A"], allow_pickle=False) as npz:
        assert sorted(npz.files) == ["fingerprint", "meta"]
        k, meta = npz["fingerprint"], json.loads(str(npz["meta"]))
    assert k.shape == (H, W) and k.dtype == np.float32
    assert meta["format"] == prnu_tools.FORMAT and meta["format_version"] == prnu_tools.FORMAT_VERSION
    from camid import __version__
    assert meta["camid_version"] == __version__
    assert meta["settings"] == {"sigma": 3.0, "levels": 4, "wavelet": "db4", "channels": "rgb", "enhance": "none",
                                "alpha": 7.0}
    assert meta["crop"] is None and meta["frame"] == {"height": H, "width": W}
    assert meta["count"] == 8 and [i["file"] for i in meta["images"]] == [f"ref_{i}.png" for i in range(8)]
    assert all(i["width"] == W and i["height"] == H and i["rotation_ccw_deg"] == 0 and len(i["sha256"]) == 64
               for i in meta["images"])
    assert json.loads(prints["A"].with_suffix(".json").read_text()) == meta  # the human-readable copy
    fp = prnu_tools.load_fingerprint(prints["A"])
    assert np.array_equal(fp.k, k) and fp.region == (0, 0, H, W)


def test_fingerprint_settings_and_crop_are_stored_and_used(shots, tmp_path, devices):
    out = tmp_path / "crop.npz"
    assert camid("fingerprint", str(shots / "A"), "-o", str(out), "--crop", "96", "--sigma", "2.5", "--levels", "3",
                 "--wavelet", "db8", "--enhance", "li", "--workers", "1") == 0
    fp = prnu_tools.load_fingerprint(out)
    assert fp.settings == prnu.PrnuSettings(sigma=2.5, levels=3, wavelet="db8", enhance="li")
    assert fp.crop == 96 and fp.k.shape == (96, 96)
    assert fp.region == (32, 72, 96, 96)  # the even-offset centre crop of 160x240
    # Same numbers as the library on the same crops with the same (never enhanced) settings.
    refs = [np.asarray(Image.open(p))[32:128, 72:168] for p in sorted((shots / "A").glob("*.png"))]
    expected = prnu.estimate_fingerprint(refs, prnu.PrnuSettings(sigma=2.5, levels=3, wavelet="db8"))
    assert np.allclose(fp.k, expected, atol=1e-6)


# ------------------------------------------------------------------ the decision

def test_match_decides_by_device_and_explains_the_threshold(prints, shots, tmp_path, capsys, empty_cwd):
    csv = tmp_path / "out" / "match.csv"
    assert camid("match", str(prints["A"]), str(shots / "queries"), "--out", str(csv), "--workers", "1") == 0
    assert not (empty_cwd / "configs").exists()
    rows = read_csv(csv)
    assert list(rows.columns) == prnu_tools.COLUMNS
    assert len(rows) == 4 and (rows["error"] == "").all()
    own = rows["file"].str.contains("/A_")
    assert (rows.loc[own, "pce"] >= 60).all() and (rows.loc[own, "decision"] == "match").all()
    assert (rows.loc[~own, "pce"] < 60).all() and (rows.loc[~own, "decision"] == "no match").all()
    assert (rows[["shift_y", "shift_x", "rotation"]] == 0).all().all() and (rows["scale"] == 1).all()
    assert (rows.loc[own, "log10_p_fa"] < -10).all()
    out = capsys.readouterr().out
    assert "PCE >= 60 -> 'match'" in out and "Goljan, Fridrich & Filler" in out and "NOT evidence" in out
    assert "2 of 4 readable queries reach PCE >= 60" in out


def test_threshold_changes_the_decision_not_the_scores(prints, shots, tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert camid("match", str(prints["A"]), str(shots / "queries"), "--out", str(a), "--workers", "1") == 0
    assert camid("match", str(prints["A"]), str(shots / "queries"), "--out", str(b), "--workers", "1",
                 "--threshold", "1e9") == 0
    ra, rb = read_csv(a), read_csv(b)
    assert np.allclose(ra["pce"], rb["pce"]) and (rb["decision"] == "no match").all()


# ------------------------------------------------------------------ geometry

def test_portrait_photos_are_turned_back_to_the_sensor_frame(shots, tmp_path, devices, capsys):
    """A viewer applying EXIF orientation 6 turns the pixels 90 degrees clockwise; the default
    --portrait ccw undoes it exactly, so the fingerprint is the one of the unrotated photos."""
    mixed = tmp_path / "mixed"
    files = sorted((shots / "A").glob("*.png"))
    for i, p in enumerate(files):
        img = np.asarray(Image.open(p))
        save(mixed / p.name, np.rot90(img, -1) if i % 3 == 0 else img)
    assert camid("fingerprint", str(mixed), "-o", str(tmp_path / "mixed.npz"), "--workers", "1") == 0
    assert "3 portrait photo(s) turned 90 degrees counter-clockwise" in capsys.readouterr().out
    mixed_fp = prnu_tools.load_fingerprint(tmp_path / "mixed.npz")
    assert [i["rotation_ccw_deg"] for i in mixed_fp.meta["images"]] == [90 if i % 3 == 0 else 0 for i in range(8)]
    plain = prnu_tools.build_fingerprint([shots / "A"])
    assert np.array_equal(mixed_fp.k, plain.k)

    assert camid("fingerprint", str(mixed), "-o", str(tmp_path / "r.npz"), "--portrait", "refuse") == 2
    err = one_line_error(capsys.readouterr().err, "fingerprint")
    assert "3 portrait photo(s) and --portrait refuse: ref_0.png (160x240), ref_3.png (160x240)" in err


def test_portrait_queries_are_matched_in_either_rotation(prints, devices, tmp_path):
    q = shoot(devices["A"], 4242)
    cw, ccw = save(tmp_path / "cw.png", np.rot90(q, -1)), save(tmp_path / "ccw.png", np.rot90(q, 1))
    csv = tmp_path / "m.csv"
    assert camid("match", str(prints["A"]), str(cw), str(ccw), "--out", str(csv), "--workers", "1") == 0
    rows = read_csv(csv).set_index("file")
    assert rows.loc[str(cw), "rotation"] == 90 and rows.loc[str(ccw), "rotation"] == 270
    assert (rows["width"] == H).all() and (rows["height"] == W).all()  # as stored
    assert (rows["decision"] == "match").all()
    assert rows["pce"].iloc[0] == pytest.approx(rows["pce"].iloc[1])


def test_shifted_crop_is_found_by_search_at_its_position(prints, devices, tmp_path):
    y0, x0 = 37, 51  # odd on purpose: nothing assumes a colour-filter-aligned crop
    own = save(tmp_path / "own.png", shoot(devices["A"], 777)[y0:y0 + 100, x0:x0 + 150])
    other = save(tmp_path / "other.png", shoot(devices["B"], 777)[y0:y0 + 100, x0:x0 + 150])
    plain, searched = tmp_path / "plain.csv", tmp_path / "search.csv"
    assert camid("match", str(prints["A"]), str(own), "--out", str(plain)) == 1  # not at zero shift
    assert "smaller than the fingerprint's 240x160 frame; pass --search" in read_csv(plain)["error"][0]
    assert camid("match", str(prints["A"]), str(own), str(other), "--search", "--out", str(searched),
                 "--workers", "1") == 0
    rows = read_csv(searched).set_index("file")
    hit, miss = rows.loc[str(own)], rows.loc[str(other)]
    assert (hit["shift_y"], hit["shift_x"], hit["decision"]) == (y0, x0, "match")
    assert miss["decision"] == "no match" and miss["pce"] < 60
    # The search tried every placement: (160 - 100 + 1) x (240 - 150 + 1) positions.
    assert hit["log10_p_fa"] == pytest.approx(prnu_tools.log10_false_alarm(hit["pce"], 61 * 91), abs=0.01)


@pytest.mark.parametrize("factor", [0.5, 0.8])
def test_resized_query_is_found_at_its_scale(prints, devices, tmp_path, factor):
    q = save(tmp_path / "small.png", manipulations.resize(shoot(devices["A"], 555), factor))
    csv = tmp_path / "m.csv"
    assert camid("match", str(prints["A"]), str(q), "--scales", "0.5,0.8", "--out", str(csv), "--workers", "1") == 0
    row = read_csv(csv).iloc[0]
    assert row["scale"] == factor and row["decision"] == "match"
    assert abs(row["shift_y"]) <= 1 and abs(row["shift_x"]) <= 1
    unscaled = prnu_tools.match_paths([prnu_tools.load_fingerprint(prints["A"])], [q], search=True)[0][0]
    assert unscaled.pce < row["pce"]


def test_queries_are_cropped_like_the_fingerprint(shots, devices, tmp_path, capsys):
    fp = tmp_path / "crop.npz"
    assert camid("fingerprint", str(shots / "A"), "-o", str(fp), "--crop", "96", "--workers", "1") == 0
    full = shoot(devices["A"], 31337)
    frame = save(tmp_path / "frame.png", full)
    same_crop = save(tmp_path / "crop96.png", full[32:128, 72:168])  # e.g. a competition-style centre crop
    small = save(tmp_path / "small.png", full[32 + 10:32 + 10 + 64, 72 + 20:72 + 20 + 64])
    csv = tmp_path / "m.csv"
    assert camid("match", str(fp), str(frame), str(same_crop), str(small), "--out", str(csv), "--workers", "1") == 1
    rows = read_csv(csv).set_index("file")
    assert rows.loc[str(frame), "decision"] == rows.loc[str(same_crop), "decision"] == "match"
    assert rows.loc[str(frame), "pce"] == pytest.approx(rows.loc[str(same_crop), "pce"])
    assert (rows.loc[str(same_crop), "shift_y"], rows.loc[str(same_crop), "shift_x"]) == (32, 72)
    assert rows.loc[str(small), "error"] == ("query 64x64 is smaller than the fingerprint's 96x96 crop; "
                                             "pass --search to look for it at every position")
    assert "small.png: cannot match" in capsys.readouterr().out
    assert camid("match", str(fp), str(small), "--search", "--out", str(csv), "--workers", "1") == 0
    row = read_csv(csv).iloc[0]
    assert (row["shift_y"], row["shift_x"], row["decision"]) == (42, 92, "match")


# ------------------------------------------------------------------ bad input

def test_empty_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    assert camid("fingerprint", str(tmp_path / "empty"), "-o", str(tmp_path / "k.npz")) == 2
    assert "empty: no image files in this folder" in one_line_error(capsys.readouterr().err, "fingerprint")
    assert camid("fingerprint", str(tmp_path / "missing"), "-o", str(tmp_path / "k.npz")) == 2
    assert "no such file or folder" in one_line_error(capsys.readouterr().err, "fingerprint")
    assert not (tmp_path / "k.npz").exists()


def test_mixed_sizes_are_refused(shots, tmp_path, devices, capsys):
    save(tmp_path / "other_size.png", shoot(devices["A"], 1)[:, :200])
    assert camid("fingerprint", str(shots / "A"), str(tmp_path / "other_size.png"), "-o", str(tmp_path / "k.npz")) == 2
    err = one_line_error(capsys.readouterr().err, "fingerprint")
    assert "240x160 (8: ref_0.png" in err and "200x160 (1: other_size.png)" in err


@pytest.mark.parametrize("crop", ["1000", "8"])
def test_impossible_crop_is_refused(shots, tmp_path, crop, capsys):
    assert camid("fingerprint", str(shots / "A"), "-o", str(tmp_path / "k.npz"), "--crop", crop) == 2
    one_line_error(capsys.readouterr().err, "fingerprint")


def test_unreadable_queries_are_reported_and_skipped(prints, shots, tmp_path, capsys):
    good = shots / "queries" / "A_0.png"
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    jpeg = tmp_path / "whole.jpg"
    Image.open(good).save(jpeg, quality=95)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    missing = tmp_path / "missing.png"
    csv = tmp_path / "m.csv"
    rc = camid("match", str(prints["A"]), str(corrupt), str(good), str(truncated), str(missing),
               "--out", str(csv), "--workers", "1")
    assert rc == 1
    rows = read_csv(csv).set_index("file")
    assert list(rows.index) == [str(corrupt), str(good), str(truncated), str(missing)]  # one row per query
    assert rows.loc[str(good), "decision"] == "match" and rows.loc[str(good), "error"] == ""
    bad = rows.drop(index=str(good))
    assert (bad["decision"] == "error").all() and (bad["error"] != "").all() and bad["pce"].isna().all()
    assert "not a recognised image format" in rows.loc[str(corrupt), "error"]
    assert "truncated" in rows.loc[str(truncated), "error"]
    out = capsys.readouterr().out
    assert "corrupt.jpg: cannot match" in out and "3 of 4 queries could not be matched" in out


def test_corrupt_reference_photo_is_skipped_and_listed(shots, tmp_path, capsys):
    refs = tmp_path / "refs"
    for p in sorted((shots / "A").glob("*.png"))[:3]:
        save(refs / p.name, np.asarray(Image.open(p)))
    (refs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    assert camid("fingerprint", str(refs), "-o", str(tmp_path / "k.npz"), "--workers", "1") == 1
    meta = prnu_tools.load_fingerprint(tmp_path / "k.npz").meta
    assert meta["count"] == 3 and [s["path"] for s in meta["skipped"]] == [str(refs / "broken.png")]
    assert "could not be read and were left out" in capsys.readouterr().out


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def bad_fingerprint_files(tmp: Path, good: Path) -> dict[str, tuple[Path, str]]:
    meta = json.loads(str(np.load(good, allow_pickle=False)["meta"]))
    k = np.load(good, allow_pickle=False)["fingerprint"]
    newer = _npz(tmp / "newer.npz", fingerprint=k, meta=np.array(json.dumps({**meta, "format_version": 99,
                                                                             "camid_version": "9.0"})))
    text = tmp / "notes.npz"
    text.write_text("not an archive")
    jpeg = tmp / "photo.jpg"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(jpeg)
    truncated = tmp / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    objects = tmp / "objects.npz"
    np.savez(objects, fingerprint=k, meta=np.array([{"format": prnu_tools.FORMAT}], dtype=object))
    npy = tmp / "array.npy"
    np.save(npy, k)
    wrong_shape = _npz(tmp / "shape.npz", fingerprint=k[:10], meta=np.array(json.dumps(meta)))
    return {
        "another format version": (newer, "fingerprint format version 99 (written by camid 9.0); this camid"),
        "an npz of other arrays": (_npz(tmp / "other.npz", weights=k), "not a camid PRNU fingerprint (it holds"),
        "a text file": (text, "not a camid PRNU fingerprint (.npz) file, or truncated"),
        "a JPEG": (jpeg, "not a"),
        "a truncated file": (truncated, "not a camid PRNU fingerprint (.npz) file, or truncated"),
        "pickled objects": (objects, "not a usable camid PRNU fingerprint"),
        "a bare .npy": (npy, "a single .npy array"),
        "a damaged array": (wrong_shape, "damaged fingerprint"),
        "a missing file": (tmp / "nope.npz", "fingerprint file not found"),
    }


def test_bad_fingerprint_files_are_one_line_errors(prints, shots, tmp_path, capsys):
    cases = bad_fingerprint_files(tmp_path, prints["A"])
    for what, (path, message) in cases.items():
        assert camid("match", str(path), str(shots / "queries")) == 2, what
        err = one_line_error(capsys.readouterr().err, "match")
        assert message in err, (what, err)
        assert "allow_pickle" not in err  # never advise loading pickles


def test_output_name_and_threshold_are_checked(shots, prints, tmp_path, capsys):
    assert camid("fingerprint", str(shots / "A"), "-o", str(tmp_path / "k.bin")) == 2
    assert "must end in .npz" in one_line_error(capsys.readouterr().err, "fingerprint")
    assert camid("match", str(prints["A"]), str(shots / "queries"), "--threshold", "0") == 2
    one_line_error(capsys.readouterr().err, "match")
    assert camid("match", str(prints["A"]), str(shots / "queries"), "--scales", "0.5,x") == 2
    one_line_error(capsys.readouterr().err, "match")


# ------------------------------------------------------------------ the command tree

def test_prnu_alone_lists_its_subcommands_and_points_to_evaluate(capsys):
    assert camid() == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("evaluate", "fingerprint", "match"))
    assert camid("--config", "configs/demo.yaml", "--data", "data/simulated") == 2
    assert "now `camid prnu evaluate`" in capsys.readouterr().err
    for sub in ("evaluate", "fingerprint", "match"):
        with pytest.raises(SystemExit) as exc:
            camid(sub, "--help")
        assert exc.value.code == 0 and f"camid prnu {sub}" in capsys.readouterr().out


# ------------------------------------------------------------------ maths

def test_search_peak_finds_circular_and_inside_shifts():
    rng = np.random.default_rng(0)
    k = rng.standard_normal((64, 96)).astype(np.float32)
    grey = np.ones((64, 96), np.float32)
    shifted = np.roll(k, (5, -7), axis=(0, 1))  # query pixel x carries K(x + s) with s = (-5, 7)
    pce, ncc, dy, dx, n = prnu_tools.search_peak(shifted, grey, k, circular=True)
    assert (dy, dx, n) == (-5, 7, 64 * 96) and ncc == pytest.approx(1.0) and pce > 1000
    crop = k[10:40, 20:60]
    pce, ncc, dy, dx, n = prnu_tools.search_peak(crop, grey[:30, :40], k, circular=False)
    assert (dy, dx, n) == (10, 20, 35 * 57) and ncc == pytest.approx(1.0)
    noise = rng.standard_normal((30, 40)).astype(np.float32)
    assert prnu_tools.search_peak(noise, grey[:30, :40], k, circular=False)[0] < 40  # max of ~2000 chi-square(1)


def test_false_alarm_model_matches_the_gaussian_tail():
    for pce in (4.0, 25.0, 60.0, 400.0):
        assert prnu_tools.log10_false_alarm(pce, 1) == pytest.approx(stats.norm.logsf(np.sqrt(pce)) / np.log(10))
    assert prnu_tools.log10_false_alarm(60.0, 10 ** 6) == pytest.approx(prnu_tools.log10_false_alarm(60.0, 1) + 6)
    assert prnu_tools.log10_false_alarm(4.0, 10 ** 6) == pytest.approx(0.0, abs=1e-6)  # certain among 1e6 tries
    assert prnu_tools.log10_false_alarm(-50.0, 1) == 0.0

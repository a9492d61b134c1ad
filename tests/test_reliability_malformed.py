"""Issue 8, point 1: malformed images in train, external and test folders.

Readable oddities (CMYK, palette, grayscale, 16-bit and float TIFF, alpha, bilevel, a PNG
named .jpg, photos smaller than the crop) are converted and used. Unusable files (empty,
truncated, corrupt header, not an image, decompression-bomb sized) are skipped with a
reason in ``models/<run>/fold<k>/skipped.csv``; too many of them stop the run with a
clear error. A bad test file is an error naming it: a submission must cover every file.
The decompression-bomb limit is lowered for these tests so a 200x200 PNG counts as one.
"""
from __future__ import annotations

import io
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from camid.data import folds as folds_csv
from camid.data import images as data_mod
from camid.data.images import probe_image, read_image
from camid.data.samples import SampleSpec, TrainSamples, build_variants
from camid.errors import ImageReadError
from camid.infer.table import read_table
from reliability_tiny import camid, jpeg_bytes, one_error
from tiny_config import tiny_config

BOMB_LIMIT = 15_000  # pixels; every good image here is far smaller, bomb.png is 40,000


def _rgb(h: int = 48, w: int = 64, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _corrupt_header() -> bytes:
    data = bytearray(jpeg_bytes(seed=3))
    data[2:40] = bytes(38)  # SOI kept, APP0/DQT headers zeroed
    return bytes(data)


# name -> file bytes. Readable oddities: converted to HxWx3 uint8 and used.
READABLE = {
    "cmyk.jpg": lambda: _save(_rgb(seed=1).convert("CMYK"), "JPEG"),
    "cmyk.tif": lambda: _save(_rgb(seed=2).convert("CMYK"), "TIFF"),
    "palette.png": lambda: _save(_rgb(seed=3).convert("P"), "PNG"),
    "palette_alpha.png": lambda: _save(_rgb(seed=4).convert("P"), "PNG", transparency=0),
    "gray.jpg": lambda: _save(_rgb(seed=5).convert("L"), "JPEG"),
    "gray_alpha.png": lambda: _save(_rgb(seed=6).convert("LA"), "PNG"),
    "rgba.png": lambda: _save(_rgb(seed=7).convert("RGBA"), "PNG"),
    "bilevel.png": lambda: _save(_rgb(seed=8).convert("1"), "PNG"),
    "sixteen.tif": lambda: _save(Image.fromarray(
        np.random.default_rng(9).integers(0, 65536, (48, 64)).astype(np.uint16)), "TIFF"),
    "float.tif": lambda: _save(Image.fromarray(
        np.random.default_rng(10).random((48, 64)).astype(np.float32) * 255), "TIFF"),
    "png_named.jpg": lambda: _save(_rgb(seed=11), "PNG"),  # wrong extension: content decides
    "small.jpg": lambda: _save(_rgb(14, 20, seed=12), "JPEG", quality=95),  # smaller than every crop
}
# name -> (file bytes, words the skip reason must contain)
UNUSABLE = {
    "empty.jpg": (lambda: b"", "empty file"),
    "truncated.jpg": (lambda: jpeg_bytes(seed=13)[:700], "truncated"),
    "corrupt_header.jpg": (_corrupt_header, "not a recognised image"),
    "text.jpg": (lambda: b"this is a README, not a photo\n" * 20, "not a recognised image"),
    "html.png": (lambda: b"<html><body>404 Not Found</body></html>", "not a recognised image"),
    "bomb.png": (lambda: _save(Image.new("RGB", (200, 200)), "PNG"), "decompression bomb"),
}


@pytest.fixture(autouse=True)
def bomb_limit(monkeypatch):
    """A 200x200 image counts as a decompression bomb (PIL raises above 2x the limit)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_LIMIT)
    monkeypatch.setattr(data_mod, "MAX_PIXELS", BOMB_LIMIT)  # the one guard: read_image, fastjpeg, the filter


def write_zoo(folder: Path, names=None) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    makers = {**READABLE, **{k: v[0] for k, v in UNUSABLE.items()}}
    out = {}
    for name in names or makers:
        out[name] = folder / name
        out[name].write_bytes(makers[name]())
    return out


# ------------------------------------------------------------------ single files

@pytest.mark.parametrize("name", sorted(READABLE))
def test_readable_oddities_become_rgb_uint8(tmp_path, name):
    path = write_zoo(tmp_path, [name])[name]
    img = read_image(path)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.flags.writeable
    assert probe_image(path) == (img.shape[1], img.shape[0])


@pytest.mark.parametrize("name", sorted(UNUSABLE))
def test_unusable_files_raise_image_read_error_with_a_reason(tmp_path, name):
    path = write_zoo(tmp_path, [name])[name]
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert UNUSABLE[name][1] in err.value.reason and err.value.path == str(path)
    if name != "truncated.jpg":  # a header pass sees everything but truncated pixel data
        with pytest.raises(ImageReadError):
            probe_image(path)


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about the damaged metadata it skips
def test_mutated_files_never_raise_anything_but_image_read_error(tmp_path):
    """500 randomly damaged JPEG/PNG/TIFF/BMP/WebP/GIF files: decoded or refused, never a crash."""
    rng = np.random.default_rng(2018)
    bases = [_save(_rgb(24, 32, seed=s), fmt) for s, fmt in
             enumerate(["JPEG", "PNG", "TIFF", "BMP", "WEBP", "GIF"])]
    path = tmp_path / "fuzz.bin"
    for i in range(500):
        data = bytearray(bases[i % len(bases)])
        for _ in range(int(rng.integers(1, 6))):
            data[int(rng.integers(0, min(len(data), 160)))] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            data = data[:int(rng.integers(1, len(data)))]
        path.write_bytes(bytes(data))
        try:
            img = read_image(path)
        except ImageReadError:
            continue
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


def test_training_sampler_turns_every_file_into_a_sample_or_a_skip(tmp_path):
    """The DataLoader path (region decoding included) never raises on a bad file."""
    zoo = write_zoo(tmp_path)
    # A restart-marker JPEG is region-decoded lazily: its truncation shows only at crop time.
    zoo["rst_truncated.jpg"] = tmp_path / "rst_truncated.jpg"
    full = jpeg_bytes(96, 128, seed=14, restart_marker_blocks=1)
    zoo["rst_truncated.jpg"].write_bytes(full[: len(full) // 2])
    spec = SampleSpec(input_size=16, crop_factor=2, manip_prob=0.5, orientation="flips")
    for name, path in zoo.items():
        samples = TrainSamples([str(path)], [0], 1, length=4, spec=spec, seed=1)
        for i in range(len(samples)):
            item = samples[i]
            if name in READABLE:
                assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.uint8, name
            else:
                assert item["skip"] == str(path) and item["reason"], name


def test_validation_variants_skip_unusable_files_and_pad_small_ones(tmp_path):
    zoo = write_zoo(tmp_path)
    names = sorted(zoo)
    var = build_variants([str(zoo[n]) for n in names], names, [0] * len(names),
                         ["none", "resize0.5", "jpeg70"], crop=32, desc=None)
    assert sorted(Path(p).name for p, _ in var.skipped) == sorted(UNUSABLE)
    assert var.images.shape == (3 * len(READABLE), 3, 32, 32)
    assert sorted(set(var.fnames)) == sorted(READABLE)


def test_filter_external_reports_every_malformed_file_and_keeps_going(tmp_path):
    write_zoo(tmp_path / "scraped" / "cam")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"min_side": 8, "classes": [{"name": "cam", "models": ["X"]}]}))
    assert camid("filter-external", tmp_path / "scraped", "--rules", rules, "--out", tmp_path / "out",
                 "--workers", "1", "--decode-all") == 0
    report = pd.read_csv(tmp_path / "out" / "filter_report.csv", dtype=str, keep_default_na=False)
    by_name = {Path(p).name: r for p, r in zip(report["path"], report["reasons"], strict=True)}
    assert sorted(by_name) == sorted([*READABLE, *UNUSABLE])
    assert (report["decision"] == "reject").all()
    for name in UNUSABLE:
        assert by_name[name].startswith("unreadable"), (name, by_name[name])


# ------------------------------------------------------------------ whole runs

ODD_TEST = {  # test files: readable oddities must be predicted like any other (at predict.crop, 32, but one)
    "img_00000a1_unalt.tif": lambda: _save(_rgb(32, 32, seed=20).convert("CMYK"), "TIFF"),
    "img_00000a2_manip.tif": lambda: _save(Image.fromarray(
        np.random.default_rng(21).integers(0, 65536, (32, 32)).astype(np.uint16)), "TIFF"),
    "img_00000a3_unalt.png": lambda: _save(_rgb(32, 32, seed=22).convert("P"), "PNG"),
    "img_00000a4_manip.png": lambda: _save(_rgb(32, 32, seed=23).convert("RGBA"), "PNG"),
    "img_00000a5_unalt.tif": lambda: _save(_rgb(20, 20, seed=24), "TIFF"),  # smaller than the 32 crop
    "img_00000a6_manip.tif": lambda: _save(_rgb(32, 32, seed=25), "TIFF"),
}
CLASSES = ["cam-a", "cam-b", "cam-c"]


def _config(path: Path, data: Path, extra: Sequence[Path] = (), **train: float) -> Path:
    return tiny_config(path, data, name="malformed", seed=3, extra_train_dirs=[str(p) for p in extra],
                       train={"input_size": 16, "epochs": 1, "val_crop": 32, **train},
                       predict={"tta": "none", "top_n": 1, "crop": 32, "oof_augs": ["jpeg70"], "batch_size": 40})


def _good_photos(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"g{i:03d}.jpg").write_bytes(jpeg_bytes(40, 48, seed=seed + i))


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory):
    """Training photos include every readable oddity; both folds trained, then predicted."""
    root = tmp_path_factory.mktemp("odd")
    data = root / "data"
    for c, cls in enumerate(CLASSES):
        _good_photos(data / "train" / cls, 5, 100 * c)
    for i, name in enumerate(sorted(READABLE)):
        (data / "train" / CLASSES[i % 3] / name).write_bytes(READABLE[name]())
    (data / "test").mkdir()
    for name, make in ODD_TEST.items():
        (data / "test" / name).write_bytes(make())
    common = ["--config", _config(root / "c.yaml", data), "--workdir", root]
    assert camid("folds", *common) == 0
    codes = [camid("train", *common, "--fold", k) for k in (0, 1)]
    return root, data, common, codes


def test_readable_oddities_train_and_predict_without_skips(odd_run):
    root, data, common, codes = odd_run
    assert codes == [0, 0]
    assert not list((root / "models").rglob("skipped.csv"))
    assert camid("predict", *common) == 0
    table = read_table(root / "oof" / "camid_tiny.none.parquet", CLASSES)
    oof = table[table["split"] == "oof"]
    assert {Path(f).name for f in oof["fname"]} >= set(READABLE)  # every oddity predicted out of fold
    assert sorted(table.loc[table["split"] == "test", "fname"]) == sorted(ODD_TEST)
    assert np.isfinite(table[CLASSES].to_numpy()).all()


@pytest.mark.parametrize("bad", ["empty.jpg", "truncated.jpg", "text.jpg", "bomb.png"])
def test_a_bad_test_file_is_an_error_naming_it(odd_run, tmp_path, capsys, bad):
    root, data, common, _ = odd_run
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    name = f"img_00000ff_unalt{Path(bad).suffix}"
    (copy / "test" / name).write_bytes(UNUSABLE[bad][0]())
    capsys.readouterr()
    assert camid("predict", *common, "--data", copy, "--force") == 2
    err = one_error(capsys.readouterr().err, "predict")
    assert err.startswith(f"camid predict: error: test file {name} cannot be used: ") and UNUSABLE[bad][1] in err


@pytest.fixture(scope="module")
def unusable_data(tmp_path_factory):
    """138 good photos in train/, the 6 unusable files in an external folder (ext0/...),
    all unusable ones (plus 5 good photos per class) in validation fold 0."""
    root = tmp_path_factory.mktemp("unusable")
    data = root / "data"
    for c, cls in enumerate(CLASSES):
        _good_photos(data / "train" / cls, 46, 1000 * c)
    for i, name in enumerate(sorted(UNUSABLE)):
        folder = root / "external" / CLASSES[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(UNUSABLE[name][0]())
    return root, data


def _folds(root: Path, cfg: Path) -> None:
    """``camid folds``, then every unusable file and g000-g004 of each class into fold 0."""
    assert camid("folds", "--config", cfg, "--workdir", root) == 0
    folds = folds_csv.read_folds(root / "models" / "folds.csv")
    val = folds["fname"].str.startswith("ext0/") | folds["fname"].str.contains(r"/g00[0-4]\.jpg$")
    folds["fold"] = np.where(val, 0, 1)
    folds_csv.write_folds(folds, root / "models" / "folds.csv")


def test_unusable_files_are_skipped_with_reasons_and_the_run_finishes(unusable_data, tmp_path):
    root, data = unusable_data
    work = tmp_path
    cfg = _config(work / "c.yaml", data, [root / "external"])
    _folds(work, cfg)
    assert camid("train", "--config", cfg, "--workdir", work, "--fold", 0) == 0  # 6 of 123: under 5%
    run = work / "models" / "camid_tiny" / "fold0"
    skipped = pd.read_csv(run / "skipped.csv")
    reasons = {Path(p).name: r for p, r in zip(skipped["path"], skipped["reason"], strict=True)}
    assert sorted(reasons) == sorted(UNUSABLE)
    for name, (_, words) in UNUSABLE.items():
        assert words in reasons[name], (name, reasons[name])
    assert (run / "done.json").is_file()


def test_the_skip_threshold_is_configurable_and_stops_with_a_clear_error(unusable_data, tmp_path, capsys):
    root, data = unusable_data
    cfg = _config(tmp_path / "c.yaml", data, [root / "external"], max_skip_fraction=0.01)
    _folds(tmp_path, cfg)
    capsys.readouterr()
    assert camid("train", "--config", cfg, "--workdir", tmp_path, "--fold", 0) == 2
    err = one_error(capsys.readouterr().err, "train")
    assert "unreadable" in err and "skipped.csv" in err
    assert len(pd.read_csv(tmp_path / "models" / "camid_tiny" / "fold0" / "skipped.csv")) == 6


def test_too_many_unusable_training_files_stop_the_run_with_a_report(unusable_data, tmp_path, capsys):
    root, data = unusable_data
    cfg = _config(tmp_path / "c.yaml", data, [root / "external"])
    _folds(tmp_path, cfg)
    capsys.readouterr()
    # Fold 1's training part is fold 0: 15 good photos and the 6 unusable files.
    assert camid("train", "--config", cfg, "--workdir", tmp_path, "--fold", 1) == 2
    err = one_error(capsys.readouterr().err, "train")
    assert "unreadable" in err and "skipped.csv" in err
    skipped = pd.read_csv(tmp_path / "models" / "camid_tiny" / "fold1" / "skipped.csv")
    assert {Path(p).name for p in skipped["path"]} >= set(UNUSABLE) - {"truncated.jpg"}


def test_predict_writes_oof_rows_for_the_usable_images_and_reports_the_rest(unusable_data, tmp_path):
    root, data = unusable_data
    cfg = _config(tmp_path / "c.yaml", data, [root / "external"])
    _folds(tmp_path, cfg)
    common = ["--config", cfg, "--workdir", tmp_path]
    assert camid("train", *common, "--fold", 0) == 0
    (data / "test").mkdir(exist_ok=True)
    for name, make in ODD_TEST.items():
        (data / "test" / name).write_bytes(make())
    assert camid("predict", *common) == 0
    table = read_table(tmp_path / "oof" / "camid_tiny.none.parquet", CLASSES)
    assert not {Path(f).name for f in table["fname"]} & set(UNUSABLE)
    meta = yaml.safe_load((tmp_path / "oof" / "camid_tiny.none.json").read_text())
    assert sorted(Path(p).name for p in meta["skipped"]) == sorted(UNUSABLE)

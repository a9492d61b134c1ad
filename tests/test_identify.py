"""`camid identify`: arbitrary photos (sizes, formats, unreadable files) through the trained ensemble."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from camid import cli
from camid.forensics import identify
from camid.infer.ensemble import Ensemble
from camid.train.rundir import RunDir
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
    files = RunDir(root / "models" / "camid_tiny" / "fold0").checkpoint_files(2)
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

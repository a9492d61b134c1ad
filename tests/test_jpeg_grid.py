"""The JPEG grid phase: the estimator, and training/validation/OOF crops on the test crops' phase."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from camid import cli
from camid.config import load_config
from camid.data import jpeg_grid, manipulations
from camid.data.crops import centre_offset
from camid.data.images import read_image
from camid.data.samples import build_variants, training_sample
from camid.train.trainer import Trainer, crop_phases
from camid.workspace import Workspace
from tiny_config import tiny_config
from trained_tiny import CLASSES, photo

# 104 columns and a 48 px crop: the centre offset is 28, so the test crops' column phase is 4; 80 rows: 16, phase 0
TEST_SHAPE, CROP = (80, 104), 48


def jpeg(img: np.ndarray, quality: int = 90) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


@pytest.mark.parametrize("phase", [(0, 0), (4, 0), (2, 6), (6, 2), (3, 5)])
def test_the_estimator_recovers_a_known_phase_on_decoded_jpeg_crops(phase):
    decoded = jpeg(photo(400, 400, 1, 7), quality=92)
    for top, left in ((64, 96), (160, 8)):
        y, x = top + phase[0], left + phase[1]
        found, margin = jpeg_grid.estimate_phase(decoded[y:y + 160, x:x + 160])
        assert found == phase and margin >= jpeg_grid.MIN_MARGIN


def test_an_image_that_was_never_a_jpeg_shows_no_clear_grid():
    _, margin = jpeg_grid.estimate_phase(photo(160, 160, 1, 7))
    assert margin < jpeg_grid.MIN_MARGIN
    assert jpeg_grid.measure([("a", photo(160, 160, 1, 7))]).phases is None


def test_phased_centre_offsets_are_nearest_the_centre_and_deterministic_per_file():
    from camid.data.crops import phased_offset

    assert phased_offset(104, 48, 4) == 28 and phased_offset(96, 48, 4) == 20  # centre 24: 20 and 28 tie
    assert phased_offset(96, 48, 0) == 24 and phased_offset(50, 48, 4) == centre_offset(50, 48)  # no room
    mix = jpeg_grid.PhaseSet(((0, 0), (4, 0)), (0.25, 0.75))
    draws = [mix.for_key(f"f{i}.jpg") for i in range(400)]
    assert draws == [mix.for_key(f"f{i}.jpg") for i in range(400)]
    assert 0.65 < draws.count((4, 0)) / 400 < 0.85


@pytest.fixture(scope="module")
def competition(tmp_path_factory):
    """Training photos of two sizes (one whose centre crop has column phase 4, one phase 0) and
    test crops: centre crops of JPEG photos whose size gives column phase 4."""
    root = tmp_path_factory.mktemp("grid")
    data = root / "data"
    for c, cls in enumerate(CLASSES):
        (data / "train" / cls).mkdir(parents=True)
        for i in range(4):
            h, w = (TEST_SHAPE if i % 2 else (80, 96))
            Image.fromarray(photo(h, w, c, 10 * c + i)).save(data / "train" / cls / f"{i}.jpg", quality=90)
    (data / "test").mkdir()
    for i in range(6):
        img = jpeg(photo(*TEST_SHAPE, i % 3, 200 + i), quality=90)
        y, x = centre_offset(TEST_SHAPE[0], CROP), centre_offset(TEST_SHAPE[1], CROP)
        Image.fromarray(img[y:y + CROP, x:x + CROP]).save(data / "test" / f"img_{i}_unalt.tif")
    cfg = tiny_config(root / "tiny.yaml", data, train={"orientation": "none", "manip_prob": 0.0, "val_crop": CROP},
                      predict={"tta": "full", "crop": CROP, "top_n": 1})
    assert cli.main(["folds", "--config", str(cfg), "--workdir", str(root)]) == 0
    return root, data, cfg


def _offset_in(photo_px: np.ndarray, crop: np.ndarray) -> tuple[int, int]:
    """Where ``crop`` lies in ``photo_px`` (exact match)."""
    s = crop.shape[0]
    hits = [(y, x) for y in range(photo_px.shape[0] - s + 1) for x in range(photo_px.shape[1] - s + 1)
            if np.array_equal(photo_px[y:y + s, x:x + s], crop)]
    assert len(hits) == 1
    return hits[0]


def coordinates(h: int, w: int) -> np.ndarray:
    """A photo whose pixel says where it is: red = row, green = column."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([y, x, np.zeros_like(y)], axis=-1).astype(np.uint8)


def test_training_and_validation_crops_sit_on_the_test_crops_phase(competition):
    root, data, cfg_path = competition
    cfg = load_config(cfg_path)
    trainer = Trainer(cfg, Workspace(root, data), cfg.models[0], 0, torch.device("cpu"))
    trainer._datasets()
    assert trainer.phases.train.phases == ((0, 4),)
    rng = np.random.default_rng(0)
    for shape in (TEST_SHAPE, (80, 96), (200, 240)):
        for _ in range(20):
            x, _ = training_sample(coordinates(*shape), rng, trainer.train_set.spec)
            assert (int(x[0, 0, 0]) % 8, int(x[1, 0, 0]) % 8) == (0, 4)
    # validation (predict.tta full: the whole crop is the view): each photo's crop at column phase 4
    unaltered = [(f, img) for f, a, img in zip(trainer.val.fnames, trainer.val.aug, trainer.val.images, strict=True)
                 if a == "none"]
    assert len(unaltered) == 6
    for fname, img in unaltered:
        y, x = _offset_in(read_image(data / fname), img.permute(1, 2, 0).numpy())
        assert (y % 8, x % 8) == (0, 4)


def test_oof_crops_take_the_test_phase_whatever_the_photo_size(competition):
    root, data, cfg_path = competition
    cfg = load_config(cfg_path)
    test = pd.DataFrame({"fname": [p.name for p in sorted((data / "test").iterdir())]})
    test = test.assign(path=[str(data / "test" / f) for f in test["fname"]], manip=0)
    phases = crop_phases(cfg, jpeg_grid.survey_test_set(test), 32)
    assert phases.place is not None and phases.place.phases == ((0, 4),)
    paths = [str(data / "train" / CLASSES[0] / f"{i}.jpg") for i in (0, 1)]  # 96 and 104 columns
    var = build_variants(paths, ["a", "b"], [0, 0], ["none", "jpeg70", "gamma0.8"], CROP, desc=None,
                         phases=phases.place)
    for k, path in enumerate(paths):
        y, x = _offset_in(read_image(path), var.images[3 * k].permute(1, 2, 0).numpy())
        assert (y % 8, x % 8) == (0, 4)
        for j, name in ((1, "jpeg70"), (2, "gamma0.8")):  # a manipulated variant: the whole photo's, same box
            whole = manipulations.apply(read_image(path), name)[y:y + CROP, x:x + CROP]
            assert np.array_equal(var.images[3 * k + j].permute(1, 2, 0).numpy(), whole)
    old = build_variants(paths[:1], ["a"], [0], ["none"], CROP, desc=None)  # the centre: phase 0 for 96 columns
    assert _offset_in(read_image(paths[0]), old.images[0].permute(1, 2, 0).numpy()) == (16, 24)

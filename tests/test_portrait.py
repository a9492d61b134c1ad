"""Portrait photos stored with rotated pixels are trained in the landscape sensor frame (config ``portrait``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from camid.config import ConfigError, load_config
from camid.data.images import read_image
from camid.data.orientation import sensor_frame
from camid.data.samples import SampleSpec, TrainSamples, build_variants
from camid.train.trainer import train_digest


def scene(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def photos(tmp_path):
    """A portrait JPEG as a phone that rotates pixels stores it, and the same pixels turned to
    landscape, saved losslessly: what the sensor frame must give."""
    portrait = tmp_path / "portrait.jpg"
    Image.fromarray(scene(160, 128, 1)).save(portrait, quality=92)
    landscape = tmp_path / "landscape.png"
    Image.fromarray(np.rot90(read_image(portrait), 1).copy()).save(landscape)
    return portrait, landscape


def test_sensor_frame_turns_only_portrait_images():
    tall, wide, square = scene(6, 4, 0), scene(4, 6, 0), scene(5, 5, 0)
    out = sensor_frame(tall)
    assert out.shape == (4, 6, 3) and out.flags["C_CONTIGUOUS"]
    assert np.array_equal(out, np.rot90(tall, 1))
    assert out[0, 0].tolist() == tall[0, -1].tolist()  # counter-clockwise: the top-right pixel leads
    assert sensor_frame(wide) is wide and sensor_frame(square) is square


@pytest.mark.parametrize("preload", [True, False])
def test_training_samples_of_a_portrait_photo_are_those_of_its_landscape_pixels(photos, preload):
    portrait, landscape = photos
    spec = SampleSpec(32, 2, manip_prob=0.5, orientation="flips")
    turned = TrainSamples([str(portrait)], [0], 1, 12, spec, seed=3, portrait="rotate")
    truth = TrainSamples([str(landscape)], [0], 1, 12, spec, seed=3, portrait="keep")
    kept = TrainSamples([str(portrait)], [0], 1, 12, spec, seed=3, portrait="keep")
    if preload:
        for ds in (turned, truth, kept):
            assert ds.preload(None) == []
        assert turned.images[0].shape[:2] == (128, 160) and turned.turned == 1 and kept.turned == 0
    for i in range(12):
        a, b, c = turned[i], truth[i], kept[i]
        assert a["manip"] == b["manip"] and torch.equal(a["image"], b["image"])
        assert c["manip"] == b["manip"]
    assert any(not torch.equal(kept[i]["image"], truth[i]["image"]) for i in range(12))


def test_validation_and_oof_variants_use_the_same_frame(photos):
    portrait, landscape = photos
    augs = ["none", "jpeg70", "resize0.8", "gamma1.2"]
    turned = build_variants([str(portrait)], ["p"], [0], augs, 96, desc=None, portrait="rotate")
    truth = build_variants([str(landscape)], ["p"], [0], augs, 96, desc=None)
    kept = build_variants([str(portrait)], ["p"], [0], augs, 96, desc=None, portrait="keep")
    assert torch.equal(turned.images, truth.images)
    assert not torch.equal(kept.images, truth.images)


def test_the_setting_is_validated_and_part_of_the_training_digest(tmp_path):
    cfg = load_config()
    assert cfg.portrait == "rotate"
    (tmp_path / "keep.yaml").write_text("portrait: keep\n")
    keep = load_config(tmp_path / "keep.yaml")
    assert keep.portrait == "keep"
    assert train_digest(cfg, cfg.models[0]) != train_digest(keep, keep.models[0])
    (tmp_path / "bad.yaml").write_text("portrait: sideways\n")
    with pytest.raises(ConfigError, match="portrait"):
        load_config(tmp_path / "bad.yaml")

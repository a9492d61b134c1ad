"""The defects of issue 13 §1 that silently cost accuracy: each test failed before its fix."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from camid.config import ConfigError, load_config
from camid.data import manipulations, samples
from camid.data.samples import SampleSpec, TrainSamples, training_sample
from camid.level2 import stack
from camid.models.classifier import build_model
from camid.train.rundir import INDEX, RunDir


def _coordinate_photo(h: int, w: int) -> np.ndarray:
    """Pixel (y, x) holds (y % 256, x % 256, (y // 256) * 16 + x // 256): a crop tells where it came from."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([y % 256, x % 256, (y // 256) * 16 + x // 256], axis=-1).astype(np.uint8)


def _origin(crop: torch.Tensor) -> tuple[int, int]:
    c = crop.numpy()
    return int(c[2, 0, 0]) // 16 * 256 + int(c[0, 0, 0]), int(c[2, 0, 0]) % 16 * 256 + int(c[1, 0, 0])


def test_unmanipulated_training_crops_sit_on_the_jpeg_block_grid():
    """Test crops are centre crops on the camera's 8x8 grid; training crops were on any even offset."""
    img = _coordinate_photo(600, 800)
    spec = SampleSpec(64, 2, manip_prob=0.0, orientation="none")
    origins = [_origin(training_sample(img, np.random.default_rng(i), spec)[0]) for i in range(200)]
    assert all(y % 8 == 0 and x % 8 == 0 for y, x in origins)
    assert len(set(origins)) > 150  # still spread over the photo


@pytest.mark.parametrize("name", ["jpeg70", "jpeg90", "gamma0.8"])
def test_jpeg_manipulated_pre_crops_sit_on_the_mcu_grid(monkeypatch, name):
    """A recompressed pre-crop must share the photo's 16-px MCU grid, as the test set's
    recompressed photos do; it was on a 2-px grid, so only 1/16 of them were."""
    starts: list[tuple[int, int]] = []

    def spy(big: np.ndarray, drawn: str) -> np.ndarray:
        starts.append(_origin(torch.from_numpy(big).permute(2, 0, 1)))
        return big

    monkeypatch.setattr(manipulations, "apply", spy)
    monkeypatch.setattr(manipulations, "MANIPULATION_NAMES", (name,))
    img = _coordinate_photo(600, 800)
    spec = SampleSpec(64, 2, manip_prob=1.0, orientation="none")
    for i in range(100):
        crop, flag = training_sample(img, np.random.default_rng(i), spec)
        y, x = _origin(crop)
        assert flag == 1 and y % 8 == 0 and x % 8 == 0
    assert len(starts) == 100 and all(y % 16 == 0 and x % 16 == 0 for y, x in starts)


def test_a_photo_smaller_than_the_pre_crop_is_taken_whole_and_only_keeps_resizes_that_cover_the_input():
    """A 512-px pseudo-labelled test crop under a 960 pre-crop (the Kaggle profile) is not padded,
    and a 0.5 or 0.8 resize (256, 409 px) that could not hold a 480 input is never drawn."""
    assert samples._allowed(512, 480) == ("jpeg70", "jpeg90", "resize1.5", "resize2.0", "gamma0.8", "gamma1.2")
    img = np.random.default_rng(0).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    spec = SampleSpec(48, 2, manip_prob=1.0, orientation="none")
    for i in range(40):
        crop, _ = training_sample(img, np.random.default_rng(i), spec)
        assert crop.shape == (3, 48, 48)


def test_a_pseudo_labelled_manipulated_crop_is_flagged_and_never_manipulated_again(monkeypatch):
    monkeypatch.setattr(manipulations, "apply", lambda *a: pytest.fail("manipulated twice"))
    img = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    ds = TrainSamples(["x.tif"], [0], 1, 20, SampleSpec(64, 2, manip_prob=1.0), seed=0, fixed_manip=[True])
    ds.images[0] = img
    assert all(ds[i]["manip"] == 1.0 for i in range(20))


def test_dropout_never_touches_the_manip_flag():
    """The head must see the flag exactly (it saw 0 or 1/(1-p) and lost it p of the time)."""
    net = build_model("camid_tiny", 3, dropout=0.5, pretrained=False).train()
    seen: list[torch.Tensor] = []
    net.head.register_forward_hook(lambda m, inp, out: seen.append(inp[0][:, -1].detach().clone()))
    flags = torch.tensor([1.0, 0.0] * 32)
    net(net.normalize(torch.zeros(64, 3, 32, 32, dtype=torch.uint8)), flags)
    assert torch.equal(seen[0], flags)


def _index(tmp_path, entries):
    for e in entries:
        (tmp_path / e["file"]).write_bytes(b"x")
    (tmp_path / INDEX).write_text(json.dumps({"checkpoints": entries, "classes": ["a", "b"]}))
    return RunDir(tmp_path)


def test_the_snapshot_policy_takes_the_cycle_end_snapshots_not_a_better_scoring_mid_cycle_epoch(tmp_path):
    """top-N by validation score picked a high-LR mid-cycle epoch ahead of the snapshots."""
    ranked = [{"file": "epoch012.pt", "epoch": 12, "score": 0.9, "loss": 0.3, "kind": "epoch"},
              {"file": "snapshot01.pt", "epoch": 16, "score": 0.8, "loss": 0.4, "kind": "snapshot"},
              {"file": "snapshot00.pt", "epoch": 13, "score": 0.7, "loss": 0.5, "kind": "snapshot"}]
    rd = _index(tmp_path, ranked)
    assert [f.name for f in rd.checkpoint_files(2, "snapshots")] == ["snapshot00.pt", "snapshot01.pt"]
    assert [f.name for f in rd.checkpoint_files(2, "top_n")] == ["epoch012.pt", "snapshot01.pt"]
    assert [f.name for f in rd.checkpoint_files(1, "both")] == ["snapshot00.pt", "snapshot01.pt", "epoch012.pt"]


def test_without_snapshots_the_snapshot_policy_falls_back_to_the_best_epoch(tmp_path):
    rd = _index(tmp_path, [{"file": "epoch003.pt", "epoch": 3, "score": 0.9, "loss": 0.3, "kind": "epoch"},
                           {"file": "epoch002.pt", "epoch": 2, "score": 0.8, "loss": 0.4, "kind": "epoch"}])
    assert [f.name for f in rd.checkpoint_files(3, "snapshots")] == ["epoch003.pt"]


def test_stacker_weights_reproduce_the_metric():
    """8 manipulated OOF rows per unaltered one, equal weights: the fit saw 11% unaltered, the metric 70%."""
    manip = np.array([0] * 10 + [1] * 80 + [0] * 5 + [1] * 5)
    is_test = np.array([False] * 90 + [True] * 10)
    w = stack.metric_weights(manip, is_test)
    train = ~is_test
    assert w[is_test].sum() == 0
    assert w[train & (manip == 0)].sum() / w[train].sum() == pytest.approx(0.7)
    assert w[train].mean() == pytest.approx(1.0)


@pytest.mark.parametrize("override, needle", [
    ({"train.crop_factor": 1}, "crop_factor"),
    ({"train.warmup_input_size": 255}, "warmup_input_size"),
    ({"models": [{"backbone": "camid_tiny", "input_size": 63}]}, "input_size"),
    ({"train.val_every": 0}, "val_every"),
])
def test_config_refuses_settings_that_silently_pad_or_misalign(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, override)


def test_validation_scores_the_first_view_of_predict_tta():
    """Validation fed one val_crop view (256 px) while predict fed 64-px TTA crops."""
    cfg = load_config(None, {"predict.tta": "tta10", "predict.crop": 256, "train.input_size": 64})
    assert (cfg.val_crop(), cfg.val_view()) == (256, "centre")
    full = load_config(None, {"predict.tta": "full", "predict.crop": 256, "train.input_size": 64})
    assert (full.val_crop(), full.val_view()) == (256, "whole")
    var = samples.VariantSet(torch.zeros(2, 3, 256, 256, dtype=torch.uint8), torch.zeros(2), torch.zeros(2).long(),
                             ["none"] * 2, ["a", "b"], [])
    assert var.view("centre", 64).images.shape[-2:] == (64, 64)
    assert var.view("whole", 64).images.shape[-2:] == (256, 256)

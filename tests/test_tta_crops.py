import cv2
import numpy as np
import pytest
import torch

from camid.data import crops, orientation
from camid.data import manipulations as M
from camid.infer import tta


@pytest.mark.parametrize("el", orientation.D4_ELEMENTS, ids=lambda e: e.name)
def test_d4_round_trip_is_exact(el):
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(el.deaugment(el.augment(x)), x)
    assert torch.equal(el.augment(el.deaugment(x)), x)


def test_d4_has_eight_distinct_elements():
    x = torch.randn(1, 3, 5, 5)
    outs = [el.augment(x) for el in orientation.D4_ELEMENTS]
    assert len({o.numpy().tobytes() for o in outs}) == 8


def test_five_crops_are_distinct_even_and_cover_the_corners():
    boxes = tta.five_crop_boxes(512, 512, 480)
    assert len(set(boxes)) == 5
    assert all(top % 2 == 0 and left % 2 == 0 for top, left in boxes)
    assert (0, 0) in boxes and (32, 32) in boxes and (16, 16) in boxes
    with pytest.raises(ValueError):
        tta.five_crop_boxes(100, 100, 128)


@pytest.mark.parametrize("policy,n", [("none", 1), ("tta10", 10), ("tta40", 40)])
def test_tta_views_are_all_distinct_and_not_blank(policy, n):
    x = torch.randn(1, 3, 40, 40)
    views = tta.make_views(policy, 40, 40, 32)
    assert len(views) == n
    outs = [v.augment(x) for v in views]
    assert all(o.shape == (1, 3, 32, 32) and o.abs().sum() > 0 for o in outs)
    assert len({o.numpy().tobytes() for o in outs}) == n


def test_augment_batch_is_view_major():
    x = torch.randn(3, 3, 40, 40)
    views = tta.make_views("tta10", 40, 40, 32)
    big = tta.augment_batch(x, views)
    assert big.shape == (30, 3, 32, 32)
    assert torch.equal(big[4], views[1].augment(x)[1])


def test_reductions_on_hand_cases():
    p = torch.tensor([[[0.5, 0.5]], [[0.9, 0.1]]])
    g = tta.reduce_probs(p, "gmean")
    expected = torch.tensor([0.45 ** 0.5, 0.05 ** 0.5])
    assert torch.allclose(g[0], expected / expected.sum())
    assert torch.allclose(tta.reduce_probs(p, "mean")[0], torch.tensor([0.7, 0.3]))
    rms = torch.tensor([((0.25 + 0.81) / 2) ** 0.5, ((0.25 + 0.01) / 2) ** 0.5])
    assert torch.allclose(tta.reduce_probs(p, "rms")[0], rms / rms.sum())
    with pytest.raises(ValueError):
        tta.reduce_probs(p, "median")


def test_predict_views_with_a_linear_model_matches_manual_average():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    x = torch.randn(2, 3, 10, 10)
    views = tta.make_views("tta10", 10, 10, 8)
    got = tta.predict_views(net, x, views)
    manual = torch.stack([torch.softmax(net(v.augment(x)), -1) for v in views])
    assert torch.allclose(got, tta.reduce_probs(manual, "gmean"), atol=1e-6)
    assert torch.allclose(got.sum(-1), torch.ones(2))


def test_random_crop_offsets_are_even():
    yy, xx = np.mgrid[0:50, 0:60]
    img = np.dstack([yy, xx, yy + xx]).astype(np.uint8)  # pixel value encodes its position
    rng = np.random.default_rng(0)
    for _ in range(50):
        c = crops.random_crop(img, 16, rng)
        y, x = int(c[0, 0, 0]), int(c[0, 0, 1])
        assert c.shape == (16, 16, 3)
        assert np.array_equal(img[y:y + 16, x:x + 16], c)
        assert y % 2 == 0 and x % 2 == 0


def test_small_images_are_reflect_padded():
    img = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    out = crops.centre_crop(img, 16)
    assert out.shape == (16, 16, 3)
    assert np.array_equal(out[:10, :12], img)


@pytest.mark.parametrize("name", list(M.MANIPULATION_NAMES))
@pytest.mark.parametrize("shape", [(576, 768), (577, 769), (1200, 1600), (1201, 1599), (333, 421)])
def test_manipulated_centre_crop_equals_manipulating_the_whole_photo(name, shape):
    """The region shortcut gives the test-set recipe's pixels (manipulate, then centre crop) for
    every manipulation, on odd and even photo sizes (the non-dyadic resizes included)."""
    rng = np.random.default_rng(sum(shape))
    img = cv2.GaussianBlur(rng.integers(0, 256, (*shape, 3), dtype=np.uint8), (0, 0), 1.0)  # smoother, like a photo
    ours = crops.manipulated_centre_crop(img, name, 256)
    full = crops.centre_crop(M.apply(img, name), 256)
    assert ours.shape == full.shape == (256, 256, 3)
    assert np.array_equal(ours, full)


def test_manipulated_centre_crop_of_a_photo_smaller_than_the_crop_is_padded_like_the_test():
    img = np.random.default_rng(3).integers(0, 256, (300, 280, 3), dtype=np.uint8)
    assert np.array_equal(crops.manipulated_centre_crop(img, "resize0.5", 256),
                          crops.centre_crop(M.apply(img, "resize0.5"), 256))


def test_resize_is_by_the_exact_factor():
    img = np.zeros((577, 769, 3), np.uint8)
    assert M.resize(img, 0.5).shape[:2] == (288, 384)  # 288.5 and 384.5 round half to even, like OpenCV
    assert M.resize(img, 1.5).shape[:2] == (866, 1154)

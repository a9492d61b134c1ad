"""The `continuous` policy (albumentations): the seed-000 ranges, the scale_limit trap fixed,
and draws that depend only on the sample's own generator."""
import albumentations as A
import cv2
import numpy as np
import pytest

from camid.data import augment
from camid.data.manipulations import CONTINUOUS_RANGES
from camid.data.samples import SampleSpec, training_sample


def photo(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(x / 7.0) * np.cos(y / 5.0)
    return np.clip(base[..., None] + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)


def _scales(limit: tuple[float, float], n: int = 300) -> list[float]:
    op = A.Compose([A.RandomScale(scale_limit=limit, interpolation=cv2.INTER_CUBIC, p=1.0)])
    img = photo(100, 100)
    out = []
    for seed in range(n):
        op.set_random_seed(seed)
        out.append(op(image=img)["image"].shape[0] / 100)
    return out


def test_the_scale_limit_trap_and_its_fix():
    lo, hi = CONTINUOUS_RANGES["resize"]
    assert augment.scale_limit(lo, hi) == (-0.5, 1.0)
    fixed = _scales(augment.scale_limit(lo, hi))
    assert min(fixed) >= lo - 0.01 and max(fixed) <= hi + 0.01
    assert min(fixed) < 0.7 and max(fixed) > 1.8  # the whole range is used
    printed = _scales((0.5, 2))  # as the write-up prints it: 1 is added to the limit
    assert min(printed) >= 1.5 - 0.01 and max(printed) <= 3.0 + 0.01


def test_every_draw_is_one_continuous_manipulation_within_its_range():
    img = photo()
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(150):
        out = augment.continuous(img, rng)
        if out.shape != img.shape:
            kinds.add("resize")
            assert CONTINUOUS_RANGES["resize"][0] - 0.02 <= out.shape[0] / img.shape[0] \
                <= CONTINUOUS_RANGES["resize"][1] + 0.02
        elif not np.array_equal(out, img):
            # gamma maps equal inputs to equal outputs; JPEG mixes neighbours
            flat = {tuple(v) for v in np.stack([img.reshape(-1, 3), out.reshape(-1, 3)], 1).reshape(-1, 6)}
            kinds.add("gamma" if len({f[:3] for f in flat}) == len(flat) else "jpeg")
    assert kinds == {"resize", "gamma", "jpeg"}


def test_draws_depend_only_on_the_generator():
    img = photo()
    a = [augment.continuous(img, np.random.default_rng([7, i])) for i in range(20)]
    b = [augment.continuous(img, np.random.default_rng([7, i])) for i in reversed(range(20))][::-1]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("mode", ["competition", "continuous"])
def test_training_samples_in_either_mode_are_reproducible_crops(mode):
    spec = SampleSpec(input_size=32, manip_prob=1.0, manip_mode=mode, orientation="none")
    img = photo(96, 96)
    x1, f1 = training_sample(img, np.random.default_rng(3), spec)
    x2, f2 = training_sample(img, np.random.default_rng(3), spec)
    assert f1 == f2 == 1 and tuple(x1.shape) == (3, 32, 32) and np.array_equal(x1.numpy(), x2.numpy())
    with pytest.raises(ValueError, match="unknown manipulation mode"):
        training_sample(img, np.random.default_rng(3), SampleSpec(input_size=32, manip_prob=1.0, manip_mode="x"))

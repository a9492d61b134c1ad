import io

import numpy as np
import pytest
from PIL import Image

from camid.data import images
from camid.data import manipulations as M

# IJG standard luminance table (JPEG Annex K), in natural (row-major) order.
STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])


def rand_img(h=32, w=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_registry_has_the_eight_competition_manipulations_in_order():
    assert M.MANIPULATION_NAMES == ("jpeg70", "jpeg90", "resize0.5", "resize0.8",
                                    "resize1.5", "resize2.0", "gamma0.8", "gamma1.2")


def test_the_config_knows_the_smallest_training_scale():
    """config (rank 0) checks train.crop_factor against the smallest resize training draws."""
    from camid.config import SMALLEST_TRAINING_SCALE

    scales = [m.scale for m in M.MANIPULATIONS.values()]
    scales += [k.continuous[0] for k in M.KINDS.values() if k.resamples]
    assert min(scales) == SMALLEST_TRAINING_SCALE


@pytest.mark.parametrize("name", M.MANIPULATION_NAMES)
def test_each_manipulation_states_its_facts(name):
    m = M.MANIPULATIONS[name]
    assert m.kind.name_of(m.value) == name and M.get(name) is m
    assert m.moves_grid == name.startswith("resize")
    assert m.scale == (m.value if name.startswith("resize") else 1.0)


@pytest.mark.parametrize("name", M.MANIPULATION_NAMES)
def test_every_manipulation_is_pure_and_deterministic(name):
    img = rand_img()
    before = img.copy()
    a, b = M.apply(img, name), M.apply(img, name)
    assert np.array_equal(img, before), "input must not be modified"
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    assert np.array_equal(a, b)
    assert not np.array_equal(a, img) or a.shape != img.shape


def test_gamma_table_pinned_values():
    # 255 * (128/255) ** 0.8 = 146.92 -> 147; ** 1.2 = 111.52 -> 112
    t08, t12 = M.gamma_table(0.8), M.gamma_table(1.2)
    assert (t08[0], t08[128], t08[255]) == (0, 147, 255)
    assert (t12[0], t12[128], t12[255]) == (0, 112, 255)
    assert t08[3] == 7 and t08[6] == 13  # 7.295 -> 7 and 12.701 -> 13: rounded, not truncated
    assert np.all(np.diff(t08.astype(int)) >= 0) and np.all(np.diff(t12.astype(int)) >= 0)


def test_gamma_rounds_half_up_on_exact_ties():
    # gamma 1 maps x to 255*(x/255) exactly: identity must survive float error.
    img = np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3)
    assert np.array_equal(M.gamma(img, 1.0), img)
    out = M.gamma(np.array([[[64, 128, 192]]], dtype=np.uint8), 0.8)
    expected = np.floor(255 * (np.array([64, 128, 192]) / 255) ** 0.8 + 0.5)
    assert out.ravel().tolist() == expected.astype(int).tolist()


@pytest.mark.parametrize("scale,shape", [(0.5, (16, 24)), (0.8, (26, 38)), (1.5, (48, 72)), (2.0, (64, 96))])
def test_resize_output_size_is_rounded_scale(scale, shape):
    assert M.resize(rand_img(), scale).shape[:2] == shape


def _keys_bicubic_x2(channel: np.ndarray) -> np.ndarray:
    """Independent bicubic (Keys a=-0.75, half-pixel centres, replicated border) upscaling by 2."""
    a = -0.75

    def w(t):
        t = abs(t)
        if t <= 1:
            return (a + 2) * t**3 - (a + 3) * t**2 + 1
        if t < 2:
            return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
        return 0.0

    h, wd = channel.shape
    out = np.zeros((2 * h, 2 * wd))
    for oy in range(2 * h):
        sy = (oy + 0.5) / 2 - 0.5
        iy = int(np.floor(sy))
        for ox in range(2 * wd):
            sx = (ox + 0.5) / 2 - 0.5
            ix = int(np.floor(sx))
            acc = 0.0
            for dy in range(-1, 3):
                for dx in range(-1, 3):
                    py, px = min(max(iy + dy, 0), h - 1), min(max(ix + dx, 0), wd - 1)
                    acc += channel[py, px] * w(sy - (iy + dy)) * w(sx - (ix + dx))
            out[oy, ox] = acc
    return np.clip(np.floor(out + 0.5), 0, 255)


def test_resize_matches_an_independent_bicubic_implementation():
    img = rand_img(6, 7, seed=3)
    ours = M.resize(img, 2.0).astype(int)
    ref = np.stack([_keys_bicubic_x2(img[..., c].astype(float)) for c in range(3)], axis=-1)
    assert np.abs(ours - ref).max() <= 1  # OpenCV uses fixed-point weights


def test_resize_keeps_constant_images_constant():
    img = np.full((10, 10, 3), 77, np.uint8)
    for s in (0.5, 0.8, 1.5, 2.0):
        assert np.all(M.resize(img, s) == 77)


@pytest.mark.parametrize("quality", [70, 90])
def test_jpeg_uses_standard_ijg_tables_scaled_to_quality(quality):
    data = images.encode_jpeg(rand_img(), quality)  # the encoder the jpeg manipulations use
    with Image.open(io.BytesIO(data)) as im:
        luma = np.array(im.quantization[0])
        assert im.layer[0][1:3] == (2, 2)  # 4:2:0: luma sampled 2x2
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    expected = np.clip((STD_LUMA * scale + 50) // 100, 1, 255)
    assert sorted(luma.tolist()) == sorted(expected.tolist())
    assert luma.sum() == expected.sum()


def test_jpeg_error_grows_as_quality_drops():
    img = rand_img(64, 64, seed=5)
    err = {q: np.abs(M.jpeg(img, q).astype(int) - img).mean() for q in (70, 90)}
    assert 0 < err[90] < err[70]


def test_parse_and_apply_by_name():
    assert M.parse("resize0.8") == ("resize", 0.8)
    assert M.parse("jpeg75") == ("jpeg", 75.0)
    img = rand_img()
    assert np.array_equal(M.apply(img, "none"), img)
    assert np.array_equal(M.apply(img, "gamma0.8"), M.gamma(img, 0.8))
    assert M.apply(img, "resize1.25").shape[:2] == (40, 60)
    with pytest.raises(ValueError):
        M.apply(img, "blur3")


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        M.jpeg(rand_img(), 0)
    with pytest.raises(ValueError):
        M.gamma(rand_img().astype(np.float32), 0.8)
    with pytest.raises(ValueError):
        M.resize(rand_img()[..., 0], 2.0)


def test_sample_draws_from_the_right_sets():
    rng = np.random.default_rng(0)
    drawn = {M.sample(rng) for _ in range(400)}
    assert drawn == set(M.MANIPULATION_NAMES)  # the continuous ranges: tests/test_augment.py

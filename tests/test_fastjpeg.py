"""Region decoding (camid.fastjpeg): the pixels must equal a full decode, whatever the file."""
import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from camid.data import fastjpeg
from camid.data.crops import random_crop
from camid.data.images import read_image
from camid.data.samples import SampleSpec, TrainSamples, training_sample
from camid.errors import ImageReadError

needs_libjpeg = pytest.mark.skipif(fastjpeg.libjpeg() is None, reason="no libjpeg v6.2 ABI library found")


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour fields, edges and noise: chroma differs between neighbouring blocks."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.uniform(0, 255, (h // 40 + 2, w // 40 + 2, 3)).astype(np.float32), (w, h),
                      interpolation=cv2.INTER_CUBIC)
    img = base + rng.normal(0, 6, (h, w, 3))
    img[h // 3: h // 2, :] = rng.uniform(0, 255, 3)  # hard horizontal colour edges
    img[:, w // 5: w // 4] = rng.uniform(0, 255, 3)  # and vertical ones
    return np.clip(img, 0, 255).astype(np.uint8)


def save_pil(path: Path, img: np.ndarray, mode: str = "RGB", **kw) -> Path:
    Image.fromarray(img).convert(mode).save(path, quality=kw.pop("quality", 95), **kw)
    return path


def save_cv2(path: Path, img: np.ndarray, sampling=None, rst: int = 0) -> Path:
    params = [cv2.IMWRITE_JPEG_QUALITY, 95]
    if sampling is not None:
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling]
    if rst:
        params += [cv2.IMWRITE_JPEG_RST_INTERVAL, rst]
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[..., ::-1]), params)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


# (name, writer(path, img)); sizes chosen so MCUs are partial at the right/bottom edges.
VARIANTS = {
    "420": lambda p, im: save_pil(p, im, subsampling=2),
    "422": lambda p, im: save_pil(p, im, subsampling=1),
    "444": lambda p, im: save_pil(p, im, subsampling=0),
    "411": lambda p, im: save_cv2(p, im, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411),
    "440": lambda p, im: save_cv2(p, im, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440),
    "gray": lambda p, im: save_pil(p, im, mode="L"),
    "cmyk": lambda p, im: save_pil(p, im, mode="CMYK"),
    "rst1-420": lambda p, im: save_pil(p, im, subsampling=2, restart_marker_blocks=1),
    "rst3-444": lambda p, im: save_pil(p, im, subsampling=0, restart_marker_blocks=3),
    "rst-rows": lambda p, im: save_pil(p, im, subsampling=2, restart_marker_rows=1),
    "cv2-rst5": lambda p, im: save_cv2(p, im, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, rst=5),
}


def crop_boxes(h: int, w: int, rng: np.random.Generator, n: int = 25) -> list[tuple[int, int, int, int]]:
    """Even-offset boxes of several sizes, including every corner and the full image."""
    boxes = [(0, 0, h, w)]
    for size in (96, 128, 250):
        s = min(size, h, w)
        ymax, xmax = (h - s) // 2 * 2, (w - s) // 2 * 2
        boxes += [(0, 0, s, s), (0, xmax, s, s), (ymax, 0, s, s), (ymax, xmax, s, s)]
    for _ in range(n):
        s = int(rng.integers(2, min(h, w) // 2 + 1)) * 2 // 2
        boxes.append((int(rng.integers((h - s) // 2 + 1)) * 2, int(rng.integers((w - s) // 2 + 1)) * 2, s, s))
    return boxes


def lazy_source(path: Path, tmp_path: Path):
    """The file's LazyCrop, through a fresh cache (transcoding when it has no usable markers)."""
    cache = fastjpeg.DecodeCache(tmp_path / f"cache-{path.stem}")
    first = fastjpeg.open_image(path, cache)
    img = fastjpeg.open_image(path, cache)
    assert isinstance(img, fastjpeg.LazyCrop), f"{path.name}: expected a lazy crop, got {type(img)}"
    return first, img


@needs_libjpeg
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("size", [(301, 453), (256, 384)])
def test_region_pixels_equal_full_decode(tmp_path, variant, size):
    h, w = size
    path = VARIANTS[variant](tmp_path / f"{variant}.jpg", photo(h, w, seed=h + len(variant)))
    full = read_image(path)
    first, lazy = lazy_source(path, tmp_path)
    assert np.array_equal(first, full)  # the first sight is the full decode itself
    assert lazy.shape == full.shape
    rng = np.random.default_rng(7)
    for y, x, ch, cw in crop_boxes(h, w, rng):
        got = np.asarray(lazy[y:y + ch, x:x + cw])
        assert np.array_equal(got, full[y:y + ch, x:x + cw]), (variant, y, x, ch, cw)


def test_native_restart_markers_need_no_cache(tmp_path):
    path = save_pil(tmp_path / "rst.jpg", photo(200, 320), subsampling=2, restart_marker_blocks=2)
    img = fastjpeg.open_image(path, cache=None)
    assert isinstance(img, fastjpeg.LazyCrop)
    assert np.array_equal(np.asarray(img[10:150, 34:300]), read_image(path)[10:150, 34:300])


@needs_libjpeg
def test_transcode_is_lossless_and_adds_markers():
    buf = io.BytesIO()
    Image.fromarray(photo(123, 457, seed=3)).save(buf, format="JPEG", quality=92)
    rst = fastjpeg.add_restart_markers(buf.getvalue())
    layout = fastjpeg.parse_layout(rst)
    assert layout.interval == 1 and (layout.width, layout.height) == (457, 123)
    decode = lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))  # noqa: E731
    assert np.array_equal(decode(rst), decode(buf.getvalue()))


@pytest.mark.parametrize("kind", ["png", "progressive", "no-cache", "tiff"])
def test_fallback_is_the_full_decode(tmp_path, kind):
    img = photo(96, 130)
    path = tmp_path / {"png": "a.png", "tiff": "a.tif"}.get(kind, "a.jpg")
    if kind == "progressive":
        save_pil(path, img, progressive=True)
    elif kind == "no-cache":
        save_pil(path, img)
    else:
        Image.fromarray(img).save(path)
    cache = None if kind == "no-cache" else fastjpeg.DecodeCache(tmp_path / "cache")
    for _ in range(2):  # the second call must not find anything new
        out = fastjpeg.open_image(path, cache)
        assert isinstance(out, np.ndarray)
        assert np.array_equal(out, read_image(path))


def test_unreadable_files_raise_like_read_image(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0garbage")
    for path in (empty, broken, tmp_path / "missing.jpg"):
        with pytest.raises(ImageReadError):
            fastjpeg.open_image(path, fastjpeg.DecodeCache(tmp_path / "cache"))


@needs_libjpeg
def test_damaged_or_replaced_copy_falls_back(tmp_path):
    path = save_pil(tmp_path / "a.jpg", photo(200, 300), subsampling=2)
    _, lazy = lazy_source(path, tmp_path)
    full = read_image(path)
    cache = fastjpeg.DecodeCache(tmp_path / f"cache-{path.stem}")
    copy, _ = cache.paths(cache.key(path, os.stat(path)))
    copy.write_bytes(copy.read_bytes()[:5000])  # truncated behind the index's back
    assert np.array_equal(np.asarray(lazy[40:170, 20:290]), full[40:170, 20:290])
    # A changed photo (new mtime/size) is a new key: never served from the old copy.
    save_pil(path, photo(200, 300, seed=9), subsampling=2)
    os.utime(path, ns=(1, 1))
    again = fastjpeg.open_image(path, cache)
    assert np.array_equal(np.asarray(again), read_image(path))


def test_lazy_slicing_matches_numpy(tmp_path):
    path = save_pil(tmp_path / "rst.jpg", photo(120, 200), subsampling=2, restart_marker_blocks=1)
    lazy = fastjpeg.open_image(path, cache=None)
    full = read_image(path)
    keys = [(slice(10, 50), slice(0, 200)), (slice(-30, None), slice(None, 7)), (slice(100, 500), slice(190, 300)),
            (slice(50, 10), slice(0, 5)), (slice(0, 20, 2), slice(3, 9)), 5, (slice(1, 4), 7), Ellipsis]
    for key in keys:
        got = lazy[key]
        assert np.array_equal(np.asarray(got), full[key]), key
        assert np.asarray(got).shape == full[key].shape
    nested = lazy[20:110, 30:190][5:60, 10:100]
    assert isinstance(nested, fastjpeg.LazyCrop)
    assert np.array_equal(np.asarray(nested), full[25:80, 40:130])
    assert np.array_equal(np.pad(lazy[0:10, 0:10], ((0, 2), (0, 2), (0, 0))),
                          np.pad(full[0:10, 0:10], ((0, 2), (0, 2), (0, 0))))


@needs_libjpeg
@pytest.mark.parametrize("variant", ["420", "gray", "rst3-444"])
def test_training_sample_unchanged(tmp_path, variant):
    """Same rng -> same tensor and flag as the full-decode baseline, for every branch."""
    path = VARIANTS[variant](tmp_path / "p.jpg", photo(300, 420, seed=5))
    full = read_image(path)
    _, lazy = lazy_source(path, tmp_path)
    for orientation in ("d4", "flips"):
        spec = SampleSpec(input_size=64, crop_factor=2, manip_prob=0.5, orientation=orientation)
        flags = set()
        for seed in range(24):
            a, fa = training_sample(full, np.random.default_rng(seed), spec)
            b, fb = training_sample(lazy, np.random.default_rng(seed), spec)
            assert fa == fb and torch.equal(a, b), (variant, orientation, seed)
            flags.add(fa)
        assert flags == {0, 1}


def test_offsets_follow_random_crop(tmp_path):
    """The lazy crop lands exactly where crops.random_crop puts the decoded one."""
    path = save_pil(tmp_path / "rst.jpg", photo(150, 260), subsampling=2, restart_marker_blocks=1)
    lazy, full = fastjpeg.open_image(path, cache=None), read_image(path)
    for seed in range(10):
        a = random_crop(full, 100, np.random.default_rng(seed))
        b = random_crop(lazy, 100, np.random.default_rng(seed))
        assert isinstance(b, fastjpeg.LazyCrop) and np.array_equal(a, np.asarray(b))
    # Smaller than the crop: random_crop pads, which decodes the whole (lazy) photo.
    a = random_crop(full, 200, np.random.default_rng(1))
    b = random_crop(lazy, 200, np.random.default_rng(1))
    assert np.array_equal(np.asarray(a), np.asarray(b))


@needs_libjpeg
def test_train_samples_same_with_and_without_cache(tmp_path, monkeypatch):
    paths = [str(VARIANTS[v](tmp_path / f"{v}.jpg", photo(260, 330, seed=i))) for i, v in enumerate(["420", "444"])]
    spec = SampleSpec(input_size=48, manip_prob=0.5, orientation="d4")
    ds = TrainSamples(paths, [0, 1], 2, length=12, spec=spec, seed=3)
    monkeypatch.setenv(fastjpeg.CACHE_ENV, "off")
    base = [ds[i] for i in range(len(ds))]
    monkeypatch.setenv(fastjpeg.CACHE_ENV, str(tmp_path / "cache"))
    for _ in range(2):  # first pass fills the cache, second is lazy
        fast = [ds[i] for i in range(len(ds))]
        for a, b in zip(base, fast, strict=True):
            assert torch.equal(a["image"], b["image"]) and a["manip"] == b["manip"] and a["label"] == b["label"]
    assert len(list((tmp_path / "cache").rglob("*.jpg"))) == 2


def test_default_cache_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(fastjpeg.CACHE_ENV, raising=False)
    assert fastjpeg.default_cache() is None
    monkeypatch.setenv(fastjpeg.CACHE_ENV, str(tmp_path / "c"))  # also reaches spawned DataLoader workers
    assert os.environ[fastjpeg.CACHE_ENV] == str(tmp_path / "c")
    assert fastjpeg.default_cache().root == tmp_path / "c"
    monkeypatch.setenv(fastjpeg.CACHE_ENV, "off")
    assert fastjpeg.default_cache() is None

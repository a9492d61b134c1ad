"""``camid bench`` section ``sample``: the training-sample pipeline (2x crop -> manipulation ->
crop -> D4) on synthetic 12-megapixel quality-95 JPEGs, region decoding (``fastjpeg``) vs decoding
the whole photo first. One process with one torch/OpenCV thread = one core, like a DataLoader
worker. Rounds alternate baseline and fast on the same seeds (so both see the same load on a
shared machine); the best round counts. Every fast sample is compared with its baseline sample,
pixel for pixel."""
from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .common import Row, one_core, seconds

if TYPE_CHECKING:
    from ..data.fastjpeg import DecodeCache


def synthetic_photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Photo-like content: smooth shading, texture, hard-edged shapes, blur, sensor noise."""
    import cv2

    rng = np.random.default_rng(seed)
    field = rng.uniform(0, 255, (h // 200 + 2, w // 200 + 2, 3)).astype(np.float32)
    img: np.ndarray = cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC)
    tex = rng.normal(0, 18, (h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)
    img += cv2.resize(tex, (w, h), interpolation=cv2.INTER_LINEAR)
    for _ in range(40):
        colour = [float(v) for v in rng.uniform(0, 255, 3)]
        radius = int(rng.integers(max(2, min(h, w) // 150), max(3, min(h, w) // 8)))
        cv2.circle(img, (int(rng.integers(w)), int(rng.integers(h))), radius, colour, -1)
    img = cv2.GaussianBlur(img, (0, 0), 1.0)
    img = img + 3.0 * rng.standard_normal((h, w, 3), dtype=np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _full_region(path: Path, box: tuple[slice, slice]) -> np.ndarray:
    from ..data.images import read_image

    return read_image(path)[box]


def _lazy_region(path: Path, box: tuple[slice, slice], cache: DecodeCache) -> np.ndarray:
    from ..data import fastjpeg

    return np.asarray(fastjpeg.open_image(path, cache)[box])


def bench_samples(quick: bool, workdir: Path) -> list[Row]:
    from PIL import Image

    from ..data import fastjpeg
    from ..data.images import read_image
    from ..data.samples import SampleSpec, training_sample

    if quick:
        h, w, size, n_images, rounds, per_round = 600, 800, 96, 2, 2, 4
    else:
        h, w, size, n_images, rounds, per_round = 3000, 4000, 480, 3, 5, 8
    spec = SampleSpec(input_size=size)  # recipe defaults: 2x crop, p=0.5 manipulation, D4
    if fastjpeg.libjpeg() is None:
        return [Row("sample", "training sample", "full decode", None, None, "samples/s/core", None,
                    "skipped: no libjpeg (v6.2 ABI) found for the lossless restart-marker copy")]
    rows = []
    for subsampling, label in ((2, "4:2:0"), (0, "4:4:4")):
        paths = []
        for i in range(n_images):
            path = workdir / f"photo{label.replace(':', '')}_{i}.jpg"
            Image.fromarray(synthetic_photo(h, w, seed=i)).save(path, quality=95, subsampling=subsampling)
            paths.append(path)
        mb = np.mean([p.stat().st_size for p in paths]) / 1e6
        cache = fastjpeg.DecodeCache(workdir / "cache")
        with one_core():
            t_full = min(seconds(partial(read_image, p)) for p in paths)
            first = [seconds(partial(fastjpeg.open_image, p, cache)) for p in paths]
            if not all(isinstance(fastjpeg.open_image(p, cache), fastjpeg.LazyCrop) for p in paths):
                raise RuntimeError("bench: the synthetic photos did not take the region-decoding path")
            base_t, fast_t, compared = [], [], 0
            for r in range(rounds):
                jobs = [(paths[(r * per_round + k) % n_images], r * per_round + k) for k in range(per_round)]
                start = time.perf_counter()
                ref = [training_sample(read_image(p), np.random.default_rng(s), spec) for p, s in jobs]
                base_t.append((time.perf_counter() - start) / per_round)
                start = time.perf_counter()
                got = [training_sample(fastjpeg.open_image(p, cache), np.random.default_rng(s), spec)
                       for p, s in jobs]
                fast_t.append((time.perf_counter() - start) / per_round)
                for (xa, fa), (xb, fb) in zip(ref, got, strict=True):
                    if fa != fb or not np.array_equal(xa.numpy(), xb.numpy()):
                        raise RuntimeError("bench: region-decoded sample differs from the full-decode sample")
                    compared += 1
            rng = np.random.default_rng(0)
            big = 2 * size
            full_t, region_t = [], []
            for r in range(rounds):  # decoding alone, alternating like the rounds above
                p = paths[r % n_images]
                y, x = int(rng.integers((h - big) // 2 + 1)) * 2, int(rng.integers((w - big) // 2 + 1)) * 2
                box = (slice(y, y + big), slice(x, x + big))
                full_t.append(seconds(partial(_full_region, p, box)))
                region_t.append(seconds(partial(_lazy_region, p, box, cache)))
            t_full, t_region = min(t_full, *full_t), min(region_t)
        tb, tf = min(base_t), min(fast_t)
        name = f"{w}x{h} q95 {label}"
        rows.append(Row("sample", f"training sample, {name} ({mb:.1f} MB)", "full decode + crop",
                        1 / tb, 1 / tf, "samples/s/core", tb / tf,
                        f"best of {rounds} interleaved rounds x {per_round}; median rounds "
                        f"{1 / np.median(base_t):.1f} vs {1 / np.median(fast_t):.1f}/s "
                        f"({np.median(base_t) / np.median(fast_t):.1f}x); "
                        f"{compared} samples pixel-identical"))
        rows.append(Row("sample", f"decode {big}x{big} region, {name}", "decode whole photo",
                        1 / t_full, 1 / t_region, "decodes/s/core", t_full / t_region,
                        f"best of {rounds}, alternating; restart-marker copy, region + {fastjpeg.MARGIN} px margin "
                        "decoded by Pillow"))
        t_first = float(np.mean(first))
        rows.append(Row("sample", f"first use of a photo, {name}", "full decode", 1 / t_full, 1 / t_first,
                        "photos/s/core", t_full / t_first,
                        f"once per photo: full decode + lossless restart-marker copy + check = {t_first:.2f} s; "
                        f"repaid after {max(1, int(np.ceil((t_first - tb) / max(tb - tf, 1e-9))))} samples "
                        "of that photo"))
    return rows

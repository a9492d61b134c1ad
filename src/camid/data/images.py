"""Reading and encoding images: every pixel camid uses comes through ``read_image`` (or
``probe_image`` for a header), behind the one decompression-bomb guard, ``open_checked``.

Any common format becomes uint8 HxWx3 RGB (CMYK, palette, grayscale, 16-bit, alpha);
the content, not the extension, decides the format. A file that cannot be used raises
``ImageReadError`` whose ``reason`` says why, so every stage can skip it with that reason.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import ImageReadError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
# Bigger than any camera sensor (a 200 MP phone), far below a decompression bomb.
MAX_PIXELS = 250_000_000
# Pillow's codes for chroma subsampling.
JPEG_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}

# ITU-T T.81 Annex K tables in natural (row-major) order, which is also the order of
# Pillow's ``Image.quantization`` and of libjpeg's ``quantval`` that ImageMagick reads.
STD_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99], dtype=np.int64)
STD_CHROMINANCE = np.array([
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32, dtype=np.int64)


def scaled_table(base: np.ndarray, quality: int, force_baseline: bool = True) -> np.ndarray:
    """libjpeg's ``jpeg_set_quality`` scaling of a standard table (the cjpeg/Pillow tables)."""
    quality = min(max(int(quality), 1), 100)
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    table = np.clip((base * scale + 50) // 100, 1, 32767)
    return np.minimum(table, 255) if force_baseline else table


def apply_pixel_limit() -> None:
    """Make Pillow's own bomb check agree with ``MAX_PIXELS`` (its default refuses 90 MP
    photos). Process-wide, so every command calls it once when it starts."""
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def too_large(width: int, height: int) -> bool:
    return width * height > MAX_PIXELS


def to_rgb(im: Image.Image) -> np.ndarray:
    """A loaded PIL image as a writable uint8 HxWx3 RGB array."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit: keep the top 8 bits, the way a camera pipeline would quantise.
        arr = np.asarray(im, dtype=np.int64)
        peak = 65535 if arr.max() > 255 else 255
        arr8 = np.clip(np.floor(arr * 255.0 / peak + 0.5), 0, 255).astype(np.uint8)
        return np.repeat(arr8[..., None], 3, axis=2)
    if im.mode == "RGBA" or im.mode == "LA" or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA").convert("RGB")  # alpha dropped, colour kept
    elif im.mode != "RGB":
        im = im.convert("RGB")  # CMYK, palette, grayscale, YCbCr
    return np.array(im, dtype=np.uint8)  # writable (np.asarray of a PIL image is read-only)


def _read_error(path: Path, exc: Exception) -> ImageReadError:
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageReadError(path, f"too large, refused as a decompression bomb: {exc}")
    if isinstance(exc, Image.UnidentifiedImageError):
        return ImageReadError(path, "not a recognised image format")
    if isinstance(exc, (OSError, SyntaxError, ValueError)):
        return ImageReadError(path, f"corrupt or truncated image: {exc}")
    return ImageReadError(path, f"corrupt image: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def open_checked(path: str | Path) -> Iterator[Image.Image]:
    """``Image.open`` behind the bomb guard. Any failure, in the ``with`` block too (hostile
    files raise anything: OSError, SyntaxError, struct.error...), is an ImageReadError."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageReadError(path, f"cannot stat: {exc.strerror}") from exc
    if size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Pillow warns about corrupt EXIF while opening; the EXIF reader reports it.
            warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
            with Image.open(path) as im:
                if too_large(im.width, im.height):
                    raise ImageReadError(path, f"too large ({im.width}x{im.height} pixels), "
                                               "refused as a decompression bomb")
                yield im
    except ImageReadError:
        raise
    except Exception as exc:
        raise _read_error(path, exc) from exc


def probe_image(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header alone, or ImageReadError with a reason.

    Catches what a header pass can: empty files, non-images, corrupt headers and
    decompression-bomb sizes (not truncated pixel data: that needs ``read_image``).
    """
    with open_checked(path) as im:
        return int(im.width), int(im.height)


def read_image(path: str | Path) -> np.ndarray:
    """Read any common image as a uint8 HxWx3 RGB array, or raise ImageReadError with a reason.

    EXIF orientation is deliberately NOT applied: camera artefacts live on the
    sensor grid, and rotating would misalign the colour-filter pattern.
    """
    with open_checked(path) as im:
        im.load()
        arr = to_rgb(im)
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageReadError(path, f"unusable shape {arr.shape}")
    return np.ascontiguousarray(arr)


def encode_jpeg(img: np.ndarray, quality: int, subsampling: str = "4:2:0") -> bytes:
    """Baseline JPEG with the standard IJG tables scaled to ``quality`` (1-100), no optimisation:
    the encoder of the competition's JPEG manipulations and of the simulated cameras."""
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    return _save_jpeg(img, subsampling, quality=int(quality))


def encode_jpeg_tables(img: np.ndarray, qtables: Sequence[Sequence[int]], subsampling: str = "4:2:0") -> bytes:
    """Baseline JPEG with its own quantisation tables (luminance, chrominance; natural order),
    as an editor that does not use the IJG tables writes them."""
    return _save_jpeg(img, subsampling, qtables=[list(t) for t in qtables])


def _save_jpeg(img: np.ndarray, subsampling: str, **tables: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", subsampling=JPEG_SUBSAMPLING[subsampling], optimize=False, **tables)
    return buf.getvalue()


def decode_bytes(data: bytes) -> np.ndarray:
    """An encoded image in memory as uint8 HxWx3 RGB (the same conversion as ``read_image``)."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return to_rgb(im)

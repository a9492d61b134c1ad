"""Reading images: every pixel camid uses comes through ``read_image`` (or ``probe_image``
for a header) and the one decompression-bomb guard here.

Any common format becomes uint8 HxWx3 RGB (CMYK, palette, grayscale, 16-bit, alpha);
the content, not the extension, decides the format. A file that cannot be used raises
``ImageReadError`` whose ``reason`` says why, so every stage can skip it with that reason.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ImageReadError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
# Bigger than any camera sensor (a 200 MP phone), far below a decompression bomb.
MAX_PIXELS = 250_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


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
    if isinstance(exc, ImageReadError):
        return exc
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageReadError(path, f"decompression bomb refused: {exc}")
    if isinstance(exc, Image.UnidentifiedImageError):
        return ImageReadError(path, "not a recognised image format")
    if isinstance(exc, (OSError, SyntaxError, ValueError)):
        return ImageReadError(path, f"corrupt or truncated image: {exc}")
    return ImageReadError(path, f"corrupt image: {type(exc).__name__}: {exc}")


def probe_image(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header alone, or ImageReadError with a reason.

    Catches what a header pass can: empty files, non-images, corrupt headers and
    decompression-bomb sizes (not truncated pixel data: that needs ``read_image``).
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(path, "empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ImageReadError(path, f"too large ({im.width}x{im.height} pixels)")
                return int(im.width), int(im.height)
    except Exception as exc:  # see read_image
        raise _read_error(path, exc) from exc


def read_image(path: str | Path) -> np.ndarray:
    """Read any common image as a uint8 HxWx3 RGB array, or raise ImageReadError with a reason.

    EXIF orientation is deliberately NOT applied: camera artefacts live on the
    sensor grid, and rotating would misalign the colour-filter pattern.
    """
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
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ImageReadError(path, f"too large ({im.width}x{im.height} pixels)")
                im.load()
                arr = to_rgb(im)
    except Exception as exc:  # hostile files raise anything (OSError, SyntaxError, struct.error...)
        raise _read_error(path, exc) from exc
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageReadError(path, f"unusable shape {arr.shape}")
    return np.ascontiguousarray(arr)

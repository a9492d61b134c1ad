"""What ``camid filter-external`` reads of a file: its header facts (EXIF, size, quantisation
tables; a few kB) and, for the candidates, a decode of every scan with its perceptual hash.
Nothing here depends on the rules, so a rules change reuses the facts."""
from __future__ import annotations

import os
from typing import Any

from PIL import Image

from ..data.images import open_checked
from ..errors import ImageReadError
from .exif import inspect_image, is_jpeg
from .phash import format_hashes, phash_variants

# Bump when analyse_file/decode_file output changes, so resumed runs re-read every file.
ANALYZER_VERSION = "1"
ANALYSIS_COLUMNS = [
    "path", "size", "mtime_ns", "analyzer", "read_error", "format", "mode", "width",
    "height", "exif_make", "exif_model", "exif_software", "exif_error", "creator_tool",
    "adobe_app14", "quality", "quality_exact", "ijg_quality", "decoded", "phash"]


def _decode_for_hash(im: Image.Image) -> list[int]:
    """Decode every scan (DCT-scaled to >= 64 px, so a 24 MP photo costs a fraction of a
    full decode) -- this is what detects truncated data -- and hash the result."""
    if is_jpeg(im):
        im.draft("L", (64, 64))
    im.load()
    return phash_variants(im)


def _reason(exc: ImageReadError) -> str:
    return exc.reason[:300]  # report cells stay readable whatever the decoder said


def _fill_facts(row: dict[str, Any], im: Image.Image) -> None:
    facts = inspect_image(im)
    row.update(format=facts.format, mode=facts.mode, width=facts.width, height=facts.height,
               exif_make=facts.exif.make, exif_model=facts.exif.model,
               exif_software=facts.exif.software, exif_error=facts.exif.error,
               creator_tool=facts.creator_tool, adobe_app14="adobe" in im.info,
               quality=facts.quality, quality_exact=facts.quality_exact,
               ijg_quality=facts.ijg_quality)


def analyse_file(path: str) -> dict[str, Any]:
    """Rules-independent header facts of one file (a few kB read); never raises.

    A file that cannot be opened gets ``read_error`` and no format.
    """
    row: dict[str, Any] = {c: "" for c in ANALYSIS_COLUMNS}
    row.update(path=path, analyzer=ANALYZER_VERSION, decoded=False)
    try:
        st = os.stat(path)
    except OSError as exc:
        row["read_error"] = f"cannot stat: {exc.strerror}"
        return row
    row.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
    if st.st_size == 0:
        row["read_error"] = "empty file (0 bytes)"
        return row
    try:
        with open_checked(path) as im:
            _fill_facts(row, im)
    except ImageReadError as exc:
        row["read_error"] = _reason(exc)
    return row


def decode_file(path: str) -> dict[str, Any]:
    """Pixel pass of one JPEG: ``read_error`` (truncated/corrupt data) and its pHash."""
    try:
        with open_checked(path) as im:
            return {"phash": format_hashes(_decode_for_hash(im)), "read_error": "", "decoded": True}
    except ImageReadError as exc:
        return {"phash": "", "read_error": _reason(exc), "decoded": True}


def hash_file(path: str) -> str:
    """Space-separated pHash variants of any image ("" when unreadable): training images."""
    try:
        with open_checked(path) as im:
            return format_hashes(_decode_for_hash(im))
    except ImageReadError:  # an unreadable training image simply cannot be a duplicate source
        return ""

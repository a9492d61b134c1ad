"""JPEG header facts for the external-data filter: EXIF tags, quality, re-save evidence.

Nothing here decodes pixels: everything comes from the markers Pillow parses when a
file is opened (quantisation tables, APP1 EXIF, APP1 XMP, APP14 Adobe, COM).

Quality follows ImageMagick's ``identify -format %Q`` (coders/jpeg.c,
``JPEGSetImageQuality``), the tool the winners filtered with: a 4-value "hash" and the
sum of all table entries are compared with values tabulated for the IJG tables scaled
to each quality 1..100; one set of tabulated values for a single (grayscale) table and
one for two or more tables.
"""
from __future__ import annotations

import fnmatch
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..data.images import STD_CHROMINANCE, STD_LUMINANCE, scaled_table

# ImageMagick's tabulated hash/sum values (index i <-> quality i+1), two-table case.
_IM_HASH2 = (
    1020, 1015, 932, 848, 780, 735, 702, 679, 660, 645, 632, 623, 613, 607, 600, 594,
    589, 585, 581, 571, 555, 542, 529, 514, 494, 474, 457, 439, 424, 410, 397, 386,
    373, 364, 351, 341, 334, 324, 317, 309, 299, 294, 287, 279, 274, 267, 262, 257,
    251, 247, 243, 237, 232, 227, 222, 217, 213, 207, 202, 198, 192, 188, 183, 177,
    173, 168, 163, 157, 153, 148, 143, 139, 132, 128, 125, 119, 115, 108, 104, 99,
    94, 90, 84, 79, 74, 70, 64, 59, 55, 49, 45, 40, 34, 30, 25, 20, 15, 11, 6, 4, 0)
_IM_SUMS2 = (
    32640, 32635, 32266, 31495, 30665, 29804, 29146, 28599, 28104, 27670, 27225, 26725,
    26210, 25716, 25240, 24789, 24373, 23946, 23572, 22846, 21801, 20842, 19949, 19121,
    18386, 17651, 16998, 16349, 15800, 15247, 14783, 14321, 13859, 13535, 13081, 12702,
    12423, 12056, 11779, 11513, 11135, 10955, 10676, 10392, 10208, 9928, 9747, 9564,
    9369, 9193, 9017, 8822, 8639, 8458, 8270, 8084, 7896, 7710, 7527, 7347, 7156, 6977,
    6788, 6607, 6422, 6236, 6054, 5867, 5684, 5495, 5305, 5128, 4945, 4751, 4638, 4442,
    4248, 4065, 3888, 3698, 3509, 3326, 3139, 2957, 2775, 2586, 2405, 2216, 2037, 1846,
    1666, 1483, 1297, 1109, 927, 735, 554, 375, 201, 128, 0)
# Single-table (grayscale) case.
_IM_HASH1 = (
    510, 505, 422, 380, 355, 338, 326, 318, 311, 305, 300, 297, 293, 291, 288, 286,
    284, 283, 281, 280, 279, 278, 277, 273, 262, 251, 243, 233, 225, 218, 211, 205,
    198, 193, 186, 181, 177, 172, 168, 164, 158, 156, 152, 148, 145, 142, 139, 136,
    133, 131, 129, 126, 123, 120, 118, 115, 113, 110, 107, 105, 102, 100, 97, 94,
    92, 89, 87, 83, 81, 79, 76, 74, 70, 68, 66, 63, 61, 57, 55, 52, 50, 48, 44, 42,
    39, 37, 34, 31, 29, 26, 24, 21, 18, 16, 13, 11, 8, 6, 3, 2, 0)
_IM_SUMS1 = (
    16320, 16315, 15946, 15277, 14655, 14073, 13623, 13230, 12859, 12560, 12240, 11861,
    11456, 11081, 10714, 10360, 10027, 9679, 9368, 9056, 8680, 8331, 7995, 7668, 7376,
    7084, 6823, 6562, 6345, 6125, 5939, 5756, 5571, 5421, 5240, 5086, 4976, 4829, 4719,
    4616, 4463, 4393, 4280, 4166, 4092, 3980, 3909, 3835, 3755, 3688, 3621, 3541, 3467,
    3396, 3323, 3247, 3170, 3096, 3021, 2952, 2874, 2804, 2727, 2657, 2583, 2509, 2437,
    2362, 2290, 2211, 2136, 2068, 1996, 1915, 1858, 1773, 1692, 1620, 1552, 1477, 1398,
    1326, 1251, 1179, 1109, 1031, 961, 884, 814, 736, 667, 592, 518, 441, 369, 292, 221,
    151, 86, 64, 0)

# What `identify -format %Q` prints when the estimate is undefined (property.c).
IMAGEMAGICK_UNDEFINED_QUALITY = 92

# Editors whose tag in EXIF Software / XMP CreatorTool marks a re-saved photo.
# Glob patterns, matched case-insensitively.
DEFAULT_EDITOR_PATTERNS: tuple[str, ...] = (
    "*photoshop*", "*lightroom*", "*adobe bridge*", "*camera raw*", "*gimp*",
    "*paint.net*", "*acd systems*", "*acdsee*", "*picasa*", "*snapseed*", "*pixelmator*",
    "*aperture*", "*iphoto*", "*capture one*", "*dxo*", "*darktable*", "*rawtherapee*",
    "*luminar*", "*affinity*", "*corel*", "*paint shop*", "*irfanview*", "*xnview*",
    "*faststone*", "*windows photo*", "*photo gallery*", "*instagram*", "*vsco*",
    "*imagemagick*", "*graphicsmagick*",
)

_TAG_MAKE, _TAG_MODEL, _TAG_SOFTWARE = 0x010F, 0x0110, 0x0131
_CREATOR_TOOL = re.compile(rb'CreatorTool(?:="([^"]*)"|>([^<]*)<)')


# Every standard table at every quality, so matching a file's tables is one comparison.
_IJG_LUMA = {fb: np.stack([scaled_table(STD_LUMINANCE, q, fb) for q in range(1, 101)])
             for fb in (True, False)}
_IJG_CHROMA = {fb: np.stack([scaled_table(STD_CHROMINANCE, q, fb) for q in range(1, 101)])
               for fb in (True, False)}


def _as_arrays(tables: Mapping[int, Sequence[int]]) -> dict[int, np.ndarray]:
    return {int(k): np.asarray(v, dtype=np.int64).reshape(64) for k, v in tables.items()}


def estimate_quality(tables: Mapping[int, Sequence[int]]) -> tuple[int | None, bool]:
    """ImageMagick's quality estimate: ``(quality or None when undefined, exact)``.

    ``tables`` maps the DQT slot (0..3) to 64 values in natural order. ``exact`` is
    ImageMagick's "exact" (both hash and sum within the tabulated quality) as opposed
    to "approximate" (qualities above 50 are accepted approximately, lower ones not).
    """
    t = _as_arrays(tables)
    total = int(sum(int(v.sum()) for v in t.values()))
    if 0 in t and 1 in t:
        qvalue = int(t[0][2] + t[0][53] + t[1][0] + t[1][63])
        hashes, sums = _IM_HASH2, _IM_SUMS2
    elif 0 in t:
        qvalue = int(t[0][2] + t[0][53])
        hashes, sums = _IM_HASH1, _IM_SUMS1
    else:
        return None, False  # no slot-0 table: ImageMagick leaves the quality undefined
    for i in range(100):
        if qvalue < hashes[i] and total < sums[i]:
            continue
        exact = qvalue <= hashes[i] and total <= sums[i]
        return (i + 1 if exact or i >= 50 else None), exact
    return None, False


def imagemagick_quality(tables: Mapping[int, Sequence[int]]) -> int:
    """Exactly what ``identify -format %Q`` prints for a JPEG with these tables."""
    quality, _ = estimate_quality(tables)
    return IMAGEMAGICK_UNDEFINED_QUALITY if quality is None else quality


def ijg_quality(tables: Mapping[int, Sequence[int]]) -> int | None:
    """The quality q when every table is the standard IJG table scaled to q, else None.

    Slot 0 must be the luminance table, slots 1-3 the chrominance table (libjpeg,
    Pillow, GIMP, paint.net and many Android camera stacks write these).
    """
    t = _as_arrays(tables)
    if 0 not in t:
        return None
    for baseline in (True, False):
        ok = np.all(_IJG_LUMA[baseline] == t[0], axis=1)
        for slot, table in t.items():
            if slot != 0:
                ok &= np.all(_IJG_CHROMA[baseline] == table, axis=1)
        if ok.any():
            return int(np.flatnonzero(ok)[0]) + 1  # the 100 scaled table pairs are all distinct
    return None


def clean_tag(value: object) -> str:
    """EXIF string as ImageMagick prints it (trailing blanks kept), minus NULs and newlines."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    text = str(value).replace("\x00", "")
    return "".join(ch if ch.isprintable() else " " for ch in text)


def normalise_model(value: str) -> str:
    """Model strings compare without blanks and case: 'EX-Z3  ' == 'ex-z3', 'Nexus 5X' == 'NEXUS5X'."""
    return "".join(value.split()).casefold()


def glob_match(value: str, patterns: Iterable[str]) -> str | None:
    """The first pattern that matches ``value`` (stripped, case-insensitive), or None."""
    text = value.strip().casefold()
    for pattern in patterns:
        if fnmatch.fnmatchcase(text, pattern.strip().casefold()):
            return pattern
    return None


@dataclass
class ExifTags:
    make: str = ""
    model: str = ""
    software: str = ""
    error: str = ""  # why the EXIF block could not be read ("" when absent or fine)


def read_exif_tags(im: Image.Image) -> ExifTags:
    """Make/Model/Software from IFD0 (of the EXIF block, or a TIFF's own first directory);
    a present but unparseable EXIF block sets ``error``.

    Pillow silently returns an empty mapping for a corrupt block, so emptiness and
    Pillow's "Corrupt EXIF" warnings are turned into an explicit error here.
    """
    raw = im.info.get("exif") or b""
    if not raw:
        if im.format == "TIFF":  # a TIFF's IFD0 is its EXIF IFD0: Make/Model/Software live there
            try:
                ifd0 = im.getexif()
                return ExifTags(*(clean_tag(ifd0.get(t)) for t in (_TAG_MAKE, _TAG_MODEL, _TAG_SOFTWARE)))
            except Exception as exc:  # hostile TIFF directories: same treatment as a broken EXIF block
                return ExifTags(error=f"TIFF tags unparseable: {type(exc).__name__}: {exc}"[:200])
        return ExifTags()
    body = raw[6:] if raw.startswith(b"Exif\x00\x00") else raw
    if body[:4] not in (b"II*\x00", b"MM\x00*"):
        return ExifTags(error="EXIF block has no valid TIFF header")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # A fresh parse, not im.getexif(): Pillow already parsed (and warned) at open.
            exif = Image.Exif()
            exif.load(raw)
            tags = {tag: exif.get(tag) for tag in (_TAG_MAKE, _TAG_MODEL, _TAG_SOFTWARE)}
    except Exception as exc:  # Pillow raises many types on hostile input; all mean "broken EXIF"
        return ExifTags(error=f"EXIF unparseable: {type(exc).__name__}: {exc}"[:200])
    out = ExifTags(*(clean_tag(tags[t]) for t in (_TAG_MAKE, _TAG_MODEL, _TAG_SOFTWARE)))
    corrupt = [str(w.message) for w in caught if "exif" in str(w.message).lower()]
    if corrupt:
        out.error = f"EXIF corrupt: {corrupt[0]}"[:200]
    elif len(exif) == 0:
        out.error = "EXIF block present but holds no readable tags"
    return out


def xmp_creator_tool(im: Image.Image) -> str:
    """XMP ``CreatorTool`` (Lightroom/Photoshop/GIMP write it even when EXIF Software is kept)."""
    xmp = im.info.get("xmp") or b""
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8", errors="replace")
    match = _CREATOR_TOOL.search(xmp)
    if not match:
        return ""
    return clean_tag(match.group(1) if match.group(1) is not None else match.group(2)).strip()


def resave_evidence(software: str, creator_tool: str, adobe_marker: bool,
                    editors: Sequence[str] = DEFAULT_EDITOR_PATTERNS) -> list[str]:
    """Header signs that a photo went through an editor after the camera wrote it.

    Tables that are not a scaled IJG table are deliberately NOT evidence: most cameras
    (Apple, Canon, Samsung...) write their own tables, while GIMP/paint.net/Pillow
    re-saves write exact IJG tables. Table kind is a per-class rule instead.
    """
    found = []
    for label, value in (("EXIF Software", software), ("XMP CreatorTool", creator_tool)):
        if value.strip() and glob_match(value, editors):
            found.append(f"{label} '{value.strip()}'")
    if adobe_marker:
        found.append("Adobe APP14 marker")  # written by Adobe encoders, not by cameras
    return found


@dataclass
class JpegFacts:
    """Everything the filter needs from a file's header."""

    format: str
    mode: str
    width: int
    height: int
    exif: ExifTags
    creator_tool: str = ""
    quality: int | None = None  # ImageMagick's estimate; None where it prints 92 (undefined)
    quality_exact: bool = False
    ijg_quality: int | None = None
    resave: list[str] = field(default_factory=list)


def is_jpeg(im: Image.Image) -> bool:
    # Pillow opens camera JPEGs that carry an MPF (multi-picture) APP2 block as MPO.
    return im.format in ("JPEG", "MPO")


def inspect_image(im: Image.Image, editors: Sequence[str] = DEFAULT_EDITOR_PATTERNS) -> JpegFacts:
    """Header facts of an opened image (no pixel decoding). Non-JPEGs get size/mode only."""
    facts = JpegFacts(format=str(im.format or "unknown"), mode=im.mode,
                      width=int(im.width), height=int(im.height), exif=read_exif_tags(im))
    if not is_jpeg(im):
        return facts
    tables = getattr(im, "quantization", None) or {}
    facts.quality, facts.quality_exact = estimate_quality(tables) if tables else (None, False)
    facts.ijg_quality = ijg_quality(tables) if tables else None
    facts.creator_tool = xmp_creator_tool(im)
    facts.resave = resave_evidence(facts.exif.software, facts.creator_tool,
                                   "adobe" in im.info, editors)
    return facts

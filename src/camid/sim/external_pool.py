"""`camid simulate --external N`: a pool of photos that looks like a scrape of photo sites.

The winners' biggest lever was external data: ~500 GB scraped from Flickr, Yandex.Fotki
and Wikimedia, filtered by EXIF model, native size, JPEG quality and editing software
down to ~80k camera originals (docs/competition.md, "External data"). This module writes
such a scrape for the simulated competition, so ``camid filter-external`` can be run and
scored on it::

    OUT/external/<site>_<id>.jpg     flat, like a scraper's download folder
    OUT/external_truth.csv           per file: what it really is and what the filter should do
    OUT/external_rules.yaml          the filter rules for the simulated models
                                     (``camid filter-external OUT/external --rules OUT/external_rules.yaml``)
    OUT/external.json                the pool's options and completion marker

Devices: every model's photos come from ``external_devices`` further devices C, D, E, ...,
each with its own PRNU and noise levels (``sim.camera.make_device``/``prnu`` with their own
device codes). Device A (train) and device B (test) never shoot a pool photo.

Each file claims a model by its EXIF (Make, Model as the real phones write them, e.g.
``LGE``/``Nexus 5X``; a few carrier variants per model, one per device), Software
(firmware strings matching the rules' patterns), DateTime(Original), Orientation, ISO
and pixel dimensions. Sizes are the model's native frames: the full sensor
(``width`` x ``height`` of the simulate options, the training photos' size) and, for
about half of the models, a 16:9 mode (the centre rows of the sensor). About 30% of
photos are portrait shots; most models store them the way phones do, landscape pixels
plus ``Orientation`` 6 (or 8), and about 30% of the models store the pixels rotated
with ``Orientation`` 1. The filter accepts both (shapes are checked in either orientation);
training reads pixels as stored (``data.images.read_image`` ignores Orientation, keeping the
colour-filter grid), so the first kind trains in sensor orientation, the second rotated,
as real scraped photos do.

What the pool holds (shares of ``N x n_classes`` files; each reject kind gets at least
one file once the pool has >= 4 files per reject kind, clean photos take the rest,
about 58%):

=================  =====  =====================================================  ============
kind               share  what was done                                          filter says
=================  =====  =====================================================  ============
clean              ~58%   camera original                                        keep
edited_software     6%    tone edit, re-saved; Software = Photoshop/Lightroom/   resave
                          Snapseed
resaved_tables      4%    re-saved by an editor with its own (non-IJG) tables,   tables
                          camera EXIF kept
resized             6%    downscaled for the web (non-native size), EXIF kept    shape
low_quality         5%    recompressed at JPEG quality 60-88 (below the model's  quality
                          firmware minimum), EXIF kept
foreign_model       5%    a camera outside the classes (near misses such as      model
                          ``iPhone 6 Plus``, ``Nexus 5``, ``NEX-6``)
no_exif             4%    metadata stripped                                      model
duplicate_resave    4%    a second copy of a clean photo, re-encoded at the      near-duplicate
                          camera's own quality
duplicate_crop      2%    a second copy, cropped by 1-2.5% on each side          shape
truncated           2%    download cut short                                     unreadable
empty               1%    0-byte download                                        unreadable
not_image           1%    an HTML error page saved as .jpg                       unreadable
liar                2%    correct-looking EXIF of model X, pixels of model Y     keep (wrong!)
=================  =====  =====================================================  ============

A duplicate is named after its original (``<name>_1.jpg``, ``_2``, ...: a scraper's second
download of the same photo), which sorts after the original, so the filter (which keeps
the first file in path order) keeps the original. Liars pass every rule, as in real scrapes;
``external_truth.csv`` marks them (``label_ok`` = 0) so the score reports them apart.

Every file is seeded from (seed, camera, device, index, kind) -- never from worker
order -- so a seed gives byte-identical files for any worker count.
"""
from __future__ import annotations

import datetime as dt
import io
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import yaml

from ..data import images
from ..data.images import STD_CHROMINANCE, STD_LUMINANCE, scaled_table
from ..data.layout import POOL_DIR, POOL_MARKER, POOL_RULES, POOL_TRUTH, read_marker, remove_outputs
from ..errors import SimulateError
from ..forensics.exif import glob_match
from ..forensics.rules import (
    MODEL,
    NEAR_DUPLICATE,
    QUALITY,
    RESAVE,
    SHAPE,
    TABLES,
    UNREADABLE,
    ClassRule,
    Rules,
    rules_mapping,
)
from ..util.io import atomic_path, write_csv, write_json, write_text
from ..util.log import stage_log
from ..util.pool import parallel_map
from .camera import (
    DEVICE_CODES,
    DEVICES,
    DISCRETE_CHOICES,
    JPEG_QUALITY_JITTER,
    CameraModel,
    capture,
    draw_model,
    encode_jpeg,
    make_models,
    seeded_rng,
)
from .competition import SimOptions, keep_heap, simulate

# Bump when the pool generator changes, so an old pool is not mistaken for a current one.
POOL_FORMAT_VERSION = 1
_OWNED = (POOL_DIR, POOL_TRUTH, POOL_RULES, POOL_MARKER)

TRUTH_COLUMNS = [
    "file", "kind", "claimed_class", "true_model", "true_device", "expected", "expected_reason",
    "label_ok", "duplicate_of", "exif_make", "exif_model", "exif_software", "orientation",
    "width", "height", "jpeg_quality", "detail"]

# Stream words for the pool (sim.camera uses 1..8 in the same position).
_S_CAMERA, _S_PLAN, _S_NAMES, _S_SHOT, _S_FILE, _S_FOREIGN, _S_CLOCK = range(101, 108)
# Camera index of the cameras outside the classes: far above any class index, so their
# pipelines, PRNU and scenes never share a seed with a class's.
FOREIGN_BASE = 10_000


@dataclass(frozen=True)
class Kind:
    name: str
    share: float  # of all pool files; clean takes what the others leave
    reason: str  # the filter's reason code for it ("" = kept)


KINDS: tuple[Kind, ...] = (
    Kind("clean", 0.0, ""),
    Kind("edited_software", 0.06, RESAVE),
    Kind("resaved_tables", 0.04, TABLES),
    Kind("resized", 0.06, SHAPE),
    Kind("low_quality", 0.05, QUALITY),
    Kind("foreign_model", 0.05, MODEL),
    Kind("no_exif", 0.04, MODEL),
    Kind("duplicate_resave", 0.04, NEAR_DUPLICATE),
    Kind("duplicate_crop", 0.02, SHAPE),
    Kind("truncated", 0.02, UNREADABLE),
    Kind("empty", 0.01, UNREADABLE),
    Kind("not_image", 0.01, UNREADABLE),
    Kind("liar", 0.02, ""),
)
KIND_BY_NAME = {k.name: k for k in KINDS}
_KIND_CODE = {k.name: i for i, k in enumerate(KINDS)}
DUPLICATE_KINDS = ("duplicate_resave", "duplicate_crop")
_NO_PIXELS = ("empty", "not_image")
PORTRAIT_SHARE = 0.3
WIDE_FRAME_SHARE = 0.35  # of a 16:9-capable model's photos

# EXIF identity of the Kaggle classes: Make, Model variants (carrier/region editions;
# device C writes the first, D the second, ...), the firmware strings written to Software,
# and the rules' Software patterns (None: any, as configs/external_rules.yaml has for
# Motorola and Samsung). Strings follow configs/external_rules.yaml.
KAGGLE_EXIF: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...] | None]] = {
    "HTC-1-M7": ("HTC", ("HTC One", "HTC One 801e", "HTC6500LVW"),
                 ("hvvj_4.19.401.11", "hvvj_7.19.401.51"), ("hvvj*", "HDR+*")),
    "iPhone-4s": ("Apple", ("iPhone 4S",), ("7.1.2", "8.4.1", "9.3.5"),
                  ("5.*", "6.*", "7.*", "8.*", "9.*")),
    "iPhone-6": ("Apple", ("iPhone 6",), ("9.3.5", "10.3.3", "11.4.1", "12.5.1"),
                 ("8.*", "9.*", "10.*", "11.*", "12.*")),
    "LG-Nexus-5x": ("LGE", ("Nexus 5X",),
                    ("bullhead-user 8.1.0 OPM7.181205.001 5080180 release-keys", "HDR+ 1.0.199571065z"),
                    ("bullhead*", "HDR+*")),
    "Motorola-Droid-Maxx": ("Motorola", ("XT1080", "DROID MAXX"),
                            ("", "obakem_verizon-user 4.4.4 SU6-7.7 release-keys"), None),
    "Motorola-Nexus-6": ("motorola", ("Nexus 6",),
                         ("shamu-user 7.1.1 N6F27M 4299435 release-keys", "HDR+ 1.0.141961882"),
                         ("shamu*", "HDR+*")),
    "Motorola-X": ("motorola", ("XT1092", "XT1095", "XT1097"),
                   ("", "victara_retbr-user 6.0 MPE24.49-18 release-keys"), None),
    "Samsung-Galaxy-Note3": ("SAMSUNG", ("SM-N9005", "SM-N900A", "SM-N900T"),
                             ("N9005XXUGBOK6", "N900AUCUEOC1", ""), None),
    "Samsung-Galaxy-S4": ("SAMSUNG", ("GT-I9505", "SGH-I337", "SCH-I545"),
                          ("I9505XXUHPK2", "I337UCUGOC3", ""), None),
    "Sony-NEX-7": ("SONY", ("NEX-7",), ("NEX-7 v1.01", "NEX-7 v1.03"), ("NEX-7 v*",)),
}
# Cameras outside the classes; several are near misses of a class's model string,
# which the filter's exact (blank- and case-insensitive) model match must not accept.
FOREIGN_CAMERAS: tuple[tuple[str, str, str], ...] = (
    ("Apple", "iPhone 6 Plus", "10.3.3"),
    ("Apple", "iPhone 5s", "9.3.5"),
    ("LGE", "Nexus 5", "hammerhead-user 6.0.1 M4B30Z 3437181 release-keys"),
    ("HTC", "HTC One_M8", "6.12.401.4"),
    ("samsung", "SM-G900F", "G900FXXU1CRH1"),
    ("SONY", "NEX-6", "NEX-6 v1.03"),
    ("motorola", "XT1068", ""),
    ("Canon", "Canon EOS 600D", ""),
    ("NIKON CORPORATION", "NIKON D3200", "Ver.1.03"),
    ("Google", "Pixel 2", "HDR+ 1.0.199571065zd"),
)
EDITOR_SOFTWARE: tuple[str, ...] = (
    "Adobe Photoshop CC 2017 (Windows)", "Adobe Photoshop CS6 (Macintosh)",
    "Adobe Photoshop Lightroom Classic 7.3 (Macintosh)", "Snapseed 2.0")
_RESIZE_FACTORS = (0.5, 0.625, 0.75, 0.8, 0.9)
# An editor's own tables: IJG q98 with every third entry one step coarser -- not a scaled
# IJG table, ImageMagick quality 98, so only the rules' `tables: ijg` check catches it.
EDITOR_QTABLES: tuple[list[int], list[int]] = tuple(
    (scaled_table(base, 98) + (np.arange(64) % 3 == 2)).tolist()
    for base in (STD_LUMINANCE, STD_CHROMINANCE))


# --------------------------------------------------------------------------- cameras


@dataclass(frozen=True)
class PoolCamera:
    """How one camera writes its files in the wild: EXIF identity, native frames, rotation."""

    index: int  # class index, or FOREIGN_BASE + j
    name: str  # class name, or the foreign model string
    make: str
    models: tuple[str, ...]
    firmware: tuple[str, ...]
    software_rules: tuple[str, ...] | None
    shapes: tuple[tuple[int, int], ...]  # landscape (w, h); the first is the full sensor
    rotates_pixels: bool  # portrait shots stored rotated (Orientation 1), not tagged
    min_quality: int  # lowest JPEG quality its encoder writes

    def model_for(self, device: str) -> str:
        return self.models[(DEVICE_CODES[device] - 2) % len(self.models)]


def pool_devices(k: int) -> tuple[str, ...]:
    """The pool's device names: C, D, ... (A and B shoot train and test)."""
    letters = [d for d, _ in sorted(DEVICE_CODES.items(), key=lambda kv: kv[1]) if d not in DEVICES]
    return tuple(letters[:k])


def _identity(index: int, name: str) -> tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...] | None]:
    if name in KAGGLE_EXIF:
        return KAGGLE_EXIF[name]
    # Camera-11, Camera-12, ...: a made-up maker with the same shape of strings.
    k = index + 1
    return ("SimCam", (f"SC-{k}", f"SC-{k}A"), tuple(f"SC-{k} fw 1.{v}" for v in range(3)),
            (f"SC-{k} fw *",))


def _wide_height(width: int, height: int) -> int | None:
    """Rows of the 16:9 mode of a width x height sensor (even), or None if it has none."""
    if width < height:
        return None
    rows = 2 * round(width * 9 / 16 / 2)
    return rows if 0 < rows < height else None


def pool_cameras(models: Sequence[CameraModel], opts: SimOptions) -> list[PoolCamera]:
    """One PoolCamera per class (index = class index)."""
    out = []
    for m in models:
        rng = seeded_rng(opts.seed, _S_CAMERA, m.index)
        make, variants, firmware, patterns = _identity(m.index, m.name)
        wide = _wide_height(opts.width, opts.height)
        shapes: tuple[tuple[int, int], ...] = ((opts.width, opts.height),)
        if rng.random() < 0.5 and wide is not None:
            shapes += ((opts.width, wide),)
        out.append(PoolCamera(index=m.index, name=m.name, make=make, models=variants, firmware=firmware,
                              software_rules=patterns, shapes=shapes,
                              rotates_pixels=bool(rng.random() < 0.3),
                              min_quality=max(1, m.jpeg_quality - JPEG_QUALITY_JITTER)))
    return out


def foreign_models(opts: SimOptions) -> list[tuple[CameraModel, PoolCamera]]:
    """The cameras outside the classes: their own pipelines and EXIF identities."""
    out = []
    for j, (make, model_name, firmware) in enumerate(FOREIGN_CAMERAS):
        rng = seeded_rng(opts.seed, _S_FOREIGN, j)
        discrete = {key: pool[int(rng.integers(len(pool)))] for key, pool in DISCRETE_CHOICES.items()}
        model = draw_model(FOREIGN_BASE + j, model_name, opts.seed, discrete)
        cam = PoolCamera(index=model.index, name=model_name, make=make, models=(model_name,),
                         firmware=(firmware,), software_rules=None, shapes=((opts.width, opts.height),),
                         rotates_pixels=False,
                         min_quality=max(1, model.jpeg_quality - JPEG_QUALITY_JITTER))
        out.append((model, cam))
    return out


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class PoolFile:
    fname: str  # under OUT/external/
    kind: str
    claimed: int  # class index the file's EXIF claims (-1: none or a foreign camera)
    duplicate_of: str = ""  # fname of the original (duplicate kinds)


@dataclass(frozen=True)
class Capture:
    """One shutter press (camera, device, photo index) and the files made from it.
    ``camera`` is -1 for downloads without pixels (empty files, error pages)."""

    camera: int
    device: str
    index: int
    files: tuple[PoolFile, ...]


def kind_counts(total: int) -> dict[str, int]:
    """Files of each kind in a pool of ``total`` files (see the module docstring)."""
    rejects = [k for k in KINDS if k.name != "clean"]
    every = total >= 4 * len(rejects)
    counts = {k.name: (max(1, round(k.share * total)) if every else int(k.share * total)) for k in rejects}
    return {"clean": total - sum(counts.values()), **counts}


@dataclass
class _Slot:
    kind: str
    claimed: int
    camera: int = -1
    device: str = ""
    index: int = -1
    original: int = -1  # slot number of a duplicate's original


def _name(rng: np.random.Generator) -> str:
    site = rng.random()
    if site < 0.5:
        return f"flickr_{int(rng.integers(10**10, 5 * 10**10))}_{int(rng.integers(16**10)):010x}_o.jpg"
    if site < 0.8:
        user = "".join(chr(ord("a") + int(c)) for c in rng.integers(0, 26, size=int(rng.integers(5, 10))))
        return f"fotki_{user}_{int(rng.integers(10**6, 10**7))}_orig.jpg"
    return f"commons_{int(rng.integers(16**8)):08x}.jpg"


def plan_pool(opts: SimOptions) -> list[Capture]:
    """Every pool file, grouped by the capture it comes from (no pixels rendered)."""
    n, per = opts.n_classes, opts.external_per_class
    counts = kind_counts(n * per)
    dealt = [name for name in KIND_BY_NAME if name != "clean" for _ in range(counts[name])]
    per_class: list[list[str]] = [[] for _ in range(n)]
    for s, name in enumerate(dealt):  # round robin: every class gets its share of rejects
        per_class[s % n].append(name)
    rng = seeded_rng(opts.seed, _S_PLAN)
    devices = pool_devices(opts.external_devices)
    shots: Counter = Counter()  # (camera, device) -> next photo index
    turns: Counter = Counter()  # camera -> next device in rotation

    def assign(slot: _Slot, camera: int, device: str | None = None) -> None:
        if device is None:
            device = devices[turns[camera] % len(devices)]
            turns[camera] += 1
        slot.camera, slot.device, slot.index = camera, device, shots[(camera, device)]
        shots[(camera, device)] += 1

    slots: list[_Slot] = []
    for c in range(n):
        rejects = per_class[c]
        kinds = ["clean"] * (per - len(rejects)) + rejects
        cleans: list[int] = []
        dups = 0
        for kind in kinds:
            if kind in DUPLICATE_KINDS and not cleans:
                kind = "clean"  # a class with no clean photo has nothing to duplicate
            slot = _Slot(kind, claimed=c)
            if kind in DUPLICATE_KINDS:
                slot.original = cleans[dups % len(cleans)]
                dups += 1
            elif kind == "liar":  # another class's pixels under this class's EXIF
                assign(slot, (c + int(rng.integers(1, n))) % n)
            elif kind == "foreign_model":
                slot.claimed = -1
                assign(slot, FOREIGN_BASE + int(rng.integers(len(FOREIGN_CAMERAS))), devices[0])
            elif kind in _NO_PIXELS:
                slot.claimed = -1
            else:
                assign(slot, c)
            if kind == "clean":
                cleans.append(len(slots))
            slots.append(slot)
    return _group(slots, seeded_rng(opts.seed, _S_NAMES))


def _group(slots: list[_Slot], rng: np.random.Generator) -> list[Capture]:
    names: dict[int, str] = {}
    taken: set[str] = set()
    dup_number: Counter = Counter()
    for i, slot in enumerate(slots):
        if slot.original >= 0:
            continue
        name = _name(rng)
        while name in taken:
            name = _name(rng)
        names[i] = name
        taken.add(name)
    for i, slot in enumerate(slots):
        if slot.original < 0:
            continue
        # `_1`, `_2` after the stem: sorts after the original ('.' < '_'), so the filter,
        # which keeps the first file in path order, keeps the original.
        dup_number[slot.original] += 1
        stem, ext = os.path.splitext(names[slot.original])
        name = f"{stem}_{dup_number[slot.original]}{ext}"
        if name in taken or name <= names[slot.original]:
            raise SimulateError(f"pool file name {name} clashes or sorts before its original")
        names[i] = name
        taken.add(name)
    groups: dict[tuple[Any, ...], list[PoolFile]] = {}
    order: list[tuple[Any, ...]] = []
    for i, slot in enumerate(slots):
        src = slots[slot.original] if slot.original >= 0 else slot
        key: tuple[Any, ...] = (src.camera, src.device, src.index) if src.camera >= 0 else (-1, i)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(PoolFile(names[i], slot.kind, slot.claimed,
                                    names[slot.original] if slot.original >= 0 else ""))
    captures = [Capture(k[0], k[1] if k[0] >= 0 else "", k[2] if k[0] >= 0 else -1, tuple(groups[k]))
                for k in order]
    # Grouped by device, so each worker reuses the cached PRNU of consecutive photos.
    return sorted(captures, key=lambda cap: (cap.camera, cap.device, cap.index, cap.files[0].fname))


# --------------------------------------------------------------------------- files


def _with_exif(jpeg: bytes, exif: bytes) -> bytes:
    import piexif  # only the pool writes EXIF: `camid simulate` without --external does not need it

    out = io.BytesIO()
    piexif.insert(exif, jpeg, out)  # replaces Pillow's JFIF APP0 with APP1 Exif, as phones write
    return out.getvalue()


@dataclass(frozen=True)
class _Meta:
    make: str
    model: str
    software: str
    when: dt.datetime
    orientation: int
    iso: int
    exposure: int  # 1/exposure s
    fnumber: tuple[int, int]

    def dump(self, width: int, height: int, software: str | None = None) -> bytes:
        import piexif

        stamp = self.when.strftime("%Y:%m:%d %H:%M:%S").encode()
        soft = self.software if software is None else software
        zeroth: dict[int, Any] = {
            piexif.ImageIFD.Make: self.make.encode(), piexif.ImageIFD.Model: self.model.encode(),
            piexif.ImageIFD.Orientation: self.orientation, piexif.ImageIFD.XResolution: (72, 1),
            piexif.ImageIFD.YResolution: (72, 1), piexif.ImageIFD.ResolutionUnit: 2,
            piexif.ImageIFD.DateTime: stamp, piexif.ImageIFD.YCbCrPositioning: 1}
        if soft:  # several phones write no Software tag at all
            zeroth[piexif.ImageIFD.Software] = soft.encode()
        exif = {
            piexif.ExifIFD.ExifVersion: b"0220", piexif.ExifIFD.DateTimeOriginal: stamp,
            piexif.ExifIFD.DateTimeDigitized: stamp, piexif.ExifIFD.ISOSpeedRatings: self.iso,
            piexif.ExifIFD.ExposureTime: (1, self.exposure), piexif.ExifIFD.FNumber: self.fnumber,
            piexif.ExifIFD.ColorSpace: 1, piexif.ExifIFD.PixelXDimension: int(width),
            piexif.ExifIFD.PixelYDimension: int(height)}
        return piexif.dump({"0th": zeroth, "Exif": exif})


def _edit(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What a quick phone/desktop edit does: exposure, contrast and saturation moves."""
    x = img.astype(np.float32) / 255.0
    x = x ** np.float32(rng.uniform(0.8, 1.2))
    x = (x - 0.5) * np.float32(rng.uniform(1.0, 1.25)) + 0.5
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * np.float32(rng.uniform(0.9, 1.3))
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


_ERROR_PAGE = ("<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head>\n"
               "<body><h1>Forbidden</h1><p>You don't have permission to access {url} on this server.</p>"
               "</body></html>\n")


@dataclass(frozen=True)
class _Context:
    opts: SimOptions
    out: str
    models: tuple[CameraModel, ...]
    cameras: tuple[PoolCamera, ...]
    foreign: tuple[tuple[CameraModel, PoolCamera], ...]

    def camera(self, index: int) -> tuple[CameraModel, PoolCamera]:
        if index >= FOREIGN_BASE:
            return self.foreign[index - FOREIGN_BASE]
        return self.models[index], self.cameras[index]


_WORKER: dict[str, _Context] = {}


def _init_worker(ctx: _Context) -> None:
    cv2.setNumThreads(1)  # one process per core already
    keep_heap()
    _WORKER["ctx"] = ctx


def _write(ctx: _Context, fname: str, data: bytes) -> None:
    with atomic_path(Path(ctx.out) / POOL_DIR / fname) as tmp:
        tmp.write_bytes(data)


def _row(f: PoolFile, ctx: _Context, **kw: Any) -> dict[str, Any]:
    row = {c: "" for c in TRUTH_COLUMNS}
    row.update(file=f"{POOL_DIR}/{f.fname}", kind=f.kind, duplicate_of=(f"{POOL_DIR}/{f.duplicate_of}"
                                                                        if f.duplicate_of else ""),
               claimed_class=ctx.cameras[f.claimed].name if f.claimed >= 0 else "")
    row.update(kw)
    return row


def _render(cap: Capture) -> list[dict[str, Any]]:
    """Write the files of one capture; returns their truth rows (verdicts are added later)."""
    ctx = _WORKER["ctx"]
    opts = ctx.opts
    if cap.camera < 0:
        rows = []
        for f in cap.files:
            data = b"" if f.kind == "empty" else _ERROR_PAGE.format(url=f"/{f.fname}").encode()
            _write(ctx, f.fname, data)
            rows.append(_row(f, ctx, detail="0-byte download" if f.kind == "empty"
                             else "HTML error page saved as .jpg"))
        return rows
    model, camera = ctx.camera(cap.camera)
    code = DEVICE_CODES[cap.device]
    rgb, shot = capture(model, cap.device, cap.index, opts.width, opts.height, opts.seed)
    rng = seeded_rng(opts.seed, _S_SHOT, cap.camera, code, cap.index)
    liar = cap.files[0].kind == "liar"
    # The EXIF is the claimed camera's: a liar's is another class's than its pixels.
    claimed = ctx.cameras[cap.files[0].claimed] if liar else camera
    frame = "full"
    if not liar and len(camera.shapes) > 1 and rng.random() < WIDE_FRAME_SHARE:
        rows_ = camera.shapes[1][1]
        top = ((opts.height - rows_) // 4) * 2  # even: the colour-filter grid stays aligned
        rgb = rgb[top:top + rows_]
        frame = "16:9"
    orientation = 1
    if not liar and rng.random() < PORTRAIT_SHARE:
        if camera.rotates_pixels:
            rgb = np.rot90(rgb, -1)
            frame += ", portrait stored rotated"
        else:
            orientation = 6 if rng.random() < 0.75 else 8
            frame += f", portrait via Orientation {orientation}"
    rgb = np.ascontiguousarray(rgb)
    clock = seeded_rng(opts.seed, _S_CLOCK, cap.camera, code)
    when = (dt.datetime(2014, 1, 1) + dt.timedelta(days=float(clock.uniform(0, 1200)))
            + dt.timedelta(days=1.7 * cap.index + float(rng.uniform(0, 1.5))))
    meta = _Meta(make=claimed.make, model=claimed.model_for(cap.device),
                 software=claimed.firmware[int(rng.integers(len(claimed.firmware)))],
                 when=when.replace(microsecond=0), orientation=orientation,
                 iso=int(round(50 * shot.iso)), exposure=int(rng.choice([30, 60, 120, 250, 500, 1000])),
                 fnumber=(int(rng.choice([18, 20, 22, 24, 28])), 10))
    base = encode_jpeg(rgb, model, shot.jpeg_quality)
    h, w = rgb.shape[:2]
    true = {"true_model": model.name, "true_device": cap.device, "exif_make": meta.make,
            "exif_model": meta.model, "orientation": orientation}
    rows = []
    for k, f in enumerate(cap.files):
        frng = seeded_rng(opts.seed, _S_FILE, cap.camera, code, cap.index, _KIND_CODE[f.kind], k)
        data, info = _make_file(f.kind, rgb, base, model, camera, claimed, shot.jpeg_quality, meta, frng)
        _write(ctx, f.fname, data)
        info.setdefault("width", w)
        info.setdefault("height", h)
        info.setdefault("exif_software", meta.software)
        info["detail"] = f"{info['detail']}; {frame} frame"
        rows.append(_row(f, ctx, **{**true, **info}))
    return rows


def _make_file(kind: str, rgb: np.ndarray, base: bytes, model: CameraModel, camera: PoolCamera,
               claimed: PoolCamera, quality: int, meta: _Meta,
               rng: np.random.Generator) -> tuple[bytes, dict[str, Any]]:
    """The bytes of one file made from a capture, and its truth facts."""
    h, w = rgb.shape[:2]
    exif = meta.dump(w, h)
    if kind in ("clean", "foreign_model"):
        return _with_exif(base, exif), {"jpeg_quality": quality, "detail": "camera original"}
    if kind == "liar":
        # Re-encoded at no less than the claimed model's quality, so no rule can object.
        q = max(quality, claimed.min_quality)
        return (_with_exif(encode_jpeg(rgb, model, q), exif),
                {"jpeg_quality": q, "detail": f"EXIF of {claimed.name}, pixels of {model.name}"})
    if kind == "no_exif":
        return base, {"jpeg_quality": quality, "exif_make": "", "exif_model": "", "exif_software": "",
                      "orientation": "", "detail": "camera original, metadata stripped"}
    if kind == "truncated":
        full = _with_exif(base, exif)
        sos = full.find(b"\xff\xda")
        cut = sos + int((len(full) - sos) * rng.uniform(0.3, 0.85))
        return full[:cut], {"jpeg_quality": quality, "detail": f"download cut at {cut} of {len(full)} bytes"}
    pixels = images.decode_bytes(base)  # everything below re-saves the camera's JPEG
    if kind == "edited_software":
        editor = EDITOR_SOFTWARE[int(rng.integers(len(EDITOR_SOFTWARE)))]
        q = int(rng.integers(90, 99))
        return (_with_exif(images.encode_jpeg(_edit(pixels, rng), q, "4:2:0"), meta.dump(w, h, software=editor)),
                {"jpeg_quality": q, "exif_software": editor, "detail": f"tone edit, saved by {editor} q{q}"})
    if kind == "resaved_tables":
        sub = ("4:2:0", "4:4:4")[int(rng.integers(2))]
        return (_with_exif(images.encode_jpeg_tables(pixels, EDITOR_QTABLES, sub), exif),
                {"jpeg_quality": 98, "detail": f"re-saved with an editor's own tables ({sub}), EXIF kept"})
    if kind == "low_quality":
        q = int(rng.integers(60, min(88, claimed.min_quality - 3) + 1))
        return (_with_exif(images.encode_jpeg(pixels, q, model.subsampling), exif),
                {"jpeg_quality": q, "detail": f"recompressed at quality {q}"})
    if kind == "duplicate_resave":
        return (_with_exif(encode_jpeg(pixels, model, quality), exif),
                {"jpeg_quality": quality, "detail": "second copy, re-encoded at the camera's quality"})
    if kind == "resized":
        native = {s for s in camera.shapes} | {(b, a) for a, b in camera.shapes}
        for f in rng.permutation(_RESIZE_FACTORS):
            size = (max(1, int(round(w * f))), max(1, int(round(h * f))))
            if size not in native:
                break
        small = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
        return (_with_exif(encode_jpeg(small, model, quality), meta.dump(*size)),
                {"jpeg_quality": quality, "width": size[0], "height": size[1],
                 "detail": f"resized {w}x{h} -> {size[0]}x{size[1]}"})
    if kind == "duplicate_crop":
        mx, my = (2 * max(1, int(round(s * rng.uniform(0.01, 0.025)))) for s in (w, h))
        crop = np.ascontiguousarray(pixels[my:h - my, mx:w - mx])
        ch, cw = crop.shape[:2]
        return (_with_exif(encode_jpeg(crop, model, quality), meta.dump(cw, ch)),
                {"jpeg_quality": quality, "width": cw, "height": ch,
                 "detail": f"second copy cropped {w}x{h} -> {cw}x{ch}"})
    raise ValueError(f"unknown pool kind {kind!r}")


# --------------------------------------------------------------------------- rules + truth


def pool_rules(cameras: Sequence[PoolCamera], opts: SimOptions) -> Rules:
    """The filter rules for the simulated models."""
    return Rules(
        min_side=min(64, min(opts.width, opts.height) // 2),
        reject_resaved=True,
        duplicate_max_distance=6,
        classes=tuple(ClassRule(
            name=c.name, models=c.models, software=c.software_rules, shapes=c.shapes,
            # The lowest quality the model's firmware writes: its originals are never below.
            min_quality=c.min_quality,
            # Every simulated camera writes scaled IJG tables; an editor's own tables are a re-save.
            tables="ijg",
        ) for c in cameras),
    )


def _rules_text(rules: Rules, opts: SimOptions) -> str:
    header = (
        "# Generated by `camid simulate --external` for the simulated camera models\n"
        f"# (seed {opts.seed}, {opts.n_classes} classes, {opts.width}x{opts.height} sensors).\n"
        "# Same format as configs/external_rules.yaml; use it with\n"
        "#   camid filter-external OUT/external --rules OUT/external_rules.yaml --out OUT/external_kept\n"
        "# min_quality is each model's lowest firmware quality; tables: ijg because every\n"
        "# simulated camera writes scaled IJG tables.\n")
    return header + yaml.safe_dump(rules_mapping(rules), sort_keys=False, default_flow_style=None)


def _verdicts(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=TRUTH_COLUMNS)
    df["expected_reason"] = [KIND_BY_NAME[k].reason for k in df["kind"]]
    df["expected"] = np.where(df["expected_reason"] == "", "keep", "reject")
    # A kept photo is a correct training label only if its pixels are the claimed model's.
    df["label_ok"] = ((df["expected"] == "keep") & (df["true_model"] == df["claimed_class"])).astype(int)
    return df.sort_values("file", kind="mergesort").reset_index(drop=True)


def _check_plan(captures: Sequence[Capture]) -> None:
    """Devices A (train) and B (test) never shoot the pool."""
    if any(cap.device in DEVICES for cap in captures):
        raise SimulateError(f"the pool plan uses a competition device ({'/'.join(DEVICES)})")


def check_identities(cameras: Sequence[PoolCamera], rules: Rules) -> None:
    """The truth's verdicts hold only if the filter's own matching tells each camera's EXIF
    identity apart: no ``FOREIGN_CAMERAS`` model string is a class's, every firmware string passes
    its class's Software patterns, every editor string is an editor to the filter."""
    clash = [m for _, m, _ in FOREIGN_CAMERAS if rules.class_for_model(m) is not None]
    if clash:
        raise SimulateError(f"foreign camera model(s) {clash} match a class of the rules")
    for cam, rule in zip(cameras, rules.classes, strict=True):
        bad = [s for s in cam.firmware if rule.software is not None and not glob_match(s, rule.software)]
        if bad:
            raise SimulateError(f"{cam.name}: firmware {bad} fails its own Software patterns {rule.software}")
    plain = [s for s in EDITOR_SOFTWARE if not glob_match(s, rules.editors)]
    if plain:
        raise SimulateError(f"editor string(s) {plain} are not editors to the filter")


# --------------------------------------------------------------------------- driver


def _prepare(out: Path, opts: SimOptions, overwrite: bool) -> bool:
    """True when OUT already holds a complete pool for these options; otherwise clear
    what an earlier pool wrote (refusing files this command did not write)."""
    marker = out / POOL_MARKER
    if not marker.is_file():
        present = [name for name in _OWNED if (out / name).exists()]
        if present:
            raise SimulateError(f"{out}: {', '.join(present)} exist(s) but were not written by "
                                f"`camid simulate --external` (no {POOL_MARKER}); move them away")
        return False
    state = read_marker(marker, f"delete it and {POOL_DIR}/ and re-run", SimulateError)
    same = (state.get("options") == asdict(opts)
            and state.get("format_version") == POOL_FORMAT_VERSION)
    if same and state.get("complete") and not overwrite:
        return True
    remove_outputs(out, _OWNED)  # ours: an interrupted run, other options, or --overwrite
    return False


def simulate_with_pool(out: str | Path, opts: SimOptions, workers: int | None = None,
                       overwrite: bool = False) -> dict[str, Any]:
    """``camid simulate``: the competition (``sim.competition``) and, when
    ``opts.external_per_class`` > 0, the external pool next to train/ and test/, each with its
    own marker; the summary of the pool is under ``external``."""
    summary = simulate(out, opts, workers=workers, overwrite=overwrite)
    if opts.external_per_class:
        summary["external"] = write_pool(out, opts, workers=workers, overwrite=overwrite)
    return summary


def write_pool(out: str | Path, opts: SimOptions, workers: int | None = None,
               overwrite: bool = False) -> dict[str, Any]:
    """Write the external pool (``opts.external_per_class`` files per class) into ``out``."""
    opts.validate()
    if opts.n_classes >= FOREIGN_BASE:
        raise SimulateError(f"an external pool supports at most {FOREIGN_BASE - 1} classes")
    out = Path(out)
    workers = max(1, int(workers or os.cpu_count() or 1))
    if _prepare(out, opts, overwrite):
        stage_log("simulate", f"{out / POOL_DIR} already holds a complete external pool for these "
                              "options; skipped")
        return {"skipped": True, "dir": str(out / POOL_DIR)}
    start = time.perf_counter()
    models = make_models(opts.n_classes, opts.seed)
    cameras = pool_cameras(models, opts)
    ctx = _Context(opts, str(out), tuple(models), tuple(cameras), tuple(foreign_models(opts)))
    captures = plan_pool(opts)
    _check_plan(captures)
    rules = pool_rules(cameras, opts)
    check_identities(cameras, rules)
    n_files = sum(len(c.files) for c in captures)
    write_json(out / POOL_MARKER, {"format_version": POOL_FORMAT_VERSION,
                                   "options": asdict(opts), "complete": False})
    stage_log("simulate", f"writing an external pool of {n_files} files ({opts.external_per_class} per "
                          f"class, devices {','.join(pool_devices(opts.external_devices))}) to "
                          f"{out / POOL_DIR} with {workers} worker(s)")
    rows = _run(captures, ctx, workers)
    truth = _verdicts(rows)
    write_csv(out / POOL_TRUTH, truth)
    write_text(out / POOL_RULES, _rules_text(rules, opts))
    kinds = dict(sorted(Counter(truth["kind"]).items()))
    write_json(out / POOL_MARKER, {"format_version": POOL_FORMAT_VERSION, "options": asdict(opts),
                                   "complete": True, "files": int(len(truth)), "kinds": kinds})
    wall = time.perf_counter() - start
    stage_log("simulate", f"wrote {len(truth)} pool files ({int((truth.expected == 'keep').sum())} the "
                          f"filter should keep, {int((truth.kind == 'liar').sum())} of them liars) to "
                          f"{out / POOL_DIR}, {POOL_TRUTH}, {POOL_RULES} in {wall:.1f}s")
    return {"skipped": False, "dir": str(out / POOL_DIR), "files": int(len(truth)), "kinds": kinds,
            "wall_s": wall}


def _run(captures: list[Capture], ctx: _Context, workers: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for part in parallel_map(_render, captures, workers, "camid simulate external", ordered=False,
                             initializer=_init_worker, initargs=(ctx,), unit="capture"):
        rows += part
    return rows

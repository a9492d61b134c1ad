"""`camid compose`: a competition in the Kaggle layout made from your own photos.

Input: ``<class>/*`` photo folders and/or manifest CSVs (columns ``file``, ``camera``; optional
``device``, ``scene``; ``file`` relative to the manifest's folder). Output, in a data folder::

    OUT/train/<class>/<photo>             the original files, byte for byte
    OUT/train_devices.csv                 fname, class, device, scene, source (layout.DEVICES_FILE)
    OUT/test/img_<hex>_{unalt,manip}.tif  test crops made by data.testcrops, as the simulator's
    OUT/solution.csv, sample_submission.csv
    OUT/solution_info.csv                 per test crop: device, scene, seen/unseen device,
                                          manipulation, source photo (layout.TEST_INFO_FILE)
    OUT/compose.json                      options, inputs, skipped files, completion marker

The split never puts a photo on both sides. A class with >= 2 devices is split by device (its
test devices' photos all go to test: the competition's "second device"); a class with one
device (or none known) by photo. A device not given in the manifest is read from Dresden-style
names ``<class>_<device digits>_<shot>``; otherwise the class counts as one device.

Test crops: per test photo, the centre ``2 x crop`` window gives one ``_unalt`` crop (its centre)
and one ``_manip`` crop (window -> manipulation -> centre crop), the manipulations rotating over
the 8. Centre windows keep every crop of a device on the same sensor region, which the ``+prnu``
clustering needs; ``windows > 1`` adds windows at other places (more crops, but ``+prnu`` then
compares different sensor regions and cannot apply).
"""
from __future__ import annotations

import re
import shutil
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError, ImageReadError, UsageError
from ..util.io import atomic_path, write_csv, write_json
from ..util.log import progress, stage_log
from .crops import GRID, MCU
from .images import is_image_file, read_image
from .layout import (
    COMPOSE_MARKER,
    DEVICES_FILE,
    SAMPLE_SUBMISSION,
    SOLUTION,
    TEST_DIR,
    TEST_INFO_FILE,
    TRAIN_DIR,
    claim_output,
    device_from_name,
    read_columns,
    read_marker,
)
from .testcrops import (
    make_test_crop,
    rotating_manipulation,
    test_fname,
    unique_names,
    window_origin,
    write_answer_tables,
    write_test_crop,
)

MARKER = COMPOSE_MARKER
FORMAT_VERSION = 1
_OWNED = (TRAIN_DIR, TEST_DIR, SOLUTION, SAMPLE_SUBMISSION, DEVICES_FILE, TEST_INFO_FILE, MARKER)
MANIFEST_REQUIRED = ("file", "camera")
DEVICE_COLUMNS = ["fname", "class", "device", "scene", "source"]
INFO_COLUMNS = ["fname", "camera", "device", "scene", "device_seen", "manipulation", "source", "window_y",
                "window_x"]
_CLASS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass(frozen=True)
class Photo:
    path: Path
    camera: str
    device: str  # "" when not known
    scene: str  # "" when not known


@dataclass(frozen=True)
class ComposeOptions:
    test_fraction: float = 0.3  # photos of each single-device class (per scene) that go to test
    # Devices whose photos are the test set; a class with >= 2 devices none of which is named gets
    # one seeded test device.
    test_devices: tuple[str, ...] = ()
    crop: int = 512  # test crop side; the window is twice this
    windows: int = 1  # windows per test photo: the centre, then seeded places
    seed: int = 2018

    @property
    def window(self) -> int:
        return 2 * self.crop

    def validate(self) -> None:
        if not 0.0 <= self.test_fraction < 1.0:
            raise UsageError(f"--test-fraction must be in [0, 1), got {self.test_fraction}")
        if self.crop < 16 or self.crop % GRID:
            raise UsageError(f"--crop must be even and >= 16, got {self.crop}")
        if self.windows < 1:
            raise UsageError(f"--windows must be >= 1, got {self.windows}")
        if self.seed < 0:
            raise UsageError(f"--seed must be >= 0, got {self.seed}")


@dataclass
class Composition:
    train: list[Photo] = field(default_factory=list)
    test: list[Photo] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    notes: list[str] = field(default_factory=list)  # how each class was split


def _check_class(name: str, where: str) -> str:
    if not _CLASS_RE.match(name):
        raise DataError(f"{where}: {name!r} is not usable as a class folder name")
    return name


def read_manifest(path: Path) -> tuple[list[Photo], list[tuple[str, str]]]:
    """Photos listed in a manifest CSV; listed files that do not exist are returned as skipped."""
    df = read_columns(path, MANIFEST_REQUIRED, "(a manifest needs file, camera; optional device, scene)")
    photos, skipped = [], []
    for i, row in enumerate(df.itertuples(index=False), start=2):
        file, camera = str(row.file).strip(), str(row.camera).strip()
        if not file or not camera:
            raise DataError(f"{path}, line {i}: empty file or camera")
        full = path.parent / file
        if not full.is_file():
            skipped.append((str(full), f"listed in {path.name} but not found"))
            continue
        device = str(getattr(row, "device", "") or "").strip() or device_from_name(camera, full.stem)
        photos.append(Photo(full, _check_class(camera, str(path)), device, str(getattr(row, "scene", "")).strip()))
    return photos, skipped


def scan_folder(root: Path) -> tuple[list[Photo], list[tuple[str, str]]]:
    """Photos of a ``<class>/*`` folder (device from Dresden-style names, scene unknown)."""
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/*.jpg, or a manifest CSV)")
    photos, skipped = [], []
    for folder in classes:
        for path in sorted(folder.rglob("*")):
            if path.is_dir() or any(part.startswith(".") for part in path.relative_to(folder).parts):
                continue
            if not is_image_file(path):
                skipped.append((str(path), "not an image file extension"))
                continue
            photos.append(Photo(path, _check_class(folder.name, str(root)), device_from_name(folder.name, path.stem),
                                ""))
    return photos, skipped


def load_sources(sources: Sequence[str | Path]) -> tuple[list[Photo], list[tuple[str, str]]]:
    """Every photo of the given folders and manifests (a file listed twice is an error)."""
    if not sources:
        raise UsageError("give at least one source: a <class>/* folder or a manifest CSV")
    photos: list[Photo] = []
    skipped: list[tuple[str, str]] = []
    for src in map(Path, sources):
        if src.is_dir():
            found, bad = scan_folder(src)
        elif src.is_file() and src.suffix.lower() == ".csv":
            found, bad = read_manifest(src)
        else:
            raise DataError(f"{src}: not a folder of <class>/* photos nor a manifest .csv")
        photos += found
        skipped += bad
    seen: dict[Path, Photo] = {}
    for p in photos:
        key = p.path.resolve()
        if key in seen:
            raise DataError(f"{p.path} is listed twice (as {seen[key].camera} and {p.camera})")
        seen[key] = p
    if not photos:
        raise DataError(f"no photos found in {[str(s) for s in sources]}")
    return photos, skipped


def _rng(seed: int, *words: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *(zlib.crc32(w.encode()) for w in words)]))


def split(photos: Sequence[Photo], sizes: dict[Path, tuple[int, int]], opts: ComposeOptions) -> Composition:
    """Assign every readable photo to train or test (or skip it), deterministically for ``opts.seed``.

    ``sizes``: (height, width) of each readable photo; photos missing from it were unreadable."""
    comp = Composition()
    by_class: dict[str, list[Photo]] = {}
    for p in sorted(photos, key=lambda p: (p.camera, p.device, str(p.path))):
        by_class.setdefault(p.camera, []).append(p)
    all_devices = {p.device for p in photos if p.device}
    unknown = sorted(set(opts.test_devices) - all_devices)
    if unknown:
        raise UsageError(f"--test-devices {unknown} are not devices of the input; known: {sorted(all_devices)}")
    for cls, members in by_class.items():
        usable = [p for p in members if p.path in sizes]
        fits = {p.path for p in usable if min(sizes[p.path]) >= opts.window}
        devices = sorted({p.device for p in usable})
        if len(devices) >= 2:
            # Named devices decide for their class; any other class gets one seeded test device.
            chosen = [d for d in devices if d in opts.test_devices] or \
                [devices[int(_rng(opts.seed, "device", cls).integers(len(devices)))]]
            for p in usable:
                if p.device not in chosen:
                    comp.train.append(p)
                elif p.path in fits:
                    comp.test.append(p)
                else:
                    comp.skipped.append((str(p.path), f"smaller than the {opts.window} px test window "
                                                      f"({sizes[p.path][1]}x{sizes[p.path][0]}); its device "
                                                      f"{p.device} is a test device, so it cannot train either"))
            comp.notes.append(f"{cls}: device-disjoint, test devices {chosen or 'none'}, "
                              f"training devices {[d for d in devices if d not in chosen]}")
        else:
            test: list[Photo] = []
            scenes = sorted({p.scene for p in usable})
            for scene in scenes:
                stratum = [p for p in usable if p.scene == scene]
                candidates = [p for p in stratum if p.path in fits]
                k = min(len(candidates), int(opts.test_fraction * len(stratum) + 0.5))
                order = _rng(opts.seed, "photos", cls, scene).permutation(len(candidates))
                test += [candidates[i] for i in sorted(order[:k])]
            if test and len(test) == len(usable):
                test = test[:-1]  # keep a training photo
            chosen_paths = {p.path for p in test}
            comp.test += test
            comp.train += [p for p in usable if p.path not in chosen_paths]
            for p in usable:
                if p.path not in fits and p.path not in chosen_paths:
                    comp.notes.append(f"{p.path}: smaller than the {opts.window} px test window "
                                      f"({sizes[p.path][1]}x{sizes[p.path][0]}): training only")
            device = f"device {devices[0]}" if devices and devices[0] else "one device"
            comp.notes.append(f"{cls}: photo-disjoint ({device}), {len(test)} of {len(usable)} photos to test")
        if not any(p.camera == cls for p in comp.train):
            raise DataError(f"class {cls} has no training photo left (all its devices or photos went to test, "
                            "or were unreadable); name fewer --test-devices or add photos")
    return comp


def one_device_each(test: Sequence[Photo]) -> bool:
    """Whether every class's test photos come from one known device: what the ``+prnu`` step may
    assume about the test (``blend.prnu.one_device_per_class``); a class of unknown devices may
    hold several."""
    devices: dict[str, set[str]] = {}
    for p in test:
        devices.setdefault(p.camera, set()).add(p.device)
    return all(len(d) == 1 and "" not in d for d in devices.values())


def one_test_device_per_class(data_dir: Path) -> bool | None:
    """What ``compose`` recorded in ``data_dir``'s marker (``one_device_each``); None when the
    folder was not composed or its marker is older than the record."""
    marker = data_dir / MARKER
    if not marker.is_file():
        return None
    value = read_marker(marker, "run `camid compose --overwrite` again").get("one_test_device_per_class")
    return value if isinstance(value, bool) else None


def _train_names(train: Sequence[Photo]) -> list[str]:
    """``train/<class>/<file name>``; a name taken twice in a class gets its device or a number."""
    names: list[str] = []
    taken: set[str] = set()
    for p in train:
        stem, suffix = p.path.stem, p.path.suffix
        candidate = f"{TRAIN_DIR}/{p.camera}/{stem}{suffix}"
        n = 1
        while candidate.lower() in taken:
            tag = p.device or str(n)
            candidate = f"{TRAIN_DIR}/{p.camera}/{stem}_{tag}{'' if n == 1 else n}{suffix}"
            n += 1
        taken.add(candidate.lower())
        names.append(candidate)
    return names


def _window_origins(shape: tuple[int, int], opts: ComposeOptions, rng: np.random.Generator) -> list[tuple[int, int]]:
    h, w = shape
    origins = [window_origin(h, w, opts.window)]
    for _ in range(opts.windows - 1):
        origins.append((int(rng.integers((h - opts.window) // MCU + 1)) * MCU,
                        int(rng.integers((w - opts.window) // MCU + 1)) * MCU))
    return origins


def _prepare_out(out: Path, state: dict[str, Any], overwrite: bool) -> bool:
    """True when ``out`` already holds this composition, complete."""
    return claim_output(
        out, MARKER, _OWNED, "camid compose", overwrite=overwrite, error=DataError,
        remedy=f"delete {out} and compose again", same=lambda m: {k: m.get(k) for k in state} == state,
        mismatch=lambda m: f"{out} holds a composition of other inputs or options; pass --overwrite to replace it, "
                           "or choose another folder")


def compose(sources: Sequence[str | Path], out: str | Path, opts: ComposeOptions,
            overwrite: bool = False) -> dict[str, Any]:
    """Write the competition into ``out``; returns a summary (``skipped_run`` when already there)."""
    opts.validate()
    out = Path(out)
    photos, skipped = load_sources(sources)
    state = {"format_version": FORMAT_VERSION, "options": {**asdict(opts), "test_devices": list(opts.test_devices)},
             "inputs": sorted(str(p.path.resolve()) for p in photos)}
    if _prepare_out(out, state, overwrite):
        stage_log("compose", f"{out} already holds this composition; skipped (pass --overwrite to write it again)")
        return {"skipped_run": True, "out": str(out)}
    start = time.perf_counter()
    write_json(out / MARKER, {**state, "complete": False})
    sizes: dict[Path, tuple[int, int]] = {}
    for p in progress(photos, "camid compose: checking photos", unit="photo"):
        try:
            sizes[p.path] = read_image(p.path).shape[:2]  # a full decode: truncated files fail here
        except ImageReadError as exc:
            skipped.append((str(p.path), str(exc)))
    comp = split(photos, sizes, opts)
    comp.skipped[:0] = skipped
    for path, reason in comp.skipped:
        stage_log("compose", f"skipped {path}: {reason}")
    for note in comp.notes:
        stage_log("compose", note)

    train_names = _train_names(comp.train)
    for p, rel in zip(comp.train, train_names, strict=True):
        with atomic_path(out / rel) as tmp:
            shutil.copyfile(p.path, tmp)
    write_csv(out / DEVICES_FILE, pd.DataFrame(
        {"fname": train_names, "class": [p.camera for p in comp.train], "device": [p.device for p in comp.train],
         "scene": [p.scene for p in comp.train], "source": [str(p.path) for p in comp.train]},
        columns=DEVICE_COLUMNS))

    train_devices = {p.device for p in comp.train}
    n_crops = 2 * opts.windows * len(comp.test)
    names = unique_names(_rng(opts.seed, "names"), n_crops)
    rows: list[dict[str, Any]] = []
    for p in progress(comp.test, "camid compose: test crops", unit="photo"):
        photo = read_image(p.path)
        for y, x in _window_origins(photo.shape[:2], opts, _rng(opts.seed, "windows", str(p.path.name))):
            # One unaltered and one manipulated crop per window; the manipulations rotate over the 8.
            pair = ("none", rotating_manipulation(opts.seed + len(rows) // 2))
            for manipulation in pair:
                fname = test_fname(names[len(rows)], manipulation)
                write_test_crop(out, fname, make_test_crop(photo, manipulation, opts.crop, opts.window, (y, x)))
                rows.append({"fname": fname, "camera": p.camera, "device": p.device, "scene": p.scene,
                             "device_seen": p.device in train_devices, "manipulation": manipulation,
                             "source": str(p.path), "window_y": y, "window_x": x})
    if not rows:
        raise DataError("no test crop could be made: no photo went to test (raise --test-fraction, name "
                        f"--test-devices, or give photos of at least {opts.window} px)")
    info = pd.DataFrame(rows, columns=INFO_COLUMNS)
    classes = sorted({p.camera for p in comp.train})
    write_answer_tables(out, info["fname"], info["camera"], info["manipulation"], classes[0])
    write_csv(out / TEST_INFO_FILE, info.sort_values("fname", ignore_index=True))
    prnu = opts.windows == 1
    write_json(out / MARKER, {**state, "complete": True, "classes": classes, "n_train": len(comp.train),
                              "n_test_photos": len(comp.test), "n_test_crops": len(info),
                              "prnu_applicable": prnu, "one_test_device_per_class": one_device_each(comp.test),
                              "split": comp.notes,
                              "skipped": [{"path": a, "reason": b} for a, b in comp.skipped]})
    wall = time.perf_counter() - start
    stage_log("compose", f"wrote {len(comp.train)} training photos in {len(classes)} classes to {out / TRAIN_DIR}, "
                         f"{len(info)} test crops ({opts.crop} px, {len(comp.test)} photos x {opts.windows} window(s) "
                         f"x unalt+manip) to {out / TEST_DIR}, {SOLUTION}, {SAMPLE_SUBMISSION}, {DEVICES_FILE}, "
                         f"{TEST_INFO_FILE}; {len(comp.skipped)} file(s) skipped; {wall:.1f}s")
    if not prnu:
        stage_log("compose", f"--windows {opts.windows}: test crops of a device come from different sensor regions, "
                             "so +prnu strategies (test crops clustered by sensor noise) cannot apply")
    return {"skipped_run": False, "out": str(out), "n_train": len(comp.train), "n_test_crops": len(info),
            "classes": classes, "skipped": comp.skipped, "prnu_applicable": prnu, "wall_s": wall}

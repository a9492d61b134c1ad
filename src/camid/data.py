"""Data layer: the Kaggle layout, robust image reading and deterministic folds.

Layout (a user points ``DATA`` at the unpacked Kaggle folder or at ``camid simulate``'s output)::

    DATA/train/<class>/*.{jpg,jpeg,png,tif,tiff,bmp,webp}   one folder per camera model
    DATA/test/*_{unalt,manip}.<ext>                         centre crops to classify
    DATA/sample_submission.csv, DATA/solution.csv (optional, simulated data only)

Extra training folders (external data) have the same ``<class>/*`` shape.
Training images are keyed by ``fname`` = their path relative to ``DATA``
(``train/HTC-1-M7/x.jpg``) or ``ext<i>/<class>/<file>`` for the i-th extra folder;
test images by their bare file name, as in the submission.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from .errors import CamidError
from .io_utils import stage_log, write_csv

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
# Bigger than any camera sensor (a 200 MP phone), far below a decompression bomb.
MAX_PIXELS = 250_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class DataError(CamidError, ValueError):
    """The data folder does not have the expected layout."""


class ImageReadError(CamidError, ValueError):
    """An image file cannot be used; ``reason`` says why."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _to_rgb_uint8(im: Image.Image) -> np.ndarray:
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
                arr = _to_rgb_uint8(im)
    except Exception as exc:  # hostile files raise anything (OSError, SyntaxError, struct.error...)
        raise _read_error(path, exc) from exc
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageReadError(path, f"unusable shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def discover_classes(train_dir: str | Path) -> list[str]:
    """Class names are the sub-folders of ``train/`` (sorted, hidden folders ignored)."""
    train_dir = Path(train_dir)
    if not train_dir.is_dir():
        raise DataError(f"training folder not found: {train_dir} (expected DATA/train/<class>/*.jpg)")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"{train_dir}: need at least 2 class folders, found {classes}")
    return classes


@dataclass
class Scan:
    table: pd.DataFrame  # fname, path, label, source
    skipped: list[tuple[str, str]]  # (path, reason) for files not used


def _scan_root(root: Path, prefix: str, classes: Sequence[str], strict: bool) -> Scan:
    rows, skipped = [], []
    present = {p.name for p in root.iterdir() if p.is_dir()}
    unknown = sorted(present - set(classes) - {n for n in present if n.startswith(".")})
    for name in unknown:
        skipped.append((str(root / name), "folder is not a known class"))
    for cls in classes:
        folder = root / cls
        if not folder.is_dir():
            if strict:
                raise DataError(f"{root}: missing class folder {cls!r}")
            continue
        for path in sorted(folder.rglob("*")):
            if path.is_dir() or _hidden(path.relative_to(folder)):
                continue  # hidden: temp files of interrupted writes, .DS_Store, .ipynb_checkpoints
            if not is_image_file(path):
                skipped.append((str(path), "not an image file extension"))
                continue
            rel = path.relative_to(root).as_posix()
            rows.append({"fname": f"{prefix}/{rel}", "path": str(path), "label": cls})
    return Scan(pd.DataFrame(rows, columns=["fname", "path", "label"]), skipped)


def scan_train(data_dir: str | Path, classes: Sequence[str] | None = None,
               extra_dirs: Iterable[str | Path] = ()) -> tuple[list[str], Scan]:
    """List every training image (Kaggle ``train/`` plus extra folders) with its class."""
    data_dir = Path(data_dir)
    classes = list(classes) if classes else discover_classes(data_dir / "train")
    scans = [_scan_root(data_dir / "train", "train", classes, strict=True)]
    for i, extra in enumerate(extra_dirs):
        extra = Path(extra)
        if not extra.is_dir():
            raise DataError(f"extra training folder not found: {extra}")
        scans.append(_scan_root(extra, f"ext{i}", classes, strict=False))
    table = pd.concat([s.table for s in scans], ignore_index=True)
    table["source"] = table["fname"].str.split("/").str[0]
    skipped = [item for s in scans for item in s.skipped]
    if table.empty:
        raise DataError(f"{data_dir / 'train'}: no training images found")
    empty = sorted(set(classes) - set(table["label"]))
    if empty:
        raise DataError(f"classes without any training image: {empty}")
    return classes, Scan(table.sort_values("fname", ignore_index=True), skipped)


def manip_flag(fname: str) -> int:
    """1 for ``*_manip.*``, 0 for ``*_unalt.*`` (the competition's test naming)."""
    stem = Path(fname).stem
    if stem.endswith("_manip"):
        return 1
    if stem.endswith("_unalt"):
        return 0
    raise DataError(f"test file {fname!r} is neither *_unalt nor *_manip; "
                    "rename it or use `camid identify` for arbitrary photos")


def scan_test(data_dir: str | Path) -> pd.DataFrame:
    """Every test image: fname (bare name), path, manip flag; sorted by fname."""
    test_dir = Path(data_dir) / "test"
    if not test_dir.is_dir():
        raise DataError(f"test folder not found: {test_dir}")
    rows, others = [], []
    for path in sorted(test_dir.iterdir()):
        if is_image_file(path):
            rows.append({"fname": path.name, "path": str(path), "manip": manip_flag(path.name)})
        elif path.is_file() and not path.name.startswith("."):
            others.append(path.name)
    if others:
        stage_log("data", f"{test_dir}: ignoring {len(others)} non-image file(s): {others[:5]}")
    if not rows:
        raise DataError(f"{test_dir}: no test images found")
    return pd.DataFrame(rows)


def _assign_folds(labels: pd.Series, n_folds: int, seed: int) -> np.ndarray:
    """Stratified round-robin over a seeded shuffle of each class; classes continue
    the rotation so fold sizes differ by at most one overall."""
    rng = np.random.default_rng(seed)
    folds = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for cls in sorted(labels.unique()):
        idx = np.flatnonzero(labels.to_numpy() == cls)
        idx = idx[rng.permutation(len(idx))]
        folds[idx] = (np.arange(len(idx)) + offset) % n_folds
        offset += len(idx)
    return folds


def make_folds(table: pd.DataFrame, mode: str = "kfold", n_folds: int = 5,
               holdout_fraction: float = 0.2, seed: int = 42,
               group_col: str | None = None) -> pd.DataFrame:
    """Deterministic stratified folds.

    ``kfold``: every image gets a fold in ``0..n_folds-1`` and is validated once.
    ``holdout``: ``fold=0`` is the held-out set, ``fold=-1`` always trains.
    With ``group_col`` (e.g. near-duplicate clusters) a whole group shares one fold.
    """
    table = table.sort_values("fname", ignore_index=True)
    if table["fname"].duplicated().any():
        dup = table.loc[table["fname"].duplicated(), "fname"].tolist()[:5]
        raise DataError(f"duplicate file keys in training table: {dup}")
    groups = table[group_col] if group_col else table["fname"]
    # One row per group, labelled by its most common class, so stratification still holds.
    per_group = (table.assign(_g=groups).groupby("_g", sort=True)["label"]
                 .agg(lambda s: s.value_counts().index[0]))
    if mode == "kfold":
        g_folds = _assign_folds(per_group, n_folds, seed)
    elif mode == "holdout":
        rng = np.random.default_rng(seed)
        g_folds = np.full(len(per_group), -1, dtype=np.int64)
        for cls in sorted(per_group.unique()):
            idx = np.flatnonzero(per_group.to_numpy() == cls)
            k = max(1, int(round(holdout_fraction * len(idx))))
            g_folds[idx[rng.permutation(len(idx))[:k]]] = 0
    else:
        raise DataError(f"unknown fold mode {mode!r}")
    fold_of = dict(zip(per_group.index, g_folds))
    out = table.copy()
    out["fold"] = [int(fold_of[g]) for g in groups]
    return out


def fold_ids(folds: pd.DataFrame) -> list[int]:
    """The validation folds that define training jobs (holdout: just fold 0)."""
    return sorted(int(f) for f in folds["fold"].unique() if f >= 0)


FOLDS_COLUMNS = ["fname", "path", "label", "source", "fold"]


def write_folds(folds: pd.DataFrame, path: str | Path) -> Path:
    return write_csv(path, folds[FOLDS_COLUMNS])


def read_folds(path: str | Path, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a folds CSV and check it is usable (columns, unique keys, known classes)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"folds file not found: {path} (run `camid folds` / `make folds` first)")
    try:
        df = pd.read_csv(path, dtype={"fname": str, "path": str, "label": str, "source": str},
                         keep_default_na=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:  # EmptyDataError is a ValueError
        raise DataError(f"{path}: cannot parse folds CSV ({exc})") from exc
    missing = set(FOLDS_COLUMNS) - set(df.columns)
    if missing:
        raise DataError(f"{path}: missing columns {sorted(missing)}")
    if df.empty:
        raise DataError(f"{path}: no images listed (run `camid folds` again)")
    if df["fname"].duplicated().any():
        raise DataError(f"{path}: an image appears more than once, e.g. "
                        f"{df.loc[df['fname'].duplicated(), 'fname'].head(3).tolist()}")
    empty = (df[["fname", "path", "label"]] == "").any(axis=1)
    if empty.any():
        raise DataError(f"{path}: {int(empty.sum())} row(s) with an empty fname, path or label")
    folds = pd.to_numeric(df["fold"], errors="coerce")
    if folds.isna().any() or (folds != folds.round()).any() or (folds < -1).any():
        bad = df.loc[folds.isna() | (folds != folds.round()) | (folds < -1), "fold"].head(3).tolist()
        raise DataError(f"{path}: fold must be an integer >= -1, got {bad}")
    df["fold"] = folds.astype(np.int64)
    if classes is not None:
        unknown = sorted(set(df["label"]) - set(classes))
        if unknown:
            raise DataError(f"{path}: labels not in the class list: {unknown}")
    return df


def check_folds_cover(folds: pd.DataFrame, table: pd.DataFrame, name: str = "folds.csv") -> None:
    """The folds must describe the training data as it is now: same images, same labels.

    ``table`` is ``scan_train(...)[1].table`` (what is on disk now). An image added
    since ``camid folds`` would be silently left out of every run; one listed but gone
    would be skipped as unreadable; a changed label would train the wrong class.
    """
    listed, present = set(folds["fname"]), set(table["fname"])
    new = sorted(present - listed)
    gone = sorted(listed - present)
    hint = ("re-run `camid folds` (this reassigns folds, so finished runs must be retrained) "
            "or restore the data the folds were made from")
    if new:
        raise DataError(f"{name}: {len(new)} training image(s) on disk are not in any fold, "
                        f"e.g. {new[:3]}; {hint}")
    if gone:
        raise DataError(f"{name}: {len(gone)} image(s) listed no longer exist under the data folder, "
                        f"e.g. {gone[:3]}; {hint}")
    merged = folds[["fname", "label", "path"]].merge(table[["fname", "label"]], on="fname", suffixes=("", "_now"))
    relabelled = merged[merged["label"] != merged["label_now"]]
    if len(relabelled):
        raise DataError(f"{name}: {len(relabelled)} image(s) changed class since the folds were made, "
                        f"e.g. {relabelled['fname'].head(3).tolist()}; {hint}")
    missing_paths = [p for p in merged["path"] if not Path(p).is_file()]
    if missing_paths:
        raise DataError(f"{name}: {len(missing_paths)} listed path(s) do not exist, e.g. {missing_paths[:3]} "
                        "(data folder moved, or camid run from another directory?); re-run `camid folds`")


def resolve_classes(cfg, data_dir: str | Path) -> list[str]:
    """The class list of a run: the config's ``classes`` or the folder names under ``train/``."""
    return list(cfg.classes) if cfg.classes else discover_classes(Path(data_dir) / "train")

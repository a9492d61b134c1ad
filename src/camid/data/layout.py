"""The data folder: the Kaggle layout, its classes and its test files.

Layout (a user points ``DATA`` at the unpacked Kaggle folder or at ``camid simulate``'s output)::

    DATA/train/<class>/*.{jpg,jpeg,png,tif,tiff,bmp,webp}   one folder per camera model
    DATA/test/*_{unalt,manip}.<ext>                         centre crops to classify
    DATA/sample_submission.csv, DATA/solution.csv (optional: simulated or composed data only)
    DATA/train_devices.csv                                  optional: device and scene per training photo
    DATA/solution_info.csv                                  composed data only: what each test crop is
    DATA/simulate.json, DATA/compose.json                   the generator's options and completion marker
    DATA/external/, external_truth.csv, external_rules.yaml, external.json
                                                            simulated external pool (``camid simulate --external``)

Extra training folders (external data) have the same ``<class>/*`` shape.
Training images are keyed by ``fname`` = their path relative to ``DATA``
(``train/HTC-1-M7/x.jpg``) or ``ext<i>/<class>/<file>`` for the i-th extra folder;
test images by their bare file name, as in the submission.
"""
from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import Config
from ..errors import CamidError, DataError, SubmissionError, few
from ..util.log import stage_log
from .competition import manip_flag
from .images import is_image_file

TRAIN_DIR = "train"
TEST_DIR = "test"
SAMPLE_SUBMISSION = "sample_submission.csv"
SOLUTION = "solution.csv"
# fname, class, device, scene per training photo (`camid compose`); `camid folds` groups by device with it.
DEVICES_FILE = "train_devices.csv"
# Per test crop: device, scene, seen/unseen device, manipulation, source photo (`camid compose`). An
# answer file like solution.csv: nothing that predicts reads it, only the benchmark's scoring.
TEST_INFO_FILE = "solution_info.csv"
DEVICES_COLUMNS = ["fname", "class", "device", "scene"]
SIMULATE_MARKER = "simulate.json"
COMPOSE_MARKER = "compose.json"
# The simulated external pool: its photos, what each really is, the filter rules for its models, its marker.
POOL_DIR = "external"
POOL_TRUTH = "external_truth.csv"
POOL_RULES = "external_rules.yaml"
POOL_MARKER = "external.json"
# solution.csv: fname, camera and optionally manipulation ("none" or empty for an unaltered crop).
SOLUTION_COLUMNS = ("fname", "camera")


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
    classes = list(classes) if classes else discover_classes(data_dir / TRAIN_DIR)
    scans = [_scan_root(data_dir / TRAIN_DIR, TRAIN_DIR, classes, strict=True)]
    for i, extra in enumerate(extra_dirs):
        extra = Path(extra)
        if not extra.is_dir():
            raise DataError(f"extra training folder not found: {extra}")
        scans.append(_scan_root(extra, f"ext{i}", classes, strict=False))
    table = pd.concat([s.table for s in scans], ignore_index=True)
    table["source"] = table["fname"].str.split("/").str[0]
    skipped = [item for s in scans for item in s.skipped]
    if table.empty:
        raise DataError(f"{data_dir / TRAIN_DIR}: no training images found")
    empty = sorted(set(classes) - set(table["label"]))
    if empty:
        raise DataError(f"classes without any training image: {empty}")
    return classes, Scan(table.sort_values("fname", ignore_index=True), skipped)


def scan_test(data_dir: str | Path) -> pd.DataFrame:
    """Every test image: fname (bare name), path, manip flag; sorted by fname."""
    test_dir = Path(data_dir) / TEST_DIR
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


def device_from_name(camera: str, stem: str) -> str:
    """``Nikon_D70_1_21015`` of class ``Nikon_D70`` -> ``Nikon_D70_1`` (Dresden names); "" otherwise."""
    m = re.fullmatch(re.escape(camera) + r"_(\d+)_[^_]+", stem)
    return f"{camera}_{m.group(1)}" if m else ""


def read_columns(path: Path, required: Sequence[str], hint: str = "") -> pd.DataFrame:
    """A CSV of strings (empty cells stay "") that has at least the ``required`` columns; a
    DataError naming the file, the missing columns and ``hint`` otherwise."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}{' ' + hint if hint else ''}; has {list(df.columns)}")
    return df


def attach_devices(data_dir: str | Path, table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (``scan_train``'s) with a ``device`` column ("" when unknown): from
    ``DATA/train_devices.csv`` when it lists the photo, else from a Dresden-style file name."""
    path = Path(data_dir) / DEVICES_FILE
    known: dict[str, str] = {}
    if path.is_file():
        df = read_columns(path, DEVICES_COLUMNS)
        known = dict(zip(df["fname"], df["device"], strict=True))
    out = table.copy()
    out["device"] = [known.get(f) or device_from_name(label, Path(f).stem)
                     for f, label in zip(out["fname"], out["label"], strict=True)]
    return out


def resolve_classes(cfg: Config, data_dir: str | Path) -> list[str]:
    """The class list of a run: the config's ``classes`` or the folder names under ``train/``."""
    return list(cfg.classes) if cfg.classes else discover_classes(Path(data_dir) / TRAIN_DIR)


def read_csv_strict(path: str | Path, what: str) -> pd.DataFrame:
    """A submission-shaped CSV (sample submission, solution, a submission) as strings; a
    SubmissionError naming ``what`` when it is missing or cannot be parsed."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{what} not found: {path}")
    try:
        # keep_default_na=False: a class or file literally named "NA" stays a string
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SubmissionError(f"{path}: cannot parse {what} CSV ({exc})") from exc


def check_solution(solution: pd.DataFrame, classes: Sequence[str] | None = None, name: str = "solution") -> None:
    """Refuse a solution without ``fname``/``camera``, with a file listed twice or (given
    ``classes``) a camera outside them: a SubmissionError naming ``name``."""
    missing = sorted(set(SOLUTION_COLUMNS) - set(solution.columns))
    if missing:
        raise SubmissionError(f"{name}: missing column(s) {missing}")
    if solution["fname"].duplicated().any():
        dup = solution.loc[solution["fname"].duplicated(), "fname"]
        raise SubmissionError(f"{name}: duplicate file names: {few(dup)}")
    if classes is not None:
        outside = sorted(set(solution["camera"]) - set(classes))
        if outside:
            raise SubmissionError(f"{name} has camera(s) outside the class list: {few(outside)}")


def read_solution(path: str | Path, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """A solution CSV (``DATA/solution.csv`` or ``camid score --solution``), checked by
    ``check_solution``; cells are strings (a class or file named "NA" stays one)."""
    solution = read_csv_strict(path, "solution")
    check_solution(solution, classes, str(path))
    return solution


def solution_labels(data_dir: str | Path) -> pd.Series | None:
    """The true camera per test file (index fname) when ``DATA/solution.csv`` exists (simulated
    or composed data), else None."""
    path = Path(data_dir) / SOLUTION
    return read_solution(path).set_index("fname")["camera"] if path.is_file() else None


# ---------------------------------------------------------------- folders a command writes

def read_marker(marker: Path, remedy: str, error: type[CamidError] = DataError) -> dict[str, Any]:
    """The JSON of a completion marker (``simulate.json``, ``compose.json``, ``external.json``);
    ``error`` saying ``remedy`` when it is unreadable."""
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise error(f"{marker}: unreadable ({exc}); {remedy}") from exc


def remove_outputs(out: Path, names: Sequence[str]) -> None:
    """Remove the files and folders ``names`` under ``out``: only what the command wrote."""
    for name in names:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def claim_output(out: Path, marker_name: str, owned: Sequence[str], command: str, *, same: Callable[[dict], bool],
                 overwrite: bool, error: type[CamidError], remedy: str, mismatch: Callable[[dict], str]) -> bool:
    """Whether ``out`` already holds ``command``'s complete output for the same inputs (``same``
    on its marker): then True and nothing is touched. A folder the command did not write (no
    marker, not empty) is refused; other inputs without ``overwrite`` are refused with
    ``mismatch(marker)``; otherwise (an interrupted run, or ``overwrite``) only ``owned`` is
    removed, never a file the command did not write."""
    marker = out / marker_name
    if out.exists() and not out.is_dir():
        raise error(f"{out} exists and is not a folder")
    if not marker.is_file():
        if out.exists() and any(out.iterdir()):
            raise error(f"{out} is not empty and was not written by `{command}`; choose an empty or new "
                        "folder (nothing there was touched)")
        return False
    state = read_marker(marker, remedy, error)
    matches = same(state)
    if matches and state.get("complete") and not overwrite:
        return True
    if not matches and not overwrite:
        raise error(mismatch(state))
    remove_outputs(out, owned)
    return False

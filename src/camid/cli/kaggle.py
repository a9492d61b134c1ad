"""`camid kaggle download|submit`: thin wrappers over the official ``kaggle`` CLI.

They use the user's own Kaggle credentials (``~/.kaggle/kaggle.json`` or ``KAGGLE_USERNAME``
and ``KAGGLE_KEY``) and need network access; camid only builds the command lines, checks what
it can before (the CLI is installed, a submission is valid) and after (the unpacked layout).
The competition accepts late submissions, which are scored but not ranked.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

from ..data.layout import (
    SAMPLE_SUBMISSION,
    SIMULATE_MARKER,
    TEST_DIR,
    TRAIN_DIR,
    discover_classes,
    read_csv_strict,
)
from ..errors import DataError, JobError, UsageError
from ..level2.metrics import validate_submission
from ..util.log import stage_log

COMPETITION = "sp-society-camera-model-identification"


def download_command(data_dir: Path, competition: str = COMPETITION) -> list[str]:
    return ["kaggle", "competitions", "download", "-c", competition, "-p", str(data_dir)]


def submit_command(submission: Path, message: str, competition: str = COMPETITION) -> list[str]:
    return ["kaggle", "competitions", "submit", "-c", competition, "-f", str(submission), "-m", message]


def check_cli() -> None:
    """The ``kaggle`` command and credentials must be there before anything is run."""
    if shutil.which("kaggle") is None:
        raise UsageError("the `kaggle` command is not installed: `pip install kaggle`, then put your API token "
                         "in ~/.kaggle/kaggle.json (Kaggle > Settings > Create New Token)")
    token = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")) / "kaggle.json"
    if not token.is_file() and not (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")):
        raise UsageError(f"no Kaggle credentials: put your API token in {token} or set KAGGLE_USERNAME and "
                         "KAGGLE_KEY; you must also have accepted the competition's rules on its page")


def _extract(archive: Path, dest: Path) -> list[Path]:
    """Unpack ``archive`` into ``dest``, refusing members that would land outside it."""
    root = dest.resolve()
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            target = (dest / member).resolve()
            if target != root and root not in target.parents:
                raise DataError(f"{archive}: member {member!r} would be written outside {dest}; not unpacked")
        zf.extractall(dest)
        return [dest / m for m in zf.namelist()]


def unpack(data_dir: Path) -> None:
    """Unpack the downloaded archive(s) and the archives inside them (train.zip, test.zip, ...)."""
    todo = sorted(data_dir.glob("*.zip"))
    while todo:
        archive = todo.pop(0)
        inner = [p for p in _extract(archive, data_dir) if p.suffix == ".zip" and p.is_file()]
        archive.unlink()
        todo += inner
    for name in (TRAIN_DIR, TEST_DIR):
        if not (data_dir / name).is_dir():
            raise DataError(f"{data_dir}: no {name}/ folder after unpacking the competition archive")
    stage_log("kaggle", f"{data_dir}: {len(discover_classes(data_dir / TRAIN_DIR))} classes in {TRAIN_DIR}/, "
                        f"{sum(1 for _ in (data_dir / TEST_DIR).iterdir())} test files")


def _run(cmd: list[str], dry_run: bool) -> None:
    stage_log("kaggle", ("would run: " if dry_run else "running: ") + " ".join(cmd))
    if dry_run:
        return
    check_cli()
    rc = subprocess.call(cmd)
    if rc:
        raise JobError(f"`{' '.join(cmd[:3])}` failed with exit code {rc} (see its message above)")


def download(data_dir: Path, dry_run: bool = False) -> None:
    if (data_dir / SIMULATE_MARKER).is_file():
        raise UsageError(f"{data_dir} holds the simulated competition; give the Kaggle data its own folder, "
                         "e.g. `make kaggle-data DATA=data/kaggle`")
    data_dir.mkdir(parents=True, exist_ok=True)
    _run(download_command(data_dir), dry_run)
    if not dry_run:
        unpack(data_dir)


def submit(submission: Path, message: str, data_dir: Path | None, dry_run: bool = False) -> None:
    """Validate ``submission`` against the sample submission (when ``data_dir`` has one), then submit."""
    sub = read_csv_strict(submission, "submission")
    sample = data_dir / SAMPLE_SUBMISSION if data_dir else None
    if data_dir is not None and sample is not None and sample.is_file():
        train = data_dir / TRAIN_DIR
        classes = discover_classes(train) if train.is_dir() else sorted(set(sub["camera"]))
        validate_submission(sub, read_csv_strict(sample, "sample submission")["fname"].tolist(), classes,
                            str(submission))
        stage_log("kaggle", f"{submission}: {len(sub)} rows, valid against {sample}")
    _run(submit_command(submission, message), dry_run)

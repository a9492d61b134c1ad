"""Atomic file writes and small I/O helpers shared by every stage.

Every output file is written to a temporary sibling and renamed into place, so a
run killed at any moment leaves either the old file or the complete new one,
never a truncated file that a later stage would silently read.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import CheckpointError
from .log import stage_log

# Temporary siblings are ``.<name>.pid<writer pid>.<random>.tmp``: hidden and ending in
# ``.tmp``, so no stage's glob (``*.parquet``, ``*.csv``, ``*.pt``, image extensions)
# ever matches one; the pid tells a stale file (its writer was killed) from a live one.
TEMP_SUFFIX = ".tmp"
_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.pid(?P<pid>\d+)(?:\.[a-z0-9_]+)?\.tmp$")
# Names our writers used before the pid tag (mkstemp's 8 random characters, or a pid):
# removed only once LEGACY_TEMP_AGE_S old. Any other ``.*.tmp`` file is not ours: kept.
_LEGACY_TEMP_RE = re.compile(r"^\..+\.(?:[a-z0-9_]{8}|\d+)\.tmp$")
LEGACY_TEMP_AGE_S = 3600.0


def temp_prefix(path: str | os.PathLike) -> str:
    """Name prefix of the temporary siblings of ``path`` written by this process."""
    return f".{Path(path).name}.pid{os.getpid()}."


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, _file_mode())  # mkstemp makes 0600; outputs get the usual umask mode
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)  # make the rename itself survive a power cut
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@functools.cache
def _file_mode() -> int:
    """0o666 less the process umask, read once on the first write (not at import time)."""
    try:  # Linux reports it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it, then put it back
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory: the rename is still atomic
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and atomically move the result to ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path: str | os.PathLike, df: pd.DataFrame) -> Path:
    # lineterminator fixed so files are byte-identical across platforms.
    return write_atomic(path, lambda p: df.to_csv(p, index=False, lineterminator="\n"))


def write_parquet(path: str | os.PathLike, df: pd.DataFrame) -> Path:
    return write_atomic(path, lambda p: df.to_parquet(p, index=False, engine="pyarrow"))


def write_torch(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` atomically, with bytes that do not depend on the temporary name.

    Saving to a path names the archive's inner folder after the file (here a random
    temp name), so the same checkpoint would differ byte for byte between runs;
    saving to an open file uses torch's fixed name. The zip has no timestamps.
    """
    import torch  # not at module level: most stages never touch torch

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)

    return write_atomic(path, writer)


def load_torch(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(..., weights_only=True)`` with failures turned into one clear CheckpointError.

    ``weights_only`` accepts tensors, numbers, strings and plain containers only, so a
    crafted pickle (``__reduce__`` calling ``os.system``) is refused before any of its
    code runs. torch's own message advises retrying without the restriction: we never
    do, and the error we raise does not suggest it.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"unsupported GLOBAL (\S+)|Unsupported global: GLOBAL (\S+)", str(exc))
        what = f" ({(found.group(1) or found.group(2)).rstrip('.,')})" if found else ""
        raise CheckpointError(f"{path}: refused to load: it holds objects other than tensors and plain "
                              f"data{what}, which could run code; only load checkpoints written by camid "
                              f"or weights from a trusted source") from None
    except Exception as exc:  # truncated / not a torch file: torch raises several unrelated types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {first}") from exc


def remove_stale_temps(folder: str | os.PathLike, recursive: bool = False,
                       legacy_age_s: float = LEGACY_TEMP_AGE_S) -> list[Path]:
    """Delete temporary files that killed writers left in ``folder``; return them.

    A temp file is stale when the pid in its name is not a running process on this
    machine; temp files of live writers (another ``camid predict`` writing next to us,
    or another thread of this process) are kept.
    Temp files named the way older versions did are only removed once ``legacy_age_s``
    old; other hidden ``.tmp`` files are not ours and are left alone.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    candidates = folder.rglob(f".*{TEMP_SUFFIX}") if recursive else folder.glob(f".*{TEMP_SUFFIX}")
    for path in sorted(candidates):
        try:
            if not path.is_file() or path.is_symlink():
                continue
            m = _TEMP_RE.match(path.name)
            if m:
                if _pid_alive(int(m.group("pid"))):  # ours included: another thread may be writing
                    continue
            elif not _LEGACY_TEMP_RE.match(path.name) or time.time() - path.stat().st_mtime < legacy_age_s:
                continue
            path.unlink()
            removed.append(path)
        except FileNotFoundError:  # its writer renamed or removed it meanwhile
            continue
    if removed:
        stage_log("io", f"removed {len(removed)} stale temporary file(s) of interrupted writes in {folder}")
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()

"""Files under a folder packed into bytes and written back atomically (a job's outputs between
machines without a shared filesystem: ``camid.jobs.backends``, ``cluster.storage: copy``).

``pack`` makes an uncompressed tar of files and folders given relative to a root (checkpoints
do not compress); ``unpack`` writes each member through ``util.io.write_atomic`` with its
modification time, so a reader never sees a truncated file, and writes ``last`` after every
other member: the file that marks the whole set complete (a run folder's ``done.json``) is
removed first and comes back only once everything it vouches for is in place.
"""
from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath

from ..errors import JobError
from .io import TEMP_SUFFIX, write_atomic

# (size, mtime_ns) of each file already sent, by relative path: what ``pack(since=...)`` skips.
Sent = dict[str, tuple[int, int]]


def _is_temp(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


def _files(root: Path, rel: str) -> Iterator[str]:
    path = root / rel
    if path.is_file():
        yield rel
    elif path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file() and not p.is_symlink() and not _is_temp(p):
                yield p.relative_to(root).as_posix()


def pack(root: str | os.PathLike, paths: Iterable[str], skip: Sequence[str] = (), since: Sent | None = None) -> bytes:
    """A tar of the files under ``root`` named by ``paths`` (files, or folders taken whole; missing
    ones are left out; interrupted writes' temp files never). ``skip``: relative paths left out.
    ``since``: leave out files whose size and mtime are recorded there, and record the ones packed
    (an incremental sync); empty bytes when nothing changed."""
    root = Path(root)
    buf = io.BytesIO()
    names = [n for rel in paths for n in _files(root, rel) if n not in skip]
    added = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in dict.fromkeys(names):
            path = root / name
            try:
                st = path.stat()
                if since is not None and since.get(name) == (st.st_size, st.st_mtime_ns):
                    continue
                with open(path, "rb") as fh:
                    data = fh.read()
            except FileNotFoundError:  # replaced or removed by its writer meanwhile
                continue
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), st.st_mtime, 0o644
            tar.addfile(info, io.BytesIO(data))
            added += 1
            if since is not None:
                since[name] = (st.st_size, st.st_mtime_ns)
    return buf.getvalue() if added else b""


def members(data: bytes) -> list[str]:
    """The relative paths a pack holds."""
    if not data:
        return []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        return [m.name for m in tar.getmembers()]


def _safe(name: str) -> str:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"refusing to unpack {name!r}: not a relative path inside the folder")
    return p.as_posix()


def unpack(root: str | os.PathLike, data: bytes, last: str | None = None, prune: Sequence[str] = ()) -> list[str]:
    """Write the pack's files under ``root``, each atomically and with its mtime; return their names.

    ``last`` (relative path): removed before anything is written and written after every other
    member, so while this runs the set is never taken as complete. ``prune``: folders whose
    files that are not in the pack are deleted (before ``last``), so the folder ends up holding
    exactly the pack."""
    root = Path(root)
    if last is not None:
        (root / last).unlink(missing_ok=True)
    if not data:
        return []
    written: list[str] = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        infos = [m for m in tar.getmembers() if m.isfile()]
        infos.sort(key=lambda m: m.name == last)  # stable: `last` after the others
        for info in infos:
            name = _safe(info.name)
            fh = tar.extractfile(info)
            if fh is None:  # only non-files have no contents, and they were filtered out above
                raise JobError(f"{info.name}: no contents in the job's archive")
            payload = fh.read()
            if name == last:
                for folder in prune:
                    _prune(root, folder, set(written) | {name})

            def writer(tmp: Path, payload: bytes = payload, mtime: float = info.mtime) -> None:
                tmp.write_bytes(payload)
                os.utime(tmp, (mtime, mtime))

            write_atomic(root / name, writer)
            written.append(name)
    if last is None or last not in written:
        for folder in prune:
            _prune(root, folder, set(written))
    return written


def _prune(root: Path, folder: str, keep: set[str]) -> None:
    base = root / folder
    if not base.is_dir():
        return
    for p in sorted(base.rglob("*")):
        if p.is_file() and not _is_temp(p) and p.relative_to(root).as_posix() not in keep:
            p.unlink(missing_ok=True)

"""Where ``camid filter-external`` puts what it keeps: ``OUT/<class>/``, hard-linked (or copied)
atomically, and the outputs of an earlier run that are no longer kept removed."""
from __future__ import annotations

import hashlib
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..util.io import temp_prefix


def list_inputs(src: Path, exclude: Sequence[Path]) -> list[str]:
    """Every visible regular file under ``src`` (absolute, sorted), minus our own outputs."""
    excluded = {Path(os.path.abspath(p)) for p in exclude}
    out = []
    for root, dirs, files in os.walk(src):
        here = Path(os.path.abspath(root))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and here / d not in excluded)
        out += [str(here / f) for f in files
                if not f.startswith(".") and here / f not in excluded and (here / f).is_file()]
    return sorted(out)


def _place(src: Path, dest: Path, copy: bool) -> tuple[bool, bool]:
    """Link or copy ``src`` to ``dest`` atomically; returns (changed, fell back to copy)."""
    if dest.exists():
        if os.path.samefile(src, dest):
            return False, False
        s, d = src.stat(), dest.stat()
        if copy and s.st_size == d.st_size and s.st_mtime_ns == d.st_mtime_ns:
            return False, False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{temp_prefix(dest)}tmp")  # hidden: never read as an image
    fell_back = False
    try:
        if copy:
            shutil.copy2(src, tmp)
        else:
            try:
                os.link(src, tmp)
            except OSError:  # other filesystem, or links not allowed: copy instead
                shutil.copy2(src, tmp)
                fell_back = True
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return True, fell_back


def _dest_for(row: dict[str, Any], out: Path, taken: set[Path]) -> Path:
    """OUT/<class>/<file name>; a second file with the same name gets a path-hash suffix."""
    src = Path(row["path"])
    dest = out / row["class"] / src.name
    if dest in taken:
        tag = hashlib.sha1(row["path"].encode("utf-8")).hexdigest()[:8]
        dest = dest.with_name(f"{src.stem}__{tag}{src.suffix}")
    taken.add(dest)
    return dest


def place_kept(rows: list[dict[str, Any]], out: Path, copy: bool,
               previous: dict[str, dict[str, Any]]) -> Counter:
    """Put kept files under OUT/<class>/ and remove outputs an earlier run placed but
    that are no longer kept (only paths listed in that run's report, inside OUT)."""
    taken: set[Path] = set()
    counts: Counter[str] = Counter()
    for row in rows:
        if row["decision"] != "keep":
            continue
        dest = _dest_for(row, out, taken)
        changed, fell_back = _place(Path(row["path"]), dest, copy)
        row["dest"] = str(dest)
        counts["placed" if changed else "unchanged"] += 1
        counts["copied_instead_of_link"] += fell_back
    current = {row["dest"] for row in rows if row["dest"]}
    root = out.absolute()
    for prev in previous.values():
        stale = prev.get("dest") or ""
        if stale and stale not in current and Path(stale).absolute().is_relative_to(root) and Path(stale).is_file():
            Path(stale).unlink()
            counts["stale_removed"] += 1
    return counts

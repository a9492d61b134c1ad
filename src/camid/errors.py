"""User-facing errors: reported as one clear line, never a traceback."""
from __future__ import annotations

import sys
from typing import Callable


class CamidError(Exception):
    """Base for errors caused by the user's input (data, config, tables), not by a bug."""


def run_guarded(command: str, fn: Callable[[], int | None]) -> int:
    try:
        rc = fn()
    except CamidError as exc:
        print(f"camid {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"camid {command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)

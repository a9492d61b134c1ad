"""Errors a user can act on, by what failed; the CLI reports each as one line, never a traceback.

Every class derives from ``CamidError`` (and ``ValueError``, so callers that validate
input with ``except ValueError`` keep working). ``run_guarded`` is the one place that
turns them into ``camid <command>: error: ...`` and exit code 2.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path


class CamidError(Exception):
    """Base for errors caused by the user's input (data, config, tables), not by a bug."""


class ConfigError(CamidError, ValueError):
    """A configuration file or value is invalid."""


class UsageError(CamidError, ValueError):
    """Command-line arguments or settings that cannot work (including on this machine)."""


class DataError(CamidError, ValueError):
    """The data folder, its layout or the folds file is not usable."""


class ImageReadError(CamidError, ValueError):
    """An image file cannot be used; ``reason`` says why."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class JobError(CamidError, RuntimeError):
    """Queued jobs (training or prediction subprocesses) failed."""


class CheckpointError(CamidError, ValueError):
    """A checkpoint or weights file that cannot be (safely) loaded."""


class TableError(CamidError, ValueError):
    """A probability table is malformed or does not match its peers."""


class SubmissionError(CamidError, ValueError):
    """A submission (or solution) CSV is not usable."""


class StrategyError(CamidError, ValueError):
    """A level-2 strategy name or blend setting that cannot be used."""


class StackError(CamidError, ValueError):
    """Stacker settings that cannot be used with these tables."""


class SimulateError(CamidError, ValueError):
    """Invalid simulate options, or an output folder that must not be touched."""


class RulesError(CamidError, ValueError):
    """The external-data rules file is invalid."""


class TruthError(CamidError, ValueError):
    """A truth file to score the external-data filter against is missing or malformed."""


class FingerprintError(CamidError, ValueError):
    """A PRNU fingerprint file that cannot be used (missing, not camid's, another format version)."""


def few(items: Iterable[object], n: int = 5) -> str:
    """The first ``n`` items, quoted, and how many more: the examples an error message names."""
    items = list(items)
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(repr(x) for x in items[:n]) + more


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

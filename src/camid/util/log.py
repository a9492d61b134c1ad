"""What every stage prints: one line per read/write event."""
from __future__ import annotations


def stage_log(stage: str, message: str) -> None:
    """One line per read/write event, so every stage says what it touched."""
    print(f"[camid {stage}] {message}", flush=True)

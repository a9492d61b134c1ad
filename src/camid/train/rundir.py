"""The run folder ``models/<run>/fold<k>/``: the one module that knows what is inside it
(the role of timm's ``CheckpointSaver``)::

    config.yaml        the resolved config of the run
    log.csv            one row per epoch
    skipped.csv        unusable training files, with reasons
    epoch<NNN>.pt      the top-N epochs by validation score
    snapshot<NN>.pt    the cycle-end snapshots
    last.pt            the latest epoch with optimizer state and run state, for --resume
    checkpoints.json   the kept checkpoints, best first: what inference loads
    done.json          the run finished: train digest, folds hash, best checkpoint
    train.out          output of the job when train-all runs several at once

Checkpoints are ``Checkpoint`` objects on the way in and out, written atomically with
bytes that depend only on their content, and loaded with ``weights_only=True``.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from ..config import PredictConfig
from ..errors import CheckpointError, DataError
from ..util.io import (
    load_torch,
    remove_stale_temps,
    sha256_file,
    write_csv,
    write_json,
    write_text,
    write_torch,
)

CONFIG = "config.yaml"
LOG = "log.csv"
SKIPPED = "skipped.csv"
LAST = "last.pt"
INDEX = "checkpoints.json"
DONE = "done.json"
JOB_LOG = "train.out"

_REQUIRED = ("model_args", "state_dict", "classes", "config", "run", "fold", "epoch", "input_size", "val")


@dataclass
class Checkpoint:
    """What a camid checkpoint holds; ``optimizer``, ``plateau`` and ``state`` only in ``last.pt``."""

    model_args: dict[str, Any]
    state_dict: dict[str, Any]
    classes: list[str]
    config: dict[str, Any]  # the resolved config of the run
    run: str
    fold: int
    epoch: int
    input_size: int
    val: dict[str, float]  # score, loss, acc_unalt, acc_manip
    optimizer: dict[str, Any] | None = None
    plateau: dict[str, Any] | None = None
    state: dict[str, Any] | None = None  # epoch, best, history, skipped, folds_sha256

    def payload(self) -> dict[str, Any]:
        # Key order is part of the file's bytes: keep it fixed.
        out = {k: getattr(self, k) for k in _REQUIRED}
        if self.optimizer is not None:
            out.update(optimizer=self.optimizer, plateau=self.plateau, state=self.state)
        return out

    @classmethod
    def from_payload(cls, payload: Any, path: Path) -> Checkpoint:
        if not isinstance(payload, dict):
            raise CheckpointError(f"{path}: not a camid checkpoint (holds a {type(payload).__name__})")
        missing = [k for k in _REQUIRED if k not in payload]
        if missing:
            raise CheckpointError(f"{path}: not a camid checkpoint (missing {missing})")
        return cls(model_args=payload["model_args"], state_dict=payload["state_dict"], classes=payload["classes"],
                   config=payload["config"], run=payload["run"], fold=payload["fold"], epoch=payload["epoch"],
                   input_size=payload["input_size"], val=payload["val"], optimizer=payload.get("optimizer"),
                   plateau=payload.get("plateau"), state=payload.get("state"))


class Resume(NamedTuple):
    """What ``last.pt`` gives back to an interrupted run."""

    checkpoint: Checkpoint
    optimizer: dict[str, Any]
    plateau: dict[str, Any]
    state: dict[str, Any]  # epoch, best, history, skipped, folds_sha256


def save_checkpoint(path: Path, ckpt: Checkpoint) -> Path:
    """Atomic, and byte-identical for identical checkpoints (``util.io.write_torch``)."""
    return write_torch(path, ckpt.payload())


def load_checkpoint(path: str | Path) -> Checkpoint:
    """``weights_only=True``: a crafted pickle cannot run code; a refused or damaged file is a
    CheckpointError (one line from the CLI), never torch's advice to retry unsafely."""
    return Checkpoint.from_payload(load_torch(path), Path(path))


def folds_sha256(folds_csv: Path) -> str | None:
    """The hash a run records of the folds it was trained on (None: no folds file)."""
    return sha256_file(folds_csv) if folds_csv.is_file() else None


def same_folds(recorded: str | None, current: str | None) -> bool:
    """Folds re-made since a run (new data) move images between folds. Runs from before the
    hash was recorded, or a workspace without a folds file, are taken as they are."""
    return recorded is None or current is None or recorded == current


class RunDir:
    """One (run, fold) folder: checkpoints, top-N and snapshot keeping, logs and markers."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def skipped_csv(self) -> Path:
        return self.path / SKIPPED

    @property
    def job_log(self) -> Path:
        return self.path / JOB_LOG

    @property
    def last_path(self) -> Path:
        """Rewritten after every epoch: a new state to resume from."""
        return self.path / LAST

    @property
    def done_path(self) -> Path:
        """Written last: while it is missing the folder is not a finished run."""
        return self.path / DONE

    def inference_checkpoints(self, predict: PredictConfig) -> list[Path]:
        """The checkpoints inference loads under ``predict.checkpoints`` and ``predict.top_n``
        ([] when the run has not finished): the one answer predict, identify, robustness and a
        remote predict job's inputs all use, so a node never receives another set than it loads."""
        return self.checkpoint_files(predict.top_n, predict.checkpoints)

    def inference_files(self, predict: PredictConfig) -> list[Path]:
        """What prediction reads from a finished run: the index, the done marker and
        ``inference_checkpoints`` ([] when it has not finished)."""
        files = self.inference_checkpoints(predict)
        return [self.path / INDEX, self.done_path, *files] if files else []

    # -- while training -------------------------------------------------------------------
    def start(self, config_yaml: str) -> None:
        """Create the folder, drop half-written files of a killed earlier run, record the config."""
        self.path.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.path)
        write_text(self.path / CONFIG, config_yaml)

    def write_log(self, history: Sequence[dict[str, Any]]) -> None:
        write_csv(self.path / LOG, pd.DataFrame(list(history)))

    def write_skipped(self, skipped: dict[str, str]) -> None:
        if skipped:
            write_csv(self.skipped_csv, pd.DataFrame(sorted(skipped.items()), columns=["path", "reason"]))

    def save_last(self, ckpt: Checkpoint) -> None:
        save_checkpoint(self.path / LAST, ckpt)

    def keep(self, kept: list[dict[str, Any]], epoch: int, cycle: int | None, score: float, loss: float,
             keep_top: int, make: Callable[[], Checkpoint]) -> list[dict[str, Any]]:
        """Keep the top-``keep_top`` epochs by (score, -loss) plus every cycle-end snapshot.

        ``epoch`` is 0-based; ``cycle`` is the cycle index when this epoch ends a cycle.
        ``make`` builds the checkpoint only when it is kept. Returns the new list of kept
        entries (file, epoch, score, loss, kind); files that drop out are deleted.
        """
        snapshot = cycle is not None
        name = f"snapshot{cycle:02d}.pt" if snapshot else f"epoch{epoch + 1:03d}.pt"
        entry = {"file": name, "epoch": epoch + 1, "score": score, "loss": loss,
                 "kind": "snapshot" if snapshot else "epoch"}
        ranked = sorted([e for e in kept if e["kind"] == "epoch"] + ([] if snapshot else [entry]),
                        key=lambda e: (-e["score"], e["loss"]))
        top = ranked[:keep_top]
        if snapshot or entry in top:
            save_checkpoint(self.path / name, make())
        new = top + [e for e in kept if e["kind"] == "snapshot"] + ([entry] if snapshot else [])
        for old in kept:
            if old not in new:
                (self.path / old["file"]).unlink(missing_ok=True)
        return new

    def resume(self, classes: Sequence[str], folds_hash: str | None, folds_csv: Path) -> Resume | None:
        """``last.pt`` checked against the data (None: nothing to resume); ``state["best"]``
        lists only files that exist."""
        last = self.path / LAST
        if not last.is_file():
            return None
        ck = load_checkpoint(last)
        if ck.classes != list(classes):
            raise DataError(f"{last}: class list differs from the data; remove the run folder to restart")
        if ck.state is None or ck.optimizer is None or ck.plateau is None:
            raise CheckpointError(f"{last}: holds no optimizer and run state to resume from")
        if not same_folds(ck.state.get("folds_sha256"), folds_hash):
            raise DataError(f"{last}: this run was trained on other folds than {folds_csv} (re-made "
                            f"since); remove {self.path} to train this fold again")
        # A kill between saving a new top-N checkpoint (and deleting the one it replaced)
        # and saving last.pt leaves last.pt listing a deleted file: forget it.
        ck.state["best"] = [e for e in ck.state["best"] if (self.path / e["file"]).is_file()]
        return Resume(ck, ck.optimizer, ck.plateau, ck.state)

    def finish(self, kept: Sequence[dict[str, Any]], classes: Sequence[str], train_digest: str, epochs: int,
               folds_hash: str | None) -> list[dict[str, Any]]:
        """Write ``checkpoints.json`` (best first) and then ``done.json``; returns the ranked entries."""
        best = sorted(kept, key=lambda e: (-e["score"], e["loss"]))
        write_json(self.path / INDEX, {"checkpoints": best, "classes": list(classes)})
        write_json(self.path / DONE, {"train_digest": train_digest, "epochs": epochs,
                                      "best": best[0] if best else None, "folds_sha256": folds_hash})
        return best

    # -- after training -------------------------------------------------------------------
    def _done(self) -> dict[str, Any] | None:
        done = self.path / DONE
        return json.loads(done.read_text()) if done.is_file() else None

    def is_done(self, train_digest: str, folds_hash: str | None) -> bool:
        """Finished with these training settings and on these folds."""
        meta = self._done()
        return meta is not None and meta.get("train_digest") == train_digest and \
            same_folds(meta.get("folds_sha256"), folds_hash)

    def check_folds(self, folds_hash: str | None, folds_csv: Path) -> None:
        """OOF rows from a model that trained on other folds would leak labels: refuse them."""
        meta = self._done()
        if meta is not None and not same_folds(meta.get("folds_sha256"), folds_hash):
            raise DataError(f"{self.path} was trained on other folds than {folds_csv} "
                            "(re-made since); retrain it (`camid train-all`) before predicting")

    def checkpoint_files(self, top_n: int, policy: str) -> list[Path]:
        """The checkpoints inference averages ([] when the run has not finished).

        ``snapshots``: every cycle-end snapshot (the snapshot ensemble of Huang et al.; a run
        trained without cycles has none and falls back to its best epoch); ``top_n``: the best
        ``top_n`` kept checkpoints by validation score, snapshots or not; ``both``: the
        snapshots plus the best ``top_n`` epochs."""
        index = self.path / INDEX
        if not index.is_file():
            return []
        ranked = json.loads(index.read_text())["checkpoints"]
        snaps = sorted((e for e in ranked if e.get("kind") == "snapshot"), key=lambda e: e["epoch"])
        epochs = [e for e in ranked if e.get("kind") != "snapshot"]
        if policy == "top_n":
            entries = ranked[:top_n]
        elif policy == "snapshots":
            entries = snaps or epochs[:1]
        elif policy == "both":
            entries = snaps + epochs[:top_n]
        else:
            raise ValueError(f"unknown checkpoint policy {policy!r}; choose snapshots, top_n or both")
        files = [self.path / e["file"] for e in entries]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"checkpoints listed in {index} are missing: {missing}")
        return files

"""Shared by the ``test_reliability_*`` files (issue 8): a tiny simulated competition,
a seconds-long config, single-thread runs and ``camid`` subprocesses that can be killed.

CPU budget: the test machine has 2 loaded cores; two torch threads there make a
training step ~10x slower than one, so every run here is pinned to one thread.
"""
from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from camid import cli
from camid.infer.table import KEY_COLUMNS
from tiny_config import tiny_config

SIM_ARGS = ["--n-classes", "3", "--train-per-class", "3", "--test-per-class", "2",
            "--width", "128", "--height", "96", "--test-crop", "32", "--workers", "1"]


def write_config(path: Path, data: Path | str, models: Sequence[str] = ("camid_tiny",), epochs: int = 1,
                 input_size: int = 32) -> Path:
    """A config whose runs are ``models`` (run names; backbone camid_tiny) trained for ``epochs``."""
    return tiny_config(path, data, runs=models, seed=7,
                       train={"input_size": input_size, "epochs": epochs, "steps_per_epoch": 1, "val_crop": 32},
                       predict={"tta": "none", "top_n": 1, "crop": 32, "oof_augs": ["jpeg70"], "batch_size": 40},
                       blend={"strategies": ["gmean", "gmean+hungarian", "mean", "rms"]})


def _keep_threads(nthreads: int) -> None:
    """Stands in for torch.set_num_threads while a test pins torch to one thread."""


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run in-process stages on one torch thread (train/predict ask for all cores)."""
    before, setter = torch.get_num_threads(), torch.set_num_threads
    setter(1)
    torch.set_num_threads = _keep_threads
    try:
        yield
    finally:
        torch.set_num_threads = setter
        setter(before)


def camid(*argv: object) -> int:
    """``camid ARGV`` in this process, on one thread; returns the exit code."""
    with one_thread():
        return cli.main([str(a) for a in argv])


def simulate(out: Path) -> Path:
    assert camid("simulate", out, *SIM_ARGS) == 0
    return out


# ------------------------------------------------------------------ probability tables
CLASSES = ["cam-a", "cam-b", "cam-c"]
TEST_FILES = [f"img_{i:07x}_{'unalt' if i % 2 else 'manip'}.tif" for i in range(6)]


def make_table(classes=CLASSES, n_train: int = 6, seed: int = 0, test_files=TEST_FILES) -> pd.DataFrame:
    """A valid long-format table: 2 variants per training image + one row per test file."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_train):
        label = classes[i % 3]
        for aug, manip in (("none", 0), ("jpeg70", 1)):
            rows.append({"fname": f"train/{label}/{i}.jpg", "split": "oof", "fold": i % 2, "manip": manip,
                         "aug": aug, "label": label})
    for f in test_files:
        rows.append({"fname": f, "split": "test", "fold": -1, "manip": int(f.endswith("_manip.tif")),
                     "aug": "unknown", "label": ""})
    df = pd.DataFrame(rows, columns=KEY_COLUMNS)
    probs = rng.dirichlet(np.ones(len(classes)), size=len(df))
    for j, c in enumerate(classes):
        df[c] = probs[:, j]
    return df



# ------------------------------------------------------------------ subprocesses
# What a subprocess runs instead of ``python -m camid.cli``: the same entry point, pinned
# to one torch thread, and -- when CAMID_TEST_KILL_AT is "<name part>:<n>" -- SIGKILLed by
# itself in the middle of the n-th atomic write whose target name contains <name part>:
# the temporary file is cut to half its size and the rename never happens. That is the
# worst moment for a power cut, reproduced exactly instead of by luck of timing.
PRELUDE = r"""
import os, signal, sys
spec = os.environ.get("CAMID_TEST_KILL_AT")
if spec:
    part, n = spec.rsplit(":", 1)
    n, seen, replace = int(n), [0], os.replace
    def killing_replace(src, dst, *a, **k):
        if part in os.path.basename(str(dst)):
            seen[0] += 1
            if seen[0] == n:
                size = os.path.getsize(src)
                with open(src, "r+b") as fh:
                    fh.truncate(size // 2)
                os.kill(os.getpid(), signal.SIGKILL)
        return replace(src, dst, *a, **k)
    os.replace = killing_replace
for item in filter(None, os.environ.get("CAMID_TEST_SET", "").split(";")):  # module:attr=number
    import importlib
    target, value = item.split("=")
    module, attr = target.split(":")
    setattr(importlib.import_module(module), attr, float(value))
if os.environ.get("CAMID_TEST_ONE_THREAD"):
    import torch
    torch.set_num_threads(1)
    torch.set_num_threads = lambda n: None
from camid.cli import main
sys.exit(main(sys.argv[1:]))
"""


def start(*argv: str, torch_stage: bool = True, kill_at: str | None = None, set_attrs: str = "",
          cwd: Path | None = None) -> subprocess.Popen:
    """Start ``camid ARGV`` in a subprocess (own session, stdout+stderr piped, line-buffered).

    ``kill_at``: see PRELUDE; ``set_attrs``: "module:attr=number;..." set before the command.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1", CAMID_TEST_SET=set_attrs)
    env.pop("CAMID_TEST_KILL_AT", None)
    if kill_at:
        env["CAMID_TEST_KILL_AT"] = kill_at
    if torch_stage:
        env["CAMID_TEST_ONE_THREAD"] = "1"
    return subprocess.Popen([sys.executable, "-c", PRELUDE, *map(str, argv)], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def kill(proc: subprocess.Popen) -> str:
    """SIGKILL the whole process group (a power cut); return what it printed."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    return out or ""


def kill_when(proc: subprocess.Popen, text: str, timeout: float = 120) -> tuple[bool, str]:
    """Read the output until a line contains ``text``, then SIGKILL at once.

    Returns (killed while running, output). False means the command ended first.
    """
    seen = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout or ():
        seen.append(line)
        if text in line:
            alive = proc.poll() is None
            return alive, "".join(seen) + kill(proc)
        if time.monotonic() > deadline:
            break
    return False, "".join(seen) + kill(proc)


def kill_when_file(proc: subprocess.Popen, path: Path, timeout: float = 120) -> tuple[bool, str]:
    """Poll for ``path`` to exist, then SIGKILL at once (output is drained after the kill)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not path.exists():
        time.sleep(0.01)
    alive = proc.poll() is None and path.exists()
    return alive, kill(proc)


# ------------------------------------------------------------------ file checks
def check_outputs_intact(root: Path) -> dict[str, int]:
    """Every output under ``root`` parses completely; returns counts per kind.

    Hidden ``.*.tmp`` files (interrupted atomic writes) are the only thing allowed to be
    partial, and they must not look like outputs to any glob.
    """
    import json

    from camid.util.io import load_torch

    counts: dict[str, int] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            counts["tmp"] = counts.get("tmp", 0) + 1
            continue
        kind = path.suffix
        if kind == ".pt":
            load_torch(path)
        elif kind == ".parquet":
            pd.read_parquet(path)
        elif kind == ".csv":
            pd.read_csv(path)
        elif kind == ".json":
            json.loads(path.read_text())
        elif kind in (".yaml", ".out", ".jpg", ".tif", ".txt", ".npz", ".png"):
            pass
        else:
            raise AssertionError(f"unexpected output {path}")
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def one_error(stderr: str, command: str) -> str:
    """The single ``camid COMMAND: error: ...`` line of a failed run (progress bars aside)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("camid ")]
    assert len(lines) == 1 and lines[0].startswith(f"camid {command}: error: "), stderr
    return lines[0]


def temp_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".*.tmp"))


def jpeg_bytes(h: int = 48, w: int = 64, seed: int = 0, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
        buf, "JPEG", quality=95, **save)
    return buf.getvalue()

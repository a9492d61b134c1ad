"""What runs on a node for the ray and slurm backends: one job's ``camid`` process, its log,
and its work dir in either storage mode.

- ``shared``: the job works in the driver's work dir, which every node sees at the same path.
- ``copy``: the job works in a scratch folder on its node (``cluster.scratch_dir``, else the
  system temp folder); its inputs are unpacked there first and its outputs packed for the
  driver (``util.archive``), which writes them into its own work dir atomically.

Either way the data folder must be on every node at the same path. Relative paths in the
config (``weights_dir``, ``decode_cache``, ``extra_train_dirs``) resolve against the driver's
working directory when the node has that folder, else against the job's work dir.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...util.runtime import CPUS_ENV
from ..queue import DIE_WITH_PARENT
from . import CamidJob, Storage, argv

TERM_GRACE_S = 20.0  # a job process told to stop (preemption, cancel) gets this long before SIGKILL


@dataclass(frozen=True)
class NodeJob:
    """A job as sent to its node (picklable)."""

    job: CamidJob
    config_text: str
    workdir: str  # the driver's work dir, absolute (storage shared: also the job's)
    data: str  # the data folder, absolute: the same path on every node
    cwd: str  # the driver's working directory
    gpus: float  # given to the job (0: the CPU)
    cpus: int
    storage: Storage = "shared"
    scratch_dir: str | None = None
    driver: str = ""  # tells apart the scratch folders of different drivers on one node

    def local_workdir(self) -> Path:
        """The work dir the job's process gets on this node."""
        if self.storage == "shared":
            return Path(self.workdir)
        key = hashlib.sha256(f"{self.driver}\0{self.workdir}".encode()).hexdigest()[:16]
        return Path(self.scratch_dir or tempfile.gettempdir()) / "camid-jobs" / key

    def nproc(self) -> int:
        return int(self.gpus) if self.gpus >= 2 else 1


def node_name() -> str:
    return socket.gethostname()


def clear_outputs(nj: NodeJob, workdir: Path) -> None:
    """storage copy: forget what an earlier attempt on this node left; the driver's copy counts."""
    for rel in nj.job.outputs:
        path = workdir / rel
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def execute(nj: NodeJob, workdir: Path, tick: Callable[[], None] | None = None, tick_s: float = 1.0,
            stop: Callable[[], bool] | None = None) -> int:
    """Run the job's process with its output appended to its log; return its exit code.

    The process dies with this one (a killed worker or a node that goes down never leaves a
    trainer running that a rerun would race on the same folder) and runs in its own session
    (a preemption signal for this process does not hit it directly). ``tick`` runs every
    ``tick_s`` seconds while it runs; ``stop()`` returning True ends it (SIGTERM, then SIGKILL).
    """
    log = workdir / nj.job.log
    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="camid-job-") as tmp:
        config = Path(tmp) / "job.yaml"
        config.write_text(nj.config_text, encoding="utf-8")
        cmd = argv(nj.job, str(config), str(workdir), nj.data, nj.gpus > 0, nj.nproc())
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{CPUS_ENV: str(nj.cpus)})
        cwd = nj.cwd if Path(nj.cwd).is_dir() else str(workdir)
        with open(log, "a", encoding="utf-8") as out:
            out.write(f"[camid node] {nj.job.name} on {node_name()}: {' '.join(cmd)}\n")
            out.flush()
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                    preexec_fn=DIE_WITH_PARENT, start_new_session=True)
            try:
                while True:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=tick_s)
                    if proc.returncode is not None:
                        break
                    if tick is not None:
                        tick()
                    if stop is not None and stop():
                        break
            finally:
                if proc.poll() is None:
                    _terminate(proc)
    return proc.wait()  # it has ended by now: this only reads its exit code


def _terminate(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=TERM_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tail(path: Path, lines: int = 40, max_bytes: int = 16384) -> str:
    """The last lines of a log (what a failure report shows)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])


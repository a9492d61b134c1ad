"""Where every stage reads and writes under a work dir: the one definition of that layout.

    models/folds.csv                     the folds (``camid folds``)
    models/<run>/fold<k>/                a training run (contents: ``camid.train.rundir``)
    models/level2/<stacker>/             level-2 stacker models
    oof/<run>.<tta>.parquet              probability tables (format: ``camid.infer.table``)
    oof/blend/<strategy>.parquet         level-2 tables (a post-step's per-crop report: ``<strategy>.<step>.csv``)
    oof/prnu/test_residuals.npz          cached noise residuals of the test crops
    oof/prnu/train_fingerprints.npz      cached fingerprints of the training devices (``+match``; the
                                         test crops' scores against them: ``train_fingerprints.scores.npz``)
    oof/pseudo-r<N>.csv                  pseudo-labelled test crops chosen from round N (``camid pseudo``),
                                         and how they were chosen (``pseudo-r<N>.json``)
    submissions/<strategy>.csv           submissions, ``scores.csv``, and ``final.csv`` with ``final.json``
    reports/robustness/<run>-fold<k>/    ``camid robustness``
    reports/prnu/                        ``camid prnu evaluate``
    jobs/<backend>/                      a cluster backend's own files (submitit's job pickles and logs)

The data folder's own layout (``train/``, ``test/``, ``sample_submission.csv``) belongs to
``camid.data.layout``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_FOLD_PREFIX = "fold"
_TABLE_SUFFIX = ".parquet"
_TOP_FOLDERS = ("models", "oof", "submissions", "reports")
_ROUND_RE = re.compile(r"-r(\d+)$")


def _round_of(run_name: str) -> int:
    m = _ROUND_RE.search(run_name)
    return int(m.group(1)) if m and int(m.group(1)) >= 2 else 1


@dataclass(frozen=True)
class Workspace:
    """The work dir of one training round. Round 1 is the layout above; round ``N >= 2`` (the
    second-device steps: trained on the training photos plus round ``N-1``'s pseudo-labelled
    test crops) keeps its runs as ``models/<run>-r<N>/`` and its level-2 outputs apart::

        oof/blend-r<N>/  models/level2-r<N>/  submissions/r<N>/

    while the folds, the probability tables (``oof/<run>-r<N>.<tta>.parquet``) and the
    residual cache are shared."""

    root: Path
    data_dir: Path
    round: int = 1
    # root/<name> for each of _TOP_FOLDERS (submissions: of this round)
    models: Path = field(init=False)
    oof: Path = field(init=False)
    submissions: Path = field(init=False)
    reports: Path = field(init=False)

    def __post_init__(self) -> None:
        if self.round < 1:
            raise ValueError(f"training rounds count from 1, got {self.round}")
        for name in _TOP_FOLDERS:
            object.__setattr__(self, name, Path(self.root) / name)
        if self.round > 1:
            object.__setattr__(self, "submissions", Path(self.root) / "submissions" / self._suffix[1:])

    @property
    def _suffix(self) -> str:
        return "" if self.round == 1 else f"-r{self.round}"

    def round_run(self, run_name: str) -> str:
        """A config run's name in this round: ``densenet201`` in round 1, ``densenet201-r2`` in round 2."""
        return run_name + self._suffix

    def pseudo_labels(self, round_: int | None = None) -> Path:
        """Pseudo-labels chosen from round ``round_``'s level 2 (default: this round's)."""
        return self.oof / f"pseudo-r{round_ or self.round}.csv"

    def pseudo_summary(self, round_: int | None = None) -> Path:
        """How ``pseudo_labels(round_)`` were chosen: counts, expected precision, the gate."""
        return self.pseudo_labels(round_).with_suffix(".json")

    @property
    def folds_csv(self) -> Path:
        return self.models / "folds.csv"

    def run_root(self, run_name: str) -> Path:
        """``models/<run>/``: the run's fold folders."""
        return self.models / run_name

    def run_dir(self, run_name: str, fold: int) -> Path:
        return self.run_root(run_name) / f"{_FOLD_PREFIX}{fold}"

    def fold_dirs(self, run_name: str) -> dict[int, Path]:
        """The existing ``fold<k>`` folders of a run, by fold, in fold order."""
        root = self.run_root(run_name)
        found = {}
        if root.is_dir():
            for d in root.glob(f"{_FOLD_PREFIX}*"):
                k = d.name[len(_FOLD_PREFIX):]
                if d.is_dir() and k.isdigit():
                    found[int(k)] = d
        return dict(sorted(found.items()))

    def table(self, run_name: str, tta: str) -> Path:
        return self.oof / f"{run_name}.{tta}{_TABLE_SUFFIX}"

    def table_runs(self, tta: str) -> list[str]:
        """Run names of this round with a table ``oof/<run>.<tta>.parquet`` (level-2 tables live
        in ``oof/blend*/``): round 1 the runs without a ``-r<N>`` suffix, round N those with ``-rN``."""
        suffix = f".{tta}{_TABLE_SUFFIX}"
        runs = sorted(p.name[: -len(suffix)] for p in self.oof.glob(f"*{suffix}"))
        return [r for r in runs if _round_of(r) == self.round]

    def tables(self) -> list[Path]:
        """Every probability table ``oof/<run>.<tta>.parquet`` of this round's runs (any TTA;
        ``table_runs`` tells the rounds apart), sorted."""
        found = sorted(self.oof.glob(f"*.*{_TABLE_SUFFIX}"))
        return [p for p in found if _round_of(p.name[: -len(_TABLE_SUFFIX)].rsplit(".", 1)[0]) == self.round]

    def predict_log(self, run_name: str) -> Path:
        """Output of a queued ``camid predict`` job for one run."""
        return self.oof / f"{run_name}.predict.out"

    @property
    def blend_dir(self) -> Path:
        return self.oof / f"blend{self._suffix}"

    def blend_table(self, strategy: str) -> Path:
        return self.blend_dir / f"{strategy}{_TABLE_SUFFIX}"

    def step_report(self, strategy: str, step: str) -> Path:
        """Per test crop, what a level-2 post-step found (``+prnu``: its sensor cluster and whether it
        confirmed the class; ``+match``: its best training device, the PCE and what decided its class)."""
        return self.blend_dir / f"{strategy}.{step}.csv"

    @property
    def prnu_residuals(self) -> Path:
        """Cache of the test crops' noise residuals for PRNU clustering."""
        return self.oof / "prnu" / "test_residuals.npz"

    @property
    def match_fingerprints(self) -> Path:
        """Cache of the training devices' sensor fingerprints at the test crops' region (``+match``)."""
        return self.oof / "prnu" / "train_fingerprints.npz"

    def blend_strategies(self) -> list[str]:
        """Strategies that have a level-2 table, sorted."""
        return sorted(p.name[: -len(_TABLE_SUFFIX)] for p in self.blend_dir.glob(f"*{_TABLE_SUFFIX}"))

    @property
    def level2(self) -> Path:
        return self.models / f"level2{self._suffix}"

    def level2_dir(self, stacker: str) -> Path:
        return self.level2 / stacker

    def submission(self, strategy: str) -> Path:
        return self.submissions / f"{strategy}.csv"

    @property
    def final_submission(self) -> Path:
        """The submission to send: ``level2.submission.pick_final``'s strategy (its choice in ``final.json``)."""
        return self.submissions / "final.csv"

    @property
    def final_choice(self) -> Path:
        """Why ``final_submission`` is the strategy it is (``pick_final``'s reasons)."""
        return self.submissions / "final.json"

    @property
    def scores_csv(self) -> Path:
        return self.submissions / "scores.csv"

    def robustness_dir(self, run_name: str, fold: int) -> Path:
        return self.reports / "robustness" / f"{run_name}-{_FOLD_PREFIX}{fold}"

    @property
    def prnu_dir(self) -> Path:
        return self.reports / "prnu"

    def backend_dir(self, backend: str) -> Path:
        """What ``train-all``/``predict --backend BACKEND`` keeps for its jobs (``camid.jobs.backends``)."""
        return Path(self.root) / "jobs" / backend

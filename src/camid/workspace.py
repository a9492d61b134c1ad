"""Where every stage reads and writes under a work dir: the one definition of that layout.

    models/folds.csv                     the folds (``camid folds``)
    models/<run>/fold<k>/                a training run (contents: ``camid.train.rundir``)
    models/level2/<stacker>/             level-2 stacker models
    oof/<run>.<tta>.parquet              probability tables (format: ``camid.infer.table``)
    oof/blend/<strategy>.parquet         level-2 tables
    submissions/<strategy>.csv           submissions, and ``scores.csv``
    reports/robustness/<run>-fold<k>/    ``camid robustness``
    reports/prnu/                        ``camid prnu evaluate``

The data folder's own layout (``train/``, ``test/``, ``sample_submission.csv``) belongs to
``camid.data.layout``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

_FOLD_PREFIX = "fold"
_TABLE_SUFFIX = ".parquet"
_TOP_FOLDERS = ("models", "oof", "submissions", "reports")


@dataclass(frozen=True)
class Workspace:
    root: Path
    data_dir: Path
    # root/<name> for each of _TOP_FOLDERS
    models: Path = field(init=False)
    oof: Path = field(init=False)
    submissions: Path = field(init=False)
    reports: Path = field(init=False)

    def __post_init__(self) -> None:
        for name in _TOP_FOLDERS:
            object.__setattr__(self, name, Path(self.root) / name)

    @property
    def folds_csv(self) -> Path:
        return self.models / "folds.csv"

    def run_dir(self, run_name: str, fold: int) -> Path:
        return self.models / run_name / f"{_FOLD_PREFIX}{fold}"

    def fold_dirs(self, run_name: str) -> dict[int, Path]:
        """The existing ``fold<k>`` folders of a run, by fold, in fold order."""
        root = self.models / run_name
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
        """Run names with a table ``oof/<run>.<tta>.parquet`` (level-2 tables live in ``oof/blend/``)."""
        suffix = f".{tta}{_TABLE_SUFFIX}"
        return sorted(p.name[: -len(suffix)] for p in self.oof.glob(f"*{suffix}"))

    def predict_log(self, run_name: str) -> Path:
        """Output of a queued ``camid predict`` job for one run."""
        return self.oof / f"{run_name}.predict.out"

    @property
    def blend_dir(self) -> Path:
        return self.oof / "blend"

    def blend_table(self, strategy: str) -> Path:
        return self.blend_dir / f"{strategy}{_TABLE_SUFFIX}"

    def blend_strategies(self) -> list[str]:
        """Strategies that have a level-2 table, sorted."""
        return sorted(p.name[: -len(_TABLE_SUFFIX)] for p in self.blend_dir.glob(f"*{_TABLE_SUFFIX}"))

    @property
    def level2(self) -> Path:
        return self.models / "level2"

    def level2_dir(self, stacker: str) -> Path:
        return self.level2 / stacker

    def submission(self, strategy: str) -> Path:
        return self.submissions / f"{strategy}.csv"

    @property
    def scores_csv(self) -> Path:
        return self.submissions / "scores.csv"

    def robustness_dir(self, run_name: str, fold: int) -> Path:
        return self.reports / "robustness" / f"{run_name}-{_FOLD_PREFIX}{fold}"

    @property
    def prnu_dir(self) -> Path:
        return self.reports / "prnu"

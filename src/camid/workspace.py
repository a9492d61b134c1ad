"""Where every stage reads and writes: ``models/``, ``oof/``, ``submissions/`` under a work dir.

Shared by all subcommands so the file layout of DESIGN.md is defined once.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from .config import Config, load_config


@dataclass(frozen=True)
class Workspace:
    root: Path
    data_dir: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def oof(self) -> Path:
        return self.root / "oof"

    @property
    def submissions(self) -> Path:
        return self.root / "submissions"

    @property
    def folds_csv(self) -> Path:
        return self.models / "folds.csv"

    def run_dir(self, run_name: str, fold: int) -> Path:
        return self.models / run_name / f"fold{fold}"

    def table(self, run_name: str, tta: str) -> Path:
        return self.oof / f"{run_name}.{tta}.parquet"


def add_common_arguments(parser: argparse.ArgumentParser, default_config: str | None = "configs/demo.yaml") -> None:
    parser.add_argument("--config", default=default_config,
                        help=f"YAML profile (default: {default_config})")
    parser.add_argument("--data", default=None, help="data folder (default: the config's data_dir)")
    parser.add_argument("--workdir", default=".", help="folder holding models/, oof/, submissions/ (default: .)")


def resolve(args: argparse.Namespace) -> tuple[Config, Workspace]:
    cfg = load_config(args.config)
    data_dir = Path(args.data or cfg.data_dir)
    if args.data:
        cfg.data_dir = str(args.data)
    return cfg, Workspace(Path(args.workdir), data_dir)

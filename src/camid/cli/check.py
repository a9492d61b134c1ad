"""`camid check`: the preflight before `train-all` (`make check`). Prints the plan (data, weights,
GPUs, disk, jobs, estimated time) and exits 1 when anything blocks it."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from ..data.folds import fold_ids, read_folds
from ..data.layout import SAMPLE_SUBMISSION
from ..errors import CamidError
from ..level2.submission import read_sample
from ..train.preflight import Report, check_data, check_disk, check_gpus, check_weights, plan_jobs
from .common import add_job_arguments, names, resolve

# camid bench's training rows: "train <backbone> @<size>, batch <b>" (camid.bench.bench_gpu)
_TRAIN_ROW = re.compile(r"^train (?P<backbone>\S+) @(?P<size>\d+), batch \d+$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser, "GPU ids train-all will use, e.g. 0,1,2,3")
    parser.add_argument("--backend", choices=("local", "ray", "slurm"), default="local", help="where jobs will run")
    parser.add_argument("--rounds", type=int, default=2, help="training rounds planned (default 2: round 1, pseudo, "
                                                               "round 2)")
    parser.add_argument("--bench", default="bench_out/bench.json",
                        help="`camid bench --only gpu` results on this machine, for the time estimate")
    parser.add_argument("--no-load", action="store_true", help="check that weights files exist without loading them")


def measured_rates(path: Path) -> dict[str, tuple[float, int]]:
    """backbone -> (training images/s, input size) from a bench.json ({} when there is none)."""
    if not path.is_file():
        return {}
    rates = {}
    for row in json.loads(path.read_text()).get("rows", []):
        m = _TRAIN_ROW.match(str(row.get("item", "")))
        if row.get("section") == "gpu" and m and row.get("value"):
            rates[m["backbone"]] = (float(row["value"]), int(m["size"]))
    return rates


def main(args: argparse.Namespace) -> int:
    cfg, ws = resolve(args)
    wanted = names(args.models)
    runs = [cfg.model(m) for m in wanted] if wanted else cfg.models
    gpus = names(args.gpus)
    report = Report()
    sample_path = ws.data_dir / SAMPLE_SUBMISSION
    try:
        sample = read_sample(sample_path)["fname"].tolist() if sample_path.is_file() else None
    except CamidError as exc:
        report.block(str(exc))
        sample = []
    classes = check_data(cfg, ws.data_dir, sample, report)
    check_weights(cfg, runs, not args.no_load, report, args.config)
    parallel = check_gpus(cfg, gpus, args.backend, report)
    if ws.folds_csv.is_file():
        n_folds = len(fold_ids(read_folds(ws.folds_csv)))
    else:
        n_folds = cfg.folds.n_folds if cfg.folds.mode == "kfold" else 1
        report.lines.append(f"   ({ws.folds_csv} not made yet: `camid folds`; planned with {n_folds} fold(s))")
    check_disk(cfg, runs, n_folds, args.rounds, max(2, len(classes)), ws.models, report)
    plan_jobs(cfg, runs, n_folds, args.rounds, args.backend, gpus, parallel, measured_rates(Path(args.bench)),
              report)
    print("\n".join(report.lines))
    if report.blockers:
        print(f"\n{len(report.blockers)} blocker(s):\n" + "\n".join(f"  - {b}" for b in report.blockers))
        return 1
    print("\nno blockers: ready for train-all")
    return 0

"""The real-photo benchmark (`make real-bench`, BENCHMARKS.md "Real photographs").

    PYTHONPATH=src python -m camid.bench.real_bench [--shared ../shared/data] [--config configs/real.yaml]
                                                    [--data data/real] [--workdir bench_out/real]

From a clone with ../shared beside it: writes one manifest for the eight real camera models
(``real_cameras/manifest.csv`` plus ``dresden_prnu`` parsed from its names: class ``Nikon_D70`` /
``Nikon_D70s``, device from the name, scene from the folder), composes a competition with
``camid compose`` (the six single-device models split by photo; the Nikons by device: devices
``_1`` are the test set, ``_0`` trains), then runs the README sequence for both rounds through the
``camid`` command (folds, train-all, predict, blend, submission, pseudo; round 2: train-all,
predict, blend, submission) and reports, for every strategy the profile lists: local CV (all
OOF rows, and split by what the held-out photo measures: an unseen device or a photo-disjoint
photo of a training device), the test score, the test score on seen and unseen devices and on
natural and flat-field photos; for each round's final submission: accuracy per class and per
manipulation and the confusion PNG; the wall time of every step. Printed as Markdown and written
to ``WORKDIR/reports/real_bench.{md,csv}`` and ``real_bench_final.csv``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from camid.bench.common import REPO
from camid.config import load_config
from camid.data.compose import MARKER, ComposeOptions, compose
from camid.data.folds import CASE_DEVICE, CASE_PHOTO, read_folds
from camid.data.layout import TEST_INFO_FILE
from camid.infer.table import class_columns, read_table
from camid.level2.metrics import plot_confusion, score_predictions
from camid.util.io import write_csv, write_text
from camid.workspace import Workspace

DRESDEN_RE = re.compile(r"^(Nikon_D70s?)_(\d+)_(\d+)$")
TEST_DEVICES = ("Nikon_D70_1", "Nikon_D70s_1")
ROUNDS = (1, 2)


def write_manifest(shared: Path, out: Path) -> Path:
    """One manifest (file, camera, device, scene) for real_cameras and dresden_prnu, paths relative to ``out``."""
    real = shared / "real_cameras" / "manifest.csv"
    dresden = shared / "dresden_prnu"
    if not real.is_file() or not dresden.is_dir():
        raise SystemExit(f"real photos not found: need {real} and {dresden} (a clone with ../shared beside it)")
    rows = []
    for r in pd.read_csv(real, dtype=str, keep_default_na=False).itertuples(index=False):
        rows.append({"file": real.parent / r.file, "camera": r.camera, "device": r.device, "scene": r.scene})
    for scene in ("flatfield", "natural"):
        for path in sorted((dresden / scene).glob("*.JPG")):
            m = DRESDEN_RE.match(path.stem)
            if m:
                rows.append({"file": path, "camera": m.group(1), "device": f"{m.group(1)}_{m.group(2)}",
                             "scene": scene})
    df = pd.DataFrame(rows)
    df["file"] = [os.path.relpath(p, out.parent) for p in df["file"]]
    return write_csv(out, df)


def camid(*args: str) -> float:
    """Run one `camid` command (this interpreter, this environment); its wall time in seconds."""
    start = time.perf_counter()
    print(f"$ camid {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "camid.cli", *args], check=True)
    return time.perf_counter() - start


def _score(truth: pd.Series, pred: pd.Series, manip: pd.Series, classes: list[str]) -> float:
    if not len(truth):
        return float("nan")
    return score_predictions(truth.to_numpy(), pred.to_numpy(), manip.to_numpy(), classes).score


def strategy_rows(ws: Workspace, classes: list[str], folds: pd.DataFrame, info: pd.DataFrame) -> pd.DataFrame:
    """Per strategy of this round: CV (all / unseen device / photo-disjoint) and test scores by subset."""
    scores = pd.read_csv(ws.scores_csv)
    case_of = dict(zip(folds["fname"], folds["case"], strict=True))
    rows = []
    for r in scores.itertuples(index=False):
        table = read_table(ws.blend_table(r.strategy), classes)
        oof = table[table["split"] == "oof"]
        pred = pd.Series(np.asarray(class_columns(table), dtype=object)[oof[classes].to_numpy().argmax(axis=1)],
                         index=oof.index)
        case = oof["fname"].map(case_of)
        row = {"round": ws.round, "strategy": r.strategy, "cv": r.cv_score}
        for name, key in (("cv_unseen_device", CASE_DEVICE), ("cv_photo_disjoint", CASE_PHOTO)):
            sel = case == key
            row[name] = _score(oof.loc[sel, "label"], pred[sel], oof.loc[sel, "aug"], classes)
        sub = pd.read_csv(r.submission).merge(info, on="fname", suffixes=("_pred", ""))
        row.update(test=r.test_score, test_unalt=r.test_unalt, test_manip=r.test_manip)
        for name, sel in (("test_seen_device", sub["device_seen"]), ("test_unseen_device", ~sub["device_seen"]),
                          ("test_natural", sub["scene"] == "natural"),
                          ("test_flatfield", sub["scene"] == "flatfield")):
            row[name] = _score(sub.loc[sel, "camera"], sub.loc[sel, "camera_pred"], sub.loc[sel, "manipulation"],
                               classes)
        rows.append(row)
    return pd.DataFrame(rows)


def final_breakdown(ws: Workspace, classes: list[str], info: pd.DataFrame) -> tuple[pd.DataFrame, Path, str]:
    """The round's final submission: accuracy per class and per manipulation, the confusion PNG."""
    meta = pd.read_json(ws.final_submission.with_suffix(".json"), typ="series")
    sub = pd.read_csv(ws.final_submission).merge(info, on="fname", suffixes=("_pred", ""))
    rep = score_predictions(sub["camera"].to_numpy(), sub["camera_pred"].to_numpy(),
                            sub["manipulation"].to_numpy(), classes)
    png = plot_confusion(rep.confusion, ws.reports / f"real_bench_confusion_r{ws.round}.png",
                         f"real photos, round {ws.round} final ({meta['strategy']}): test {rep.score:.3f}")
    rows = [{"round": ws.round, "strategy": meta["strategy"], "kind": "class", "name": c,
             "accuracy": rep.per_class.loc[c, "accuracy"], "n": int(rep.per_class.loc[c, "n"])} for c in classes]
    rows += [{"round": ws.round, "strategy": meta["strategy"], "kind": "manipulation", "name": m,
              "accuracy": rep.per_manip.loc[m, "accuracy"], "n": int(rep.per_manip.loc[m, "n"])}
             for m in rep.per_manip.index]
    return pd.DataFrame(rows), png, str(meta["strategy"])


def _md(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in df.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data"), help="the shared data folder")
    ap.add_argument("--config", default="configs/real.yaml")
    ap.add_argument("--data", default="data/real", help="the composed data folder")
    ap.add_argument("--workdir", default="bench_out/real", help="models/, oof/, submissions/, reports/ of the run")
    ap.add_argument("--seed", type=int, default=ComposeOptions.seed, help="compose split seed")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: report the rounds whose submissions/scores.csv exist in WORKDIR")
    args = ap.parse_args()
    start = time.perf_counter()
    workdir, data = Path(args.workdir), Path(args.data)
    walls: dict[str, float] = {}
    if not args.report_only:
        manifest = write_manifest(Path(args.shared), workdir / "real_manifest.csv")
        t0 = time.perf_counter()
        compose([manifest], data, ComposeOptions(test_devices=TEST_DEVICES, crop=512, seed=args.seed),
                overwrite=True)
        walls["compose"] = time.perf_counter() - t0
        common = ["--config", args.config, "--data", str(data), "--workdir", str(workdir)]
        walls["folds"] = camid("folds", *common)
        for rnd in ROUNDS:
            rc = [*common, "--round", str(rnd)]
            for step in ("train-all", "predict", "blend", "submission"):
                walls[f"{step} r{rnd}"] = camid(step, *rc)
            if rnd < ROUNDS[-1]:
                walls[f"pseudo r{rnd}"] = camid("pseudo", *rc)
    wall = time.perf_counter() - start
    summary = json.loads((data / MARKER).read_text())
    rounds = [r for r in ROUNDS if Workspace(workdir, data, round=r).scores_csv.is_file()]

    cfg = load_config(args.config)
    folds = read_folds(Workspace(workdir, data).folds_csv)
    info = pd.read_csv(data / TEST_INFO_FILE, dtype={"device": str, "scene": str}, keep_default_na=False)
    classes = list(cfg.classes) if cfg.classes else sorted(set(folds["label"]))
    tables, finals, pngs = [], [], []
    for rnd in rounds:
        ws = Workspace(workdir, data, round=rnd)
        tables.append(strategy_rows(ws, classes, folds, info))
        fb, png, name = final_breakdown(ws, classes, info)
        finals.append(fb)
        pngs.append(f"round {rnd} final ({name}): {png}")
    table, final = pd.concat(tables, ignore_index=True), pd.concat(finals, ignore_index=True)
    reports = Workspace(workdir, data).reports
    write_csv(reports / "real_bench.csv", table)
    write_csv(reports / "real_bench_final.csv", final)
    cases = folds[folds["fold"] >= 0].groupby("case").size().to_dict()
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    text = "\n\n".join([
        f"# Real photographs ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        f"`python -m camid.bench.real_bench --config {args.config}` on {platform.node()} "
        f"({os.cpu_count()} cores, load average at the end {load}); "
        + ("report only (no wall time)." if args.report_only else f"wall time **{wall:.0f} s**."),
        f"Composed: {summary['n_train']} training photos, {summary['n_test_crops']} test crops "
        f"(test devices {', '.join(TEST_DEVICES)}); OOF rows by case: {cases}.",
        "## Every strategy: local CV (all / unseen device / photo-disjoint) and test\n\n" + _md(table),
        "## Final submissions: accuracy per class and per manipulation\n\n" + _md(final),
        "## Confusion PNGs\n\n" + "\n".join(f"- {p}" for p in pngs),
        "## Wall time per step (s)\n\n" + _md(pd.DataFrame({"step": list(walls), "seconds": list(walls.values())}))
        if walls else "",
    ])
    write_text(reports / "real_bench.md", text + "\n")
    print(text)
    print(f"\nwrote {reports / 'real_bench.md'}, real_bench.csv, real_bench_final.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Leave-one-class-out measurement of `camid identify`'s unknown-camera rejection.

For each held-out class c of the simulated demo competition (`configs/demo.yaml`, 10 classes):

1. train the demo's `camid_tiny` on the other 9 classes (2 folds; the demo's schedule, or
   `--schedule short`: SCHEDULES below), then `camid predict` its OOF table;
2. calibrate the open-set threshold on that OOF table exactly as `camid identify` does
   (maximum of the combined softmax probability, at --tpr of the known OOF photos accepted);
3. score the simulated test crops (device B: never seen in training) with `camid identify`'s
   own code path: photos of the 9 known classes are "known", photos of c are "unknown".
   Unaltered crops are scored with manip flag 0 and a threshold from the unaltered OOF rows,
   manipulated crops with flag 1 and a threshold from the manipulated OOF rows.

Outputs under --workdir (default bench_out/open_set_<schedule>/): one work folder per held-out class
(config, models/, oof/), `scores.csv` (one row per held-out class x test photo) and
`summary.csv` / `summary.md` (the table in BENCHMARKS.md). Every step is resumable: finished
training runs and up-to-date OOF tables are skipped, so a killed run continues where it stopped.

    PYTHONPATH=src python -m camid.bench.open_set_loco                   # all 10 classes
    PYTHONPATH=src python -m camid.bench.open_set_loco --held-out 0,4,8  # every 4th (sorted names)
    PYTHONPATH=src python -m camid.bench.open_set_loco --stage eval      # re-score trained runs only
"""
from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from camid.bench.common import REPO
from camid.data.layout import POOL_DIR, POOL_RULES, POOL_TRUTH, SOLUTION, TEST_DIR, TRAIN_DIR

SCHEDULES = {
    "demo": {},  # the profile's own (configs/demo.yaml: 10 plateau epochs + 2 cosine cycles of 4, 30 steps of 64)
    # about half the epochs: half the time, a weaker classifier
    "short": {"epochs": 5, "cycles": 1, "cycle_epochs": 4},
}


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run([sys.executable, "-m", "camid.cli", *cmd], check=True)


def ensure_data(data: Path, config: Path, base: dict) -> None:
    """The simulated competition and, when the profile trains on extra folders (the demo's
    filtered external pool), the filter's output, as `make data filter-external` make them."""
    if not (data / TRAIN_DIR).is_dir() or not (data / SOLUTION).is_file():
        run(["simulate", str(data), "--config", str(config)])
    missing = [d for d in base.get("extra_train_dirs") or [] if not Path(d).is_dir()]
    if missing and (data / POOL_DIR).is_dir():
        run(["filter-external", str(data / POOL_DIR), "--rules", str(data / POOL_RULES),
             "--out", str(data / "external_kept"), "--truth", str(data / POOL_TRUTH)])


def class_config(base: dict, classes: list[str], held_out: str, data: Path, path: Path, schedule: str) -> Path:
    cfg = copy.deepcopy(base)
    cfg["name"] = f"loco-{held_out}"
    cfg["data_dir"] = str(data)
    cfg["classes"] = [c for c in classes if c != held_out]
    cfg["train"].update(SCHEDULES[schedule])
    # relative folders as the profile means them (from the repository root), whatever the cwd of the jobs
    cfg["extra_train_dirs"] = [str(Path(d).resolve()) for d in cfg.get("extra_train_dirs") or []]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def train_one(cfg_path: Path, work: Path) -> float:
    start = time.time()
    common = ["--config", str(cfg_path), "--workdir", str(work)]
    run(["folds", *common])
    run(["train-all", *common])
    run(["predict", *common])
    return time.time() - start


def energy(runs: dict, image: np.ndarray, crop: int, manip: bool) -> float:
    """logsumexp of the logits averaged over every TTA view, checkpoint and fold (the logits whose
    softmax the geometric-mean probability is): the energy score (Liu et al., 2020), for comparison."""
    import torch

    from camid.data.crops import centre_crop, pad_to
    from camid.infer.tta import augment_batch, make_views

    x = torch.from_numpy(np.ascontiguousarray(pad_to(centre_crop(image, crop), crop))).permute(2, 0, 1)[None]
    logits = []
    with torch.inference_mode():
        for ensembles in runs.values():
            for e in ensembles:
                views = make_views(e.tta, crop, crop, e.input_size)
                batch = augment_batch(x, views)
                flags = torch.full((len(batch),), float(manip))
                logits += [net(net.normalize(batch), flags).float() for net in e.nets]
    return float(torch.logsumexp(torch.cat(logits).mean(0), dim=0))


def is_trained(work: Path, cfg_path: Path) -> bool:
    from camid.config import load_config
    from camid.workspace import Workspace

    cfg = load_config(cfg_path)
    return all(Workspace(work, work).table(m.run_name, cfg.predict.tta).is_file() for m in cfg.models)


def evaluate_one(cfg_path: Path, work: Path, data: Path, held_out: str, tpr: float) -> pd.DataFrame:
    """One row per test photo: its score, the threshold, the verdict, known/unknown."""
    import torch

    from camid.config import load_config
    from camid.data.images import read_image
    from camid.forensics.identify import identify_photo, load_ensembles
    from camid.forensics.openset import calibrate
    from camid.workspace import Workspace

    cfg = load_config(cfg_path)
    ws = Workspace(work, data)
    torch.set_num_threads(1)
    runs, classes = load_ensembles(cfg, ws, [], torch.device("cpu"))
    solution = pd.read_csv(data / SOLUTION)
    rows = []
    for manip in (False, True):
        open_set = calibrate(ws, runs, cfg.predict.tta, classes, manip, tpr)
        if not open_set.on:
            raise SystemExit(f"{held_out}: open-set check off: {open_set.reason}")
        half = solution[solution["fname"].str.endswith("_manip.tif" if manip else "_unalt.tif")]
        for r in half.itertuples():
            p = identify_photo(str(data / TEST_DIR / r.fname), runs, cfg.predict.crop, 0, manip,
                               cfg.predict.batch_size, open_set)
            if p.probs is None:
                raise SystemExit(f"{r.fname}: {p.error}")
            order = np.sort(p.probs)[::-1]
            rows.append({"held_out": held_out, "fname": r.fname, "manip": int(manip), "label": r.camera,
                         "unknown": int(r.camera == held_out), "top1": classes[int(p.probs.argmax())],
                         "score": p.score, "threshold": open_set.threshold, "verdict": p.verdict,
                         "margin": float(order[0] - order[1]),
                         "neg_entropy": float(np.sum(p.probs * np.log(np.clip(p.probs, 1e-12, None)))),
                         "energy": energy(runs, read_image(data / TEST_DIR / r.fname), cfg.predict.crop, manip),
                         "oof_accepted": open_set.accepted, "oof_n": open_set.n})
    return pd.DataFrame(rows)


def auroc(known: Sequence[float] | np.ndarray, unknown: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve of "known scores higher than unknown" (ties count half):
    the Mann-Whitney U statistic divided by n_known * n_unknown."""
    k, u = np.asarray(known, dtype=np.float64), np.asarray(unknown, dtype=np.float64)
    if not len(k) or not len(u):
        return float("nan")
    ranks = pd.Series(np.concatenate([k, u])).rank(method="average").to_numpy()
    return float((ranks[:len(k)].sum() - len(k) * (len(k) + 1) / 2) / (len(k) * len(u)))


def summarise(scores: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (held_out, manip), g in scores.groupby(["held_out", "manip"], sort=False):
        known, unknown = g[g["unknown"] == 0], g[g["unknown"] == 1]
        accepted = known["verdict"] != "unknown"
        out.append({
            "held_out": held_out, "manip": manip, "known_photos": len(known), "unknown_photos": len(unknown),
            "threshold": g["threshold"].iloc[0], "oof_accepted": g["oof_accepted"].iloc[0],
            "auroc": auroc(known["score"].to_numpy(), unknown["score"].to_numpy()),
            "auroc_margin": auroc(known["margin"].to_numpy(), unknown["margin"].to_numpy()),
            "auroc_neg_entropy": auroc(known["neg_entropy"].to_numpy(), unknown["neg_entropy"].to_numpy()),
            "auroc_energy": auroc(known["energy"].to_numpy(), unknown["energy"].to_numpy()),
            "unknown_detected": float((unknown["verdict"] == "unknown").mean()),
            "known_accepted": float(accepted.mean()),
            "known_closed_set_acc": float((known["top1"] == known["label"]).mean()),
            "known_open_set_acc": float(((known["verdict"] == known["label"])).mean()),
        })
    return pd.DataFrame(out)


def markdown(summary: pd.DataFrame) -> str:
    lines = []
    for manip, g in summary.groupby("manip"):
        lines += [f"\n{'Manipulated' if manip else 'Unaltered'} test crops (manip flag {manip}):\n",
                  "| held-out class | threshold | OOF accepted | AUROC | unknown detected | known accepted "
                  "| known acc. (closed set) | known acc. (open set) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in g.itertuples():
            lines.append(f"| {r.held_out} | {r.threshold:.3f} | {r.oof_accepted:.1%} | {r.auroc:.3f} "
                         f"| {r.unknown_detected:.1%} | {r.known_accepted:.1%} | {r.known_closed_set_acc:.1%} "
                         f"| {r.known_open_set_acc:.1%} |")
        lines.append(f"| **mean** | | {g.oof_accepted.mean():.1%} | **{g.auroc.mean():.3f}** "
                     f"| **{g.unknown_detected.mean():.1%}** | {g.known_accepted.mean():.1%} "
                     f"| {g.known_closed_set_acc.mean():.1%} | {g.known_open_set_acc.mean():.1%} |")
        lines.append(f"\nMean AUROC of other scores on the same photos: max probability (the one used) "
                     f"{g.auroc.mean():.3f}, margin top-1 - top-2 {g.auroc_margin.mean():.3f}, "
                     f"negative entropy {g.auroc_neg_entropy.mean():.3f}, "
                     f"energy logsumexp(mean logits) {g.auroc_energy.mean():.3f}.")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    ap.add_argument("--data", type=Path, default=REPO / "data" / "simulated")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="default: bench_out/open_set_<schedule>/ (one folder per held-out class inside)")
    ap.add_argument("--schedule", choices=sorted(SCHEDULES), default="demo",
                    help="training schedule of each 9-class run (default: the demo's own)")
    ap.add_argument("--held-out", default="all", help="comma-separated class indices or names (default: all)")
    ap.add_argument("--tpr", type=float, default=0.95, help="share of known OOF photos accepted (default 0.95)")
    ap.add_argument("--stage", choices=["all", "train", "eval"], default="all")
    args = ap.parse_args()
    args.workdir = args.workdir or REPO / "bench_out" / f"open_set_{args.schedule}"

    base = yaml.safe_load(args.config.read_text())
    ensure_data(args.data, args.config, base)
    classes = sorted(p.name for p in (args.data / TRAIN_DIR).iterdir() if p.is_dir())
    wanted = classes if args.held_out == "all" else [
        classes[int(x)] if x.isdigit() else x for x in args.held_out.split(",") if x]
    frames = []
    for held_out in wanted:
        work = args.workdir / held_out
        # not config.yaml: that name is a run folder's (train.rundir)
        cfg_path = class_config(base, classes, held_out, args.data.resolve(), work / "loco.yaml", args.schedule)
        if args.stage in ("all", "train"):
            took = train_one(cfg_path, work)
            print(f"[loco] {held_out}: trained and predicted in {took:.0f} s", flush=True)
        if args.stage in ("all", "eval"):
            if not is_trained(work, cfg_path):
                print(f"[loco] {held_out}: not trained yet (no OOF table under {work}); left out", flush=True)
                continue
            frames.append(evaluate_one(cfg_path, work, args.data.resolve(), held_out, args.tpr))
            print(f"[loco] {held_out}: scored {len(frames[-1])} test photos", flush=True)
    if frames:
        scores = pd.concat(frames, ignore_index=True)
        summary = summarise(scores)
        args.workdir.mkdir(parents=True, exist_ok=True)
        scores.to_csv(args.workdir / "scores.csv", index=False)
        summary.to_csv(args.workdir / "summary.csv", index=False)
        text = markdown(summary)
        (args.workdir / "summary.md").write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How strong is sensor noise in one crop? Real photos against the simulator (BENCHMARKS.md,
"Sensor noise: real vs simulated").

    PYTHONPATH=src python -m camid.bench.prnu_strength [--real ../shared/data/real_cameras]
        [--dresden ../shared/data/dresden_prnu] [--sim-data data/simulated]
        [--simulated 6 --config configs/demo.yaml] [--flat 6] [--crops 256,512] [--out bench_out/prnu_strength]

For every pair of different photos of one device: the NCC of the post-processed noise
residuals of their centre crops (``forensics.prnu.crop_residuals`` / ``residual_ncc_pairs``,
the residual the level-2 ``+prnu`` step clusters); and the same for pairs of different devices
(the chance level). Sources: the real phone/tablet photos (manifest.csv: device, scene), the
Dresden Nikons (``flatfield/``, ``natural/``), a simulated competition folder (device A: the
training photos; device B: the ``_unalt`` test crops listed in solution.csv, which are already
cropped, so only crops up to their size), and ``--simulated N``: N photos per device A and B of
every class rendered in memory from the config's ``simulate`` section (the unaltered test crop is
the centre crop of such a photo), and ``--flat N``: N mid-grey flat-fields per device B
(``sim.camera.flat_field``). Prints a Markdown table; writes ``OUT/pairs.csv`` and ``OUT/summary.csv``.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from camid.bench.common import REPO
from camid.config import PrnuClusterConfig, load_config
from camid.data import images
from camid.data.layout import SOLUTION, TEST_DIR, TRAIN_DIR, read_solution, solution_labels
from camid.forensics import prnu
from camid.level2 import prnu_cluster as pc
from camid.level2.metrics import weighted_score
from camid.sim import camera
from camid.util.io import write_csv
from camid.util.pool import parallel_map

Loader = Callable[[], np.ndarray]


def real_sets(root: Path) -> list[tuple[str, str, str, list[str]]]:
    """(source, scene, device, paths) from the real-camera manifest."""
    man = pd.read_csv(root / "manifest.csv")
    return [("real_cameras", str(scene), str(dev), [str(root / f) for f in g["file"]])
            for (scene, dev), g in man.groupby(["scene", "device"])]


def dresden_sets(root: Path) -> list[tuple[str, str, str, list[str]]]:
    out = []
    for scene in ("flatfield", "natural"):
        paths = sorted((root / scene).glob("*.JPG"))
        for dev in sorted({"_".join(p.name.split("_")[:3]) for p in paths}):  # Nikon_D70s_1
            out.append(("dresden", scene, dev, [str(p) for p in paths if p.name.startswith(dev + "_")]))
    return out


def sim_data_sets(root: Path) -> list[tuple[str, str, str, list[str]]]:
    sol = read_solution(root / SOLUTION)
    sol = sol[sol["fname"].str.endswith("_unalt.tif")]
    out = []
    for cls in sorted(sol["camera"].unique()):
        out.append(("sim_data", "train(A)", f"{cls}_A", sorted(str(p) for p in (root / TRAIN_DIR / cls).glob("*.jpg"))))
        out.append(("sim_data", "test_unalt(B)", f"{cls}_B",
                    sorted(str(root / TEST_DIR / f) for f in sol.loc[sol["camera"] == cls, "fname"])))
    return out


def _residuals_of_path(job: tuple[str, tuple[int, ...]]) -> dict[int, np.ndarray]:
    path, crops = job
    img = images.read_image(path)
    return {c: prnu.crop_residuals([img], c)[0] for c in crops if min(img.shape[:2]) >= c}


def _residuals_of_sim(job: tuple[dict, int, str, int, tuple[int, ...]]) -> dict[int, np.ndarray]:
    opts, c, device, i, crops = job
    model = camera.make_models(opts["n_classes"], opts["seed"])[c]
    data = (camera.flat_field(model, device, i, max(crops), opts["seed"]) if opts["flat"] else
            camera.shoot(model, device, i, opts["width"], opts["height"], opts["seed"]))
    img = images.decode_bytes(data)
    return {k: prnu.crop_residuals([img], k)[0] for k in crops if min(img.shape[:2]) >= k}


def pairs_for(sets: list[tuple[str, str, str, list]], residuals: list[list[dict[int, np.ndarray]]],
              crops: tuple[int, ...]) -> pd.DataFrame:
    """Same-device pairs within each set; different-device pairs across the sets of one source and scene."""
    frames = []
    flat = [(src, scene, dev, res) for (src, scene, dev, _), per in zip(sets, residuals, strict=True) for res in per]
    for crop in crops:
        by_group: dict[tuple[str, str], list[tuple[str, np.ndarray]]] = {}
        for src, scene, dev, res in flat:
            if crop in res:
                by_group.setdefault((src, scene), []).append((dev, res[crop]))
        for (src, scene), items in by_group.items():
            devs = [d for d, _ in items]
            table = prnu.residual_ncc_pairs(np.stack([r for _, r in items]), devs)
            frames.append(table.assign(source=src, scene=scene, crop=crop))
    return pd.concat(frames, ignore_index=True)


def summarise(pairs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (src, scene, crop), g in pairs.groupby(["source", "scene", "crop"], sort=False):
        same = g[g["same_device"]]
        for dev, d in same.groupby("device_i"):
            rows.append({"source": src, "scene": scene, "crop": crop, "device": dev, "pairs": len(d),
                         "min": d["ncc"].min(), "median": d["ncc"].median(), "max": d["ncc"].max()})
        if len(same):
            rows.append({"source": src, "scene": scene, "crop": crop, "device": "(all same-device)",
                         "pairs": len(same), "min": same["ncc"].min(), "median": same["ncc"].median(),
                         "max": same["ncc"].max()})
        other = g[~g["same_device"]]
        if len(other):
            rows.append({"source": src, "scene": scene, "crop": crop, "device": "(different devices)",
                         "pairs": len(other), "min": other["ncc"].min(), "median": other["ncc"].median(),
                         "max": other["ncc"].max(), "std": other["ncc"].std()})
    return pd.DataFrame(rows)


def synthetic_probs(y: np.ndarray, k: int, accuracy: float, seed: int) -> np.ndarray:
    """A classifier of about ``accuracy`` top-1: the true class's logit raised by a bonus found by
    bisection, plus unit Gaussian noise (the same noise for every bonus)."""
    noise = np.random.default_rng(seed).standard_normal((len(y), k))
    lo, hi = 0.0, 10.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ((mid * np.eye(k)[y] + noise).argmax(1) == y).mean() < accuracy else (lo, mid)
    logits = hi * np.eye(k)[y] + noise
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def cluster_gain(data: Path, accuracy: float, seeds: int, cache: Path, workers: int) -> pd.DataFrame:
    """The ``+prnu`` step (default settings) on a simulated competition's test crops, refining a
    synthetic classifier of the given accuracy: the score before and after, and the clustering."""
    test, residuals = pc.test_residuals(data, cache, workers)
    truth = solution_labels(data)
    if truth is None:
        raise SystemExit(f"{data}: no {SOLUTION}")
    classes = sorted(truth.unique())
    y = np.array([classes.index(c) for c in truth.loc[test["fname"]]])
    manip = test["manip"].to_numpy()
    u = manip == 0
    rows = []
    for seed in range(seeds):
        probs = synthetic_probs(y, len(classes), accuracy, seed)
        res = pc.cluster_test(residuals.astype(np.float32), manip, probs, PrnuClusterConfig())
        after = pc.apply_clusters(probs, res).argmax(1)
        before = probs.argmax(1)
        members = [y[u][res.cluster_of_unalt == c] for c in np.unique(res.cluster_of_unalt)]
        acc = res.accepted
        rows.append({"data": str(data), "seed": seed, "acc": accuracy,
                     "score_before": weighted_score((before[u] == y[u]).mean(), (before[~u] == y[~u]).mean()),
                     "score_after": weighted_score((after[u] == y[u]).mean(), (after[~u] == y[~u]).mean()),
                     "purity": sum(np.bincount(m).max() for m in members) / u.sum(),
                     "coherent": int(res.cluster_ok.sum()), "confirmed_unalt": int(acc[u].sum()),
                     "confirmed_manip": int(acc[~u].sum()),
                     "confirmed_precision": float((res.label[acc] == y[acc]).mean()) if acc.any() else float("nan")})
    out = pd.DataFrame(rows)
    return out.assign(gain=out["score_after"] - out["score_before"])


def markdown(table: pd.DataFrame) -> str:
    cells = [["" if pd.isna(v) else f"{v:.4f}" if isinstance(v, float) else str(v) for v in row]
             for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", type=Path, help="real-camera folder with manifest.csv")
    ap.add_argument("--dresden", type=Path, help="Dresden folder with flatfield/ and natural/")
    ap.add_argument("--sim-data", type=Path, help="a simulated competition folder")
    ap.add_argument("--simulated", type=int, default=0, help="photos per device A and B rendered in memory")
    ap.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    ap.add_argument("--flat", type=int, default=0, help="mid-grey flat-fields per device B rendered in memory")
    ap.add_argument("--classes", type=int, default=0, help="--simulated: only the first N classes (0: all)")
    ap.add_argument("--cluster", type=Path, nargs="*", default=[],
                    help="simulated competitions: +prnu's gain on a synthetic classifier (no residual NCC)")
    ap.add_argument("--cluster-acc", type=float, default=0.6, help="--cluster: the classifier's top-1 accuracy")
    ap.add_argument("--cluster-seeds", type=int, default=3)
    ap.add_argument("--crops", default="256,512")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "prnu_strength")
    a = ap.parse_args(argv)
    crops = tuple(int(c) for c in a.crops.split(","))
    if a.cluster:
        gains = pd.concat([cluster_gain(d, a.cluster_acc, a.cluster_seeds, a.out / f"residuals{k}.npz", a.workers)
                           for k, d in enumerate(a.cluster)], ignore_index=True)
        write_csv(a.out / "cluster_gain.csv", gains)
        print(markdown(gains))
    frames = []
    path_sets: list[tuple[str, str, str, list]] = []
    if a.real:
        path_sets += real_sets(a.real)
    if a.dresden:
        path_sets += dresden_sets(a.dresden)
    if a.sim_data:
        path_sets += sim_data_sets(a.sim_data)
    if path_sets:
        jobs = [(p, crops) for *_, paths in path_sets for p in paths]
        flat = list(parallel_map(_residuals_of_path, jobs, a.workers, "residuals"))
        per, k = [], 0
        for *_, paths in path_sets:
            per.append(flat[k:k + len(paths)])
            k += len(paths)
        frames.append(pairs_for(path_sets, per, crops))
    # rendered in memory: flat-fields of device B, then photos of devices A and B
    for n, flat_fields in ((a.flat, True), (a.simulated, False)):
        if not n:
            continue
        cfg = load_config(a.config).simulate
        opts = {"n_classes": cfg.n_classes, "seed": cfg.seed, "width": cfg.width, "height": cfg.height,
                "flat": flat_fields}
        classes = camera.class_names(cfg.n_classes)[:a.classes or cfg.n_classes]
        scene, devices = ("flatfield", ("B",)) if flat_fields else (f"seed {cfg.seed}", camera.DEVICES)
        sets = [("simulated", scene, f"{cls}_{d}", [(c, d, i) for i in range(n)])
                for c, cls in enumerate(classes) for d in devices]
        sim_jobs = [(opts, c, d, i, crops) for *_, items in sets for c, d, i in items]
        label = "flat-fields" if flat_fields else "simulated"
        rendered = list(parallel_map(_residuals_of_sim, sim_jobs, a.workers, label))
        frames.append(pairs_for(sets, [rendered[k * n:(k + 1) * n] for k in range(len(sets))], crops))
    if not frames:
        if a.cluster:
            return 0
        ap.error("nothing to measure: pass --real, --dresden, --sim-data, --simulated, --flat or --cluster")
    pairs = pd.concat(frames, ignore_index=True)
    summary = summarise(pairs)
    write_csv(a.out / "pairs.csv", pairs)
    write_csv(a.out / "summary.csv", summary)
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

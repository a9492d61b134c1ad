"""Level-2 stackers trained on the OOF table (docs/recipe.md §7b): xgb, lgb, mlp.

Sample weights reproduce the metric (``metric_weights``: unaltered rows together 0.7,
manipulated rows 0.3) times the optional per-class weights.

Features per row: every model's class probabilities, optionally their logs
(``log(max(p, floor))``), and the ``manip`` flag. Target: the OOF label.

Each stacker is a bag: for every seed, the unique training images are split
into ``folds`` folds (stratified by class, every variant of an image in the
same fold, so the jpeg70 copy of a photo never scores the model that trained on
its unaltered copy); one model per (seed, fold) is trained on the other folds.
A row's stacker OOF prediction is the mean over seeds of the model that did
not see it; test rows get the mean over all seeds x folds models. The OOF
score of the output table is therefore an honest estimate of the stacker.

Models are saved in each library's native format (XGBoost JSON, LightGBM
text, MLP weights as ``.npz`` plus a JSON of its shape) under
``models/level2/<stacker>/``, with a ``manifest.json`` naming this run's files.
No pickle anywhere.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from ..config import PROB_FLOOR, StackConfig
from ..data.competition import MANIP_WEIGHT, UNALT_WEIGHT
from ..errors import StackError
from ..util.io import atomic_path, write_atomic, write_json
from ..util.log import stage_log
from .align import align_tables


def features(arrays: Sequence[np.ndarray], manip: np.ndarray, log: bool = True,
             floor: float = PROB_FLOOR) -> np.ndarray:
    """Columns: each model's probabilities, then (optionally) their logs, then manip."""
    parts = list(arrays)
    if log:
        parts += [np.log(np.clip(a, floor, None)) for a in arrays]
    parts.append(np.asarray(manip, dtype=np.float64)[:, None])
    return np.hstack(parts).astype(np.float32)


def stack_folds(fnames: Sequence[str] | np.ndarray, labels: Sequence[int] | np.ndarray, n_folds: int,
                seed: int) -> np.ndarray:
    """Fold id per row: unique images shuffled within each class, dealt round-robin."""
    frame = pd.DataFrame({"fname": np.asarray(fnames), "label": np.asarray(labels)})
    images = frame.drop_duplicates("fname").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    for _, grp in images.groupby("label", sort=True):
        offset = int(rng.integers(n_folds))  # so the small classes do not all fill fold 0 first
        for pos, f in enumerate(grp["fname"].to_numpy()[rng.permutation(len(grp))]):
            fold_of[f] = (pos + offset) % n_folds
    return frame["fname"].map(fold_of).to_numpy(dtype=np.int64)


def _threads(n: int) -> int:
    return n if n > 0 else (os.cpu_count() or 1)


# ---------------------------------------------------------------- learners
# Each learner: fit(X, y, w, k, seed, cfg) -> model; predict(model, X) -> (n, k); save(model, stem) -> path

def _xgb_fit(X, y, w, k, seed, cfg):
    import xgboost as xgb

    params = {"objective": "multi:softprob", "num_class": k, "eta": cfg.learning_rate,
              "max_depth": cfg.max_depth, "subsample": 0.8, "colsample_bytree": 0.5,
              "tree_method": "hist", "eval_metric": "mlogloss", "seed": seed,
              "nthread": _threads(cfg.threads)}
    return xgb.train(params, xgb.DMatrix(X, label=y, weight=w), num_boost_round=cfg.rounds)


def _xgb_predict(model, X):
    import xgboost as xgb

    return model.predict(xgb.DMatrix(X)).reshape(len(X), -1)


def _xgb_save(model, stem: Path) -> Path:
    raw = bytes(model.save_raw(raw_format="json"))  # loadable by Booster(model_file=...), never a pickle
    return write_atomic(stem.with_suffix(".json"), lambda tmp: tmp.write_bytes(raw))


def _lgb_fit(X, y, w, k, seed, cfg):
    import lightgbm as lgb

    params = {"objective": "multiclass", "num_class": k, "learning_rate": cfg.learning_rate,
              "max_depth": cfg.max_depth, "num_leaves": max(2, min(31, 2 ** cfg.max_depth)),
              "bagging_fraction": 0.8, "bagging_freq": 1, "feature_fraction": 0.5,
              "min_data_in_leaf": 5, "seed": seed, "deterministic": True, "force_row_wise": True,
              "num_threads": _threads(cfg.threads), "verbosity": -1}
    return lgb.train(params, lgb.Dataset(X, label=y, weight=w), num_boost_round=cfg.rounds)


def _lgb_predict(model, X):
    return np.asarray(model.predict(X)).reshape(len(X), -1)


def _lgb_save(model, stem: Path) -> Path:
    return write_atomic(stem.with_suffix(".txt"), lambda tmp: model.save_model(str(tmp)))


def _mlp_fit(X, y, w, k, seed, cfg):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(_threads(cfg.threads))  # tiny nets: extra threads only add overhead
    try:
        return _mlp_train(torch, X, y, w, k, seed, cfg)
    finally:
        torch.set_num_threads(threads)


def _mlp_train(torch, X, y, w, k, seed, cfg):
    torch.manual_seed(seed)
    mean, std = X.mean(axis=0), X.std(axis=0) + 1e-6  # logs span ~16 units, probabilities 1
    net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], cfg.mlp_hidden), torch.nn.ReLU(),
                              torch.nn.Dropout(0.2), torch.nn.Linear(cfg.mlp_hidden, k))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-5)
    xt = torch.from_numpy((X - mean) / std)
    yt, wt = torch.from_numpy(y.astype(np.int64)), torch.from_numpy(w.astype(np.float32))
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(cfg.mlp_epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(256):
            loss = (torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx], reduction="none") * wt[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    return {"net": net, "mean": mean, "std": std}


def _mlp_predict(model, X):
    import torch

    with torch.no_grad():
        logits = model["net"](torch.from_numpy(((X - model["mean"]) / model["std"]).astype(np.float32)))
        return torch.softmax(logits, dim=1).numpy().astype(np.float64)


def _mlp_save(model, stem: Path) -> Path:
    arrays = {f"param.{n}": p.detach().numpy() for n, p in model["net"].state_dict().items()}
    arrays.update(feature_mean=model["mean"], feature_std=model["std"])
    path = stem.with_suffix(".npz")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    net = model["net"]
    write_json(stem.with_suffix(".json"), {"layers": ["linear", "relu", "dropout0.2", "linear"],
                                           "inputs": net[0].in_features, "hidden": net[0].out_features,
                                           "classes": net[3].out_features})
    return path


LEARNERS: dict[str, tuple[Callable, Callable, Callable]] = {
    "xgb": (_xgb_fit, _xgb_predict, _xgb_save),
    "lgb": (_lgb_fit, _lgb_predict, _lgb_save),
    "mlp": (_mlp_fit, _mlp_predict, _mlp_save),
}


# ---------------------------------------------------------------- bagging

def class_weights(labels: np.ndarray, classes: Sequence[str], weights: Sequence[float]) -> np.ndarray:
    """Per-row sample weight from the configured per-class weights (empty: all 1)."""
    if not weights:
        return np.ones(len(labels), dtype=np.float64)
    if len(weights) != len(classes) or min(weights) <= 0:
        raise StackError(f"blend.stack.class_weights needs {len(classes)} positive numbers, one per class "
                         f"in order {list(classes)}; got {list(weights)}")
    return np.asarray(weights, dtype=np.float64)[labels]


def metric_weights(manip: np.ndarray, is_test: np.ndarray) -> np.ndarray:
    """Per-row weights under which the training rows count like the metric: all unaltered rows
    together weigh ``UNALT_WEIGHT``, all manipulated ones ``MANIP_WEIGHT`` (the OOF table holds
    several manipulated variants per unaltered photo, which unweighted would dominate the fit).
    Scaled to mean 1 over the training rows; test rows get 0."""
    manip = np.asarray(manip) == 1
    train = ~np.asarray(is_test, bool)
    w = np.zeros(len(manip))
    n_u, n_m = int((train & ~manip).sum()), int((train & manip).sum())
    if n_u:
        w[train & ~manip] = UNALT_WEIGHT / n_u
    if n_m:
        w[train & manip] = MANIP_WEIGHT / n_m
    total = w[train].sum()
    return w * (train.sum() / total) if total > 0 else w


# Below this many rows x models a bag trains in this process: at the demo's size (1,520 rows x 3
# models) two workers took 6.5 s for xgb where one process took 3.6 s (issue #23, 2 cores).
PARALLEL_MIN_ROW_MODELS = 50_000


def bag(kind: str, X: np.ndarray, y: np.ndarray, w: np.ndarray, fnames: Sequence[str] | np.ndarray,
        is_test: np.ndarray,
        k: int, cfg: StackConfig, base_seed: int, save_dir: Path | None = None) -> tuple[np.ndarray, dict]:
    """Seeds x folds models of ``kind``; returns probabilities for every row and what was done.

    The models train side by side on joblib's worker processes, as many as the cores hold at
    ``cfg.threads`` each (the default, all cores per model: one at a time, in this process), once
    the bag is large enough to repay the workers' start (``PARALLEL_MIN_ROW_MODELS``).
    Each model keeps its thread count and seed, and the predictions are summed in (seed, fold)
    order, so the result is byte-identical to training them one after the other."""
    if kind not in LEARNERS:
        raise StackError(f"unknown stacker {kind!r}; choose from {', '.join(LEARNERS)}")
    if cfg.folds < 2 or cfg.seeds < 1:
        raise StackError(f"blend.stack needs folds >= 2 and seeds >= 1 (got {cfg.folds}, {cfg.seeds})")
    fit, predict, save = LEARNERS[kind]
    train = np.flatnonzero(~is_test)
    test = np.flatnonzero(is_test)
    tasks = []
    for s in range(cfg.seeds):
        seed = base_seed + s
        fold = stack_folds(np.asarray(fnames)[train], y[train], cfg.folds, seed)
        for f in range(cfg.folds):
            tr, va = train[fold != f], train[fold == f]
            if len(va) == 0:
                continue
            # absolute: joblib's warm workers keep the working folder they started in
            stem = (save_dir / f"seed{s}_fold{f}").absolute() if save_dir is not None else None
            tasks.append((va, delayed(_bag_model)(fit, predict, save, X, y, w, tr, va, test, k, seed, cfg, stem)))
    jobs = max(1, min(len(tasks), (os.cpu_count() or 1) // _threads(cfg.threads)))
    if len(X) * len(tasks) < PARALLEL_MIN_ROW_MODELS:
        jobs = 1  # a worker's start and imports (1-10 s) would cost more than the models take
    results = Parallel(n_jobs=jobs, backend="loky")(task for _, task in tasks)
    out = np.zeros((len(X), k))
    seen = np.zeros(len(X))
    files, fold_scores = [], []
    for (va, _), (p_va, p_test, name) in zip(tasks, results, strict=True):
        out[va] += p_va
        seen[va] += 1
        fold_scores.append(float((p_va.argmax(axis=1) == y[va]).mean()))
        if len(test):
            out[test] += p_test
            seen[test] += 1
        if name is not None:
            files.append(name)
    out /= np.maximum(seen, 1)[:, None]
    out /= out.sum(axis=1, keepdims=True)
    return out, {"models": len(fold_scores), "fold_accuracy": fold_scores, "files": files}


def _bag_model(fit: Callable, predict: Callable, save: Callable, X: np.ndarray, y: np.ndarray, w: np.ndarray,
               tr: np.ndarray, va: np.ndarray, test: np.ndarray, k: int, seed: int, cfg: StackConfig,
               stem: Path | None) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """One model of a bag: its predictions for its held-out fold and the test rows, and its file."""
    model = fit(X[tr], y[tr], w[tr], k, seed, cfg)
    p_test = predict(model, X[test]) if len(test) else None
    return predict(model, X[va]), p_test, save(model, stem).name if stem is not None else None


def _sharpen(p: np.ndarray, power: float) -> np.ndarray:
    q = np.power(np.clip(p, 1e-12, None), power)
    return q / q.sum(axis=1, keepdims=True)


def match_sharpness(arrays: Sequence[np.ndarray], is_test: np.ndarray, manip: np.ndarray,
                    max_power: float = 8.0) -> tuple[list[np.ndarray], list[list[float]]]:
    """Test rows of each model raised to the power (renormalised) that gives them the OOF rows'
    mean top probability, per half (unaltered, manipulated); labels are never read.

    An OOF row comes from ONE fold model, a test row from the geometric mean of K, which is
    flatter where the fold models disagree: a stacker fitted on the sharp rows would meet test
    features it never saw (its tree thresholds sit at sharper values). Only sharpening is done
    (power in [1, ``max_power``]): a test row that is already as sharp is left alone. Returns
    the arrays and, per model, the power of each half."""
    out, powers = [], []
    for a in arrays:
        a = np.array(a, dtype=np.float64, copy=True)
        used = []
        for half in (0, 1):
            oof = ~is_test & (manip == half)
            test = is_test & (manip == half)
            power = 1.0
            if oof.any() and test.any():
                target = float(a[oof].max(axis=1).mean())

                def top(t: float, rows: np.ndarray = a[test]) -> float:
                    return float(_sharpen(rows, t).max(axis=1).mean())  # rises with t

                if top(1.0) < target:
                    lo, hi = 1.0, max_power
                    if top(max_power) <= target:
                        lo = hi
                    while hi - lo > 1e-3:
                        mid = 0.5 * (lo + hi)
                        lo, hi = (mid, hi) if top(mid) < target else (lo, mid)
                    power = hi
                a[test] = _sharpen(a[test], power)
            used.append(round(power, 4))
        out.append(a)
        powers.append(used)
    return out, powers


def run(kind: str, tables: dict[str, pd.DataFrame], settings: StackConfig, floor: float, seed: int,
        save_dir: Path) -> tuple[pd.DataFrame, dict]:
    """Train the ``kind`` stacker bag on aligned tables, saving its models under ``save_dir``;
    return its table (OOF + test rows) and what was done."""
    keys, arrays, classes = align_tables(tables)
    is_test = (keys["split"] == "test").to_numpy()
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index.get(lbl, 0) for lbl in keys["label"]], dtype=np.int64)  # test rows: dummy 0
    w = class_weights(y, classes, settings.class_weights) * metric_weights(keys["manip"].to_numpy(), is_test)
    powers = None
    if settings.match_sharpness:
        arrays, powers = match_sharpness(arrays, is_test, keys["manip"].to_numpy())
        stage_log("blend", f"{kind}: test rows sharpened to the OOF rows' mean top probability, powers "
                           f"(unaltered, manipulated) {dict(zip(tables, powers, strict=True))}")
    X = features(arrays, keys["manip"].to_numpy(), settings.log_features, floor)
    save_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    probs, info = bag(kind, X, y, w, keys["fname"].to_numpy(), is_test, len(classes), settings, seed, save_dir)
    info.update(stacker=kind, features=int(X.shape[1]), train_rows=int((~is_test).sum()), test_powers=powers,
                settings=dict(vars(settings)), model_dir=str(save_dir),
                train_seconds=round(time.perf_counter() - start, 3))
    write_json(save_dir / "manifest.json", {k: v for k, v in info.items() if k != "fold_accuracy"}
               | {"classes": classes, "inputs": list(tables)})
    stage_log("blend", f"{kind}: {info['models']} models in {info['train_seconds']:.1f} s -> {save_dir}")
    out = keys.copy()
    out[classes] = probs
    return out, info

"""Level 2: average probability tables, optionally equalise, or stack (`camid blend`).

Strategy names (one output table each, ``oof/blend/<strategy>.parquet``)::

    <base>[+<equaliser>]
    base      gmean | mean | rms | pmean<p>   (averages: power means of the models)
              xgb | lgb | mlp                  (stackers, see ``camid.stack``)
    equaliser greedy | hungarian | flow        (see ``camid.equalise``)

Averages are weighted power means per class, then rows are renormalised:
``mean`` p=1, ``rms`` p=2, ``gmean`` p=0 (the limit: exp of the mean log, with
probabilities clipped to ``floor`` so a single zero does not veto a class),
``pmean<p>`` any p (``pmean0.5``, ``pmean-1``). Equalised strategies store
one-hot rows (exact 0/1), so every stage reads decisions by argmax.

Tables are only combined when they describe the same thing: same class
columns in the same order, same (fname, aug) rows, same split, manip flag and
label per row. Anything else is a TableError naming the offending table.
"""
from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import equalise
from .errors import CamidError
from .io_utils import remove_stale_temps, sha256_file, stage_log
from .metrics import score_table
from .tables import KEY_COLUMNS, TableError, class_columns, read_table, sort_table, write_table
from .workspace import Workspace, add_common_arguments, resolve

AVERAGES = ("gmean", "mean", "rms")
STACKERS = ("xgb", "lgb", "mlp")
_POWERS = {"gmean": 0.0, "mean": 1.0, "rms": 2.0}
_PMEAN_RE = re.compile(r"^pmean(-?\d+(?:\.\d+)?)$")


class StrategyError(CamidError, ValueError):
    """A strategy name or blend setting that cannot be used."""


@dataclass(frozen=True)
class Strategy:
    name: str
    base: str  # gmean, mean, rms, pmean<p>, or a stacker name
    power: float | None  # power-mean exponent for averages, None for stackers
    equaliser: str | None

    @property
    def is_stacker(self) -> bool:
        return self.power is None


def parse_strategy(name: str) -> Strategy:
    """``'gmean+hungarian'`` -> Strategy(base='gmean', power=0, equaliser='hungarian')."""
    base, plus, eq = name.strip().partition("+")
    if plus and eq not in equalise.METHODS:
        raise StrategyError(f"strategy {name!r}: unknown equaliser {eq!r}; choose from {', '.join(equalise.METHODS)}")
    if base in _POWERS:
        return Strategy(name, base, _POWERS[base], eq or None)
    m = _PMEAN_RE.match(base)
    if m:
        return Strategy(name, base, float(m.group(1)), eq or None)
    if base in STACKERS:
        return Strategy(name, base, None, eq or None)
    raise StrategyError(f"unknown strategy {name!r}: base must be one of {', '.join(AVERAGES + STACKERS)} "
                        "or pmean<p>, optionally +greedy, +hungarian or +flow")


# ---------------------------------------------------------------- averaging

def power_mean(arrays: Sequence[np.ndarray], p: float, weights: Sequence[float] | None = None,
               floor: float = equalise.DEFAULT_FLOOR) -> np.ndarray:
    """Weighted power mean of probability arrays, rows renormalised to sum to 1."""
    stack = np.stack([np.asarray(a, dtype=np.float64) for a in arrays])
    w = np.ones(len(stack)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(stack),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights {list(w)} must be one non-negative number per table, not all zero")
    w = (w / w.sum())[:, None, None]
    if p == 0:
        out = np.exp((w * np.log(np.clip(stack, floor, None))).sum(axis=0))
    elif p < 0:  # a zero would be an infinite term: clip like the geometric mean
        out = (w * np.clip(stack, floor, None) ** p).sum(axis=0) ** (1.0 / p)
    else:
        out = (w * stack ** p).sum(axis=0) ** (1.0 / p)
    return out / out.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------- table alignment

def _same(a: pd.Series, b: pd.Series) -> bool:
    return len(a) == len(b) and bool((a.to_numpy() == b.to_numpy()).all())


def _differences(a: pd.Series, b: pd.Series) -> str:
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    return f"{len(only_a)} only in the first (e.g. {only_a[:3]}), {len(only_b)} only in this one (e.g. {only_b[:3]})"


def align_tables(tables: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, list[np.ndarray], list[str]]:
    """Check the tables describe the same rows; return (key columns, probability arrays, classes)."""
    if not tables:
        raise TableError("no tables to blend")
    names = list(tables)
    ref_name = names[0]
    ref = sort_table(tables[ref_name])
    classes = class_columns(ref)
    arrays = [ref[classes].to_numpy(dtype=np.float64)]
    for name in names[1:]:
        df = sort_table(tables[name])
        cls = class_columns(df)
        if cls != classes:
            how = "the same classes in a different order" if sorted(cls) == sorted(classes) else "different classes"
            raise TableError(f"{name}: {how} than {ref_name}: {cls} vs {classes}")
        if not _same(ref["fname"].drop_duplicates(), df["fname"].drop_duplicates()):
            raise TableError(f"{name}: file names differ from {ref_name}: "
                             f"{_differences(ref['fname'], df['fname'])}")
        ref_var = ref["fname"] + "|" + ref["aug"]
        var = df["fname"] + "|" + df["aug"]
        if not _same(ref_var, var):
            raise TableError(f"{name}: variants (fname, aug) differ from {ref_name}: {_differences(ref_var, var)}")
        for col in ("split", "manip", "label"):
            bad = ref[col].to_numpy() != df[col].to_numpy()
            if bad.any():
                raise TableError(f"{name}: column {col!r} differs from {ref_name} in {int(bad.sum())} rows, "
                                 f"e.g. {df.loc[bad, 'fname'].head(3).tolist()}")
        arrays.append(df[classes].to_numpy(dtype=np.float64))
    return ref[KEY_COLUMNS].reset_index(drop=True), arrays, classes


def blend_tables(tables: dict[str, pd.DataFrame], strategy: str | Strategy,
                 weights: Sequence[float] | None = None,
                 floor: float = equalise.DEFAULT_FLOOR) -> tuple[pd.DataFrame, dict]:
    """Average (and equalise) aligned tables; returns the new table and what was done."""
    st = parse_strategy(strategy) if isinstance(strategy, str) else strategy
    if st.is_stacker:
        raise StrategyError(f"{st.name}: stackers are trained by base_table (camid.stack), not blend_tables")
    keys, arrays, classes = align_tables(tables)
    t0 = time.perf_counter()
    out = keys.copy()
    out[classes] = power_mean(arrays, st.power, weights, floor)
    info = {"average_seconds": round(time.perf_counter() - t0, 4)}
    if st.equaliser:
        out, info["equalise"] = equalise.equalise_table(out, classes, st.equaliser, floor)
    return out, info


# ---------------------------------------------------------------- `camid blend`

def discover_models(oof_dir: Path, tta: str) -> list[str]:
    """Run names with a table ``oof/<run>.<tta>.parquet`` (blend outputs live in oof/blend/)."""
    suffix = f".{tta}.parquet"
    return sorted(p.name[: -len(suffix)] for p in oof_dir.glob(f"*{suffix}"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--strategies", default=None,
                        help="comma-separated strategies (default: config blend.strategies), "
                             "e.g. gmean,rms+hungarian,pmean0.5+flow")
    parser.add_argument("--models", default=None,
                        help="comma-separated run names (default: config blend.models, else every oof/*.<tta>.parquet)")
    parser.add_argument("--tta", default=None, help="which tables (default: config blend.tta, else predict.tta)")


def _resolve_inputs(args: argparse.Namespace, cfg, ws: Workspace) -> tuple[str, list[str], list[float] | None]:
    tta = args.tta or cfg.blend.tta or cfg.predict.tta
    models = args.models.split(",") if args.models else list(cfg.blend.models)
    weights = list(cfg.blend.weights) or None
    if weights is not None and len(weights) != len(models):
        raise StrategyError(f"blend.weights has {len(weights)} entries but {len(models)} models are blended "
                            f"({models}); list one weight per model in blend.models")
    if not models:
        models = discover_models(ws.oof, tta)
        if not models:
            raise TableError(f"no probability tables {ws.oof}/*.{tta}.parquet; run `camid predict` first")
    return tta, models, weights


def base_table(st: Strategy, tables: dict[str, pd.DataFrame], weights: list[float] | None,
               cfg, ws: Workspace) -> tuple[pd.DataFrame, dict]:
    """The strategy before equalisation: a weighted average or a trained stacker bag."""
    if st.is_stacker:
        from . import stack  # imported lazily: xgboost/lightgbm/torch are slow to load
        return stack.run(st.base, tables, cfg, ws)
    return blend_tables(tables, Strategy(st.base, st.base, st.power, None), weights, cfg.blend.floor)


def main(args: argparse.Namespace) -> int:
    cfg, ws = resolve(args)
    names = args.strategies.split(",") if args.strategies else list(cfg.blend.strategies)
    strategies = [parse_strategy(n) for n in names]  # fail on a typo before any work
    tta, models, weights = _resolve_inputs(args, cfg, ws)
    t0 = time.perf_counter()
    paths = {m: ws.table(m, tta) for m in models}
    tables = {m: read_table(p, cfg.classes) for m, p in paths.items()}
    for m, p in paths.items():
        stage_log("blend", f"read {p} ({len(tables[m])} rows)")
    align_tables(tables)  # refuse mismatched inputs before writing anything
    remove_stale_temps(ws.oof / "blend")  # left by a killed earlier run; never read, only clutter
    remove_stale_temps(ws.models / "level2", recursive=True)
    inputs = [{"model": m, "path": str(p), "sha256": sha256_file(p)} for m, p in paths.items()]
    read_seconds = round(time.perf_counter() - t0, 3)
    cache: dict[str, tuple[pd.DataFrame, dict]] = {}  # gmean and gmean+flow share one average
    for st in strategies:
        start = time.perf_counter()
        if st.base not in cache:
            cache[st.base] = base_table(st, tables, weights, cfg, ws)
        out, info = cache[st.base][0], dict(cache[st.base][1])
        classes = class_columns(out)
        if st.equaliser:
            out, info["equalise"] = equalise.equalise_table(out, classes, st.equaliser, cfg.blend.floor)
            for group, g in info["equalise"].items():
                if g["solver"] != st.equaliser:
                    stage_log("blend", f"{st.name}: {group} has {g['rows']} rows, above hungarian's "
                                       f"{equalise.HUNGARIAN_MAX_N}: solved by {g['solver']} (same optimum)")
        rep = score_table(out, classes)
        path = ws.oof / "blend" / f"{st.name}.parquet"
        meta = {"stage": "blend", "strategy": st.name, "base": st.base, "power": st.power,
                "equaliser": st.equaliser, "tta": tta, "inputs": inputs, "weights": weights,
                "floor": cfg.blend.floor, "config": cfg.name, "config_digest": cfg.digest(),
                "read_seconds": read_seconds, "seconds": round(time.perf_counter() - start, 3),
                "oof_score": rep.score, "oof_unalt": rep.acc_unalt, "oof_manip": rep.acc_manip, **info}
        write_table(out, path, classes, meta=meta)
        stage_log("blend", f"wrote {path} ({len(out)} rows; OOF score {rep.score:.4f}, "
                           f"{meta['seconds']:.2f} s)")
    return 0

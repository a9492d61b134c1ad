"""Level-2 strategies over probability tables: average, optionally equalise, or stack (``camid blend``).

Strategy names (one output table each, ``oof/blend/<strategy>.parquet``)::

    <base>[+match][+prnu][+<equaliser>]
    base      gmean | mean | rms | pmean<p>   (averages: power means of the models)
              xgb | lgb | mlp                  (stackers, see ``camid.level2.stack``)
    match     test crops whose sensor noise matches a training device's fingerprint
              take its class (``camid.level2.prnu_match``; finds nothing when the
              test devices are not training devices, as on Kaggle)
    prnu      test crops confirmed by their sensor-noise cluster take its class
              (``camid.level2.prnu_cluster``; valid when each class's test photos
              come from one device, as in the competition)
    equaliser greedy | hungarian | flow        (see ``camid.level2.equalise``)

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

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..config import REDUCTION_POWERS, Config
from ..errors import StrategyError, TableError
from ..infer.table import class_columns, read_table, write_table
from ..util.io import remove_stale_temps, sha256_file, write_csv
from ..util.log import stage_log
from ..workspace import Workspace
from . import equalise, prnu_cluster, prnu_match, stack
from .align import align_tables
from .average import power_mean
from .metrics import score_table

STACKERS: tuple[str, ...] = tuple(stack.LEARNERS)
_PMEAN_RE = re.compile(r"^pmean(-?\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class Strategy:
    name: str
    base: str  # gmean, mean, rms, pmean<p>, or a stacker name
    power: float | None  # power-mean exponent for averages, None for stackers
    equaliser: str | None
    prnu: bool = False  # PRNU test clustering before the equaliser
    match: bool = False  # PRNU matching against the training devices, before the clustering

    @property
    def is_stacker(self) -> bool:
        return self.power is None


def parse_strategy(name: str) -> Strategy:
    """``'gmean+prnu+hungarian'`` -> Strategy(base='gmean', power=0, equaliser='hungarian', prnu=True)."""
    base, *steps = name.strip().split("+")
    match = bool(steps) and steps[0] == "match"
    steps = steps[1:] if match else steps
    if "match" in steps:
        raise StrategyError(f"strategy {name!r}: match comes right after the base: <base>+match[+prnu][+<equaliser>]")
    prnu = bool(steps) and steps[0] == "prnu"
    rest = steps[1:] if prnu else steps
    if "prnu" in rest:
        raise StrategyError(f"strategy {name!r}: prnu comes before the equaliser: <base>+prnu+<equaliser>")
    if len(rest) > 1:
        raise StrategyError(f"strategy {name!r}: after the base come an optional +prnu and one optional equaliser")
    if rest and rest[0] not in equalise.METHODS:
        raise StrategyError(f"strategy {name!r}: unknown equaliser {rest[0]!r}; "
                            f"choose from {', '.join(equalise.METHODS)}")
    eq = rest[0] if rest else None
    if base in REDUCTION_POWERS:
        return Strategy(name, base, REDUCTION_POWERS[base], eq, prnu, match)
    m = _PMEAN_RE.match(base)
    if m:
        return Strategy(name, base, float(m.group(1)), eq, prnu, match)
    if base in STACKERS:
        return Strategy(name, base, None, eq, prnu, match)
    raise StrategyError(f"unknown strategy {name!r}: base must be one of {', '.join((*REDUCTION_POWERS, *STACKERS))} "
                        "or pmean<p>, optionally +match, then +prnu, then +greedy, +hungarian or +flow")


def blend_tables(tables: dict[str, pd.DataFrame], strategy: str | Strategy,
                 weights: Sequence[float] | None = None,
                 floor: float = equalise.DEFAULT_FLOOR) -> tuple[pd.DataFrame, dict]:
    """Average (and equalise) aligned tables; returns the new table and what was done."""
    st = parse_strategy(strategy) if isinstance(strategy, str) else strategy
    if st.power is None:
        raise StrategyError(f"{st.name}: stackers are trained by base_table (camid.level2.stack), not blend_tables")
    keys, arrays, classes = align_tables(tables)
    t0 = time.perf_counter()
    out = keys.copy()
    out[classes] = power_mean(arrays, st.power, weights, floor)
    info: dict[str, Any] = {"average_seconds": round(time.perf_counter() - t0, 4)}
    if st.equaliser:
        out, info["equalise"] = equalise.equalise_table(out, classes, st.equaliser, floor)
    return out, info


# ---------------------------------------------------------------- `camid blend`

def resolve_inputs(cfg: Config, ws: Workspace, models: Sequence[str] | None = None,
                   tta: str | None = None) -> tuple[str, list[str], list[float] | None]:
    """Which tables to blend (``None``: the config's choice) and their weights."""
    tta = tta or cfg.blend.tta or cfg.predict.tta
    models = list(models) if models else list(cfg.blend.models)
    weights = list(cfg.blend.weights) or None
    if weights is not None and len(weights) != len(models):
        raise StrategyError(f"blend.weights has {len(weights)} entries but {len(models)} models are blended "
                            f"({models}); list one weight per model in blend.models")
    if not models:
        models = ws.table_runs(tta)
        if not models:
            raise TableError(f"no probability tables {ws.oof}/*.{tta}.parquet; run `camid predict` first")
    return tta, models, weights


def base_table(st: Strategy, tables: dict[str, pd.DataFrame], weights: list[float] | None,
               cfg: Config, ws: Workspace) -> tuple[pd.DataFrame, dict]:
    """The strategy before equalisation: a weighted average or a trained stacker bag."""
    if st.is_stacker:
        return stack.run(st.base, tables, cfg.blend.stack, cfg.blend.floor, cfg.seed, ws.level2_dir(st.base))
    return blend_tables(tables, Strategy(st.base, st.base, st.power, None), weights, cfg.blend.floor)


def blend(cfg: Config, ws: Workspace, names: Sequence[str] | None = None, models: Sequence[str] | None = None,
          tta: str | None = None) -> list[str]:
    """Write ``oof/blend/<strategy>.parquet`` for every strategy (``None``: the config's); returns their names."""
    strategies = [parse_strategy(n) for n in (names or cfg.blend.strategies)]  # fail on a typo before any work
    tta, models, weights = resolve_inputs(cfg, ws, models, tta)
    t0 = time.perf_counter()
    paths = {m: ws.table(m, tta) for m in models}
    tables = {m: read_table(p, cfg.classes) for m, p in paths.items()}
    for m, p in paths.items():
        stage_log("blend", f"read {p} ({len(tables[m])} rows)")
    align_tables(tables)  # refuse mismatched inputs before writing anything
    remove_stale_temps(ws.blend_dir)  # left by a killed earlier run; never read, only clutter
    remove_stale_temps(ws.level2, recursive=True)
    inputs = [{"model": m, "path": str(p), "sha256": sha256_file(p)} for m, p in paths.items()]
    read_seconds = round(time.perf_counter() - t0, 3)
    cache: dict[str, tuple[pd.DataFrame, dict]] = {}  # gmean and gmean+flow share one average
    refined: dict[str, tuple[pd.DataFrame, dict, pd.DataFrame]] = {}  # gmean+prnu, gmean+prnu+greedy: one decision
    structures: dict[str, prnu_cluster.Structure] = {}  # and one clustering for every base
    matched: dict[str, tuple[pd.DataFrame, dict, pd.DataFrame]] = {}  # gmean+match*: one matching per base
    evidence: dict[str, prnu_match.Evidence | None] = {}  # and one scoring of the test crops for every base
    for st in strategies:
        start = time.perf_counter()
        if st.base not in cache:
            cache[st.base] = base_table(st, tables, weights, cfg, ws)
        out, info = cache[st.base][0], dict(cache[st.base][1])
        classes = class_columns(out)
        if st.match:
            if st.base not in matched:
                matched[st.base] = prnu_match.refine_table(out, classes, ws.data_dir, ws.match_fingerprints,
                                                           cfg.blend.match, cfg.blend.floor, evidence)
            out, info["match"], report = matched[st.base]
            if len(report):
                write_csv(ws.match_report(st.name), report)
        if st.prnu:
            key = f"{st.base}+match" if st.match else st.base
            if key not in refined:
                refined[key] = prnu_cluster.refine_table(out, classes, ws.data_dir, ws.prnu_residuals,
                                                         cfg.blend.prnu, cfg.blend.floor, structures)
            out, info["prnu"], report = refined[key][0], refined[key][1], refined[key][2]
            if len(report):
                write_csv(ws.prnu_report(st.name), report)
        if st.equaliser:
            out, info["equalise"] = equalise.equalise_table(out, classes, st.equaliser, cfg.blend.floor)
            for group, g in info["equalise"].items():
                if g["solver"] != st.equaliser:
                    stage_log("blend", f"{st.name}: {group} has {g['rows']} rows, above hungarian's "
                                       f"{equalise.HUNGARIAN_MAX_N}: solved by {g['solver']} (same optimum)")
        rep = score_table(out, classes)
        path = ws.blend_table(st.name)
        meta = {"stage": "blend", "strategy": st.name, "base": st.base, "power": st.power,
                "equaliser": st.equaliser, "prnu": st.prnu, "match": st.match, "tta": tta, "inputs": inputs,
                "weights": weights,
                "floor": cfg.blend.floor, "config": cfg.name, "config_digest": cfg.digest(),
                "read_seconds": read_seconds, "seconds": round(time.perf_counter() - start, 3),
                "oof_score": rep.score, "oof_unalt": rep.acc_unalt, "oof_manip": rep.acc_manip, **info}
        write_table(out, path, classes, meta=meta)
        stage_log("blend", f"wrote {path} ({len(out)} rows; OOF score {rep.score:.4f}, "
                           f"{meta['seconds']:.2f} s)")
    return [st.name for st in strategies]

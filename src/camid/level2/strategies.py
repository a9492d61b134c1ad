"""Level-2 strategies over probability tables: average, optionally equalise, or stack (``camid blend``).

Strategy names (one output table each, ``oof/blend/<strategy>.parquet``)::

    <base>[+match][+prnu][+<equaliser>]
    base      gmean | mean | rms | pmean<p>   (averages: power means of the models)
              xgb | lgb | mlp                  (stackers, see ``camid.level2.stack``)
    match     test crops whose sensor noise matches a training device's fingerprint
              take its class (``camid.level2.prnu_match``; finds nothing when the
              test devices are not training devices, as on Kaggle)
    prnu      test crops confirmed by their sensor-noise cluster take its class
              (``camid.level2.prnu_cluster``; changes nothing when the clusters
              are not coherent or their names not stable)
    equaliser greedy | hungarian | flow        (see ``camid.level2.equalise``; balanced
              test quotas only with ``blend.balanced_test``)

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import PROB_FLOOR, REDUCTION_POWERS, Config
from ..data.compose import one_test_device_per_class
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
    steps: tuple[str, ...] = ()  # the POST_STEPS kinds it runs after its base, in order
    tokens: tuple[str, ...] = ()  # how the name spells each step ("prnu", "hungarian")

    @property
    def is_stacker(self) -> bool:
        return self.power is None

    @property
    def match(self) -> bool:
        return "match" in self.steps

    @property
    def prnu(self) -> bool:
        return "prnu" in self.steps

    def before_decisions(self) -> str:
        """The strategy's name without the steps that write one-hot decisions (its equaliser): the
        last of its forms whose test rows are still probabilities."""
        kept = [t for k, t in zip(self.steps, self.tokens, strict=True) if not POST_STEPS[k].one_hot]
        return "+".join([self.base, *kept])

def _step_kind(token: str) -> str | None:
    """Which post-step a name token stands for (None: none)."""
    return next((kind for kind, step in POST_STEPS.items() if token in step.tokens), None)


def parse_strategy(name: str) -> Strategy:
    """``'gmean+prnu+hungarian'`` -> Strategy(base='gmean', power=0, equaliser='hungarian', prnu=True).

    After the base come optional post-steps, each at most once, in ``POST_STEPS`` order."""
    base, *tokens = name.strip().split("+")
    kinds: list[str] = []
    for token in tokens:
        kind = _step_kind(token)
        if kind is None:
            raise StrategyError(f"strategy {name!r}: unknown step {token!r}; after the base come "
                                f"{', '.join('+' + k for k in POST_STEPS if k != 'equalise')} and one equaliser "
                                f"({', '.join(POST_STEPS['equalise'].tokens)}), in that order")
        if kinds and list(POST_STEPS).index(kind) <= list(POST_STEPS).index(kinds[-1]):
            if kind == kinds[-1]:
                raise StrategyError(f"strategy {name!r}: after the base each step comes at most once "
                                    "(one equaliser)")
            order = "".join("+" + s.label for s in POST_STEPS.values())
            raise StrategyError(f"strategy {name!r}: {POST_STEPS[kind].label} comes before the "
                                f"{POST_STEPS[kinds[-1]].label}: <base>{order}")
        kinds.append(kind)
    eq = next((t for t in tokens if _step_kind(t) == "equalise"), None)
    if base in REDUCTION_POWERS:
        return Strategy(name, base, REDUCTION_POWERS[base], eq, tuple(kinds), tuple(tokens))
    m = _PMEAN_RE.match(base)
    if m:
        return Strategy(name, base, float(m.group(1)), eq, tuple(kinds), tuple(tokens))
    if base in STACKERS:
        return Strategy(name, base, None, eq, tuple(kinds), tuple(tokens))
    raise StrategyError(f"unknown strategy {name!r}: base must be one of {', '.join((*REDUCTION_POWERS, *STACKERS))} "
                        "or pmean<p>, optionally +match, then +prnu, then +greedy, +hungarian or +flow")


def blend_tables(tables: dict[str, pd.DataFrame], strategy: str | Strategy,
                 weights: Sequence[float] | None = None,
                 floor: float = PROB_FLOOR, balanced_test: bool = True) -> tuple[pd.DataFrame, dict]:
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
        out, info["equalise"] = equalise.equalise_table(out, classes, st.equaliser, floor, balanced_test)
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


@dataclass
class BlendRun:
    """What the post-steps of one ``camid blend`` share: the base tables (every base of the
    configured strategies, computed once), one PRNU decision per base, one clustering."""

    cfg: Config
    ws: Workspace
    bases: dict[str, tuple[pd.DataFrame, dict]]
    refined: dict[str, tuple[pd.DataFrame, dict, pd.DataFrame]] = field(default_factory=dict)
    structures: dict[str, prnu_cluster.Structure] = field(default_factory=dict)
    matched: dict[str, tuple[pd.DataFrame, dict, pd.DataFrame]] = field(default_factory=dict)  # one per base
    evidence: dict[str, prnu_match.Evidence | None] = field(default_factory=dict)  # one scoring of the test crops
    one_device: tuple[bool, str] | None = None  # one_device_per_class, resolved once per run


def _match_step(run: BlendRun, st: Strategy, out: pd.DataFrame, info: dict) -> pd.DataFrame:
    if st.base not in run.matched:
        run.matched[st.base] = prnu_match.refine_table(out, class_columns(out), run.ws.data_dir,
                                                       run.ws.match_fingerprints, run.cfg.blend.match,
                                                       run.cfg.blend.floor, run.evidence)
    matched, info["match"], report = run.matched[st.base]
    if len(report):
        write_csv(run.ws.step_report(st.name, "match"), report)
    return matched


# The post-steps whose decisions are sensor evidence (their per-crop reports say which crops they decided).
SENSOR_STEPS = ("match", "prnu")


def confirmed_by_sensor(ws: Workspace, strategy: str) -> dict[str, set[str]]:
    """The test crops whose class a sensor step of ``strategy`` decided, per step, from the
    per-crop reports blend wrote (``ws.step_report``): ``+match``, a PCE against a training
    device (``decided_by``); ``+prnu``, a named sensor cluster (``accepted``)."""
    kinds = [k for k in SENSOR_STEPS if k in parse_strategy(strategy).steps]
    if not kinds:
        raise StrategyError(f"{strategy!r} has no sensor step (+match or +prnu), so no crop of it is confirmed")
    found: dict[str, set[str]] = {}
    for kind in kinds:
        path = ws.step_report(strategy, kind)
        if not path.is_file():
            raise StrategyError(f"no per-crop report {path} of {strategy}'s +{kind}: run `camid blend` for it")
        report = pd.read_csv(path)
        column = "decided_by" if kind == "match" else "accepted"
        if "fname" not in report or column not in report:
            raise TableError(f"{path}: expected the columns fname and {column}, got {list(report.columns)}")
        hit = report[column] == prnu_match.DECIDED_MATCH if kind == "match" else report[column].astype(bool)
        found[kind] = set(report.loc[hit, "fname"])
    return found


def one_device_per_class(cfg: Config, data_dir: Path) -> tuple[bool, str]:
    """Whether the ``+prnu`` step may take the test to hold one device of each class, and why:
    ``blend.prnu.one_device_per_class`` when set; else a declared balanced test (the competition's
    design), or a composition whose marker records one known test device for every class."""
    setting = cfg.blend.prnu.one_device_per_class
    if setting is not None:
        return setting, f"blend.prnu.one_device_per_class: {str(setting).lower()}"
    if cfg.blend.balanced_test:
        return True, "blend.balanced_test: the competition's design, one device per class"
    if one_test_device_per_class(data_dir):
        return True, "camid compose put one known device of every class in the test"
    return False, "not known to hold one device per class"


def _prnu_step(run: BlendRun, st: Strategy, out: pd.DataFrame, info: dict) -> pd.DataFrame:
    key = f"{st.base}+match" if st.match else st.base
    if run.one_device is None:
        run.one_device = one_device_per_class(run.cfg, run.ws.data_dir)
        naming = "one class per sensor" if run.one_device[0] else \
            "each by its own best class (a class may have several sensors)"
        stage_log("blend", f"+prnu: sensor clusters named {naming}: {run.one_device[1]}")
    one = run.one_device[0]
    if key not in run.refined:
        # the clusters are named by every base of the blend, so every +prnu strategy confirms the same names
        run.refined[key] = prnu_cluster.refine_table(
            out, class_columns(out), run.ws.data_dir, run.ws.prnu_residuals, run.cfg.blend.prnu, run.cfg.blend.floor,
            run.structures, evidence=[t for t, _ in run.bases.values()], balanced=run.cfg.blend.balanced_test,
            one_device=one)
    refined, info["prnu"], report = run.refined[key]
    if len(report):
        write_csv(run.ws.step_report(st.name, "prnu"), report)
    return refined


def _equalise_step(run: BlendRun, st: Strategy, out: pd.DataFrame, info: dict) -> pd.DataFrame:
    if st.equaliser is None:
        raise StrategyError(f"{st.name}: an equalise step without an equaliser")
    out, info["equalise"] = equalise.equalise_table(out, class_columns(out), st.equaliser, run.cfg.blend.floor,
                                                    run.cfg.blend.balanced_test)
    for group, g in info["equalise"].items():
        if g["solver"] == "argmax":
            stage_log("blend", f"{st.name}: {group} keeps the base's classes (blend.balanced_test is false: "
                               "no quota is known for the test)")
        elif g["solver"] != st.equaliser:
            stage_log("blend", f"{st.name}: {group} has {g['rows']} rows, above hungarian's "
                               f"{equalise.HUNGARIAN_MAX_N}: solved by {g['solver']} (same optimum)")
    return out


def _recorded(shown: Callable[[dict], str], default: str) -> Callable[[Config, dict], tuple[bool, str]]:
    """A final rule for a step local CV cannot judge (it changes test rows only): taken when blend's
    record of it (``info[<kind>]`` of the base's form with the step) shows its precondition."""
    def rule(cfg: Config, info: dict) -> tuple[bool, str]:
        why = shown(info)
        return (True, why) if why else (False, info.get("skipped") or default)
    return rule


def _balanced(cfg: Config, info: dict) -> tuple[bool, str]:
    return cfg.blend.balanced_test, ("blend.balanced_test: every class has the same share of the test"
                                     if cfg.blend.balanced_test else "blend.balanced_test is false: no quota is known")


@dataclass(frozen=True)
class PostStep:
    """A level-2 step after a strategy's base: how names spell it, what it does, and when
    ``submissions/final.csv`` takes it (``level2.submission.pick_final``)."""

    label: str  # how messages name it
    tokens: tuple[str, ...]  # the name tokens that select it: ``+<token>``
    run: Callable[[BlendRun, Strategy, pd.DataFrame, dict], pd.DataFrame]
    # (taken, why) for the final submission, from the config and blend's record of the step
    final: Callable[[Config, dict], tuple[bool, str]]
    reads_record: bool = True  # final needs the record: a base without the step blended cannot take it
    one_hot: bool = False  # writes one-hot decisions: confidences come from the steps before it


# The post-steps after a strategy's base, in the order they run and are named (<base>+prnu+<equaliser>).
POST_STEPS: dict[str, PostStep] = {
    # a PCE above the decision threshold with a margin over every other device is decisive
    # evidence (it never fires when the test devices are not training devices)
    "match": PostStep("match", ("match",), _match_step, _recorded(
        lambda i: f"{i['matched']} test crop(s) matched a training device" if i.get("matched") else "",
        "no test crop matched a training device")),
    "prnu": PostStep("prnu", ("prnu",), _prnu_step, _recorded(
        lambda i: f"{i.get('usable_clusters')} coherent sensor cluster(s) with stable names; "
                  f"{i.get('accepted')} test crops confirmed" if i.get("applied") else "",
        "the clustering was not applied")),
    "equalise": PostStep("equaliser", equalise.METHODS, _equalise_step, _balanced, reads_record=False, one_hot=True),
}


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
    run = BlendRun(cfg, ws, {})
    seconds: dict[str, float] = {}
    for st in strategies:  # every base first: the +prnu step names its clusters by all of them
        if st.base not in run.bases:
            start = time.perf_counter()
            run.bases[st.base] = base_table(st, tables, weights, cfg, ws)
            seconds[st.base] = time.perf_counter() - start
    for st in strategies:
        start = time.perf_counter() - seconds.pop(st.base, 0.0)
        out, info = run.bases[st.base][0], dict(run.bases[st.base][1])
        classes = class_columns(out)
        for kind in st.steps:
            out = POST_STEPS[kind].run(run, st, out, info)
        rep = score_table(out, classes)
        path = ws.blend_table(st.name)
        meta = {"stage": "blend", "strategy": st.name, "base": st.base, "power": st.power,
                "equaliser": st.equaliser, "prnu": st.prnu, "match": st.match, "tta": tta, "inputs": inputs,
                "weights": weights,
                "floor": cfg.blend.floor, "balanced_test": cfg.blend.balanced_test,
                "config": cfg.name, "config_digest": cfg.digest(),
                "read_seconds": read_seconds, "seconds": round(time.perf_counter() - start, 3),
                "oof_score": rep.score, "oof_unalt": rep.acc_unalt, "oof_manip": rep.acc_manip, **info}
        write_table(out, path, classes, meta=meta)
        stage_log("blend", f"wrote {path} ({len(out)} rows; OOF score {rep.score:.4f}, "
                           f"{meta['seconds']:.2f} s)")
    return [st.name for st in strategies]

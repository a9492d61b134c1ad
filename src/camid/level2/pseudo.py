"""Balanced pseudo-labels for a second training round (docs/recipe.md §9a; ``camid pseudo``).

The 2nd place's ``init_train -> make_pseudo -> final_train``: the test photos come from a
second device of each model, so the most confident test crops, labelled by the equalised
ensemble, teach the same backbones what that device looks like. The selection is balanced:
per class, separately for ``_unalt`` and ``_manip`` crops (the competition's halves), the
``per_class`` most confident crops the level-2 strategy assigned to that class (default:
``fraction`` of the class's share of the half: 105 of 132 in the 2nd place's run), never one
below ``min_confidence``. Only test crops are chosen: no training photo, hence no OOF row,
can enter the next round's training twice.

Labels come from ``pseudo.strategy``'s table (default ``final``: the strategy of
``submissions/final.csv``, the best local CV among ``*+prnu+hungarian``); confidences
from the same strategy before its equaliser (``gmean+prnu``), whose table must exist too,
because an equalised table holds one-hot decisions. A crop confirmed by PRNU clustering
carries probability ~1 there, so confirmed crops come first.

The confidence is calibrated on the OOF rows of the same table (labels known; level 2 changes
only test rows): the precision as a function of the confidence, isotonic, per half, gives the
selection's expected precision. Below ``pseudo.min_expected_precision`` only the surest crops
are kept, as many as keep the expectation at that level (``surest_reaching``; the crops the
sensor-noise steps confirmed come first), and none when even the surest is below: more wrong
labels than right ones would teach round 2 the wrong cameras (on real photos the audit of
issue #21 measured 0.463). The OOF photos come from the training devices, so the expectation is
an upper bound on the test device. With ``pseudo.confirmed_only`` only the crops a sensor step
confirmed are candidates (``strategies.confirmed_by_sensor``): on real photos the calibrated
selection still took half the unseen Nikons' labels wrong, the confirmed crops none.

The crops are cross-fitted (``data.pseudo``): each gets a group, a fold of the next round,
balanced per half and class.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd

from ..config import Config
from ..data.folds import fold_ids, read_folds
from ..data.layout import TEST_DIR, scan_test, solution_labels
from ..data.pseudo import write_pseudo
from ..errors import StrategyError, TableError, UsageError
from ..infer.table import class_columns, read_table
from ..util.io import write_json
from ..util.log import stage_log
from ..workspace import Workspace
from .strategies import SENSOR_STEPS, confirmed_by_sensor, parse_strategy
from .submission import pick_final


def confidence_strategy(name: str) -> str:
    """The strategy whose probabilities rank the crops: ``name`` without its equaliser."""
    return parse_strategy(name).before_decisions()


def select(test: pd.DataFrame, classes: list[str], per_class: int | None, fraction: float,
           min_confidence: float, candidates: set[str] | None = None) -> pd.DataFrame:
    """Balanced choice from ``test`` (fname, manip, label, confidence): per half and class, the
    most confident crops given that class (ties: file name), ``per_class`` or ``fraction`` of
    the class's share of the half, none below ``min_confidence``; only ``candidates`` when given
    (the share is still the whole half's)."""
    chosen = []
    for half, flag in (("unalt", 0), ("manip", 1)):
        part = test[test["manip"] == flag]
        if part.empty:
            continue
        take = per_class if per_class is not None else max(1, math.floor(fraction * (len(part) // len(classes))))
        for cls in classes:
            cand = part[(part["label"] == cls) & (part["confidence"] >= min_confidence)]
            if candidates is not None:
                cand = cand[cand["fname"].isin(candidates)]
            cand = cand.sort_values(["confidence", "fname"], ascending=[False, True], kind="mergesort")
            chosen.append(cand.head(take).assign(half=half))
    return pd.concat(chosen, ignore_index=True) if chosen else test.head(0).assign(half="")


def isotonic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-decreasing least-squares fit of ``y`` on ``x`` (pool adjacent violators):
    ``(xs, fit)``, the sorted ``x`` and the fitted value at each."""
    order = np.argsort(x, kind="mergesort")
    xs, ys = np.asarray(x, float)[order], np.asarray(y, float)[order]
    means: list[float] = []
    sizes: list[int] = []
    for v in ys:
        means.append(v)
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            n = sizes[-2] + sizes[-1]
            means[-2:] = [(means[-2] * sizes[-2] + means[-1] * sizes[-1]) / n]
            sizes[-2:] = [n]
    return xs, np.repeat(means, sizes)


def precision_at(oof_conf: np.ndarray, oof_right: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """The OOF precision of a label given with confidence ``conf``: the isotonic fit of
    right/wrong on the OOF confidences, at the largest OOF confidence not above each ``conf``
    (below them all: the lowest fitted value)."""
    xs, fit = isotonic(oof_conf, oof_right)
    idx = np.searchsorted(xs, conf, side="right") - 1
    return fit[np.clip(idx, 0, len(fit) - 1)]


def crop_precision(oof: pd.DataFrame, classes: list[str], chosen: pd.DataFrame) -> np.ndarray:
    """Each chosen crop's expected precision, from the ``oof`` rows of the confidence table: a
    crop of each half by the OOF rows of that half (all rows if it has none)."""
    probs = oof[classes].to_numpy()
    conf, right = probs.max(axis=1), np.asarray(classes)[probs.argmax(axis=1)] == oof["label"].to_numpy()
    manip = oof["manip"].to_numpy()
    each = np.zeros(len(chosen))
    for half, flag in (("unalt", 0), ("manip", 1)):
        rows = (chosen["half"] == half).to_numpy()
        if rows.any():
            ref = manip == flag if (manip == flag).any() else np.ones(len(manip), bool)
            each[rows] = precision_at(conf[ref], right[ref], chosen["confidence"].to_numpy()[rows])
    return each


def expected_precision(oof: pd.DataFrame, classes: list[str], chosen: pd.DataFrame,
                       each: np.ndarray | None = None) -> dict[str, float]:
    """The chosen crops' expected precision, overall and per half (``crop_precision``, or ``each``)."""
    each = crop_precision(oof, classes, chosen) if each is None else each
    out: dict[str, float] = {}
    for half in ("unalt", "manip"):
        rows = (chosen["half"] == half).to_numpy()
        if rows.any():
            out[half] = round(float(each[rows].mean()), 4)
    if len(chosen):
        out["overall"] = round(float(each.mean()), 4)
    return out


def surest_reaching(each: np.ndarray, target: float) -> np.ndarray:
    """Positions of the largest set of crops whose mean expected precision reaches ``target``:
    the surest first (ties: position), so it is a prefix of the crops sorted by ``each``; empty
    when even the surest is below. A weak round 1 still gives round 2 its sure crops (those its
    sensor-noise steps confirmed, above all) instead of all or nothing."""
    order = np.argsort(-np.asarray(each, float), kind="mergesort")
    running = np.cumsum(np.asarray(each, float)[order]) / np.arange(1, len(order) + 1)
    # the running mean of a descending sequence never rises: the prefix ends at its last pass
    return np.sort(order[: int((running >= target - 1e-12).sum())])


def cross_fit_groups(chosen: pd.DataFrame, folds: list[int]) -> np.ndarray:
    """A fold per chosen crop: round-robin over the crops sorted by half, class and name, so every
    fold leaves out about the same share of each class and half. Deterministic."""
    order = chosen.sort_values(["half", "label", "fname"], kind="mergesort").index
    groups = pd.Series(np.asarray(folds)[np.arange(len(order)) % len(folds)], index=order)
    return groups.loc[chosen.index].to_numpy().astype(int)


def make_pseudo(cfg: Config, ws: Workspace) -> tuple[pd.DataFrame, dict]:
    """Write ``oof/pseudo-r<N>.csv`` from round N's level 2 (``ws.round``); returns it and a summary."""
    p = cfg.pseudo
    if p.strategy == "final":
        p = replace(p, strategy=pick_final(cfg, ws)[0])
    conf_name = confidence_strategy(p.strategy)
    tables = {}
    for name in dict.fromkeys([p.strategy, conf_name]):
        path = ws.blend_table(name)
        if not path.is_file():
            again = "camid blend" + ("" if ws.round == 1 else f" --round {ws.round}")
            raise StrategyError(f"pseudo.strategy {p.strategy!r} needs the level-2 table {path}: add {name!r} to "
                                f"blend.strategies and run `{again}`")
        tables[name] = read_table(path, cfg.classes)
    classes = class_columns(tables[p.strategy])
    lab, conf = (t[t["split"] == "test"].set_index("fname") for t in (tables[p.strategy], tables[conf_name]))
    if set(lab.index) != set(conf.index):
        raise TableError(f"{ws.blend_table(p.strategy)} and {ws.blend_table(conf_name)} hold different test files")
    label_idx = lab[classes].to_numpy().argmax(axis=1)
    conf = conf.loc[lab.index, classes].to_numpy()
    test = scan_test(ws.data_dir).set_index("fname")
    missing = sorted(set(lab.index) - set(test.index))
    if missing:
        raise TableError(f"the level-2 table lists test files that are not in {ws.data_dir / TEST_DIR}: {missing[:3]}")
    frame = pd.DataFrame({"fname": lab.index, "path": test.loc[lab.index, "path"].to_numpy(),
                          "label": np.asarray(classes)[label_idx], "manip": lab["manip"].to_numpy().astype(int),
                          "confidence": conf[np.arange(len(conf)), label_idx].round(6)})
    confirmed: dict[str, int] = {}
    sure: set[str] | None = None
    if p.confirmed_only and cfg.pseudo.strategy == "final" and not set(SENSOR_STEPS) & set(
            parse_strategy(p.strategy).steps):
        # final.csv took no sensor step (the clustering was not applied, nothing matched): nothing is confirmed
        sure = set()
        stage_log("pseudo", f"pseudo.confirmed_only: the final strategy {p.strategy} took no sensor step "
                            "(+match, +prnu), so no crop is confirmed")
    elif p.confirmed_only:
        by_step = confirmed_by_sensor(ws, p.strategy)
        sure = set().union(*by_step.values()) & set(frame["fname"])
        confirmed = {kind: len(f) for kind, f in by_step.items()}
        stage_log("pseudo", f"pseudo.confirmed_only: {len(sure)} of {len(frame)} test crops were confirmed by a "
                            f"sensor step of {p.strategy} (" + ", ".join(f"+{k} {n}" for k, n in confirmed.items())
                            + "); only they are candidates")
    folds = fold_ids(read_folds(ws.folds_csv, cfg.classes or classes))
    if len(folds) < 2:
        raise UsageError(f"pseudo-labels are cross-fitted over the next round's folds, and {ws.folds_csv} has "
                         f"{len(folds)}: use folds.mode kfold (a single model would predict the crops it trained on)")
    chosen = select(frame, classes, p.per_class, p.fraction, p.min_confidence, sure)
    oof = tables[conf_name][tables[conf_name]["split"] == "oof"]
    each = crop_precision(oof, classes, chosen)
    expected = expected_precision(oof, classes, chosen, each)
    info: dict = {"strategy": p.strategy, "confidence_from": conf_name, "round": ws.round,
                  **({"confirmed_by": confirmed} if p.confirmed_only else {}),
                  "expected_precision": expected, "min_expected_precision": p.min_expected_precision,
                  "note": "expected precision: the OOF precision at the chosen confidences; the OOF photos come "
                          "from the training devices, so on an unseen device it is an upper bound"}
    truth = solution_labels(ws.data_dir)
    if truth is not None and len(chosen) and set(chosen["fname"]) <= set(truth.index):
        right = chosen["label"].to_numpy() == truth.loc[chosen["fname"]].to_numpy()
        info["precision"] = round(float(right.mean()), 4)
        info["precision_per_half"] = {h: round(float(right[(chosen["half"] == h).to_numpy()].mean()), 4)
                                      for h in ("unalt", "manip") if (chosen["half"] == h).any()}
    none_confirmed = sure is not None and not sure
    gated = not none_confirmed and expected.get("overall", 0.0) < p.min_expected_precision
    if gated:  # the solution's precision (simulated data) stays, as the precision the gate turned down
        info["selected_before_gate"] = len(chosen)
        keep = surest_reaching(each, p.min_expected_precision)
        chosen = chosen.iloc[keep].reset_index(drop=True)
        info["kept_after_gate"] = len(chosen)
        if len(chosen):
            info["expected_precision_kept"] = expected_precision(oof, classes, chosen, each[keep])
            if truth is not None and set(chosen["fname"]) <= set(truth.index):
                info["precision_kept"] = round(float(
                    (chosen["label"].to_numpy() == truth.loc[chosen["fname"]].to_numpy()).mean()), 4)
    chosen = chosen.assign(group=cross_fit_groups(chosen, folds))
    out = write_pseudo(chosen, ws.pseudo_labels())
    counts = chosen.groupby(["half", "label"]).size().unstack(fill_value=0)
    info.update({"crops": len(chosen), "per_half": chosen.groupby("half").size().to_dict(),
                 "per_group": {str(k): int(n) for k, n in chosen.groupby("group").size().items()},
                 "min_per_class": int(counts.min().min()) if len(counts) else 0})
    write_json(ws.pseudo_summary(), info)
    halves = ", ".join(f"{h} {v:.3f}" for h, v in expected.items() if h != "overall")
    against = (f"; against the solution: precision {info['precision']:.3f} {info['precision_per_half']}"
               if "precision" in info else "")
    stage_log("pseudo", f"expected precision of the {info.get('selected_before_gate', len(chosen))} selected crops, "
                        f"from {conf_name}'s OOF rows: {expected.get('overall', float('nan')):.3f} ({halves}); "
                        "the OOF photos come from the training devices: on an unseen test device expect less"
                        + (against if gated else ""))
    if none_confirmed:
        stage_log("pseudo", f"no test crop was confirmed by a sensor step, and pseudo.confirmed_only takes no other: "
                            f"no crop selected, round 2 trains on the photos alone; wrote the empty {out}")
    elif gated and not len(chosen):
        stage_log("pseudo", f"{expected.get('overall', 0.0):.3f} is below pseudo.min_expected_precision "
                            f"{p.min_expected_precision:g}, and so is even the surest crop: no crop selected, round 2 "
                            f"would not help (it trains on the photos alone, as round 1 did); wrote the empty {out}")
    elif gated:
        kept = info["expected_precision_kept"]
        stage_log("pseudo", f"{expected.get('overall', 0.0):.3f} is below pseudo.min_expected_precision "
                            f"{p.min_expected_precision:g}: kept the {len(chosen)} surest of the "
                            f"{info['selected_before_gate']} crops, expected precision {kept['overall']:.3f} "
                            f"({', '.join(f'{h} {v:.3f}' for h, v in kept.items() if h != 'overall')})"
                            + (f"; against the solution: {info['precision_kept']:.3f}" if "precision_kept" in info
                               else ""))
        stage_log("pseudo", f"wrote {out}: {len(chosen)} test crops {info['per_half']}, "
                            f"cross-fitted over folds {folds}")
    else:
        stage_log("pseudo", f"read {ws.blend_table(p.strategy)} and {ws.blend_table(conf_name)}; wrote {out}: "
                            f"{len(chosen)} test crops {info['per_half']} (at least {info['min_per_class']} per "
                            f"class and half), cross-fitted over folds {folds}{against}")
    return chosen, info

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
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd

from ..config import Config
from ..data.layout import scan_test
from ..data.pseudo import write_pseudo
from ..errors import StrategyError, TableError
from ..infer.table import class_columns, read_table
from ..util.io import write_json
from ..util.log import stage_log
from ..workspace import Workspace
from .prnu_cluster import solution_labels
from .strategies import parse_strategy
from .submission import pick_final


def confidence_strategy(name: str) -> str:
    """The strategy whose probabilities rank the crops: ``name`` without its equaliser."""
    st = parse_strategy(name)
    return st.base + ("+match" if st.match else "") + ("+prnu" if st.prnu else "")


def select(test: pd.DataFrame, classes: list[str], per_class: int | None, fraction: float,
           min_confidence: float) -> pd.DataFrame:
    """Balanced choice from ``test`` (fname, manip, label, confidence): per half and class, the
    most confident crops given that class (ties: file name), ``per_class`` or ``fraction`` of
    the class's share of the half, none below ``min_confidence``."""
    chosen = []
    for half, flag in (("unalt", 0), ("manip", 1)):
        part = test[test["manip"] == flag]
        if part.empty:
            continue
        take = per_class if per_class is not None else max(1, math.floor(fraction * (len(part) // len(classes))))
        for cls in classes:
            cand = part[(part["label"] == cls) & (part["confidence"] >= min_confidence)]
            cand = cand.sort_values(["confidence", "fname"], ascending=[False, True], kind="mergesort")
            chosen.append(cand.head(take).assign(half=half))
    return pd.concat(chosen, ignore_index=True) if chosen else test.head(0).assign(half="")


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
        raise TableError(f"the level-2 table lists test files that are not in {ws.data_dir / 'test'}: {missing[:3]}")
    frame = pd.DataFrame({"fname": lab.index, "path": test.loc[lab.index, "path"].to_numpy(),
                          "label": np.asarray(classes)[label_idx], "manip": lab["manip"].to_numpy().astype(int),
                          "confidence": conf[np.arange(len(conf)), label_idx].round(6)})
    chosen = select(frame, classes, p.per_class, p.fraction, p.min_confidence)
    out = write_pseudo(chosen, ws.pseudo_labels())
    counts = chosen.groupby(["half", "label"]).size().unstack(fill_value=0)
    info: dict = {"strategy": p.strategy, "confidence_from": conf_name, "round": ws.round, "crops": len(chosen),
                  "per_half": chosen.groupby("half").size().to_dict(),
                  "min_per_class": int(counts.min().min()) if len(counts) else 0}
    truth = solution_labels(ws.data_dir)
    if truth is not None and len(chosen) and set(chosen["fname"]) <= set(truth.index):
        right = chosen["label"].to_numpy() == truth.loc[chosen["fname"]].to_numpy()
        info["precision"] = round(float(right.mean()), 4)
        info["precision_per_half"] = {h: round(float(right[(chosen["half"] == h).to_numpy()].mean()), 4)
                                      for h in ("unalt", "manip") if (chosen["half"] == h).any()}
    write_json(out.with_suffix(".json"), info)
    stage_log("pseudo", f"read {ws.blend_table(p.strategy)} and {ws.blend_table(conf_name)}; wrote {out}: "
                        f"{len(chosen)} test crops {info['per_half']} (at least {info['min_per_class']} per class "
                        f"and half)" + (f"; against the solution: precision {info['precision']:.3f} "
                                         f"{info['precision_per_half']}" if "precision" in info else ""))
    return chosen, info

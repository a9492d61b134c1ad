"""Submission CSVs (``camid submission``): one validated CSV per blend strategy, plus the score table.

For every ``oof/blend/<strategy>.parquet`` the test rows' argmax becomes
``submissions/<strategy>.csv`` with exactly the rows, in the order, of
``DATA/sample_submission.csv``. A strategy whose table lacks any of those files
is an error naming them: a partial submission is never written. Each strategy
also gets its local CV score (OOF rows, 0.7 unalt + 0.3 manip) and, when a
solution file exists, its test score; all go to ``submissions/scores.csv``.

``submissions/final.csv`` is the one a user sends (``pick_final``): the base (average or
stacker) of best local CV, then each step of ``blend.final`` (default ``+prnu+hungarian``) only
where the run shows what local CV cannot: ``+prnu`` when blend recorded a coherent clustering
with stable names, the equaliser when ``blend.balanced_test`` declares the test balanced. The
reasons go to ``final.json``. The choice never reads the test scores, so it is the choice a
Kaggle user makes before the leaderboard answers.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from ..config import Config
from ..data.layout import SAMPLE_SUBMISSION, SOLUTION, read_csv_strict, read_solution
from ..errors import StrategyError, SubmissionError, UsageError
from ..infer.table import class_columns, read_table, sidecar
from ..util.io import remove_stale_temps, write_csv, write_json
from ..util.log import stage_log
from ..workspace import Workspace
from .metrics import score_submission, score_table, validate_submission
from .strategies import POST_STEPS, parse_strategy

FINAL_RULE = ("the base of best local CV; +prnu only when its sensor clusters were coherent and their names stable; "
              "the equaliser only when blend.balanced_test")
SCORE_COLUMNS = ["strategy", "cv_score", "cv_unalt", "cv_manip", "n_oof",
                 "test_score", "test_unalt", "test_manip", "submission"]


def read_sample(path: str | Path) -> pd.DataFrame:
    """The sample submission: its fname column fixes the rows and their order."""
    sample = read_csv_strict(path, "sample submission")
    if "fname" not in sample.columns:
        raise SubmissionError(f"{path}: no fname column (got {list(sample.columns)})")
    if sample["fname"].duplicated().any():
        raise SubmissionError(f"{path}: duplicate file names, e.g. "
                              f"{sample.loc[sample['fname'].duplicated(), 'fname'].head(3).tolist()}")
    return sample


def make_submission(table: pd.DataFrame, classes: Sequence[str], fnames: Sequence[str],
                    name: str = "submission") -> pd.DataFrame:
    """Argmax of the test rows, in ``fnames`` order; refuses when any file has no prediction."""
    test = table[table["split"] == "test"]
    pred = pd.Series(np.asarray(classes, dtype=object)[test[list(classes)].to_numpy().argmax(axis=1)],
                     index=test["fname"].to_numpy())
    missing = [f for f in fnames if f not in pred.index]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise SubmissionError(f"{name}: no test prediction for {len(missing)} file(s) of the sample "
                              f"submission: {missing[:5]}{more}")
    sub = pd.DataFrame({"fname": list(fnames), "camera": pred.reindex(list(fnames)).to_numpy()})
    validate_submission(sub, fnames, classes, name)
    return sub


class FinalChoice(NamedTuple):
    strategy: str
    cv_score: float  # the local CV of the chosen strategy's base
    candidates: list[str]  # the configured strategies that have a table
    reasons: dict  # why this base and each of its steps (final.json)


def _sidecar(ws: Workspace, name: str) -> dict | None:
    meta = sidecar(ws.blend_table(name))
    if not (ws.blend_table(name).is_file() and meta.is_file()):
        return None
    return json.loads(meta.read_text())


def pick_final(cfg: Config, ws: Workspace) -> FinalChoice:
    """The final strategy, chosen without the test labels.

    Local CV is the base's OOF score on the TRAINING devices: it ranks the bases (averages,
    stackers) but cannot see what the test-only steps do. So: the base of best CV (a base's CV is
    its plain form's, else that of its form with the fewest steps: ``+prnu`` leaves OOF rows alone,
    an equaliser's OOF quotas come from the labels), then each step of ``blend.final`` only where
    the run shows its precondition: ``+prnu`` when blend recorded that the clustering was applied
    (coherent sensor clusters whose names were stable, ``prnu.applied``), an equaliser when the
    test is declared balanced (``blend.balanced_test``). The strategy is the configured form of
    that base with those steps (if it is not configured: its form with the most of them and no
    other, else with the fewest steps), ties to the first listed.
    """
    metas = {n: m for n in cfg.blend.strategies if (m := _sidecar(ws, n)) is not None}
    scored = {n: m for n, m in metas.items() if m.get("oof_score") is not None and np.isfinite(m["oof_score"])}
    if not scored:
        raise StrategyError(f"no level-2 table with a local CV score for any of {list(cfg.blend.strategies)} in "
                            f"{ws.blend_dir}: run `camid blend` first")
    forms: dict[str, list[str]] = {}
    for n in scored:
        forms.setdefault(parse_strategy(n).base, []).append(n)
    base_cv = {b: float(scored[min(f, key=lambda n: len(parse_strategy(n).steps))]["oof_score"])
               for b, f in forms.items()}
    base = max(base_cv, key=lambda b: base_cv[b])  # max keeps the first of equal scores
    wanted = parse_strategy("gmean" + cfg.blend.final).steps if cfg.blend.final else ()
    steps: dict[str, dict] = {}
    for kind in wanted:
        step = POST_STEPS[kind]
        # blend's record of the step: the sidecar of the base's form with it
        info = next((scored[n].get(kind) or {} for n in forms[base] if kind in parse_strategy(n).steps), None)
        if info is None and step.reads_record:
            steps[kind] = {"taken": False, "why": f"no {base}+{kind} strategy was blended"}
            continue
        taken, why = step.final(cfg, info or {})
        steps[kind] = {"taken": taken, "why": why}
    take = {k for k, v in steps.items() if v["taken"]}
    exact = [n for n in forms[base] if set(parse_strategy(n).steps) <= take]
    if exact:
        name = max(exact, key=lambda n: len(parse_strategy(n).steps))
    else:
        name = min(forms[base], key=lambda n: len(parse_strategy(n).steps))
    reasons = {"base": base, "base_cv": {b: round(v, 6) for b, v in base_cv.items()}, "steps": steps}
    if set(parse_strategy(name).steps) != take:
        reasons["note"] = f"{name} is the closest configured form of {base} to {base}{''.join('+' + k for k in take)}"
    return FinalChoice(name, base_cv[base], list(scored), reasons)


def list_strategies(ws: Workspace, spec: str | None, config_strategies: Sequence[str]) -> list[str]:
    """``None``/``all``: every table in oof/blend/; ``config``: the config's; else a comma list."""
    if spec in (None, "all"):
        names = ws.blend_strategies()
        if not names:
            raise UsageError(f"no blend tables in {ws.blend_dir}; run `camid blend` first")
        return names
    names = list(config_strategies) if spec == "config" else spec.split(",")
    absent = [n for n in names if not ws.blend_table(n).is_file()]
    if absent:
        raise UsageError(f"no blend table for strategy {absent} in {ws.blend_dir}; run `camid blend` for them")
    return names


def score_row(name: str, table: pd.DataFrame, classes: list[str], sub: pd.DataFrame,
              solution: pd.DataFrame | None, sub_path: Path | None) -> dict:
    cv = score_table(table, classes)
    row = {"strategy": name, "cv_score": cv.score, "cv_unalt": cv.acc_unalt, "cv_manip": cv.acc_manip,
           "n_oof": cv.n_unalt + cv.n_manip, "test_score": np.nan, "test_unalt": np.nan, "test_manip": np.nan,
           "submission": str(sub_path) if sub_path else ""}
    if solution is not None:
        test = score_submission(sub, solution, classes, name=name)
        row.update(test_score=test.score, test_unalt=test.acc_unalt, test_manip=test.acc_manip)
    return row


def write_submissions(cfg: Config, ws: Workspace, strategies: str | None = None,
                      solution_path: str | Path | None = None, score_only: bool = False) -> tuple[pd.DataFrame, bool]:
    """A validated ``submissions/<strategy>.csv`` per strategy and ``submissions/scores.csv``.

    ``strategies``: see ``list_strategies``; ``solution_path``: test scores (default:
    ``DATA/solution.csv`` when it exists); ``score_only``: write nothing. Returns the
    score table and whether it has test scores.
    """
    sample_path = ws.data_dir / SAMPLE_SUBMISSION
    fnames = read_sample(sample_path)["fname"].tolist()
    stage_log("submission", f"read {sample_path} ({len(fnames)} rows)")
    sol_path = Path(solution_path) if solution_path else ws.data_dir / SOLUTION
    solution = None
    if solution_path or sol_path.is_file():
        solution = read_solution(sol_path)
        stage_log("submission", f"read {sol_path} ({len(solution)} rows): test scores enabled")
    # Build, validate and score every submission before writing any: an error leaves no partial set.
    built, rows = [], []
    for name in list_strategies(ws, strategies, cfg.blend.strategies):
        table_path = ws.blend_table(name)
        table = read_table(table_path, cfg.classes)
        classes = class_columns(table)
        sub = make_submission(table, classes, fnames, str(table_path))
        out = None if score_only else ws.submission(name)
        built.append((table_path, sub, out))
        rows.append(score_row(name, table, classes, sub, solution, out))
    if not score_only:
        remove_stale_temps(ws.submissions)  # left by a killed earlier run
    for table_path, sub, out in built:
        if out is not None:
            write_csv(out, sub)
            stage_log("submission", f"read {table_path} -> wrote {out} ({len(sub)} rows)")
    scores = pd.DataFrame(rows, columns=SCORE_COLUMNS).sort_values(
        "cv_score", ascending=False, na_position="last", kind="mergesort", ignore_index=True)
    if not score_only:
        write_csv(ws.scores_csv, scores)
        stage_log("submission", f"wrote {ws.scores_csv}")
        subs = {r["strategy"]: b[1] for r, b in zip(rows, built, strict=True)}
        if any(s in subs for s in cfg.blend.strategies):
            choice = pick_final(cfg, ws)
            if choice.strategy in subs:
                write_csv(ws.final_submission, subs[choice.strategy])
                write_json(ws.final_choice,
                           {"strategy": choice.strategy, "cv_score": choice.cv_score, "rule": FINAL_RULE,
                            "candidates": choice.candidates, **choice.reasons})
                taken = [k for k, v in choice.reasons["steps"].items() if v["taken"]]
                stage_log("submission", f"final: {choice.strategy} (base {choice.reasons['base']}, best local CV "
                                        f"{choice.cv_score:.4f}; steps taken: {taken or 'none'}) -> wrote "
                                        f"{ws.final_submission}")
    return scores, solution is not None

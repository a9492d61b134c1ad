#!/bin/bash
# usage (from the repository root, after `PYTHONPATH=src PYTHONHASHSEED=0 python -m camid.bench.jpeg_phase.prep
# bench_out/phase_exp/data44 4 4`): src/camid/bench/jpeg_phase/run.sh zero|test data44 -> bench_out/phase_exp/work_MODE_data44;
# prints the test accuracy; then `PYTHONPATH=src python -m camid.bench.jpeg_phase.eval_phases bench_out/phase_exp/work_MODE_data44`
# scores the same run on crops at other phases.
set -e
cd "$(dirname "$0")/../../../.."
mode=$1; data=bench_out/phase_exp/$2; wd=bench_out/phase_exp/work_${mode}_$2
C="--config src/camid/bench/jpeg_phase/$mode.yaml --workdir $wd --data $data"
export PYTHONPATH=src
PY=${PYTHON:-.venv/bin/python}  # the project venv; PYTHON=... for another
start=$(date +%s)
$PY -m camid.cli folds $C
$PY -m camid.cli train-all $C
$PY -m camid.cli predict $C
$PY - "$wd" "$data" <<'PY'
import sys, pandas as pd
t = pd.read_parquet(f"{sys.argv[1]}/oof/camid_tiny.full.parquet")
truth = pd.read_csv(f"{sys.argv[2]}/truth.csv").set_index("fname")["camera"]
test = t[t["split"] == "test"].set_index("fname")
classes = [c for c in t.columns if c not in ("fname", "split", "fold", "manip", "aug", "label")]
pred = test[classes].idxmax(axis=1)
oof = t[t["split"] == "oof"]
print("RESULT", sys.argv[1], "test acc", round(float((pred == truth.loc[pred.index]).mean()), 4), "n", len(pred),
      "oof acc", round(float((oof[classes].idxmax(axis=1) == oof["label"]).mean()), 4), "n", len(oof))
PY
echo "seconds $(( $(date +%s) - start ))"

# Thin targets over `camid` subcommands. Each target builds/refreshes .venv from
# requirements.txt (runtime) and requirements-test.txt (tests, lint) first, so a fresh
# clone needs nothing but `make test` / `make demo`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
CONFIG ?= configs/demo.yaml
DATA ?= data/simulated
GPUS ?=
ROUND ?= 1
MESSAGE ?= camid $(notdir $(SUBMISSION))
# Where train-all / predict jobs run: local (this machine's GPUS), ray or slurm (README, "Many machines").
BACKEND ?= local
RAY_ADDRESS ?=
SLURM_PARTITION ?=
SLURM_GPUS ?=
SLURM_TIME ?=
BACKEND_ARGS = --backend $(BACKEND)$(if $(RAY_ADDRESS), --ray-address $(RAY_ADDRESS))$(if $(SLURM_PARTITION), \
	--slurm-partition $(SLURM_PARTITION))$(if $(SLURM_GPUS), --slurm-gpus-per-job $(SLURM_GPUS))$(if $(SLURM_TIME), \
	--slurm-time $(SLURM_TIME))
SUBMISSION ?= submissions/gmean+hungarian.csv
SOLUTION ?= $(DATA)/solution.csv
SIM_ARGS ?=
CAMID := $(VENV)/bin/camid
STAMP := $(VENV)/.installed

.PHONY: venv test lint demo data folds train-all predict pseudo blend submission score kaggle-data kaggle-submit compose real-bench \
	weights check bench bench-open-set filter-external robustness prnu prnu-dresden clean-outputs

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip setuptools wheel
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt -r requirements-test.txt
	$(VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP)

test: venv
	$(VENV)/bin/python -m pytest -q tests

# ruff (style, imports, bug patterns) and mypy (types) over src and tests; settings in pyproject.toml.
lint: venv
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy

data: venv
	$(CAMID) simulate $(DATA) --config $(CONFIG) $(SIM_ARGS)

# The config's ImageNet weights into its weights_dir, verified; WEIGHTS_ARGS e.g. "--base-url URL" (a mirror),
# "--from DIR" (a local copy) or "--sums FILE" (the mirror's own SHA-256 list).
weights: venv
	$(CAMID) weights fetch --config $(CONFIG) $(WEIGHTS_ARGS)

# Preflight before train-all: data, weights, GPUs, disk, jobs, estimated time; exits 1 on a blocker.
check: venv
	$(CAMID) check --config $(CONFIG) --data $(DATA) $(if $(GPUS),--gpus $(GPUS)) --backend $(BACKEND)

# Your own photos as a competition: SRC = <class>/* folders and/or manifest CSVs, OUT = the data folder.
compose: venv
	$(if $(and $(SRC),$(OUT)),,$(error make compose needs SRC= (folders and/or manifest CSVs) and OUT= (the data folder to write)))
	$(CAMID) compose $(SRC) --out $(OUT) $(COMPOSE_ARGS)

folds: venv
	$(CAMID) folds --config $(CONFIG) --data $(DATA)

train-all: venv
	$(CAMID) train-all --config $(CONFIG) --data $(DATA) --round $(ROUND) $(if $(GPUS),--gpus $(GPUS)) $(BACKEND_ARGS)

predict: venv
	$(CAMID) predict --config $(CONFIG) --data $(DATA) --round $(ROUND) $(if $(GPUS),--gpus $(GPUS)) $(BACKEND_ARGS)

blend: venv
	$(CAMID) blend --config $(CONFIG) --data $(DATA) --round $(ROUND)

submission: venv
	$(CAMID) submission --config $(CONFIG) --data $(DATA) --round $(ROUND)

# Balanced pseudo-labels from round $(ROUND)'s level 2, for `make train-all ROUND=$(ROUND)+1`.
pseudo: venv
	$(CAMID) pseudo --config $(CONFIG) --data $(DATA) --round $(ROUND)

# The competition on Kaggle through the official kaggle CLI (your own credentials, network).
kaggle-data: venv
	$(CAMID) kaggle download --data $(DATA)

kaggle-submit: venv
	$(CAMID) kaggle submit $(SUBMISSION) --message "$(MESSAGE)" --data $(DATA)

score: venv
	$(CAMID) score $(SUBMISSION) --solution $(SOLUTION)

bench: venv
	$(CAMID) bench

# Leave-one-class-out measurement of identify's unknown-camera rejection (BENCHMARKS.md);
# e.g. LOCO_ARGS="--held-out 0,4,8" or "--schedule short". Hours on a 2-core CPU.
bench-open-set: venv
	$(VENV)/bin/python -m camid.bench.open_set_loco --config $(CONFIG) --data $(DATA) $(LOCO_ARGS)

# With SRC (a real scrape): RULES defaults to configs/external_rules.yaml and OUT is required.
# Without SRC: the simulated pool of `camid simulate --external N` (make data with
# simulate.external_per_class > 0), its generated rules, and a score against its truth.
filter-external: venv
ifeq ($(strip $(SRC)),)
	$(CAMID) filter-external $(DATA)/external --rules $(or $(RULES),$(DATA)/external_rules.yaml) \
	  --out $(or $(OUT),$(DATA)/external_kept) --truth $(or $(TRUTH),$(DATA)/external_truth.csv)
else
	$(CAMID) filter-external $(SRC) --rules $(or $(RULES),configs/external_rules.yaml) --out $(OUT) \
	  $(if $(TRUTH),--truth $(TRUTH))
endif

robustness: venv
	$(CAMID) robustness --config $(CONFIG) --data $(DATA)

prnu: venv
	$(CAMID) prnu evaluate --config $(CONFIG) --data $(DATA)

# BENCHMARKS.md's Dresden table (real photos in ../shared/data/dresden_prnu; whole frame takes minutes).
prnu-dresden: venv
	$(VENV)/bin/python -m camid.bench.dresden_prnu $(PRNU_ARGS)

# The whole recipe on the simulated competition with the CPU profile: round 1 (train, predict,
# level 2 with PRNU clustering and stackers), balanced pseudo-labels, round 2, the final score.
DEMO_SUBMISSION ?= submissions/r2/final.csv
demo: venv
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory data filter-external folds train-all predict blend submission pseudo \
	  CONFIG=$(CONFIG) DATA=$(DATA) && \
	$(MAKE) --no-print-directory train-all predict blend submission CONFIG=$(CONFIG) DATA=$(DATA) ROUND=2 && \
	$(CAMID) score $(DEMO_SUBMISSION) --solution $(SOLUTION) && \
	echo "demo finished in $$(( $$(date +%s) - start )) s; outputs: models/ oof/ submissions/ (round 2: submissions/r2/)"

# BENCHMARKS.md's "Real photographs": the eight real camera models of ../shared/data composed into a
# competition (data/real), both rounds with configs/real.yaml, reports in bench_out/real/reports/.
real-bench: venv
	$(VENV)/bin/python -m camid.bench.real_bench --config $(or $(REAL_CONFIG),configs/real.yaml) $(REAL_ARGS)

clean-outputs:
	rm -rf models/*/ models/folds.csv oof/*.parquet oof/*.json oof/*.csv oof/*/ submissions/*.csv submissions/*.png submissions/*/

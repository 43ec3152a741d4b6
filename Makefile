# Two commands a new user needs: `make demo` and `make test`. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast demo demo-easy bench bench-data bench-heldout study study-heldout table-b clean

setup: $(STAMP)

# Re-install only when the pins change; a done setup costs one stat.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# TEST_WORKERS=N runs the suite in N pytest workers (pytest-xdist), a test module on one worker at a time, the modules
# with end-to-end tests handed out first (tests/conftest.py). On 2 cores it does not pay: two workers took 28 min
# against 31 in one process (AMD EPYC, 2026-12-06; two serial runs there differed as much) and counted 46 % more CPU
# seconds (two Ray clusters and their daemons contend for the same cores), so the default is one process; give it
# workers where there are cores to spare.
TEST_WORKERS ?= 0
PYTEST := $(BIN)/python -m pytest tests -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: setup
	$(PYTEST) --durations=30

test-fast: setup
	$(PYTEST) -m 'not slow'

# The demo: the benchmark task's recipe at one seed, shrunk to 5-18 min here (jobs/configs/study_demo.yaml: 48 px crops,
# 6 + 6 epochs, one validation a stage), through the study command: the shards (bench-data, shared with
# `make study`), stage 1 (TSN) and stage 2 (SoF-Net) on 2 CPU workers (local Ray, DeepSpeed), both best epochs through
# the one evaluator, the TSN + ET grid and the criteria, logged to MLflow (./mlflow.db). A rerun reuses the finished
# run and prints the table again (rm -rf runs/demo-study to train anew).
DEMO_ENV := PATH="$(CURDIR)/$(BIN):$$PATH" RAY_AUTH_MODE=disabled DS_ACCELERATOR=cpu
demo: bench-data
	$(DEMO_ENV) $(BIN)/python jobs/study.py --config jobs/configs/study_demo.yaml

# The easy task of the first demos (4 classes, the class a colour the stem sees; the tests' task and the sweeps'
# quick start: runs/demo is the checkpoint the Table C sweep reads), ~7-8 minutes.
demo-easy: setup
	test -f data/demo/shards/manifest.json || $(BIN)/python -m data_prep.synthetic --out data/demo/raw --videos 96 \
		--classes 4 --seed 0 --shards data/demo/shards --shard-size 8 --no-ray --no-progress
	rm -rf runs/demo runs/demo-eval
	$(DEMO_ENV) $(BIN)/python jobs/train_anet.py --config jobs/configs/demo.yaml
	$(DEMO_ENV) $(BIN)/python jobs/results_table.py --config jobs/configs/demo.yaml --out runs/demo-eval

# The benchmark task (data_prep.bench_task: 512 training + 256 validation videos, 8 classes; ~3 min on 2 cores) and
# the multi-seed study on it (jobs/study.py: 3 seeds of TSN + SoF-Net, ~10 min a seed on 2 cores; resumable).
BENCH_TASK := --task bench --classes 8 --min-duration 6 --max-duration 12 --video-fps 8 --fps 2 --shard-size 16 \
	--no-progress
bench-data: setup
	test -f data/bench/shards/manifest.json || $(BIN)/python -m data_prep.synthetic $(BENCH_TASK) --out data/bench/raw \
		--videos 768 --seed 0 --val-fraction 0.334 --shards data/bench/shards

study: bench-data
	$(DEMO_ENV) $(BIN)/python jobs/study.py --config jobs/configs/study.yaml

# The study's trained runs scored on 1024 held-out videos of the same task (another seed, all validation; ~3 min to
# generate): 4x the validation set, so a seed's score moves by its weights, not by which 256 videos it drew; nothing
# trains (runs_from, after `make study`), ~1.3 min a seed.
bench-heldout: setup
	test -f data/bench-heldout/shards/manifest.json || $(BIN)/python -m data_prep.synthetic $(BENCH_TASK) \
		--out data/bench-heldout/raw --videos 1024 --seed 1 --val-fraction 1.0 --shards data/bench-heldout/shards

study-heldout: bench-heldout
	$(DEMO_ENV) $(BIN)/python jobs/study.py --config jobs/configs/study.yaml name=bench-study-v5-heldout \
		runs_from=bench-study-v5 "overrides=[data.val_shards=data/bench-heldout/shards]"

# Table B: the study with AR-Net beside TSN and SoF-Net, at the recipe it was measured with (see its config).
table-b: bench-data
	$(DEMO_ENV) $(BIN)/python jobs/study.py --config jobs/configs/study_table_b.yaml

bench: setup
	$(BIN)/python bench/skip_speedup.py

clean:
	rm -rf $(VENV) build *.egg-info

# Two commands a new user needs: `make demo` and `make test`. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast demo demo-easy bench bench-data study table-b clean

setup: $(STAMP)

# Re-install only when the pins change; a done setup costs one stat.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest tests --durations=30

test-fast: setup
	$(BIN)/python -m pytest tests -m 'not slow'

# The demo: the benchmark task's recipe at one seed, shrunk to 9-13 min here (jobs/configs/study_demo.yaml: 48 px crops,
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
bench-data: setup
	test -f data/bench/shards/manifest.json || $(BIN)/python -m data_prep.synthetic --task bench --out data/bench/raw \
		--videos 768 --classes 8 --seed 0 --min-duration 6 --max-duration 12 --video-fps 8 --val-fraction 0.334 \
		--shards data/bench/shards --fps 2 --shard-size 16 --no-progress

study: bench-data
	$(DEMO_ENV) $(BIN)/python jobs/study.py --config jobs/configs/study.yaml

# Table B: the study with AR-Net beside TSN and SoF-Net, at the recipe it was measured with (see its config).
table-b: bench-data
	$(DEMO_ENV) $(BIN)/python jobs/study.py --config jobs/configs/study_table_b.yaml

bench: setup
	$(BIN)/python bench/skip_speedup.py

clean:
	rm -rf $(VENV) build *.egg-info

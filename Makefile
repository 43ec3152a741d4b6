# Two commands a new user needs: `make demo` and `make test`. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast demo bench clean

setup: $(STAMP)

# Re-install only when the pins change; a done setup costs one stat.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest tests

test-fast: setup
	$(BIN)/python -m pytest tests -m 'not slow'

demo: setup
	$(BIN)/python bench/skip_speedup.py

bench: setup
	$(BIN)/python bench/skip_speedup.py

clean:
	rm -rf $(VENV) build *.egg-info

# Two commands on a fresh machine (python3 + make):
#   make run    create .venv, install, start the live service on http://127.0.0.1:8000 (docs at /docs)
#   make test   create .venv, install, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8000
STATE_DIR ?= state

.PHONY: setup run test lint bench bench-all report clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/adbandit serve --host $(HOST) --port $(PORT) --state-dir $(STATE_DIR) --demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/bench_bandit.py

bench-all: $(STAMP)
	$(PY) benchmarks/bench_bandit.py
	$(PY) benchmarks/bench_simulator.py
	$(PY) benchmarks/bench_store.py
	$(PY) benchmarks/bench_service.py
	$(PY) benchmarks/bench_relearn.py

report: $(STAMP)
	$(PY) -m experiments.report --seeds 10 --out docs/figures.md --plots docs/figures

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

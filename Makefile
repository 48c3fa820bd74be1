# Two commands on a fresh machine (python3 + make):
#   make run    create .venv, install, start the live service on http://127.0.0.1:8000 (docs at /docs)
#   make test   create .venv, install, run the whole test suite
# make run HOST=0.0.0.0 PORT=8080 STATE_DIR=/var/lib/adbandit serves elsewhere; EXTRAS=serve installs
# only the service's dependencies (no Ray, MLflow, plots, test tools) into the venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
HOST ?= 127.0.0.1
PORT ?= 8000
STATE_DIR ?= state

.PHONY: setup browser prebid-bundle run test lint bench bench-all report clean

$(STAMP): pyproject.toml
	@echo "==> [1/3] creating $(VENV) with $$($(PYTHON) --version)"
	$(PYTHON) -m venv $(VENV)
	@echo "==> [2/3] updating pip"
	$(PY) -m pip install --quiet --upgrade pip
	@echo "==> [3/3] installing adbandit[$(EXTRAS)] into $(VENV) (the first time takes minutes: Ray and MLflow are large)"
	$(PY) -m pip install --progress-bar on -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)
	@echo "==> $(VENV) ready: adbandit[$(EXTRAS)]"

setup: $(STAMP)

run: $(STAMP)
	@echo "==> serving http://$(HOST):$(PORT) (API docs at /docs), state in $(STATE_DIR)/; Ctrl-C stops"
	$(VENV)/bin/adbandit serve --host $(HOST) --port $(PORT) --state-dir $(STATE_DIR) --demo

# The browser tests (console, Prebid.js page) drive Debian's chromium through Playwright; no browser
# build is ever downloaded. As root with apt-get, a missing chromium is installed; elsewhere they skip.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "==> installing Debian's chromium for the browser tests (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "==> no chromium and no root apt-get: the browser tests will skip"; fi; }

# The Prebid.js browser test bundles the real Prebid.js from npm (pinned in tests/browser_prebid's
# package-lock.json) with its Price Floors Module: npm ci + esbuild, once (the bundle is the stamp).
# As root with apt-get, a missing npm is installed; without npm the test skips and says why.
PREBID_DIR := tests/browser_prebid
PREBID_BUNDLE := $(PREBID_DIR)/dist/prebid.js

prebid-bundle:
	@command -v npm >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "==> installing Debian's nodejs and npm to bundle Prebid.js (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; \
	  fi; }
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory $(PREBID_BUNDLE); \
	else echo "==> no npm: the Prebid.js browser test will skip"; fi

$(PREBID_BUNDLE): $(PREBID_DIR)/package.json $(PREBID_DIR)/package-lock.json $(PREBID_DIR)/entry.js $(PREBID_DIR)/build.mjs
	@echo "==> bundling Prebid.js from npm for the browser test (npm ci + esbuild)"
	cd $(PREBID_DIR) && npm ci --no-audit --no-fund --loglevel=error && npm run --silent bundle

# Two workers (the CI machine's 2 cores); a test file stays on one worker, so its module
# fixtures (the simulation grids) are built once. One BLAS thread per process: a worker's
# second OpenBLAS thread only spins against the other worker (a ts_gmm learning test used
# 53 s of CPU for 31 s of wall with two, 31 s with one; Ray's workers already run one).
TEST_WORKERS ?= 2

test: $(STAMP) browser prebid-bundle
	OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/bench_bandit.py

bench-all: $(STAMP) browser
	$(PY) benchmarks/bench_bandit.py
	$(PY) benchmarks/bench_simulator.py
	$(PY) benchmarks/bench_store.py
	$(PY) benchmarks/bench_service.py
	$(PY) benchmarks/bench_relearn.py
	$(PY) benchmarks/bench_console.py

report: $(STAMP)
	$(PY) -m experiments.report --seeds 10 --out docs/figures.md --plots docs/figures

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# swarmless: the two commands of the quick start are `make up` (the voting app, see
# examples/voting-app) and `make test`.
# Both set up what they need (venv, Docker Engine, base images) and are idempotent.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: up demo test setup venv engine images lint check bench bench-quick bench-deps clean

up: setup
	bash examples/voting-app/run.sh up

# The gateway with two functions deployed (hello, upper) and the curl lines to call them.
demo: setup
	$(PY) -m swarmless.demo

test: setup lint
	bash scripts/pytest.sh $(PYTEST_ARGS)

setup: venv engine images

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev,postgres]'
	touch $@

engine:
	bash scripts/engine.sh

images: engine
	bash scripts/base-images.sh

lint: venv
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples
	$(VENV)/bin/mypy --strict src/

# Every benchmark, one report: bench/results/<timestamp>.json, report.md and its plots
# (bench/report.py). Exits 1 when a target is missed, 2 when a number is missing.
bench: setup bench-deps
	$(PY) bench/report.py

# A few minutes, small counts: checks only that every number is produced (CI runs it
# through tests/test_bench_quick.py); the report goes to a temporary directory.
bench-quick: setup bench-deps
	$(PY) bench/report.py --quick

# matplotlib is a dev dependency (pyproject.toml); a venv made before it was is topped up.
# wrk is the load generator the results were measured with (Debian's package, installed
# as root); without it the benchmarks say so and use their Python one, which loads the
# 2 cores more and so lowers the gateway's ratios.
bench-deps: venv
	$(PY) -c "import matplotlib" 2>/dev/null || $(VENV)/bin/pip install -q matplotlib
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && { apt-get install -y -q wrk >/dev/null 2>&1 \
	       || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; }; }; } \
	  || echo "bench-deps: wrk is missing (apt-get install -y wrk, as root): the benchmarks use their Python load generator"

# Exited containers of this instance only (SWARMLESS_INSTANCE, SWARMLESS_DATA_DIR); other
# users' and other instances' containers on a shared engine are never touched.
clean:
	-$(VENV)/bin/swarmless gc
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

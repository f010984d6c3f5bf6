# The two commands of a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.zpix-installed

.PHONY: demo test setup lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch 2.13.0 is the local CPU wheel on our machines; any torch >= 2.3 works elsewhere.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet "torch==2.13.0" || $(PY) -m pip install --quiet "torch>=2.3"
	$(PY) -m pip install --quiet -e ".[dev,rail,hats]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/zpix demo --out demo_output --seed 0

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

# `make bench`: the benchmarks of benchmarks/README.md in their own environment, because the RAIL
# peers (pz-rail-sklearn, pz-rail-flexzboost) are never a zpix dependency.
BENCH_VENV := .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.zpix-bench-installed

$(BENCH_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install --quiet --upgrade pip
	$(BENCH_PY) -m pip install --quiet "torch==2.13.0" || $(BENCH_PY) -m pip install --quiet "torch>=2.3"
	$(BENCH_PY) -m pip install --quiet -e . pz-rail-sklearn pz-rail-flexzboost
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_PY) benchmarks/real_catalog.py
	$(BENCH_PY) benchmarks/mock_images.py
	$(BENCH_PY) benchmarks/speed.py
	$(BENCH_PY) benchmarks/kids_hybrid.py --mags-epochs 40 --epochs 16 --finetune-epochs 8 --scratch-check \
		--same-epochs-check

clean:
	rm -rf $(VENV) demo_output

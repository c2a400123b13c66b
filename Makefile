# Two entry points, each creating or reusing .venv:
#   make demo   the main job
#   make test   the whole test suite (what .ci/run calls)
# TORCH picks the torch build: the default is the CPU wheel; for CUDA pass a CUDA build, e.g.
#   make test TORCH="torch==2.13.0 --index-url <your PyTorch CUDA wheel index>"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.priorscope-installed

.PHONY: demo test lint check bench-blur bench-capture browser clean

# The report test opens the HTML in a real headless browser: Debian's chromium.
CHROMIUM ?= /usr/bin/chromium

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/priorscope demo --out demo_out

browser:
	@test -x $(CHROMIUM) || { command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null); } || \
	  { echo "headless chromium missing: install Debian's chromium package (needed by the report test)"; exit 1; }

test: $(STAMP) browser
	$(VENV)/bin/ruff check .
	OMP_NUM_THREADS=1 $(PY) -P -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy engine kernels cli

check: lint test

bench-blur: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/blur.py

bench-capture: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/capture.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

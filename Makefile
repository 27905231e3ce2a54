# Two commands matter: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test lint clean

install: $(STAMP)

# torch goes first from the local CPU wheel: resolving it through pyproject alone could pull
# multi-GB CUDA builds from the index.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# SCALE=full (default): the task's 50M rows, about 10 minutes; SCALE=small: under 2 minutes.
SCALE ?= full
demo: install
	$(VENV)/bin/mlsys demo --scale $(SCALE)

# Two xdist workers, each test file on one of them (module fixtures start once): 5.4 min
# instead of 12 on 2 cores (docs/performance.md).
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: install
	$(VENV)/bin/ruff check src tests benchmarks perf_test notebooks/build_garment_tagging.py
	$(VENV)/bin/ruff format --check src tests benchmarks perf_test notebooks/build_garment_tagging.py
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache

# Two entry points: `make demo` (train + show a small SeMask model, no data or weights needed)
# and `make test` (the test suite). Both create .venv in the repo root on first use; the demo installs
# only what the package needs, the tests add their extras (pytest, hypothesis, onnx, onnxruntime).
# `make demo DEMO_ARGS="--seed 1 --output runs/demo1"` passes options to `semask demo`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
BASE := $(VENV)/.installed-base
TESTDEPS := $(VENV)/.installed-test

.PHONY: install test demo clean

install: $(BASE)

$(BASE): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: on these machines torch==2.13.0 is a local CPU wheel
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $(BASE)

$(TESTDEPS): $(BASE)
	$(PY) -m pip install -q -e '.[test,export]'
	touch $(TESTDEPS)

test: $(TESTDEPS)
	$(PY) -m pytest -q

demo: $(BASE)
	$(VENV)/bin/semask demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache

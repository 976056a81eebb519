# danet-edge: two commands do everything on a fresh machine.
#   make demo   set up .venv, then run the main job end to end on the embedded default
#   make test   set up .venv, then run the test suite (all but the tests marked slow: under 15 minutes on 2 cores)
#   make test-slow   the slow tests (CI runs both: .ci/run)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-slow test-all test-fast clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[all,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/danet-edge demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --durations=15

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow --durations=10

test-all: $(STAMP)
	$(PY) -m pytest -q

test-fast: test

clean:
	rm -rf runs/demo .pytest_cache

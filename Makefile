# `make run` runs the bundled example, `make run-pinn` the PINN example; `make test` runs the whole test suite
# (then its core suites under Python 3.10 and 3.13 where installed: `make test-pythons`).
# Both create .venv and install everything on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run run-pinn test test-pythons bench install clean help-text

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch must be installed as `torch==2.13.0` before anything that depends on it: that spelling
# takes the local CPU wheel; any other one downloads a multi-GB CUDA build. Lightning and PINA
# (the lightning and pinn extras) come after it for the same reason.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0 numpy
	$(BIN)/pip install --quiet -e '.[test,mpi,torch,lightning,pinn,slurm]' graphviz matplotlib
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/orch run experiment.py --params params/default.yaml

run-pinn: $(STAMP)
	$(BIN)/orch run examples/pinn/experiment.py --params examples/pinn/params/sweep.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q tests
	tests/other-pythons.sh

# The core suites under Python 3.10 (requires-python's oldest) and the quick ones under 3.13, where installed.
test-pythons:
	tests/other-pythons.sh

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

# After editing a command's options or docstring: the text `orch --help` prints without importing click.
help-text: $(STAMP)
	$(BIN)/python -m orchestrator.helprender

clean:
	rm -rf $(VENV) .venv-3.* .orch

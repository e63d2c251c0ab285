# Two commands on a fresh machine with Python 3.11:  make demo   and   make test
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := 1
export WANDB_MODE ?= disabled
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo test render smoke flow compare clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

.dvc:
	$(BIN)/dvc init --quiet $(if $(wildcard .git),,--no-scm)

# the default run: params.yaml (mnist5k, 5 tasks, guide) with dvc repro, then the results
demo: install .dvc
	$(BIN)/python -m pipeline.render --check
	$(BIN)/dvc repro
	$(BIN)/python -m pipeline.show

test: install
	$(BIN)/python -m pytest -q

render: install
	$(BIN)/python -m pipeline.render

flow: install .dvc
	$(BIN)/python -m pipeline.flow

# finetune, gr, ddgr, guide, joint × seeds 0 1 2 on mnist5k → results/compare/summary.{csv,md}
compare: install
	$(BIN)/python -m pipeline.compare

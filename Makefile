# Two entry points that do all set-up on a fresh machine:
#   make main   -- a short benchmark on real data (Fashion-MNIST), with its table and plots
#   make test   -- linter, type checker and the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup main test lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch; never let another requirement pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,bench,frameworks,references]'
	touch $@

setup: $(VENV)/.installed

lint: setup
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/ruff format --check src tests examples benchmarks
	$(VENV)/bin/mypy

test: lint
	# One intra-op thread: the tests use tiny tensors, where threads only add overhead.
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q

# The quick profile of the paper's CIFAR ResNet20 comparison, on Fashion-MNIST (offline: the
# Debian package dataset-fashion-mnist), all five optimizers; writes runs/quick/report.md + PNGs.
main: setup
	$(VENV)/bin/adahessian-bench data fetch fashion-mnist
	$(VENV)/bin/adahessian-bench run fmnist-resnet20 --profile quick \
		--optimizers sgd,adam,adamw,adagrad,adahessian --seeds 1 --out runs/quick
	$(VENV)/bin/adahessian-bench report runs/quick

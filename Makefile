# One-command set-up: every target installs what is missing first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SPI := $(VENV)/bin/spi
STAMP := $(VENV)/.spi-installed

.PHONY: setup assets demo test lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# Keep a torch the user already has; otherwise take the CPU build (an unpinned torch pulls CUDA).
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,train]"
	@touch $(STAMP)

setup: $(STAMP)

assets: setup
	$(SPI) assets --fetch

demo: assets
	$(SPI) demo

test: assets
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

clean:
	rm -rf $(VENV) runs .pytest_cache

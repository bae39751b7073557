# The two set-up commands of the README: each creates the environment when needed, then runs.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo test lint browser

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned (torchvision with it, for smp and timm): on the project's machines pip takes these builds
	# from local disk. pyproject.toml states the supported range; the pin lives here, not in the package.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	# every extra the tests use: dev, onnx, geo, serve, tensorboard, coco, tracking, hub, tune, explain
	$(PY) -m pip install -q -e '.[dev,onnx,geo,serve,tensorboard,coco,tracking,hub,tune,explain]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/pixelwise demo

test: $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks examples

# Chromium for the page test (tests/test_serve_page.py, skipped without it); Debian's package, run as root.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q chromium; }

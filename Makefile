# The two set-up commands of the README: each creates the environment when needed, then runs.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: demo test lint browser

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: on the project's machines pip takes this build from local disk.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,geo,serve]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/pixelwise demo

test: $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks

# Chromium for the page test (tests/test_serve_page.py, skipped without it); Debian's package, run as root.
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q chromium; }

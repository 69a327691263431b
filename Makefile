# Everything a new user needs, from a machine with only python3 and make.
#   make train   set up, then train configs/conv_dropout.yaml on the real MNIST
#   make check   set up, then lint, format check and the whole test suite (what CI runs)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup train check lint format test browser clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

train: setup
	$(BIN)/mnistctl train configs/conv_dropout.yaml

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The drawing page is tested in a real headless browser: Debian's chromium, driven by Playwright.
# Installed here where possible (root with apt-get); elsewhere that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	      || echo "note: could not install chromium; the browser test will be skipped"; \
	  else echo "note: chromium is not installed; the browser test will be skipped"; fi; }

test: setup browser
	$(BIN)/pytest

check: lint test

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

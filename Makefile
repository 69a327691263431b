# Everything a new user needs, from a machine with only python3 and make.
#   make train   set up, then train configs/conv_dropout.yaml on the real MNIST
#   make check   set up, then lint, format check and the whole test suite (what CI runs)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup train check lint format test test-onednn-off system-packages clean

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

# Two tests need Debian packages: the drawing page runs in a real headless browser (chromium,
# driven by Playwright) and Fashion-MNIST comes from dataset-fashion-mnist. Installed here where
# possible (root with apt-get); elsewhere those tests skip and say why.

system-packages:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	[ -d /usr/share/datasets/fashion-mnist ] || missing="$$missing dataset-fashion-mnist"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian packages for the tests:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null \
	      || echo "note: could not install$$missing; the tests that need them will be skipped"; \
	  else echo "note:$$missing not installed; the tests that need them will be skipped"; fi; \
	fi

test: setup system-packages
	$(BIN)/pytest

check: lint test

# The tests whose assertions rest on what TensorFlow computes, once more with oneDNN off: other
# kernels and other rounding, the nearest stand-in on one machine for another CPU (CI runs this
# after make check; tests/conftest.py says which tests).
test-onednn-off: setup system-packages
	TF_ENABLE_ONEDNN_OPTS=0 $(BIN)/pytest -m tensorflow

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

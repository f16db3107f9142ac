# One command to set up and build the book, one to run every test. See README.md.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Extra pip requirements installed before the project, e.g. a torch build that matches your machine:
#   make setup TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
TORCH_SPEC ?=

.PHONY: setup book test lint unit chapters clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC) -e ".[book,dev,hub]"
	touch $@

# Executes every chapter (cached per notebook) and writes _build/html; warnings fail the build.
book: setup
	$(BIN)/jupyter-book build . --warningiserror --keep-going

lint: setup
	$(BIN)/ruff check .

unit: setup
	$(BIN)/python -m pytest -n 2 tests

# Each chapter runs once, in order, with both cores (chapters share cached models).
chapters: setup
	$(BIN)/python -m pytest --nbmake --nbmake-timeout=900 chapters

test: lint unit chapters

clean:
	rm -rf _build

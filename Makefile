# One command to set up and build the book, one to run every test. See README.md.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Extra pip requirements installed before the project, e.g. a torch build that matches your machine:
#   make setup TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
TORCH_SPEC ?=

.PHONY: setup book browser test lint unit chapters clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC) -e ".[book,dev,hub]"
	touch $@

# Executes every chapter (cached per notebook) and writes _build/html; warnings fail the build.
book: setup
	$(BIN)/jupyter-book build . --warningiserror --keep-going

# Opens every page of the built book in headless Chromium (Debian's `chromium`): no error output, math rendered,
# images loaded, internal links resolve, launch buttons present; screenshots in _build/screenshots/.
browser: setup
	SEGCAL_BROWSER_CHECK=1 $(BIN)/python -m pytest -q tests/test_book_browser.py

lint: setup
	$(BIN)/ruff check .

unit: setup
	$(BIN)/python -m pytest -n 2 tests --ignore=tests/test_book_browser.py

# Each chapter through nbmake (what `book` does too, without the HTML); for a quick check of the notebooks alone.
chapters: setup
	$(BIN)/python -m pytest --nbmake --nbmake-timeout=900 chapters

# Building the book executes every chapter once, in order (chapters share cached models), so `test` needs no
# separate nbmake pass; the browser check then reads the pages that were built.
test: lint unit book browser

clean:
	rm -rf _build

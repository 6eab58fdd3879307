# Two commands: `make demo` and `make test`. Each creates .venv from the pinned
# requirements when it is missing (or when they changed); `make test` adds
# requirements-dev.txt (pytest, ruff, and the PyTorch reference AutoAttack the tests
# compare with); it lints the tree with ruff before running the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: demo test test-slow venv clean-demo

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(DEV_STAMP)

venv: $(DEV_STAMP)

demo: $(STAMP)
	$(BIN)/python -m pipelines.demo

test: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2

test-slow: $(DEV_STAMP)
	$(BIN)/python -m pytest -q -m slow

clean-demo:
	rm -rf demo_out

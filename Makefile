# Two commands work on a fresh machine: `make serve` and `make test` (each sets up .venv first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; set TORCH= to keep whatever torch the environment provides.
TORCH ?= torch==2.13.0
MODEL ?= Qwen/Qwen3-4B-Instruct-2507
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install serve demo test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(if $(TORCH),$(BIN)/pip install --quiet "$(TORCH)")
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install --quiet -e '.[test,llamacpp,ray]'
	touch $@

serve: install
	$(BIN)/qwen3-api serve --model $(MODEL) $(ARGS)

demo: install
	$(BIN)/qwen3-api serve --model test:tiny $(ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/pip install --quiet ruff mypy
	$(BIN)/ruff check src tests
	$(BIN)/mypy src --ignore-missing-imports

clean:
	rm -rf $(VENV) .pytest_cache

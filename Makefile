# Two commands on a fresh machine: `make run` (serve the committed default model) and
# `make test` (what CI runs). Everything installs into .venv from the repo's own pins.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
HOST ?= 127.0.0.1
ARTIFACTS_DIR ?= artifacts
DATA ?= ../shared/data/news_10k.csv
NLTK_DATA ?= ../shared/nltk_data
export NLTK_DATA

.PHONY: install run test lint train default-model bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first and pinned, so nothing pulls a multi-GB CUDA build.
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/python -m service --artifacts-dir $(ARTIFACTS_DIR) --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

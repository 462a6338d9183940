# Every target does its own set-up: a fresh clone needs only python3 (3.11+).
VENV      ?= .venv
PYTHON    ?= python3
BIN       := $(VENV)/bin
SHARED_TT := $(abspath ../shared/tiktoken)
ifneq ($(wildcard $(SHARED_TT)),)
export TIKTOKEN_CACHE_DIR ?= $(SHARED_TT)
endif

.PHONY: install run test lint bench bench-proxy bench-export bench-train clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

## The main job: the recording proxy on 127.0.0.1:8080, embedded PostgreSQL unless DATABASE_URL is set.
run: install
	$(BIN)/curation proxy

## Tests on a real PostgreSQL: TEST_DATABASE_URL / DATABASE_URL, else the embedded one.
test: install
	$(BIN)/pytest -n 2 --maxfail=20

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: bench-proxy bench-export

bench-proxy: install
	$(BIN)/python bench/proxy.py

bench-export: install
	$(BIN)/python bench/export.py

## The local LoRA trainer on this machine (needs the train extra; see bench/train.py for a GPU run).
bench-train: install
	$(BIN)/python bench/train.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

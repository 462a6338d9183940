# Every target does its own set-up: a fresh clone needs only python3 (3.11+).
VENV      ?= .venv
PYTHON    ?= python3
BIN       := $(VENV)/bin
SHARED_TT := $(abspath ../shared/tiktoken)
ifneq ($(wildcard $(SHARED_TT)),)
export TIKTOKEN_CACHE_DIR ?= $(SHARED_TT)
endif

.PHONY: install run test coverage lint bench bench-proxy bench-export bench-curate bench-coverage bench-shadow bench-train clean

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

## Statement coverage of the capture path (proxy/, capture/, export/validate.py), with the
## proxy and recorder subprocesses measured too ([tool.coverage.run] in pyproject.toml).
## TESTS picks test files (default: the whole suite), e.g.
##   make coverage TESTS="tests/test_proxy.py tests/test_durability.py"
COVERAGE_FILE    ?= $(abspath $(VENV))/.coverage
COVERAGE_INCLUDE := curation/proxy/*,curation/capture/*,curation/export/validate.py
coverage: install
	rm -f $(COVERAGE_FILE) $(COVERAGE_FILE).*
	export COVERAGE_FILE=$(COVERAGE_FILE); \
	$(BIN)/coverage run -m pytest -n 2 $(TESTS); status=$$?; \
	$(BIN)/coverage combine -q && \
	$(BIN)/coverage report --include='$(COVERAGE_INCLUDE)' && \
	for part in 'curation/proxy/*' 'curation/capture/*' curation/export/validate.py; do \
		printf '%-32s %s%%\n' "$$part" "$$($(BIN)/coverage report --include="$$part" --format=total)"; \
	done; \
	exit $$status

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: bench-proxy bench-export bench-curate bench-coverage bench-shadow

bench-proxy: install
	$(BIN)/python bench/proxy.py

bench-export: install
	$(BIN)/python bench/export.py

## Curator queries at 1,000,000 rows beside the database's floor, and the CLI's start-up
## (BENCH_ROWS=200000 or `bench/curate.py --rows N` for a smaller run; ~10 min at 1M here).
bench-curate: install
	$(BIN)/python bench/curate.py

## Clustering at 100,000 and 1,000,000 generated prompts, end to end through PostgreSQL at
## 100,000, and incremental assignment in rows/s (`bench/coverage.py --sizes N --db-rows N`).
bench-coverage: install
	$(BIN)/python bench/coverage.py

## What shadow traffic costs the client: latency with shadow 0% vs 100%, side by side with
## their ratio (`bench/shadow.py --calls N --rounds N`).
bench-shadow: install
	$(BIN)/python bench/shadow.py

## The local LoRA trainer on this machine (needs the train extra; see bench/train.py for a GPU run).
bench-train: install
	$(BIN)/python bench/train.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

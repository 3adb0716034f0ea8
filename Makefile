# The two commands a newcomer runs: `make demo` and `make test`.
# Both create .venv and install the project (with its dev tools) on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint docs bench venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples docs/_hooks
	$(VENV)/bin/mypy src
	$(VENV)/bin/lint-imports

# The documentation site, into site/. --strict: a broken link or anchor, a missing snippet
# file, a page left out of the nav or an unreadable docstring fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

SCENARIOS := storage volatile-rpc persisted-rpc failover handoff singleton-failover cron-accuracy \
             jobs-throughput jobs-latency store-growth entity-state transport \
             events-latency events-throughput webhooks \
             workflow-latency workflow-throughput workflow-signal workflow-sleep \
             sse-latency sse-scale ws-rpc ws-reconnect readiness otel-overhead dashboard peers

bench: $(STAMP)
	for s in $(SCENARIOS); do $(PY) bench/run.py $$s --quick | tail -n 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache site test-artifacts covey.db covey.db-wal covey.db-shm

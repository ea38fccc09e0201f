# goworker-py: `make run` runs a worker locally, `make test` runs every test (installing what it needs).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv install run test test-fast lint bench zookeeper clean

venv install: $(STAMP)

$(STAMP): setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) samples/helloworld.py

# ZooKeeper for the cluster tests: a local install (apt on Debian, as root), or ZK_HOSTS.
zookeeper: $(STAMP)
	$(PY) -m goworker_py.testing ensure-zookeeper

test: $(STAMP) zookeeper
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check goworker_py tests samples benchmarks
	$(VENV)/bin/ruff format --check goworker_py tests samples benchmarks
	$(VENV)/bin/mypy goworker_py

bench: $(STAMP) zookeeper
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

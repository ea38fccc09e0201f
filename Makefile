# goworker-py: `make run` runs a worker locally, `make test` runs every test (installing what it needs).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv install run test test-fast lint bench zookeeper etcd redis clean

venv install: $(STAMP)

$(STAMP): setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) samples/helloworld.py

# ZooKeeper for the cluster tests: ZK_HOSTS, a local install (apt on Debian, as root), or else a
# zookeeper:3.8 container where a Docker engine runs (its hosts go to .zk_hosts for the tests).
zookeeper: $(STAMP)
	$(PY) -m goworker_py.testing ensure-zookeeper

# etcd for the etcd backend's tests: Debian's etcd-server (apt on Debian, as root), or ETCD_BINARY.
etcd: $(STAMP)
	$(PY) -m goworker_py.testing ensure-etcd

# redis-server for the Redis backend's tests: a local install (apt on Debian, as root).
redis: $(STAMP)
	$(PY) -m goworker_py.testing ensure-redis

# After pytest, even when it fails (or is interrupted), stop the container `zookeeper` may have
# started (a no-op when it started none); exit with pytest's status.
test: $(STAMP) zookeeper etcd redis
	@trap : INT TERM; status=0; \
	echo "$(PY) -m pytest"; $(PY) -m pytest || status=$$?; \
	$(PY) -m goworker_py.testing stop-docker-zookeeper; \
	exit $$status

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check goworker_py tests samples benchmarks
	$(VENV)/bin/ruff format --check goworker_py tests samples benchmarks
	$(VENV)/bin/mypy goworker_py
	$(VENV)/bin/lint-imports

# The cluster benchmarks measure ZooKeeper, etcd and Redis side by side (private servers each).
bench: $(STAMP) zookeeper etcd redis
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

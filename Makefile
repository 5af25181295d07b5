# Every target creates .venv with pip on a fresh machine and reuses it afterwards.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo

.PHONY: setup demo cluster-demo test test-fast bench clean browser

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, alone: pip takes it from the local wheel (a range would pull a CUDA build)
	$(PY) -m pip install -q torch==2.14.1 torchaudio==2.11.0
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

# idempotent; without apt (or root) it is skipped and the browser test skips with the reason
browser:
	@test -x /usr/bin/chromium || ! command -v apt-get >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
		echo "chromium not installed (apt-get failed); the browser test will skip"

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/emogen demo --out $(DEMO_DIR)

# a rehearsal of the cluster on this machine: a 0-CPU Ray head, 2 worker nodes and an S3 server,
# the tiny experiment submitted with `ray job submit`; stops everything it started
cluster-demo: $(STAMP)
	$(PY) scripts/cluster_demo.py --out runs/cluster-demo

test: $(STAMP) browser
	$(PY) -m pytest -q tests

# the development loop: every test not marked slow (no Ray cluster, no training run)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

bench: $(STAMP)
	$(PY) benchmarks/preprocess.py

clean:
	rm -rf $(VENV) runs .pytest_cache

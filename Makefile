# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.skyloc-installed

.PHONY: test demo bench lint clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[train,export,dev,scale]"
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/skyloc demo --out demo_out

bench: $(STAMP)
	$(PY) bench/bench_matching.py
	$(PY) bench/bench_runtime.py

lint: $(STAMP)
	$(VENV)/bin/hadolint docker/Dockerfile.train docker/Dockerfile.jetson

clean:
	rm -rf $(VENV) demo_out

# Two commands on a fresh machine: `make demo` and `make test` (each creates .venv when missing).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# Pick your torch build here, e.g. TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cu124
# (CUDA 12.4) or TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cpu (CPU only).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?=
PYTEST_ARGS ?=
# Offline-safe defaults; caches stay inside the project (.cache/; without IAD_CACHE_ROOT, installed code
# leaves every library's cache and settings where the user keeps them).
export IAD_OFFLINE ?= 1
export HF_HUB_OFFLINE ?= 1
export YOLO_OFFLINE ?= 1
export WANDB_MODE ?= offline
export IAD_CACHE_ROOT ?= $(CURDIR)/.cache
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help venv demo pipeline test test-slow bench clean

help:
	@echo "make demo       set up .venv and run the demo on the built-in synthetic data"
	@echo "make pipeline   the reference's whole pipeline (exp0 ... exp5, ensemble, bundle, predictions) on the demo data"
	@echo "make test       set up .venv and run the test suite (what CI runs)"
	@echo "make test-slow  also run tests marked slow"
	@echo "make bench      run the benchmarks in benchmarks/"

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_INDEX) $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) train.py -m data.fold=0,1,2,3,4

pipeline: venv
	$(PY) -m iad.pipeline recipe=demo

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: venv
	$(PY) -m pytest -m "slow or not slow" $(PYTEST_ARGS)

bench: venv
	$(PY) benchmarks/prepare.py
	$(PY) benchmarks/read.py
	$(PY) benchmarks/loader.py
	$(PY) benchmarks/predict.py
	$(PY) benchmarks/detect.py
	$(PY) benchmarks/detector_data.py

clean:
	rm -rf .cache outputs multirun benchmarks/_work

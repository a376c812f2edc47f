# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv if missing. torch is pinned first because an unpinned torch pulls a
# multi-GB CUDA build; 2.13.0 is a CPU build on this machine's disk.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# torchscale is the reference RetNet retention is tested against. --no-deps: its pins
	# (fairscale, timm) are not needed by the retention module and would pull more torch.
	$(BIN)/python -m pip install --quiet --no-deps "torchscale==0.3.0"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/yoco quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check yoco tests
	$(BIN)/ruff format --check yoco tests

clean:
	rm -rf $(VENV) build *.egg-info

# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv if missing, with exactly the versions in requirements.lock (checked after
# the install). torch is named first because an unpinned torch pulls a multi-GB CUDA build;
# 2.13.0+cpu is a CPU build on this machine's disk.
#
#   make lock          re-resolve every dependency to the newest allowed version, rewrite the lock
#   make test-latest   run the suite on the newest allowed versions without touching the lock
#   make mutants       check that the tests catch each deliberate bug in scripts/mutants.py
#   make bench-deps    add llama.cpp (compiled here) and gguf for `yoco bench --long`
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed
LATEST := .venv-latest

.PHONY: demo test lint install lock test-latest mutants clean bench-deps

# $(1): the venv folder; $(2): "-c $(LOCK)" for the locked versions, empty for the newest.
# setuptools lives in the venv (--no-build-isolation) so the build backend is locked too.
# torchscale is the reference RetNet retention is tested against; --no-deps: its pins (fairscale,
# timm) are not needed by the retention module and would pull more torch.
define install_into
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet $(2) --upgrade pip setuptools
	$(1)/bin/python -m pip install --quiet $(2) "torch==$(TORCH_VERSION)"
	$(1)/bin/python -m pip install --quiet $(2) --upgrade --no-build-isolation -e ".[dev]"
	$(1)/bin/python -m pip install --quiet $(2) --no-deps "torchscale==0.3.0"
endef

# The optional `bench` extra (`make bench-deps`): llama.cpp beside yoco in `yoco bench --long`.
# llama-cpp-python compiles llama.cpp from the registry's source package (a few minutes), so it
# stays out of the lock that `make test` installs; pinned here instead, and the lock check below
# leaves these names out.
BENCH_PINS := gguf==0.19.0 llama-cpp-python==0.3.36 diskcache==5.6.3
BENCH_NAMES := gguf|llama.cpp.python|diskcache

# What a venv holds, in the lock's format: name==version per line, sorted.
freeze = $(1)/bin/python -m pip freeze --all --exclude-editable | grep -viE '^($(BENCH_NAMES))( @|==)' | sort -f

$(STAMP): pyproject.toml $(LOCK) Makefile
	$(call install_into,$(VENV),-c $(LOCK))
	@$(call freeze,$(VENV)) | diff -u <(grep -v '^#' $(LOCK)) - \
		|| { echo "$(VENV) differs from $(LOCK) (lines with - are the lock): rm -rf $(VENV) and retry"; exit 1; }
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/yoco quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench-deps: $(STAMP)
	$(BIN)/python -m pip install --quiet -c $(LOCK) $(BENCH_PINS)

mutants: $(STAMP)
	$(BIN)/python scripts/mutants.py

lint: $(STAMP)
	$(BIN)/ruff check yoco tests scripts
	$(BIN)/ruff format --check yoco tests scripts

lock:
	rm -rf $(LATEST)
	$(call install_into,$(LATEST),)
	{ echo "# Every package make test and make demo install, resolved on $$(date -u +%F) by make lock."; \
	  echo "# Not here: pyproject's optional bench extra (llama.cpp), pinned by make bench-deps."; \
	  $(call freeze,$(LATEST)); } > $(LOCK)
	@echo "wrote $(LOCK); run make test, then commit it"

test-latest:
	rm -rf $(LATEST)
	$(call install_into,$(LATEST),)
	@echo "== versions newer than $(LOCK) (+), with the locked ones (-):"
	@$(call freeze,$(LATEST)) | diff -u <(grep -v '^#' $(LOCK)) - | grep '^[-+][^-+]' || echo "none: the lock is current"
	$(LATEST)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) $(LATEST) build *.egg-info

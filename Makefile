# kit. The README's two commands: `make run` (the default recipe on this machine) and
# `make test` (the test suite, with the real services it needs).
PYTHON ?= python3
VENV   ?= .venv
KIT    := $(VENV)/bin/kit
PY     := $(VENV)/bin/python
# Extra pip arguments for torch, e.g. TORCH_PIP="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP ?=
TARGET ?= x86_64
TCMALLOC ?= 1
ENGINE ?=
BASE ?=
PYTEST_ARGS ?=

.PHONY: run test test-cold test-fast venv system-run system-test image clean

system-run:
	@bash scripts/system-packages.sh run

system-test:
	@bash scripts/system-packages.sh test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIP) torch==2.13.0
	DS_BUILD_OPS=0 $(PY) -m pip install -q -e '.[train,test]'
	touch $@

venv: $(VENV)/.installed

run: system-run venv
	$(KIT) run

test: system-test venv
	bash scripts/test.sh $(PYTEST_ARGS)

# The cold path: a fresh clone of HEAD with empty caches and a podman store of its own (no
# kit images), as a fresh machine runs `make test`. Run before changing .ci/ scripts/ Makefile containers/.
test-cold: system-test
	bash scripts/test-cold.sh $(PYTEST_ARGS)

# Unit tests only: no training runs, no services.
test-fast: venv
	$(PY) -m pytest -q -ra -m "not slow and not slurm and not podman and not arm64 and not mpi" $(PYTEST_ARGS)

image: venv
	$(KIT) image build --target $(TARGET) $(if $(filter 1,$(TCMALLOC)),--tcmalloc,--no-tcmalloc) $(if $(ENGINE),--engine $(ENGINE)) $(if $(BASE),--base $(BASE))

clean:
	rm -rf $(VENV) build *.egg-info

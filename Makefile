# kit: the two README commands are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
KIT    := $(VENV)/bin/kit
PY     := $(VENV)/bin/python
TARGET ?= x86_64
TCMALLOC ?= 1
ENGINE ?=
BASE ?=

.PHONY: venv run test test-fast image clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	DS_BUILD_OPS=0 $(PY) -m pip install -q -e '.[train,test]'
	touch $@

venv: $(VENV)/.installed

run: venv
	$(KIT) run

test: venv
	$(PY) -m pytest -q -ra

test-fast: venv
	$(PY) -m pytest -q -ra -m "not slow and not slurm and not podman and not arm64 and not mpi"

image: venv
	$(KIT) image build --target $(TARGET) $(if $(filter 1,$(TCMALLOC)),--tcmalloc,--no-tcmalloc) $(if $(ENGINE),--engine $(ENGINE)) $(if $(BASE),--base $(BASE))

clean:
	rm -rf $(VENV) build *.egg-info

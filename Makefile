# `make demo` and `make test` each create .venv when missing and install hpcql into it.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.hpcql-installed
RANKS  ?= 2
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: venv demo test test-all test-mpio clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[mpich,test]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	mpiexec -n $(RANKS) hpcql run --overwrite

test: venv
	$(PY) -m pytest -q -m "not slow"

test-all: venv
	$(PY) -m pytest -q

# the checkpoint tests on parallel HDF5 (a second environment, .venv-mpio, built against Debian's MPICH)
test-mpio:
	bash scripts/test-parallel-hdf5.sh

clean:
	rm -rf runs .pytest_cache

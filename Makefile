# Quick start (each target sets itself up on a fresh machine):
#   make demo   - create .venv, install, run the main job on the embedded SynthME data
#   make test   - create .venv, install with test extras, run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-stamp
WORKDIR ?= runs/synth_demo
PYTEST_ARGS ?=

.PHONY: setup demo test complexity clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[test,torch]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m mer_jax.main --config=configs/synth_demo.py --workdir=$(WORKDIR)

complexity: $(STAMP)
	$(PY) -m mer_jax.complexity --config=configs/cde.py

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache

# Quick start (each target sets itself up on a fresh machine):
#   make demo   - create .venv, install, run the main job on the embedded SynthME data
#   make test   - create .venv, install with the test and PyTorch-baseline extras, run `make lint`, then the whole
#                 test suite
#   make lint   - ruff check + ruff format --check (configuration: [tool.ruff] in pyproject.toml)
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
# Install stamps: the main job's dependencies (make demo), then the test and PyTorch-baseline extras (make test).
STAMP   = $(VENV)/.installed-stamp
TEST_STAMP = $(VENV)/.installed-test-stamp
WORKDIR ?= runs/synth_demo
PYTEST_ARGS ?=
# Transparent huge pages for glibc malloc: buffers over 32 MiB (EVM at 256^2 and 640x480, batches of clips) are
# mapped afresh on every call and pay a page fault per 4 KiB on first touch; 2 MiB pages remove most of them
# (EVM 1.6x-2.8x faster there, benchmarks/RESULTS.md log entry 15). Ignored by other C libraries.
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: setup demo spot-demo lint test complexity clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e ".[test,torch]"
	touch $(TEST_STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m mer_jax.main --config=configs/synth_demo.py --workdir=$(WORKDIR)

# Long-video spotting on SynthME long videos in the CAS(ME)^2 and SAMM-LV layouts: LOSO spotting benchmark
# (spotter vs a fixed-window baseline, thresholds from training subjects only), results in runs/spot_demo.
# Then the commands a user runs on a recording: spot-then-recognise (python -m mer_jax.analyse, with a fold of
# `make demo`, run first if missing) on each CAS(ME)^2-layout video, and python -m mer_jax.spot_eval on those
# outputs together. The analyse step uses the settings chosen on all subjects (params_cas_long.json): it shows
# the commands, the LOSO table is the benchmark.
SPOT_DEMO ?= runs/spot_demo
spot-demo: $(STAMP) $(WORKDIR)/results.json
	$(PY) -m mer_jax.spot_bench --config=configs/spot_synth_demo.py --workdir=$(SPOT_DEMO)
	@set -e; fold=$$(ls -d $(WORKDIR)/finetune/folds/*/ | head -n 1); preds=""; \
	for d in $(SPOT_DEMO)/synthme/cas_long/rawpic/*/*/; do \
	  v=$$(basename $$d | sed 's/^\([0-9]*_[0-9]*\).*/\1/'); \
	  echo "analyse $$d -> $(SPOT_DEMO)/analyse_$$v.json"; \
	  $(PY) -m mer_jax.analyse --checkpoint $$fold --input $$d --fps 30 --video-name $$v \
	    --params $(SPOT_DEMO)/params_cas_long.json --out $(SPOT_DEMO)/analyse_$$v.json --quiet > /dev/null; \
	  preds="$$preds --pred $(SPOT_DEMO)/analyse_$$v.json"; \
	done; \
	echo "spot_eval of the analyse outputs (settings chosen on all subjects, so in-sample: the commands at work; the LOSO table above is the benchmark)"; \
	$(PY) -m mer_jax.spot_eval $$preds --gt $(SPOT_DEMO)/synthme/cas_long --matching megc2020

$(WORKDIR)/results.json: | $(STAMP)
	$(PY) -m mer_jax.main --config=configs/synth_demo.py --workdir=$(WORKDIR)

complexity: $(STAMP)
	$(PY) -m mer_jax.complexity --config=configs/cde.py

# Lint and format check, without changing files. What they report is mostly mended by
#   $(VENV)/bin/ruff check --fix --exit-zero . && $(VENV)/bin/ruff format .
# (then read the diff; `ruff check .` lists what needs a hand).
lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -n 2 --dist loadfile --durations=25 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache

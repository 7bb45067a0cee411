# The README's two commands: `make figures` and `make test`. Both set everything up themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Progress bars stay on for people, off in headless runs (tqdm reads TQDM_* defaults from the environment).
HEADLESS := TQDM_DISABLE=1 MPLBACKEND=Agg

.PHONY: all venv data figures test unit expected bench lab clean clean-all
all: figures

# `make venv TORCH=cpu` (or `make test TORCH=cpu`, ...) first installs PyTorch's CPU-only build into the new venv:
# on Linux a plain `pip install torch` pulls a multi-GB CUDA build.  The pin below then finds it installed.
TORCH ?=
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu

# The venv's kernels log only errors (ipython_kernel_config.py): no warning about kernels talking TCP on localhost.
venv: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(filter cpu,$(TORCH)),$(PY) -m pip install --quiet torch==2.13.0 --index-url $(TORCH_CPU_INDEX))
	$(PY) -m pip install --quiet -e '.[notebooks,dev]'
	mkdir -p $(VENV)/etc/ipython && echo 'c.IPKernelApp.log_level = "ERROR"' > $(VENV)/etc/ipython/ipython_kernel_config.py
	touch $@

data: venv
	$(PY) scripts/fetch_data.py

# Execute every notebook at full size, writing all plots into figures/; each notebook is replaced only
# after it ran without error (scripts/run_notebooks.py), so a killed or failing run leaves it as it was.
figures: venv data
	$(HEADLESS) $(PY) scripts/run_notebooks.py --size full

# Unit tests, the committed notebooks' outputs, and each notebook re-run at the reduced size of params/
# (papermill): its verdicts must equal tests/expected/ (refresh with `make expected` after an intended
# change), and nbval re-executes it and compares the claim cell (same text twice).  Every kernel the tests
# start writes its figures under build/ci/ (run cache: results/, ignored), never into the committed figures/.
test: venv data
	rm -rf build/ci
	$(HEADLESS) $(PY) scripts/run_notebooks.py --size ci --out build/ci
	$(HEADLESS) NUP_REDUCED_DIR=build/ci NUP_FIGURES_DIR=build/ci/figures $(PY) -m pytest tests build/ci/*.ipynb --nbval-lax --nbval-current-env -p no:cacheprovider

unit: venv
	$(HEADLESS) $(PY) -m pytest tests

# Benchmarks (each prints ratios against baselines timed in the same process; --quick for a check):
# nup's sharpness against peer packages and eigsh on three setups, then train() against a bare loop,
# each diagnostic's share of a step, and a sweep serial against n_jobs=2.
bench: venv data
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/bench_eigen.py
	$(PY) bench/bench_train.py

# The verdicts of the reduced runs become the expectation that `make test` checks.
expected: venv data
	rm -rf build/ci
	$(HEADLESS) $(PY) scripts/run_notebooks.py --size ci --out build/ci
	$(PY) scripts/run_notebooks.py --write-expected build/ci

# JupyterLab on the repository root (so figures/ and the README are browsable), opened on notebooks/.
# --allow-root: containers often run as root. Bound to localhost only.
lab: venv data
	$(PY) -c "import jupyterlab" 2>/dev/null || $(PY) -m pip install --quiet -e '.[lab]'
	$(PY) -m jupyter lab --ip=127.0.0.1 --allow-root --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks $(LAB_ARGS)

clean:
	rm -rf build results .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

clean-all: clean
	rm -rf $(VENV) data

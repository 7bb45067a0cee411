# The README's two commands: `make figures` and `make test`. Both set everything up themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Progress bars stay on for people, off in headless runs (tqdm reads TQDM_* defaults from the environment).
HEADLESS := TQDM_DISABLE=1 MPLBACKEND=Agg

.PHONY: all venv data figures test unit notebooks-ci bench lab clean clean-all
all: figures

venv: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[notebooks,dev]'
	touch $@

data: venv
	$(PY) scripts/fetch_data.py

# Execute every notebook at full size, in place, writing all plots into figures/.
figures: venv data
	$(HEADLESS) $(PY) scripts/run_notebooks.py --size full

# Unit tests, the committed notebooks' outputs, and each notebook re-run at the reduced size of params/
# (papermill), whose claim cells nbval then re-executes and compares.
test: venv data
	rm -rf build/ci
	$(HEADLESS) $(PY) scripts/run_notebooks.py --size ci --out build/ci
	$(HEADLESS) NUP_REDUCED_DIR=build/ci $(PY) -m pytest tests build/ci/*.ipynb --nbval-lax --nbval-current-env -p no:cacheprovider

unit: venv
	$(HEADLESS) $(PY) -m pytest tests

bench: venv data
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/bench_eigen.py

lab: venv
	$(PY) -c "import jupyterlab" 2>/dev/null || $(PY) -m pip install --quiet -e '.[lab]'
	$(PY) -m jupyter lab --ip=127.0.0.1 --notebook-dir=notebooks

clean:
	rm -rf build results .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

clean-all: clean
	rm -rf $(VENV) data

"""The committed notebooks: structure, outputs, inline figures, claim cells, and the regression test of
the reduced runs' verdicts.

``make test`` re-runs each notebook at the reduced size of ``params/`` into ``build/ci``
(``$NUP_REDUCED_DIR``).  Its claim cell must print exactly the verdicts committed in
``tests/expected/<notebook>.txt``: a change to ``nup`` that flips a verdict fails here, naming the
notebook and the line.  After an intended change, ``make expected`` refreshes those files (review the
diff before committing).  The committed full-size verdicts are the ones the README summarizes.
"""

import difflib
import os
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXPECTED = ROOT / "tests" / "expected"
VERDICT = re.compile(r"^.+: (True|False|undecided)$")
MAX_CELL_LINES = 25


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def claim_text(nb) -> str:
    cell = _code_cells(nb)[-1]
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_there_are_notebooks():
    assert NOTEBOOKS, "no numbered notebooks found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_structure_and_outputs(path):
    nb = nbformat.read(path, as_version=4)
    code = _code_cells(nb)
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell must be tagged 'parameters'"
    assert "nbval-check-output" in code[-1].metadata.get("tags", []), "the last code cell is the claim cell"
    assert any(c.outputs for c in code), "committed without outputs"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"error outputs: {[e.get('ename') for e in errors]}"
    assert "papermill" not in nb.metadata and not any("papermill" in c.metadata for c in nb.cells), \
        "papermill metadata must be stripped (scripts/run_notebooks.py does it)"
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in code), \
        "the committed notebook must run at the defaults of its parameters cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_saved_figure_is_shown_inline(path):
    code = _code_cells(nbformat.read(path, as_version=4))
    saves = sum(c.source.count("savefig(") for c in code)
    images = sum(1 for c in code for o in c.outputs if "image/png" in o.get("data", {}))
    assert saves > 0, "a notebook shows its evidence in at least one figure"
    assert images == saves, f"{saves} savefig calls but {images} inline PNG outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_thin(path):
    """Parameters, one validation call, run, plots, claims: the analysis lives in nup.experiments."""
    code = _code_cells(nbformat.read(path, as_version=4))
    for i, cell in enumerate(code):
        lines = cell.source.splitlines()
        assert len(lines) <= MAX_CELL_LINES, f"code cell {i} has {len(lines)} lines (at most {MAX_CELL_LINES})"
        defined = re.findall(r"^(?:def|class) (\w+)", cell.source, flags=re.M)
        assert not defined, f"code cell {i} defines {defined}: put analysis helpers in nup.experiments"
    assert ".SCHEMA.validate(globals())" in code[1].source, "the second code cell validates the parameters"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_claim_cell_is_a_list_of_verdicts_and_the_readme_links_it(path):
    """The verdict lines stay in the notebook; the README's findings table links it (tests/test_readme.py
    checks that every number the README keeps is one the notebook prints)."""
    lines = claim_text(nbformat.read(path, as_version=4)).strip().splitlines()
    assert lines, "the claim cell printed nothing"
    assert f"notebooks/{path.name}" in (ROOT / "README.md").read_text()
    for line in lines:
        assert VERDICT.match(line), f"not a verdict line: {line!r}"


def _statements(text):
    return [line.rsplit(": ", 1)[0] for line in text.strip().splitlines()]


def _reduced(path):
    reduced_dir = os.environ.get("NUP_REDUCED_DIR")
    if not reduced_dir:
        pytest.skip("NUP_REDUCED_DIR is not set: `make test` sets it after running the reduced notebooks")
    reduced = Path(reduced_dir)
    if not reduced.is_absolute():
        reduced = ROOT / reduced
    return nbformat.read(reduced / path.name, as_version=4)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_reduced_run_makes_the_committed_statements(path):
    reduced_text = claim_text(_reduced(path))
    assert all(VERDICT.match(line) for line in reduced_text.strip().splitlines()), reduced_text
    assert _statements(reduced_text) == _statements(claim_text(nbformat.read(path, as_version=4)))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_reduced_run_verdicts_equal_the_expectation(path):
    expected_file = EXPECTED / f"{path.stem}.txt"
    assert expected_file.exists(), f"no {expected_file.relative_to(ROOT)}: run `make expected` and commit it"
    expected = expected_file.read_text().strip().splitlines()
    actual = claim_text(_reduced(path)).strip().splitlines()
    if actual != expected:
        diff = "\n".join(difflib.unified_diff(expected, actual, "expected", "reduced run", lineterm="", n=0))
        pytest.fail(f"{path.name}: the reduced run's verdicts differ from {expected_file.relative_to(ROOT)}:\n{diff}\n"
                    "If the change is intended, run `make expected` and commit the new expectation.")


def _lab_kernelspec() -> dict:
    """The kernelspec JupyterLab writes on save: the venv's ``python3`` kernel's name, display name, language."""
    import json
    import sys

    spec = json.loads((Path(sys.prefix) / "share" / "jupyter" / "kernels" / "python3" / "kernel.json").read_text())
    return {"display_name": spec["display_name"], "language": spec["language"], "name": "python3"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_opening_and_saving_in_jupyterlab_changes_nothing(path):
    """Lab's autosave rewrites the kernelspec and re-serializes with nbformat: both must be no-ops."""
    text = path.read_text()
    nb = nbformat.reads(text, as_version=4)
    assert dict(nb.metadata.kernelspec) == _lab_kernelspec()
    nb.metadata.kernelspec = _lab_kernelspec()
    assert nbformat.writes(nb) + "\n" == text, "an nbformat round trip with the lab's kernelspec changes the file"


def test_test_kernels_write_figures_under_build():
    """The kernels nbval starts inherit this environment: figures must go to build/, never to figures/."""
    if not os.environ.get("NUP_REDUCED_DIR"):
        pytest.skip("only inside `make test` (which sets NUP_REDUCED_DIR)")
    figures = Path(os.environ.get("NUP_FIGURES_DIR", ROOT / "figures")).resolve()
    assert (ROOT / "build").resolve() in figures.parents, f"kernels would write figures to {figures}"

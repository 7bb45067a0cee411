"""The committed notebooks: structure, outputs, claim cells, and agreement with the README.

``make test`` also re-runs each notebook at the reduced size of ``params/`` into ``build/ci``
(``$NUP_REDUCED_DIR``) and nbval re-executes those copies (same claim text twice).  Here the
reduced claim cells must make the same statements as the committed full-size ones; their
True/False may differ, since some claims only show at full size, so the verdicts that count
are the committed full-size ones, which the README must report verbatim.
"""

import os
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
VERDICT = re.compile(r"^.+: (True|False)$")


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
def test_claim_cell_is_a_list_of_verdicts_stated_in_the_readme(path):
    lines = claim_text(nbformat.read(path, as_version=4)).strip().splitlines()
    assert lines, "the claim cell printed nothing"
    readme = (ROOT / "README.md").read_text()
    assert f"notebooks/{path.name}" in readme
    for line in lines:
        assert VERDICT.match(line), f"not a verdict line: {line!r}"
        assert line in readme, f"the README does not report this verdict: {line!r}"


def _statements(text):
    return [line.rsplit(": ", 1)[0] for line in text.strip().splitlines()]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_reduced_run_makes_the_committed_statements(path):
    reduced_dir = os.environ.get("NUP_REDUCED_DIR")
    if not reduced_dir:
        pytest.skip("NUP_REDUCED_DIR is not set: `make test` sets it after running the reduced notebooks")
    reduced = Path(reduced_dir)
    if not reduced.is_absolute():
        reduced = ROOT / reduced
    reduced_nb = nbformat.read(reduced / path.name, as_version=4)
    reduced_text = claim_text(reduced_nb)
    assert all(VERDICT.match(line) for line in reduced_text.strip().splitlines()), reduced_text
    assert _statements(reduced_text) == _statements(claim_text(nbformat.read(path, as_version=4)))

"""Bad papermill parameters stop each notebook in its first cells with one clear message.

Every numbered notebook has a ``parameters`` cell followed by a validation cell.  Here both are
executed in-process with each parameter replaced by a bad value of its kind (a string for a
number, an empty list, an unknown option); the validation cell must raise a ``ValueError`` that
names the parameter.  One real papermill run checks the same through the kernel.
"""

import ast
import math
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _first_cells(path):
    code = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    return code[0], code[1]


def _parameters(source):
    """Top-level ``name = literal`` assignments of the parameters cell."""
    params = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                params[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return params


def _bad_values(value):
    if isinstance(value, bool):
        return ["yes"]
    if isinstance(value, (int, float)):
        return ["4", math.nan]
    if isinstance(value, (list, tuple)):
        return [[], ["no-such-value"]] if value and isinstance(value[0], str) else [[]]
    if isinstance(value, str):
        return ["no-such-option"]
    if isinstance(value, dict):
        return ["not-a-dict"]
    return []


CASES = [(path, name, bad) for path in NOTEBOOKS for name, value in _parameters(_first_cells(path)[0]).items()
         for bad in _bad_values(value)]


@pytest.mark.parametrize("path,name,bad", CASES, ids=[f"{p.stem}-{n}-{b!r}" for p, n, b in CASES])
def test_validation_cell_names_the_bad_parameter(path, name, bad):
    parameters, validation = _first_cells(path)
    namespace = {}
    exec(parameters, namespace)
    namespace[name] = bad
    with pytest.raises(ValueError, match=name):
        exec(validation, namespace)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_defaults_pass_validation(path):
    parameters, validation = _first_cells(path)
    namespace = {}
    exec(parameters, namespace)
    exec(validation, namespace)


def test_papermill_stops_in_the_validation_cell(tmp_path):
    import papermill as pm

    notebook = NOTEBOOKS[0]
    name = next(iter(_parameters(_first_cells(notebook)[0])))
    with pytest.raises(pm.PapermillExecutionError) as info:
        pm.execute_notebook(notebook, tmp_path / "out.ipynb", parameters={name: "not a valid value"},
                            kernel_name="python3", progress_bar=False, cwd=str(notebook.parent))
    assert info.value.ename == "ValueError" and name in info.value.evalue
    executed = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    failed = [i for i, c in enumerate(code) if any(o.output_type == "error" for o in c.outputs)]
    assert failed == [2]  # parameters, injected parameters, then the validation cell

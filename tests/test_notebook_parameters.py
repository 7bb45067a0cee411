"""Notebook parameters: one schema per notebook (``nup.experiments.<module>.SCHEMA``) checks them.

Every numbered notebook has a ``parameters`` cell followed by a validation cell.  Here both are
executed in-process with each parameter replaced by a bad value of its kind (a string for a
number, an empty list, an unknown option); the validation cell must raise a ``ValueError`` that
names the parameter.  The reduced sizes (``params/*.yaml``), the GPU sizes (``params/gpu/*.yaml``)
and every ``-p``/``-y`` papermill example in the README must validate too.  One real papermill run
checks the same through the kernel.
"""

import ast
import math
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from nup.experiments import all_modules
from nup.experiments.schema import Schema

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PARAM_FILES = sorted((ROOT / "params").glob("*.yaml")) + sorted((ROOT / "params" / "gpu").glob("*.yaml"))


def _first_cells(path):
    code = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    return code[0], code[1]


def _parameters(source):
    """Top-level ``name = literal`` and ``name: type = literal`` assignments of the parameters cell."""
    params = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target = node.targets[0]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            target = node.target
        else:
            continue
        try:
            params[target.id] = ast.literal_eval(node.value)
        except ValueError:
            pass
    return params


def test_parameters_parser_reads_annotated_assignments():
    assert _parameters("a = 1  # c\nb: int = 2\nc: list = [1, 2]\nd: float\n") == {"a": 1, "b": 2, "c": [1, 2]}


def test_annotate_parameters_types_every_parameter_from_the_schema(tmp_path):
    """scripts/annotate_parameters.py on a copy of each notebook: every parameter gets its schema's type,
    values and names are unchanged, a second run changes nothing, and papermill infers the types."""
    import importlib.util

    from papermill.inspection import _infer_parameters
    from papermill.iorw import load_notebook_node

    spec = importlib.util.spec_from_file_location("annotate_parameters", ROOT / "scripts" / "annotate_parameters.py")
    annotate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(annotate)
    for path in NOTEBOOKS:
        copy = tmp_path / path.name
        copy.write_bytes(path.read_bytes())
        before = _parameters(_first_cells(copy)[0])
        annotate.annotate(copy)  # False once the committed notebooks are annotated
        source = _first_cells(copy)[0]
        assert _parameters(source) == before
        schema = all_modules()[path.stem].SCHEMA
        annotated = {n.target.id: n.annotation.id for n in ast.parse(source).body if isinstance(n, ast.AnnAssign)}
        assert annotated == {name: annotate.type_name(p) for name, p in schema.params.items()}
        assert annotate.annotate(copy) is False
        inferred = {p.name: p.inferred_type_name for p in _infer_parameters(load_notebook_node(str(copy)))}
        # papermill skips a line with a second "=" (e.g. "(>= 64)" in its comment); the others carry the type
        assert inferred and all(inferred[name] == annotated[name] for name in inferred), inferred


def _defaults(stem):
    return _parameters(_first_cells(ROOT / "notebooks" / f"{stem}.ipynb")[0])


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
    with pytest.raises(ValueError, match=re.escape(name)):
        exec(validation, namespace)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_has_an_experiment_module_whose_schema_is_its_parameters_cell(path):
    module = all_modules().get(path.stem)
    assert module is not None, f"no nup.experiments module declares NOTEBOOK = {path.stem!r}"
    assert isinstance(module.SCHEMA, Schema) and callable(module.run_experiment) and callable(module.claims)
    assert not hasattr(module, "run"), "a notebook's whole experiment is run_experiment (nup.run is one training run)"
    code = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert sum("frames = experiment.run_experiment(p)" in source for source in code) == 1, \
        "one code cell runs the experiment: frames = experiment.run_experiment(p)"
    assert list(_defaults(path.stem)) == list(module.SCHEMA.names), \
        "the parameters cell and the schema must list the same names, in the same order"
    module.SCHEMA.validate(_defaults(path.stem))


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_parameter_sets_validate(path):
    module = all_modules().get(path.stem)
    assert module is not None, f"{path.name} names no notebook"
    overrides = yaml.safe_load(path.read_text()) or {}
    unknown = set(overrides) - set(module.SCHEMA.names)
    assert not unknown, f"unknown parameter(s) {sorted(unknown)}"
    module.SCHEMA.validate({**_defaults(path.stem), **overrides})


def _readme_papermill_examples():
    """(notebook stem, {name: value}) for each ``papermill notebooks/NN_x.ipynb ... -p/-y`` in the README."""
    text = (ROOT / "README.md").read_text()
    examples = []
    for command in re.findall(r"papermill[^\n`]*", text):
        notebook = re.search(r"notebooks/(\d\d_\w+)\.ipynb", command)
        if not notebook:
            continue
        values = {}
        for name, value in re.findall(r"-p (\w+) (\S+)", command):
            values[name] = yaml.safe_load(value)
        for block in re.findall(r"-y \"([^\"]+)\"", command):
            values.update(yaml.safe_load(block))
        examples.append((notebook.group(1), values))
    return examples


def test_readme_papermill_examples_use_real_parameters():
    examples = _readme_papermill_examples()
    assert examples, "the README shows how to run a notebook at another size with papermill"
    for stem, values in examples:
        module = all_modules()[stem]
        unknown = set(values) - set(module.SCHEMA.names)
        assert not unknown, f"README papermill example for {stem} uses unknown parameter(s) {sorted(unknown)}"
        module.SCHEMA.validate({**_defaults(stem), **values})


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

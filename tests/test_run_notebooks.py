"""scripts/run_notebooks.py replaces a notebook only after it ran without error.

A run killed with SIGKILL part-way, and a run whose cell raises, must leave the notebook byte for byte
as it was (papermill rewrites its output as it goes, so executing in place would not)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "run_notebooks.py"
RUNNING = ROOT / "build" / "running"


def _script_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_notebooks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _notebook(path: Path, body: str) -> bytes:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("n = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print('first cell ran', flush=True)"),
                nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)
    return path.read_bytes()


def _run(path: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "TQDM_DISABLE": "1", "MPLBACKEND": "Agg"}
    return subprocess.Popen([sys.executable, str(SCRIPT), "--size", "full", str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)


def test_a_run_killed_part_way_leaves_the_notebook_as_it_was(tmp_path):
    path = tmp_path / "99_slow.ipynb"
    before = _notebook(path, "import time\ntime.sleep(120)")
    proc = _run(path)
    running = RUNNING / f"99_slow.{proc.pid}.ipynb"
    deadline = time.monotonic() + 90
    # Wait until papermill has written the first cell's output into its temporary copy, then kill.
    while time.monotonic() < deadline and not (running.exists() and b"first cell ran" in running.read_bytes()):
        time.sleep(0.2)
    assert running.exists(), "the run never started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert path.read_bytes() == before
    running.unlink(missing_ok=True)


def test_a_failing_cell_leaves_the_notebook_as_it_was(tmp_path):
    path = tmp_path / "99_failing.ipynb"
    before = _notebook(path, "raise RuntimeError('boom')")
    proc = _run(path)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode != 0 and "boom" in output
    assert path.read_bytes() == before
    assert not list(RUNNING.glob(f"99_failing.{proc.pid}.ipynb")), "the temporary copy is removed"


def test_a_clean_run_replaces_the_notebook_and_strips_papermill_metadata(tmp_path):
    path = tmp_path / "99_ok.ipynb"
    _notebook(path, "print(n + 1)")
    proc = _run(path)
    assert proc.wait(timeout=120) == 0, proc.stdout.read().decode()
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[-1].outputs[0]["text"] == "2\n"
    assert "papermill" not in nb.metadata and not any("papermill" in c.metadata for c in nb.cells)


@pytest.mark.parametrize("stem", ["01_edge_of_chaos"])
def test_write_expected_refuses_a_missing_reduced_run(tmp_path, stem):
    result = subprocess.run([sys.executable, str(SCRIPT), "--write-expected", str(tmp_path)], capture_output=True,
                            text=True)
    assert result.returncode == 1 and f"no reduced run of {stem}.ipynb" in result.stdout


def test_a_bare_notebook_name_resolves_and_an_unknown_one_names_the_choices():
    run_notebooks = _script_module()
    assert run_notebooks.resolve_notebook(Path("01_edge_of_chaos")).name == "01_edge_of_chaos.ipynb"
    assert run_notebooks.resolve_notebook(Path("01_edge_of_chaos.ipynb")).name == "01_edge_of_chaos.ipynb"
    with pytest.raises(SystemExit, match="not found.*01_edge_of_chaos"):
        run_notebooks.resolve_notebook(Path("99_nothing"))


def test_the_timing_table_compares_the_total_with_the_budget():
    run_notebooks = _script_module()
    table = run_notebooks.timing_table([("01_a", 100.0, 150.0), ("02_b", 800.0, 1500.0)], "full")
    assert "02_b" in table and "over its 12-minute budget" in table.splitlines()[2]
    assert "total" in table and "within" in table.splitlines()[-1]

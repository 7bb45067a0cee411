"""Execute the numbered notebooks headlessly with papermill.

    python scripts/run_notebooks.py --size full                 # make figures: the committed notebooks
    python scripts/run_notebooks.py --size ci --out build/ci    # make test: reduced sizes from params/
    python scripts/run_notebooks.py --write-expected build/ci   # make expected: refresh tests/expected/

Full-size runs replace ``notebooks/NN_*.ipynb`` (outputs included, for readers and nbval) and write
figures to ``figures/``; reduced runs write copies and figures under ``--out``, so they never touch
the committed notebooks or figures.

Every notebook executes into a temporary file under ``build/running/`` and replaces its destination
by a rename only when every cell ran without error: a kill, a crash or a failing cell leaves the
previous notebook as it was (papermill rewrites its output file as it goes, so executing in place
would leave it half-run).  papermill's timing metadata is stripped, so reruns give clean diffs.

Kernels are shut down without the SIGINT that jupyter_client sends first (``QuietShutdownKernelManager``):
after a clean notebook the kernel is idle, and that interrupt only made it log
"[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel" when it landed inside a message handler.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import nbformat
import papermill as pm
import yaml
from jupyter_client.manager import AsyncKernelManager

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
PARAMS = ROOT / "params"
EXPECTED = ROOT / "tests" / "expected"
RUNNING = ROOT / "build" / "running"
# DEVELOPERS.md's budgets for a full run on a 2-core CPU from an empty cache.
BUDGET_PER_NOTEBOOK_S = 12 * 60
BUDGET_TOTAL_S = 60 * 60


# What JupyterLab writes when it saves a notebook on the venv's ipykernel: committed notebooks carry exactly
# this, so opening and autosaving one in `make lab` changes nothing.
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


class QuietShutdownKernelManager(AsyncKernelManager):
    """jupyter_client's kernel manager, except that shutting a kernel down does not interrupt it first.

    ``shutdown_kernel`` sends SIGINT and then the shutdown request; an idle kernel needs no interrupt,
    and one that arrives while the kernel handles a message is logged as an error ("KeyboardInterrupt
    caught in kernel") although nothing failed.  A kernel still busy is killed after the shutdown
    request's grace period, as before.  Interrupts outside a shutdown are unchanged."""

    async def _async_interrupt_kernel(self) -> None:
        if self.shutting_down:
            return
        await super()._async_interrupt_kernel()


def strip_metadata(nb) -> None:
    """Drop papermill's run metadata (timings, paths) and saved widget state (progress bars); set the
    kernelspec JupyterLab would write."""
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)


def reduced_parameters(notebook: Path) -> dict:
    path = PARAMS / f"{notebook.stem}.yaml"
    return yaml.safe_load(path.read_text()) or {} if path.exists() else {}


def claim_text(nb) -> str:
    """What the claim cell (the last code cell) printed."""
    cell = [c for c in nb.cells if c.cell_type == "code"][-1]
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def execute(notebook: Path, output: Path, parameters: dict) -> None:
    """Run ``notebook`` into ``output`` atomically: ``output`` is replaced only after a clean run."""
    RUNNING.mkdir(parents=True, exist_ok=True)
    running = RUNNING / f"{output.stem}.{os.getpid()}.ipynb"
    try:
        pm.execute_notebook(notebook, running, parameters=parameters, cwd=str(NOTEBOOKS), kernel_name="python3",
                            progress_bar=False, log_output=False, kernel_manager_class=QuietShutdownKernelManager)
        nb = nbformat.read(running, as_version=4)
        strip_metadata(nb)
        nbformat.write(nb, running)
        os.replace(running, output)
    finally:
        running.unlink(missing_ok=True)


def write_expected(reduced_dir: Path) -> int:
    EXPECTED.mkdir(parents=True, exist_ok=True)
    for notebook in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        reduced = reduced_dir / notebook.name
        if not reduced.exists():
            print(f"no reduced run of {notebook.name} in {reduced_dir}: run `make test` (or --size ci) first")
            return 1
        text = claim_text(nbformat.read(reduced, as_version=4))
        (EXPECTED / f"{notebook.stem}.txt").write_text(text)
        print(f"tests/expected/{notebook.stem}.txt <- {reduced}")
    return 0


def resolve_notebook(arg: Path) -> Path:
    """A path, or a bare name such as ``01_edge_of_chaos`` or ``01_edge_of_chaos.ipynb`` in notebooks/."""
    for candidate in (arg, NOTEBOOKS / arg.name, NOTEBOOKS / f"{arg.name}.ipynb"):
        if candidate.is_file() and candidate.suffix == ".ipynb":
            return candidate.resolve()
    names = ", ".join(p.stem for p in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")))
    raise SystemExit(f"run_notebooks.py: notebook {str(arg)!r} not found; give a path to an .ipynb or one of: {names}")


def children_cpu_seconds() -> float:
    """CPU time (user + system) of this process's finished children: the kernels papermill started."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timing_table(rows: list[tuple[str, float, float]], size: str) -> str:
    """Each notebook's wall and CPU time, and the total against the budget (full size only)."""
    lines = [f"{'notebook':<40} {'wall s':>8} {'CPU s':>8}"]
    lines += [f"{name:<40} {wall:8.0f} {cpu:8.0f}" + ("  over its 12-minute budget" if size == "full" and
                                                      wall > BUDGET_PER_NOTEBOOK_S else "") for name, wall, cpu in rows]
    total_wall, total_cpu = sum(r[1] for r in rows), sum(r[2] for r in rows)
    lines.append(f"{'total':<40} {total_wall:8.0f} {total_cpu:8.0f}" +
                 (f"  (budget {BUDGET_TOTAL_S // 60} min: {'within' if total_wall <= BUDGET_TOTAL_S else 'OVER'})"
                  if size == "full" else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("full", "ci"), default="full")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "ci", help="output folder for --size ci")
    parser.add_argument("--write-expected", type=Path, metavar="REDUCED_DIR",
                        help="copy the claim output of the reduced runs in REDUCED_DIR to tests/expected/")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/[0-9][0-9]_*.ipynb")
    args = parser.parse_args(argv)
    if args.write_expected:
        return write_expected(args.write_expected.resolve())
    notebooks = [resolve_notebook(p) for p in args.notebooks] or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if args.size == "ci":
        args.out = args.out.resolve()
        args.out.mkdir(parents=True, exist_ok=True)
        os.environ["NUP_FIGURES_DIR"] = str(args.out / "figures")
    timings = []
    for notebook in notebooks:
        output = notebook if args.size == "full" else args.out / notebook.name
        parameters = reduced_parameters(notebook) if args.size == "ci" else {}
        start, cpu = time.perf_counter(), children_cpu_seconds()
        print(f"[{args.size}] {notebook.name} {parameters or ''}", flush=True)
        execute(notebook, output, parameters)
        timings.append((notebook.stem, time.perf_counter() - start, children_cpu_seconds() - cpu))
        print(f"[{args.size}] {notebook.name} done in {timings[-1][1]:.0f} s", flush=True)
    print(timing_table(timings, args.size), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

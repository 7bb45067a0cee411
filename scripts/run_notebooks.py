"""Execute the numbered notebooks headlessly with papermill.

    python scripts/run_notebooks.py --size full            # in place, full size: make figures
    python scripts/run_notebooks.py --size ci --out build/ci   # reduced size from params/: make test

Full-size runs overwrite ``notebooks/NN_*.ipynb`` (outputs included, for readers and nbval)
and write figures to ``figures/``; reduced runs write copies and figures under ``--out``, so
they never touch the committed notebooks or figures.  papermill's timing metadata is stripped
from every notebook written, so reruns give clean diffs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
import papermill as pm
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
PARAMS = ROOT / "params"


def strip_metadata(path: Path) -> None:
    """Drop papermill's run metadata (timings, paths) and saved widget state (progress bars) in place."""
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)


def reduced_parameters(notebook: Path) -> dict:
    path = PARAMS / f"{notebook.stem}.yaml"
    return yaml.safe_load(path.read_text()) or {} if path.exists() else {}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("full", "ci"), default="full")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "ci", help="output folder for --size ci")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/[0-9][0-9]_*.ipynb")
    args = parser.parse_args(argv)
    notebooks = [p.resolve() for p in args.notebooks] or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if args.size == "ci":
        args.out = args.out.resolve()
        args.out.mkdir(parents=True, exist_ok=True)
        os.environ["NUP_FIGURES_DIR"] = str(args.out / "figures")
    for notebook in notebooks:
        output = notebook if args.size == "full" else args.out / notebook.name
        parameters = reduced_parameters(notebook) if args.size == "ci" else {}
        start = time.perf_counter()
        print(f"[{args.size}] {notebook.name} {parameters or ''}", flush=True)
        pm.execute_notebook(notebook, output, parameters=parameters, cwd=str(NOTEBOOKS), kernel_name="python3",
                            progress_bar=False, log_output=False)
        strip_metadata(output)
        print(f"[{args.size}] {notebook.name} done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

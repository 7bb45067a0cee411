"""Annotate each notebook's ``parameters`` cell with the types of its schema, for ``papermill --help-notebook``.

    python scripts/annotate_parameters.py notebooks/[0-9][0-9]_*.ipynb          # rewrite in place
    python scripts/annotate_parameters.py --check notebooks/[0-9][0-9]_*.ipynb  # exit 1 if any would change

papermill infers a parameter's type only from an annotation (``steps: int = 100``); without one
``--help-notebook`` says "Unknown type".  The types come from the notebook's schema,
``nup.experiments.module_for(stem).SCHEMA`` (Int -> int, Float -> float, Bool -> bool, Choice -> str,
List -> list, Dict -> dict).  Only the name of each top-level ``name = value`` line changes; values,
comments and alignment after them stay, and an annotated assignment is left as it is (a second run
changes nothing).  Nothing else in the notebook is touched, outputs included.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import nbformat

from nup.experiments import module_for
from nup.experiments.schema import Bool, Choice, Dict, Float, Int, List

TYPES = ((Bool, "bool"), (Int, "int"), (Float, "float"), (Choice, "str"), (List, "list"), (Dict, "dict"))


def type_name(param) -> str:
    for kind, name in TYPES:
        if isinstance(param, kind):
            return name
    raise ValueError(f"parameter {param.name!r}: no annotation for schema type {type(param).__name__}")


def annotate_source(source: str, types: dict[str, str]) -> str:
    """``source`` with ``: <type>`` after the name of each top-level ``name = value`` whose name is in ``types``."""
    lines = source.split("\n")
    edits = []
    for node in ast.parse(source).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in types):
            target = node.targets[0]
            edits.append((target.lineno - 1, target.end_col_offset, f": {types[target.id]}"))
    for row, col, text in sorted(edits, reverse=True):
        line = lines[row]
        # keep the value column where it was when the name is followed by alignment spaces
        rest = line[col:]
        spaces = len(rest) - len(rest.lstrip(" "))
        keep = max(1, spaces - len(text))
        lines[row] = line[:col] + text + " " * keep + rest.lstrip(" ") if spaces > 1 else line[:col] + text + rest
    return "\n".join(lines)


def parameters_cell(nb):
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"expected one cell tagged 'parameters', found {len(cells)}")
    return cells[0]


def annotate(path: Path, check: bool = False) -> bool:
    """Annotate the parameters cell of the notebook at ``path``; return whether it changed (``check``:
    would change, writing nothing)."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    schema = module_for(path.stem).SCHEMA
    types = {name: type_name(param) for name, param in schema.params.items()}
    cell = parameters_cell(nb)
    new = annotate_source(cell.source, types)
    if new == cell.source:
        return False
    if not check:
        cell.source = new
        nbformat.write(nb, path)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a notebook would change")
    parser.add_argument("notebooks", nargs="+", type=Path)
    args = parser.parse_args(argv)
    changed = [p for p in args.notebooks if annotate(p, check=args.check)]
    for path in changed:
        print(f"{path}: {'would annotate' if args.check else 'annotated'}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())

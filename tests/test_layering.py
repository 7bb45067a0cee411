"""The package's layering, from the import graph (ast, nothing imported): each floor imports only its own
floor and the ones below it; no module imports another module's private name; an experiment never imports
another experiment.  The floors are the ones ``nup/__init__.py`` and docs/contributing.md state."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nup"
FLOORS = ["validation", "version", "plotting", "progress", "core", "theory", "linalg", "diagnostics", "training",
          "analysis", "experiments"]
FLOOR = {"validation": 0, "version": 0, "plotting": 0, "progress": 0, "core": 1, "theory": 2, "linalg": 3,
         "diagnostics": 4, "training": 5, "analysis": 6, "experiments": 7}
SHARED_BY_EXPERIMENTS = {"nup.experiments", "nup.experiments.schema"}  # infrastructure, not an experiment


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _floor(module: str) -> int | None:
    parts = module.split(".")
    return FLOOR.get(parts[1]) if len(parts) > 1 and parts[0] == "nup" else None


def imports(path: Path):
    """``(imported module, imported names, line)`` for every ``nup`` import, TYPE_CHECKING blocks included."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "nup" and node.level == 0:
            yield node.module, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "nup":
                    yield alias.name, [], node.lineno


def violations(package: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        module = _module_name(path)
        if module == "nup":
            continue  # the package root re-exports the public names of every floor
        here = _floor(module)
        for target, names, line in imports(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            there = _floor(target)
            if target == "nup":
                found.append(f"{where} imports the package root (import from the module that defines the name)")
            elif here is not None and there is not None and there > here:
                found.append(f"{where}: {module} (floor {here}) imports {target} (floor {there}), a floor above")
            private = [n for n in names if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))]
            if private and target != module:
                found.append(f"{where}: {module} imports private {private} from {target}")
            if (module.startswith("nup.experiments.") and module not in SHARED_BY_EXPERIMENTS
                    and target.startswith("nup.experiments.") and target not in SHARED_BY_EXPERIMENTS):
                found.append(f"{where}: experiment {module} imports experiment {target}")
    return found


def test_no_import_goes_up_a_floor_or_takes_a_private_name():
    assert violations() == []


def test_the_check_catches_an_upward_import(tmp_path):
    (tmp_path / "nup" / "core").mkdir(parents=True)
    (tmp_path / "nup" / "core" / "bad.py").write_text("from nup.training.loop import train\n"
                                                      "from nup.analysis.fits import _percentile_estimate\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = violations(tmp_path / "nup")
    finally:
        ROOT = saved
    assert any("floor 1" in f and "floor 5" in f for f in found) and any("private" in f for f in found)

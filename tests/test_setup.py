"""The set-up files agree with each other: pyproject.toml is the source of truth."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _names(requirements):
    return {re.split(r"[<>=!\[ ]", r, maxsplit=1)[0].lower(): r for r in requirements}


def test_environment_yml_installs_what_pyproject_declares():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in ("notebooks", "dev"):
        declared += project["optional-dependencies"][extra]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip
    assert _names(r for r in pip if r != "-e .") == _names(declared)


def test_torch_is_pinned_to_the_cpu_wheel_on_disk():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "torch==2.13.0" in project["dependencies"]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.startswith("#")]
    assert "make test" in commands
    # ... and then fails when make test left the tracked tree changed.
    after = "\n".join(commands[commands.index("make test"):])
    assert "git status --porcelain" in after and "exit 1" in after
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make figures" in readme


def test_the_readme_cpu_setup_runs_as_written():
    """The README's CPU-only set-up line, as a dry run from a fresh clone (no venv): the venv is created
    before anything is installed into it, and the CPU-only torch comes before the project."""
    import re
    import subprocess

    readme = (ROOT / "README.md").read_text()
    line = next(l for l in readme.splitlines() if l.startswith("make ") and "TORCH=cpu" in l)
    command = line.split("#")[0].split()
    dry = subprocess.run(["make", "-n", "-B", "--no-print-directory", "-C", str(ROOT), *command[1:]],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    create = next(i for i, l in enumerate(dry) if "-m venv" in l)
    cpu = next(i for i, l in enumerate(dry) if re.search(r"pip install .*torch==2\.13\.0 --index-url \S+/cpu", l))
    project = next(i for i, l in enumerate(dry) if "pip install" in l and "-e '.[" in l)
    assert create < cpu < project

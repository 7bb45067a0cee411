"""One module per notebook: its parameter schema, ``run_experiment(params) -> frames`` and
``claims(frames) -> verdicts``.

Every experiment module defines

* ``NOTEBOOK``: the notebook's file stem (``"01_edge_of_chaos"``);
* ``SCHEMA``: a ``nup.experiments.schema.Schema`` of the notebook's parameters;
* ``run_experiment(params) -> dict[str, DataFrame]``: the notebook's whole experiment at the sizes in ``params``
  (its training runs go through ``nup.run``, one cached run each);
* ``claims(frames, params) -> list[Verdict]``: the verdicts, each with its threshold written next to
  its statement in the module (``nup.analysis.verdicts``).

So a notebook reads: parameters, ``p = experiment.SCHEMA.validate(globals())``,
``frames = experiment.run_experiment(p)``, plots, ``verdicts = experiment.claims(frames, p)``, the table of
numbers, and the claim cell ``print_claims(verdicts)``.  ``module_for(notebook)`` finds a notebook's module.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

__all__ = ["module_for", "all_modules", "RUN_THREADS"]

# Torch threads of every run a notebook makes.  A run's last bits depend on its thread count (see
# nup.training.loop), so the notebooks pin it, and their committed outputs are the same on any machine;
# a notebook's parallelism comes from its ``n_jobs`` worker processes instead.
RUN_THREADS = 1


def all_modules() -> dict[str, ModuleType]:
    """``{notebook stem: experiment module}`` for every module here that declares ``NOTEBOOK``."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name == "schema":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        notebook = getattr(module, "NOTEBOOK", None)
        if notebook is not None:
            found[notebook] = module
    return dict(sorted(found.items()))


def module_for(notebook: str) -> ModuleType:
    """The experiment module of notebook ``notebook`` (a stem such as ``"01_edge_of_chaos"``)."""
    modules = all_modules()
    if notebook not in modules:
        raise ValueError(f"notebook={notebook!r} has no experiment module; known: {', '.join(modules)}")
    return modules[notebook]

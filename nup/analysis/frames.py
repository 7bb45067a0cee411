"""Accessors for the long-format frames that ``nup.sweep`` and ``RunResult.df`` return.

A sweep frame has one row per ``(run, step, metric, layer)`` with ``value``, the config fields that
vary across the sweep (one column each), and per-run ``diverged``, ``diverged_step`` and ``error``.
These helpers answer the questions every notebook asks of it, written once:

* ``metric(frame, name, layer=0)``: the rows of one metric for one layer (``layer=None``: all layers).
* ``per_run(frame, name, how="last")``: one row per run with the run's config columns and the metric
  reduced over steps (``"last"``, ``"first"``, ``"min"``, ``"max"``, ``"mean"``); diverged or failed runs
  get ``NaN`` unless ``keep_diverged``.
* ``series(frame, name, run, layer=0)``: one run's metric as a Series indexed by step.
* ``config_columns(frame)``: the config fields that vary in the sweep.
* ``seed_curves(table, x, value, columns)``: a per-run summary table as one row per seed and one column
  per ``x`` (every point of ``columns``, NaN where a run is missing): the shape ``nup.analysis.fits.
  mean_curve_exponent`` and the paired statistics take.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nup.training.sweep import RUN_COLUMNS
from nup.validation import check_choice

__all__ = ["metric", "per_run", "series", "config_columns", "seed_curves", "REDUCTIONS"]

_PER_RUN = ("diverged", "diverged_step", "error")
REDUCTIONS = ("last", "first", "min", "max", "mean")


def _check_frame(frame) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame) or not set(RUN_COLUMNS) <= set(frame.columns):
        raise ValueError("frame must be a long-format DataFrame with columns step, metric, layer, value "
                         "(nup.sweep(...) or RunResult.df)")
    return frame


def config_columns(frame: pd.DataFrame) -> list[str]:
    """The config fields that vary in a sweep frame (the columns between ``run`` and ``step``)."""
    _check_frame(frame)
    return [c for c in frame.columns if c not in (*RUN_COLUMNS, *_PER_RUN, "run")]


def metric(frame: pd.DataFrame, name: str, layer: int | None = 0) -> pd.DataFrame:
    """The rows of metric ``name`` (and ``layer``, unless ``None``), in their original order."""
    frame = _check_frame(frame)
    mask = frame["metric"] == name
    if layer is not None:
        mask &= frame["layer"] == layer
    return frame[mask]


def per_run(frame: pd.DataFrame, name: str, how: str = "last", layer: int = 0,
            keep_diverged: bool = False) -> pd.DataFrame:
    """One row per run: ``run``, the varying config columns, ``diverged`` and ``value`` (the metric
    reduced over steps by ``how``).  Runs without the metric, and diverged runs unless
    ``keep_diverged``, have ``value = NaN``."""
    frame = _check_frame(frame)
    check_choice("how", how, REDUCTIONS)
    if "run" not in frame.columns:
        frame = frame.assign(run=0)
    keys = ["run", *config_columns(frame)] + [c for c in ("diverged",) if c in frame.columns]
    runs = frame.drop_duplicates("run")[keys].set_index("run")
    rows = metric(frame, name, layer).sort_values(["run", "step"], kind="stable")
    grouped = rows.groupby("run")["value"]
    reduced = {"last": grouped.last, "first": grouped.first, "min": grouped.min, "max": grouped.max,
               "mean": grouped.mean}[how]()
    out = runs.assign(value=reduced.reindex(runs.index).astype(float))
    if not keep_diverged and "diverged" in out.columns:
        out.loc[out["diverged"].astype(bool), "value"] = np.nan
    return out.reset_index()


def series(frame: pd.DataFrame, name: str, run: int | None = None, layer: int = 0) -> pd.Series:
    """One run's metric indexed by step (``run=None`` for a single run's frame such as ``RunResult.df``)."""
    rows = metric(frame, name, layer)
    if run is not None:
        if "run" not in rows.columns:
            raise ValueError(f"run={run!r} given but the frame has no 'run' column; pass run=None")
        rows = rows[rows["run"] == run]
    return rows.set_index("step")["value"].rename(name)


def seed_curves(table: pd.DataFrame, x: str, value: str, columns=None, seed: str = "seed") -> pd.DataFrame:
    """``value`` of a table with one row per run, as seeds (rows) by ``x`` (columns, reindexed to ``columns``
    when given); the first value of a duplicated cell."""
    curves = table.pivot_table(index=seed, columns=x, values=value, aggfunc="first")
    return curves if columns is None else curves.reindex(columns=list(columns))

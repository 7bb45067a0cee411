"""Rank statistics: average ranks (ties share their mean rank) and partial rank correlations.

``partial_rank_correlation(x, y, cells, covariates)``: the Pearson correlation of the ranks of ``x`` and ``y``
after least-squares removal of one indicator per ``cells`` label (an intercept if None) and of the
``covariates``; without controls it is Spearman's rho.  Notebook 04 uses it to ask whether runs with a
larger update cosine show more feature learning at a fixed learning rate and width.

``spearman(x, y)``: Spearman's rho over the pairs where both values are finite (NaN when fewer than 3
remain or one side is constant).

``correlation_by_groups(groups, statistic)``: a correlation of many rows (runs) that come in groups
(seeds) with its leave-one-group-out jackknife-t interval (``nup.analysis.stats.jackknife_groups``), built
on Fisher's ``z = atanh(r)`` and mapped back by ``tanh``, so that it stays inside (-1, 1) and is closer
to symmetric near +-1; ``tests/test_ranks.py`` checks its coverage on clustered data at 5 seeds.
"""

from __future__ import annotations

import math

from collections.abc import Callable

import numpy as np
from scipy.stats import spearmanr

from nup.analysis.stats import Estimate, jackknife_groups

__all__ = ["average_ranks", "partial_rank_correlation", "control_residuals", "spearman", "correlation_by_groups"]


def average_ranks(values) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank (``scipy.stats.rankdata``'s default, faster on the
    small arrays that the bootstrap ranks thousands of times)."""
    v = np.asarray(values, dtype=float)
    order = np.argsort(v, kind="stable")
    ordered = v[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(v)]
    ranks = np.empty(len(v))
    ranks[order] = ((starts + ends + 1) / 2)[np.cumsum(first) - 1]
    return ranks


def partial_rank_correlation(x, y, cells=None, covariates=None) -> float:
    """Rank correlation of ``x`` and ``y`` with the controls removed: the ranks of ``x`` and ``y``
    (average ranks for ties) are regressed by least squares on one indicator per value of ``cells``
    (any labels; an intercept if None) and on the ``covariates`` (columns, used as given), and the
    residuals' Pearson correlation is returned.  NaN when a residual is constant."""
    rx, ry = average_ranks(x), average_ranks(y)
    residual = control_residuals((rx, ry), cells, covariates)
    scale = [np.sqrt(np.sum(r**2)) for r in residual]
    if min(scale) <= 1e-9 * len(rx):
        return math.nan
    return float(np.sum(residual[0] * residual[1]) / (scale[0] * scale[1]))


def control_residuals(values, cells=None, covariates=None):
    """Each array of ``values`` minus its least-squares fit on one indicator per ``cells`` label (an
    intercept if None) and the centred ``covariates``."""
    n = len(values[0])
    if cells is None:
        design = np.ones((n, 1))
        codes = np.zeros(n, dtype=int)
    else:
        _, codes = np.unique(np.asarray(cells), return_inverse=True)
        codes = codes.ravel()
        design = np.eye(codes.max() + 1)[codes]
    if covariates is None:  # least squares on indicators alone: subtract each cell's mean
        counts = np.bincount(codes)
        return [v - (np.bincount(codes, weights=v) / counts)[codes] for v in values]
    if covariates is not None:
        cov = np.asarray(covariates, dtype=float).reshape(n, -1)
        design = np.column_stack([design, cov - cov.mean(0)])
    return [v - design @ np.linalg.lstsq(design, v, rcond=None)[0] for v in values]


def spearman(x, y) -> float:
    """Spearman's rho of ``x`` and ``y`` over the pairs where both are finite; NaN with fewer than 3 such
    pairs or a constant side."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"x and y must be 1-d of equal length, got shapes {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3 or np.ptp(a[keep]) == 0 or np.ptp(b[keep]) == 0:
        return math.nan
    return float(spearmanr(a[keep], b[keep])[0])


def _fisher_z(r: float) -> float:
    return math.atanh(r) if math.isfinite(r) and abs(r) < 1 else math.nan


def correlation_by_groups(groups, statistic: Callable, level: float = 0.95, unit: str = "seeds") -> Estimate:
    """``statistic(rows)``, a correlation of the rows at the given positions, with the leave-one-group-out
    jackknife-t interval of its Fisher z mapped back to a correlation (module docstring).  A correlation
    of exactly +-1 (on all rows or with a group left out) has no finite z: a NaN interval, never a decided
    verdict."""
    est = jackknife_groups(groups, lambda rows: _fisher_z(statistic(rows)), level, unit).map(math.tanh)
    if math.isnan(est.value):  # keep the correlation itself when only its z is infinite
        return Estimate(float(statistic(np.arange(len(np.asarray(groups))))), math.nan, math.nan, level, est.n, unit)
    return est

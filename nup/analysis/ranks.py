"""Rank statistics: average ranks (ties share their mean rank) and partial rank correlations.

``partial_rank_correlation(x, y, cells, covariates)``: the Pearson correlation of the ranks of ``x`` and ``y``
after least-squares removal of one indicator per ``cells`` label (an intercept if None) and of the
``covariates``; without controls it is Spearman's rho.  Notebook 04 uses it to ask whether runs with a
larger update cosine show more feature learning at a fixed learning rate and width.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["average_ranks", "partial_rank_correlation", "control_residuals"]


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

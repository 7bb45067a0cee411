"""Fits with their uncertainty: power laws over independent replicates (seeds), and the percentile bootstrap.

* ``power_law(x, y)``: least squares of ``log y = p log x + log c``; returns ``PowerLaw(exponent, prefactor)``.
* ``mean_curve_exponent(x, curves)``: the exponent of the mean-over-seeds curve with its jackknife-t interval
  over whole seeds (``nup.analysis.stats``), which keeps each seed's curve intact.
* ``bootstrap(replicates, statistic)`` / ``percentile_estimate``: the percentile interval of ``statistic``
  over resamples of the replicates, with a fixed seed, so it is reproducible.  Descriptive only (the
  best-rate bars of notebook 03's figure): a percentile bootstrap over n seeds undercovers at small n (about
  83% at a nominal 95% for n = 5, ``tests/test_stats.py``), so no verdict uses it; verdicts use
  ``nup.analysis.stats`` (jackknife-t).

Why seeds and not points: the points of one curve share a network, so they are not independent;
resampling whole seeds is the honest unit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from nup.analysis.stats import Estimate, check_level, jackknife_t, replicate_data
from nup.validation import check_int

__all__ = ["PowerLaw", "power_law", "mean_curve_exponent", "bootstrap", "percentile_estimate", "Estimate"]


@dataclass(frozen=True)
class PowerLaw:
    exponent: float
    prefactor: float

    def __call__(self, x):
        return self.prefactor * np.asarray(x, dtype=float) ** self.exponent


def power_law(x, y) -> PowerLaw:
    """Least-squares fit of ``y = c x^p`` in log-log space; needs at least two distinct ``x > 0`` and ``y > 0``."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-d of equal length, got shapes {x.shape} and {y.shape}")
    if len(np.unique(x)) < 2 or np.any(x <= 0) or np.any(y <= 0) or not np.all(np.isfinite(y)):
        raise ValueError("power_law needs at least two distinct x > 0 and finite y > 0")
    p, log_c = np.polyfit(np.log(x), np.log(y), 1)
    return PowerLaw(float(p), float(math.exp(log_c)))


def mean_curve_exponent(x, curves) -> Estimate:
    """Exponent ``p`` of ``mean over seeds of y ~ x^p`` with its jackknife-t interval over whole seeds
    (``curves``: one row per seed, one column per ``x``; a seed's curve stays intact, so what a seed shares
    across ``x``, e.g. its data draw, stays paired).  NaN, never a decided verdict, when a value is not
    finite (a diverged run), fewer than two points or seeds, or a mean is not positive."""
    x = np.asarray(x, dtype=float)
    values = np.asarray(curves, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(x):
        raise ValueError(f"curves has shape {values.shape}; it needs one row per seed and one column per x ({len(x)})")
    if len(x) < 2 or len(values) < 2 or not np.isfinite(values).all():
        return Estimate(math.nan, math.nan, math.nan, n=len(values), unit="seeds")

    def exponent(v):
        means = v.mean(axis=0)
        return power_law(x, means).exponent if np.all(means > 0) else math.nan

    return jackknife_t(values, exponent)


def bootstrap(replicates, statistic: Callable, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Estimate:
    """Percentile bootstrap: ``statistic(sample)`` on the replicates and on ``n_boot`` resamples (with
    replacement) of them.  ``replicates`` is an array (resampled along axis 0) or a list of frames
    (resampled as a list).  A resample whose statistic is not finite is dropped; the interval is NaN if
    more than a tenth are."""
    check_int("n_boot", n_boot, minimum=10)
    check_level(level)
    data, is_list = replicate_data(replicates, "replicates")
    n = len(data)
    value = float(statistic(data))
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        sample = [data[i] for i in idx] if is_list else data[idx]
        stats.append(float(statistic(sample)))
    return percentile_estimate(value, stats, level)


def percentile_estimate(value: float, stats, level: float) -> Estimate:
    """``value`` with the ``level`` percentile interval of the resampled ``stats`` (NaN if over a tenth are
    not finite)."""
    stats = np.asarray(stats, dtype=float)
    finite = stats[np.isfinite(stats)]
    if len(finite) < 0.9 * len(stats):
        return Estimate(value, math.nan, math.nan, level)
    alpha = (1 - level) / 2
    low, high = np.quantile(finite, [alpha, 1 - alpha])
    return Estimate(value, float(low), float(high), level)

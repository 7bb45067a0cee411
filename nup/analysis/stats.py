"""Interval estimates over replicates whose coverage holds at the seed counts the notebooks use.

The unit of resampling is always explicit (``unit``): whole *seeds* (independent replicates, e.g. one
network and one data draw each), or *paired seeds* (two measurements on the same seed, whose per-seed
difference is the replicate).  A per-seed offset common to both members of a pair cancels exactly.

Why not a percentile bootstrap: with n seeds it resamples only ``C(2n-1, n)`` distinct samples and its
interval is about ``sqrt((n-1)/n) z/t_{n-1}`` times too narrow; for the mean of normal data it covers
about 75% (n = 3), 83% (n = 5) and 89% (n = 8) at a nominal 95% (``tests/test_stats.py`` simulates
this).  BCa corrects bias and skew but not that width.

The method here, *jackknife-t*: the statistic on all n replicates, its standard error from the n
leave-one-replicate-out values (the jackknife), and the Student-t quantile with n - 1 degrees of
freedom::

    se^2 = (n - 1)/n * sum_i (T_(i) - mean_j T_(j))^2,     interval = T +- t_{n-1, (1+level)/2} se.

For a mean the jackknife standard error is exactly ``s/sqrt(n)``, so the interval is Student's t
interval (exact for normal replicates).  For a smooth statistic (a ratio of means, a power-law exponent
of mean curves) it is the delta-method interval with a t quantile; ``tests/test_stats.py`` checks its
coverage by simulation at n = 5 and 8.  It is deterministic (no resampling seed).

* ``Estimate``: value, interval, level, the number of replicates ``n`` and the ``unit``.
* ``jackknife_t(replicates, statistic)``: the general interval (``replicates``: an array, rows are
  replicates, or a list of per-replicate objects).
* ``mean_interval(values)``: the t interval of a mean over seeds.
* ``paired_log_ratio(numerator, denominator)``: the geometric-mean ratio ``exp(mean_s log(a_s/b_s))``
  over paired seeds, its interval from the t interval of the mean log ratio (multiplicative per-seed
  offsets cancel).
* ``ratio_of_means(numerator, denominator, paired)``: ``mean(a)/mean(b)``; paired replicates are
  resampled together, unpaired ones by a delta method over the two independent samples.
* ``jackknife_groups(groups, statistic)``: leave-one-group-out, for a statistic of many rows (runs) that
  come in groups (seeds): the replicate is the whole group, so what a seed shares across its runs (its
  network, its data draw) is resampled together, ``n`` is the number of groups.
* ``jackknife_of_means(features, statistic)``: a smooth function of column means over thousands of
  independent replicates (networks): the same jackknife as ``jackknife_t``, its leave-one-out means
  in closed form, ``(n mean - x_i)/(n - 1)``, and the statistic vectorized over them.
* ``independent_ratio(numerator, denominator, statistic)``: ``f(means of a)/f(means of b)`` for two
  independent samples: the jackknife variances of the two logs add, t with the smaller n - 1.
* ``mean_over_seeds(frame, by, value)``: per group of a frame, the mean over seeds (first averaged within
  a seed) with its t interval, for error bars.

Maxima and minima (the worst cell of many) are not smooth, and their jackknife is unreliable: a verdict
over many cells decides each cell with its own interval and combines them
(``nup.analysis.verdicts.all_of``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as _scipy_stats

__all__ = ["Estimate", "replicate_data", "check_level", "jackknife_t", "fraction", "mean_interval", "paired_log_ratio",
           "ratio_of_means", "jackknife_groups", "jackknife_of_means", "independent_ratio", "mean_over_seeds",
           "nan_estimate", "UNITS"]

UNITS = ("seeds", "paired seeds", "networks")


@dataclass(frozen=True)
class Estimate:
    """A point estimate with an interval ``(low, high)`` at ``level`` over ``n`` replicates of ``unit``."""

    value: float
    low: float
    high: float
    level: float = 0.95
    n: int | None = None
    unit: str = ""

    @property
    def interval(self) -> tuple[float, float]:
        return (self.low, self.high)

    def map(self, f: Callable[[float], float]) -> Estimate:
        """The estimate under an increasing function ``f`` (e.g. ``exp`` of a log-scale estimate)."""
        return Estimate(f(self.value), f(self.low), f(self.high), self.level, self.n, self.unit)


def check_level(level: float) -> None:
    if not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level={level!r} is not allowed; level must be in (0, 1)")


def _check_unit(unit: str) -> None:
    if unit not in UNITS:
        raise ValueError(f"unit={unit!r} is not allowed; one of {', '.join(map(repr, UNITS))}")


def nan_estimate(n: int | None, unit: str = "seeds", level: float = 0.95) -> Estimate:
    """A NaN estimate over ``n`` replicates of ``unit``: what a statistic gives when it cannot be computed
    (too few replicates, a diverged run).  A verdict on it is never True (``nup.analysis.verdicts`` decides
    a non-finite estimate False)."""
    return Estimate(math.nan, math.nan, math.nan, level, n, unit)


def replicate_data(replicates, unit: str = "seeds") -> tuple:
    """``(data, is_list)``: a list of per-replicate objects as it is, anything else as a float array whose
    rows are the replicates; at least 2 replicates (the ``unit`` names them in the error)."""
    is_list = isinstance(replicates, list)
    data = replicates if is_list else np.asarray(replicates, dtype=float)
    if len(data) < 2:
        raise ValueError(f"an interval needs at least 2 replicates ({unit}), got {len(data)}")
    return data, is_list


def jackknife_t(replicates, statistic: Callable, level: float = 0.95, unit: str = "seeds") -> Estimate:
    """``statistic(replicates)`` with its jackknife-t interval (module docstring).  ``replicates``: an
    array whose rows (axis 0) are the replicates, or a list of per-replicate objects; ``statistic``
    takes the same kind of container.  A non-finite statistic on all or on any leave-one-out sample gives
    a NaN estimate or interval (never a decided verdict)."""
    check_level(level)
    _check_unit(unit)
    data, is_list = replicate_data(replicates, unit)
    n = len(data)
    value = float(statistic(data))
    if not math.isfinite(value):
        return nan_estimate(n, unit, level)
    leave_one_out = np.array([float(statistic([d for j, d in enumerate(data) if j != i] if is_list
                                              else np.delete(data, i, axis=0))) for i in range(n)])
    return _jackknife_estimate(value, leave_one_out, level, unit)


def _jackknife_variance(leave_one_out: np.ndarray) -> float:
    """``(n - 1)/n * sum_i (T_(i) - mean T_(.))^2``; NaN if a leave-one-out value is not finite."""
    if not np.all(np.isfinite(leave_one_out)):
        return math.nan
    n = len(leave_one_out)
    return (n - 1) / n * float(np.sum((leave_one_out - leave_one_out.mean()) ** 2))


def _jackknife_estimate(value: float, leave_one_out: np.ndarray, level: float, unit: str) -> Estimate:
    n = len(leave_one_out)
    var = _jackknife_variance(leave_one_out)
    if not math.isfinite(var):
        return Estimate(value, math.nan, math.nan, level, n, unit)
    half = float(_scipy_stats.t.ppf((1 + level) / 2, n - 1)) * math.sqrt(var)
    return Estimate(value, value - half, value + half, level, n, unit)


def jackknife_groups(groups, statistic: Callable, level: float = 0.95, unit: str = "seeds") -> Estimate:
    """``statistic(rows)`` over rows that come in groups, with its leave-one-group-out jackknife-t interval.

    ``groups``: one label per row (e.g. each run's seed); ``statistic`` takes an integer array of row
    positions (ascending) and is evaluated on every row and with each group's rows left out; ``n`` is the
    number of groups (at least 2).  With one row per group it is ``jackknife_t`` over the rows."""
    labels = np.asarray(groups)
    if labels.ndim != 1:
        raise ValueError(f"groups must be 1-d (one label per row), got shape {labels.shape}")
    blocks = [np.flatnonzero(labels == g) for g in np.unique(labels)]
    return jackknife_t(blocks, lambda kept: statistic(np.sort(np.concatenate(kept))), level, unit)


def _features(values, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    x = x[:, None] if x.ndim == 1 else x
    if x.ndim != 2:
        raise ValueError(f"{name} must be 1-d or 2-d (rows are replicates), got shape {x.shape}")
    if len(x) < 2:
        raise ValueError(f"an interval needs at least 2 replicates, got {len(x)} in {name}")
    return x


def _means_and_leave_one_out(x: np.ndarray, statistic: Callable) -> tuple[float, np.ndarray]:
    n = len(x)
    total = x.sum(axis=0)
    value = float(np.asarray(statistic((total / n)[None, :]), dtype=float).reshape(-1)[0])
    leave_one_out = np.asarray(statistic((total[None, :] - x) / (n - 1)), dtype=float).reshape(-1)
    if leave_one_out.shape != (n,):
        raise ValueError(f"statistic must return one value per row of means: {n} expected, got shape "
                         f"{leave_one_out.shape}")
    return value, leave_one_out


def jackknife_of_means(features, statistic: Callable, level: float = 0.95, unit: str = "networks") -> Estimate:
    """``statistic`` of the column means of ``features`` (rows: independent replicates; a 1-d array is one
    column) with its jackknife-t interval, as ``jackknife_t(features, lambda a: statistic(a.mean(0)))``
    but in O(n d): the leave-one-out means are ``(n mean - x_i)/(n - 1)``.  ``statistic`` is vectorized:
    it takes a ``(k, d)`` array of k mean vectors and returns k values (e.g. a standard deviation from the
    means of ``q`` and ``q^2``).  A non-finite value gives a NaN estimate or interval."""
    check_level(level)
    _check_unit(unit)
    x = _features(features, "features")
    value, leave_one_out = _means_and_leave_one_out(x, statistic)
    if not math.isfinite(value):
        return nan_estimate(len(x), unit, level)
    return _jackknife_estimate(value, leave_one_out, level, unit)


def independent_ratio(numerator, denominator, statistic: Callable, level: float = 0.95,
                      unit: str = "networks") -> Estimate:
    """``statistic(means of numerator) / statistic(means of denominator)`` for two independent samples
    (rows: replicates; ``statistic`` vectorized as in ``jackknife_of_means``, positive).  The interval is
    built on the log: the jackknife variances of ``log statistic`` of the two samples add (delta method),
    with the t quantile of the smaller sample's n - 1 degrees of freedom; ``n`` is the smaller sample's
    size."""
    check_level(level)
    _check_unit(unit)
    a, b = _features(numerator, "numerator"), _features(denominator, "denominator")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"numerator and denominator need the same columns, got {a.shape[1]} and {b.shape[1]}")
    n = min(len(a), len(b))
    (top, top_loo), (bottom, bottom_loo) = (_means_and_leave_one_out(a, statistic),
                                            _means_and_leave_one_out(b, statistic))
    if not (top > 0 and bottom > 0 and math.isfinite(top) and math.isfinite(bottom)):
        return nan_estimate(n, unit, level)
    value = top / bottom
    with np.errstate(divide="ignore", invalid="ignore"):
        var = _jackknife_variance(np.log(top_loo)) + _jackknife_variance(np.log(bottom_loo))
    if not math.isfinite(var):
        return Estimate(value, math.nan, math.nan, level, n, unit)
    half = float(_scipy_stats.t.ppf((1 + level) / 2, n - 1)) * math.sqrt(var)
    return Estimate(value, value * math.exp(-half), value * math.exp(half), level, n, unit)


def mean_interval(values, level: float = 0.95, unit: str = "seeds") -> Estimate:
    """The mean of independent replicates with Student's t interval (``jackknife_t`` of the mean)."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 1:
        raise ValueError(f"values must be 1-d (one value per replicate), got shape {v.shape}")
    return jackknife_t(v, lambda a: float(np.mean(a)), level, unit)


def paired_log_ratio(numerator, denominator, level: float = 0.95) -> Estimate:
    """``exp(mean_s log(a_s / b_s))`` over paired seeds with the exponentiated t interval of the mean
    log ratio.  Values must be positive; a non-finite one makes the estimate NaN."""
    a, b = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"numerator and denominator must be 1-d of equal length (paired seeds), got shapes "
                         f"{a.shape} and {b.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(a) - np.log(b)
    if not np.all(np.isfinite(logs)):
        return nan_estimate(len(a), "paired seeds", level)
    return mean_interval(logs, level, "paired seeds").map(math.exp)


def ratio_of_means(numerator, denominator, paired: bool, level: float = 0.95) -> Estimate:
    """``mean(a)/mean(b)`` with a jackknife-t interval: over the pairs when ``paired`` (unit: paired
    seeds), else over the two independent samples of positive values (delta method on the log: the two
    jackknife variances add, with the smaller sample's degrees of freedom)."""
    a, b = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError("numerator and denominator must be 1-d (one value per seed)")
    if paired:
        if a.shape != b.shape:
            raise ValueError(f"paired samples must have equal length, got {len(a)} and {len(b)}")
        return jackknife_t(np.stack([a, b], axis=1), lambda s: float(np.mean(s[:, 0]) / np.mean(s[:, 1])), level,
                           "paired seeds")
    check_level(level)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"ratio_of_means needs at least 2 values in each sample, got {len(a)} and {len(b)}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))) or a.mean() <= 0 or b.mean() <= 0:
        return nan_estimate(min(len(a), len(b)), "seeds", level)
    value = float(a.mean() / b.mean())
    # log(mean a) - log(mean b): variances of the two log-means add (delta method), t with the smaller n - 1.
    var = a.var(ddof=1) / (len(a) * a.mean() ** 2) + b.var(ddof=1) / (len(b) * b.mean() ** 2)
    half = float(_scipy_stats.t.ppf((1 + level) / 2, min(len(a), len(b)) - 1)) * math.sqrt(var)
    return Estimate(value, value * math.exp(-half), value * math.exp(half), level, min(len(a), len(b)), "seeds")


def fraction(mask) -> float:
    """The share of True in ``mask`` (an "every seed" verdict holds at 1); NaN for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    return float(mask.mean()) if mask.size else math.nan


def mean_over_seeds(frame: pd.DataFrame, by: list[str], value: str, seed: str = "seed",
                    level: float = 0.95) -> pd.DataFrame:
    """Per group of ``by`` (sorted): the mean over seeds of ``value`` (first averaged within
    a seed; NaN values dropped) with its t interval (``mean_interval``; NaN ends with one seed), and the
    number of seeds: columns ``*by, mean, low, high, n_seeds``."""
    per_seed = frame.dropna(subset=[value]).groupby([*by, seed])[value].mean().reset_index()
    rows = []
    for key, d in per_seed.groupby(by, sort=False):
        v = d[value].to_numpy(float)
        est = mean_interval(v, level) if len(v) >= 2 else Estimate(float(v.mean()), math.nan, math.nan, level, 1)
        rows.append((*(key if isinstance(key, tuple) else (key,)), est.value, est.low, est.high, len(v)))
    return pd.DataFrame(rows, columns=[*by, "mean", "low", "high", "n_seeds"])

"""nup.analysis.stats: coverage by simulation at the seed counts the notebooks use, the resampling unit,
and agreement with closed forms."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from nup.analysis.fits import bootstrap
import pandas as pd

from nup.analysis.stats import (Estimate, independent_ratio, jackknife_groups, jackknife_of_means, jackknife_t,
                                mean_interval, mean_over_seeds, paired_log_ratio, ratio_of_means, nan_estimate)

SIMULATIONS = 2000
SEED_COUNTS = (5, 8)  # the notebooks' verdicts rest on at least 5 seeds


def _coverage(make_sample, interval, truth, simulations=SIMULATIONS, seed=0) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(simulations):
        est = interval(*make_sample(rng))
        hits += est.low <= truth <= est.high
    return hits / simulations


@pytest.mark.parametrize("n", SEED_COUNTS)
def test_mean_interval_covers_95_percent_of_normal_means(n):
    cover = _coverage(lambda r: (r.normal(1.0, 2.0, n),), mean_interval, 1.0)
    assert 0.93 <= cover <= 0.97, cover


@pytest.mark.parametrize("n", SEED_COUNTS)
def test_paired_log_ratio_covers_the_geometric_ratio(n):
    """Lognormal losses with a large per-seed factor shared by both members of a pair (a seed that is
    easy for both): the paired interval covers the true ratio 1.3."""
    def sample(r):
        seed_factor = np.exp(r.normal(0, 1.0, n))
        return seed_factor * 1.3 * np.exp(r.normal(0, 0.2, n)), seed_factor * np.exp(r.normal(0, 0.2, n))

    assert _coverage(sample, paired_log_ratio, 1.3) >= 0.92


@pytest.mark.parametrize("n", SEED_COUNTS)
@pytest.mark.parametrize("paired", [True, False])
def test_ratio_of_means_covers(n, paired):
    def sample(r):
        return r.normal(2.0, 0.3, n), r.normal(1.0, 0.15, n)

    cover = _coverage(sample, lambda a, b: ratio_of_means(a, b, paired=paired), 2.0)
    assert cover >= 0.92, cover


@pytest.mark.parametrize("n", SEED_COUNTS)
def test_jackknife_t_covers_a_power_law_exponent_of_mean_curves(n):
    """A smooth statistic of whole seeds: the exponent of the mean curve y(x) = x^0.5 (1 + noise)."""
    x = np.array([4.0, 8.0, 12.0])

    def exponent(curves):
        return np.polyfit(np.log(x), np.log(np.mean(curves, axis=0)), 1)[0]

    cover = _coverage(lambda r: (x**0.5 * (1 + r.normal(0, 0.1, (n, 3))),), lambda c: jackknife_t(c, exponent), 0.5,
                      simulations=1000)
    assert cover >= 0.92, cover


def test_the_percentile_bootstrap_undercovers_at_five_seeds():
    """Why nup.analysis.stats exists: the percentile bootstrap of a mean over 5 seeds covers about 83%."""
    cover = _coverage(lambda r: (r.normal(0, 1, 5),),
                      lambda v: bootstrap(v, lambda a: float(np.mean(a)), n_boot=400), 0.0, simulations=500)
    assert cover < 0.9, cover


def test_mean_interval_is_students_t_interval():
    v = np.array([1.0, 2.5, 0.7, 3.1, 1.9])
    est = mean_interval(v)
    low, high = scipy_stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=scipy_stats.sem(v))
    assert est.value == pytest.approx(v.mean())
    assert (est.low, est.high) == pytest.approx((low, high))
    assert est.n == 5 and est.unit == "seeds"


def test_a_per_seed_factor_does_not_change_the_paired_interval():
    rng = np.random.default_rng(1)
    a, b = rng.lognormal(0.2, 0.1, 6), rng.lognormal(0.0, 0.1, 6)
    offsets = rng.lognormal(0, 2.0, 6)
    plain, shifted = paired_log_ratio(a, b), paired_log_ratio(a * offsets, b * offsets)
    assert (shifted.value, shifted.low, shifted.high) == pytest.approx((plain.value, plain.low, plain.high))
    assert shifted.unit == "paired seeds" and shifted.n == 6


def test_non_finite_values_never_decide():
    assert math.isnan(paired_log_ratio([1.0, math.inf, 2.0], [1.0, 1.0, 1.0]).value)
    est = jackknife_t(np.array([1.0, 2.0, 3.0]), lambda a: 1.0 if len(a) == 3 else math.inf)
    assert est.value == 1.0 and math.isnan(est.low) and math.isnan(est.high)


@pytest.mark.parametrize("call, message", [
    (lambda: mean_interval([1.0]), "at least 2 replicates"),
    (lambda: mean_interval([1.0, 2.0], level=1.5), "level=1.5"),
    (lambda: jackknife_t(np.ones(3), np.mean, unit="runs"), "unit='runs'"),
    (lambda: paired_log_ratio([1.0, 2.0], [1.0]), "equal length"),
    (lambda: ratio_of_means([1.0, 2.0], [1.0], paired=True), "equal length"),
])
def test_bad_input_names_the_parameter(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        call()


def test_estimate_map_is_monotone_transform():
    e = Estimate(0.0, -1.0, 1.0, n=5, unit="seeds").map(math.exp)
    assert (e.value, e.low, e.high, e.n) == pytest.approx((1.0, math.exp(-1), math.e, 5))


# ------------------------------------------------------------- networks: smooth functions of means, n in thousands

NETWORK_COUNTS = (4000,)  # notebook 01: networks per curve (the reduced run has as many, shallower and narrower)
CHAIN_DEPTH, CHAIN_DOF = 16, 64


def _chain(r, n, scale=1.0):
    """``q_k = prod_{j<=k} g_j`` with ``g_j = scale chi2(nu)/nu``, independent: a product over layers like
    the preactivation norm of a random network.  ``E q_k = scale^k``, ``E q_k^2 = (scale^2 (1 + 2/nu))^k``."""
    return np.cumprod(scale * r.chisquare(CHAIN_DOF, (n, CHAIN_DEPTH)) / CHAIN_DOF, axis=1)


def _chain_std(scale=1.0):
    k = np.arange(1, CHAIN_DEPTH + 1)
    return scale**k * np.sqrt((1 + 2 / CHAIN_DOF) ** k - 1)


def _std(means):
    d = means.shape[1] // 2
    return np.sqrt(np.maximum(means[:, d:] - means[:, :d] ** 2, 0.0))


def _moments(q):
    return np.concatenate([q, q**2], axis=1)


def _slopes(x, y):
    """Least-squares slope of each row of ``y`` against ``x`` (``np.polyfit``'s, fast for many rows)."""
    centred = x - x.mean()
    return (y - y.mean(axis=1, keepdims=True)) @ centred / (centred @ centred)


def _std_exponent(means):
    k = np.arange(1, CHAIN_DEPTH + 1)
    return _slopes(np.log(k[3:]), np.log(_std(means)[:, 3:]))


def _std_growth(means):
    std = _std(means)
    return std[:, -1] / std[:, CHAIN_DEPTH // 8 - 1]


def _slope_ratio(means, scale):
    k = np.arange(1, CHAIN_DEPTH + 1)
    return _slopes(k[1:].astype(float), np.log(means[:, 1:])) / np.log(scale)


CHAIN_STATISTICS = {  # (features of q, statistic of their means, its true value)
    "spread exponent": (_moments, _std_exponent,
                        np.polyfit(np.log(np.arange(4, CHAIN_DEPTH + 1)), np.log(_chain_std()[3:]), 1)[0]),
    "spread growth": (_moments, _std_growth, _chain_std()[-1] / _chain_std()[CHAIN_DEPTH // 8 - 1]),
}


@pytest.mark.parametrize("n", NETWORK_COUNTS)
@pytest.mark.parametrize("name", CHAIN_STATISTICS)
def test_jackknife_of_means_covers_smooth_statistics_of_networks(n, name):
    """Notebook 01's spread statistics (from the means of q_k and q_k^2) at its network counts."""
    features, statistic, truth = CHAIN_STATISTICS[name]
    cover = _coverage(lambda r: (features(_chain(r, n)),), lambda x: jackknife_of_means(x, statistic), truth,
                      simulations=400)
    assert 0.92 <= cover <= 0.98, cover


@pytest.mark.parametrize("n", NETWORK_COUNTS)
def test_jackknife_of_means_covers_the_slope_of_a_log_mean(n):
    """Notebook 01's off-EOC slope: ``log mean q_k`` per layer over ``log(scale)``, true value 1."""
    cover = _coverage(lambda r: (_chain(r, n, 0.8),), lambda q: jackknife_of_means(q, lambda m: _slope_ratio(m, 0.8)),
                      1.0, simulations=400)
    assert 0.92 <= cover <= 0.98, cover


def test_jackknife_of_means_is_the_jackknife_of_the_statistic_of_the_means():
    q = _chain(np.random.default_rng(3), 40)
    fast = jackknife_of_means(_moments(q), _std_growth)
    slow = jackknife_t(q, lambda a: float(_std_growth(_moments(a).mean(0)[None])[0]), unit="networks")
    assert (fast.value, fast.low, fast.high, fast.n, fast.unit) == pytest.approx(
        (slow.value, slow.low, slow.high, 40, "networks"))
    plain = jackknife_of_means(q[:, 0], lambda m: m[:, 0], unit="seeds")
    t = mean_interval(q[:, 0])
    assert (plain.value, plain.low, plain.high) == pytest.approx((t.value, t.low, t.high))


@pytest.mark.parametrize("depth, dof", [(8, 64), (16, 128)])
def test_independent_ratio_covers_a_ratio_of_two_samples(depth, dof):
    """Notebook 01's sampler check: the mean and the spread of ``q_l/q_0`` over 2000 real networks (ReLU at
    depth ``depth`` and width ``2 dof``, the reduced and the full size: each layer multiplies ``q`` by about
    ``chi2(m/2)/(m/2)``) over the sampler's 40000; true ratio 1.1.  (With 300 real networks the spread of
    this skewed distribution would cover only about 92%: 0.917 in 3000 simulations.)"""
    n, simulations = 2000, 400
    rng = np.random.default_rng(0)
    hits = {"mean": 0, "spread": 0}
    for _ in range(simulations):
        a, b = (np.prod(rng.chisquare(dof, (count, depth)) / dof, axis=1)[:, None] for count in (n, 20 * n))
        mean = independent_ratio(1.1 * a, b, lambda m: m[:, 0])
        spread = independent_ratio(_moments(1.1 * (a - 1) + 1), _moments(b), lambda m: _std(m)[:, 0])
        hits["mean"] += mean.low <= 1.1 <= mean.high
        hits["spread"] += spread.low <= 1.1 <= spread.high
    assert all(0.92 <= h / simulations <= 0.98 for h in hits.values()), hits


# ----------------------------------------------------------------- groups: many runs per seed, few seeds

def _clustered(r, n_seeds=5, runs=36):
    """Runs in seeds: each seed shifts all its runs (a shared network and data draw), plus run noise."""
    seeds = np.repeat(np.arange(n_seeds), runs)
    return seeds, 2.0 + r.normal(0, 1.0, n_seeds)[seeds] + r.normal(0, 1.0, len(seeds))


def test_jackknife_groups_covers_a_pooled_mean_at_five_seeds():
    """A mean over 180 runs that share 5 seeds: treating the runs as independent would cover far less."""
    cover = _coverage(lambda r: _clustered(r), lambda s, v: jackknife_groups(s, lambda rows: v[rows].mean()), 2.0)
    assert 0.93 <= cover <= 0.97, cover
    naive = _coverage(lambda r: _clustered(r), lambda s, v: mean_interval(v), 2.0, simulations=500)
    assert naive < 0.6, naive


def test_jackknife_groups_with_one_row_per_group_is_jackknife_t():
    v = np.array([1.0, 2.5, 0.7, 3.1, 1.9])
    by_group = jackknife_groups([4, 3, 2, 1, 0], lambda rows: float(np.median(v[rows]) + v[rows].mean()))
    plain = jackknife_t(v, lambda a: float(np.median(a) + a.mean()))
    assert (by_group.value, by_group.low, by_group.high, by_group.n) == pytest.approx(
        (plain.value, plain.low, plain.high, 5))


def test_jackknife_groups_leaves_out_whole_groups():
    seen = []
    jackknife_groups(np.array([0, 1, 0, 2, 1, 2]), lambda rows: seen.append(tuple(rows)) or 1.0)
    assert seen == [(0, 1, 2, 3, 4, 5), (1, 3, 4, 5), (0, 2, 3, 5), (0, 1, 2, 4)]


def test_mean_over_seeds_averages_within_a_seed_first():
    frame = pd.DataFrame({"g": ["b"] * 6 + ["a"] * 2, "seed": [0, 0, 1, 1, 2, 2, 0, 1],
                          "v": [1.0, 3.0, 2.0, 2.0, 5.0, 5.0, 1.0, np.nan]})
    s = mean_over_seeds(frame, ["g"], "v").set_index("g")
    t = mean_interval([2.0, 2.0, 5.0])
    assert (s.loc["b", "mean"], s.loc["b", "low"], s.loc["b", "high"], s.loc["b", "n_seeds"]) == pytest.approx(
        (3.0, t.low, t.high, 3))
    assert s.loc["a", "n_seeds"] == 1 and math.isnan(s.loc["a", "low"]) and list(s.index) == ["a", "b"]


@pytest.mark.parametrize("call, message", [
    (lambda: jackknife_groups([[0, 1]], np.mean), "groups must be 1-d"),
    (lambda: jackknife_groups([0, 0, 0], lambda rows: 1.0), "at least 2 replicates"),
    (lambda: jackknife_of_means(np.ones((1, 3)), lambda m: m[:, 0]), "at least 2 replicates"),
    (lambda: jackknife_of_means(np.ones((4, 3)), lambda m: m[0, 0]), "one value per row"),
    (lambda: independent_ratio(np.ones((4, 2)), np.ones((4, 1)), lambda m: m[:, 0]), "same columns"),
    (lambda: jackknife_of_means(np.ones(4), lambda m: m[:, 0], unit="runs"), "unit='runs'"),
])
def test_bad_input_to_the_new_intervals_names_the_parameter(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        call()


def test_nan_estimate_is_never_true():
    from nup.analysis.verdicts import compare

    est = nan_estimate(3, "paired seeds")
    assert math.isnan(est.value) and math.isnan(est.low) and math.isnan(est.high)
    assert (est.n, est.unit, est.level) == (3, "paired seeds", 0.95)
    for op in ("<", ">"):
        assert compare("x {threshold}", est, None, op, 1.0).holds is False

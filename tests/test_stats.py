"""nup.analysis.stats: coverage by simulation at the seed counts the notebooks use, the resampling unit,
and agreement with closed forms."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from nup.analysis.fits import bootstrap
from nup.analysis.stats import Estimate, jackknife_t, mean_interval, paired_log_ratio, ratio_of_means

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

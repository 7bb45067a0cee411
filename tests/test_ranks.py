"""nup.analysis.ranks: average ranks, partial rank correlations with controls, Spearman over finite pairs, and the
leave-one-seed-out interval of a correlation pooled over runs (its coverage on clustered data at 5 seeds)."""

import math

import numpy as np
import pytest
from scipy.stats import rankdata, spearmanr

from nup.analysis import ranks


def test_average_ranks_equal_scipy_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(100):
        v = rng.integers(0, 5, rng.integers(1, 25)).astype(float)
        np.testing.assert_allclose(ranks.average_ranks(v), rankdata(v))


def test_partial_rank_correlation_without_controls_is_spearman():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=40), rng.normal(size=40)
    y = y + x
    assert ranks.partial_rank_correlation(x, y) == pytest.approx(spearmanr(x, y)[0], abs=1e-12)


def test_cells_remove_a_confound_that_reverses_the_raw_correlation():
    """Within each cell y rises with x, but the cell with the larger x has much smaller y: the raw rank
    correlation is negative, the within-cell one exactly 1."""
    x = np.r_[np.arange(10), np.arange(10) + 10.0]
    y = np.r_[np.arange(10) + 100.0, np.arange(10)]
    cells = ["a"] * 10 + ["b"] * 10
    assert ranks.partial_rank_correlation(x, y) < -0.4
    assert ranks.partial_rank_correlation(x, y, cells) == pytest.approx(1.0)
    assert ranks.partial_rank_correlation(x, -y, cells) == pytest.approx(-1.0)


def test_a_covariate_that_drives_both_is_controlled_for():
    """x and y both follow a covariate z plus independent noise: correlated raw, not once z is removed."""
    rng = np.random.default_rng(2)
    z = np.arange(400.0)
    x, y = z + 20 * rng.normal(size=400), z + 20 * rng.normal(size=400)
    assert ranks.partial_rank_correlation(x, y) > 0.9
    assert abs(ranks.partial_rank_correlation(x, y, covariates=z)) < 0.15
    # Indicators and a covariate together (the lstsq path) agree with indicators alone when z is constant.
    cells = np.repeat([0, 1], 200)
    assert ranks.partial_rank_correlation(x, y, cells, np.ones(400)) == pytest.approx(
        ranks.partial_rank_correlation(x, y, cells), abs=1e-9)


def test_partial_rank_correlation_is_nan_when_a_residual_is_constant():
    x = np.r_[1.0, 2.0, 3.0, 4.0]
    assert math.isnan(ranks.partial_rank_correlation(x, np.ones(4)))
    assert math.isnan(ranks.partial_rank_correlation(x, x, cells=[0, 1, 2, 3]))  # one run per cell: nothing left


def test_spearman_uses_the_finite_pairs_only():
    x = np.array([1.0, 2.0, np.nan, 3.0, 4.0, 5.0])
    y = np.array([2.0, 1.0, 7.0, 4.0, np.inf, 3.0])
    assert ranks.spearman(x, y) == pytest.approx(spearmanr([1, 2, 3, 5], [2, 1, 4, 3])[0])
    assert math.isnan(ranks.spearman([1.0, 2.0, np.nan], [1.0, 2.0, 3.0]))  # two finite pairs
    assert math.isnan(ranks.spearman([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]))  # constant
    with pytest.raises(ValueError, match="equal length"):
        ranks.spearman([1.0, 2.0, 3.0], [1.0, 2.0])


def _clustered_runs(r, n_seeds, slope, runs_per_cell=6, cells=6):
    """Runs in (lr, width)-like cells, seeds sharing an offset of x and of y (their network and data draw)
    and a seed-specific effect of each knob on y: the runs of a seed are not independent."""
    seed = np.repeat(np.arange(n_seeds), cells * runs_per_cell)
    cell = np.tile(np.repeat(np.arange(cells), runs_per_cell), n_seeds)
    knob = np.tile(np.arange(runs_per_cell), n_seeds * cells)
    x = cell + 0.5 * knob + r.normal(0, 1, n_seeds)[seed] + r.normal(0, 1, len(seed))
    y = -2.0 * cell + slope * x + r.normal(0, 1, n_seeds)[seed] + r.normal(0, 0.7, (n_seeds, runs_per_cell))[seed, knob]
    return seed, cell, x, y + r.normal(0, 1, len(seed))


@pytest.mark.parametrize("slope", [0.5, 3.0])  # a moderate (about 0.45) and a strong (about 0.94) correlation
def test_correlation_by_groups_covers_at_five_seeds(slope):
    """Notebook 04's partial rank correlations: 36 runs per seed in 6 cells, 5 seeds.  The population value
    is the statistic on 3000 seeds."""
    rng = np.random.default_rng(0)
    seed, cell, x, y = _clustered_runs(rng, 3000, slope)
    truth = ranks.partial_rank_correlation(x, y, cell)
    hits, simulations = 0, 400
    for _ in range(simulations):
        seed, cell, x, y = _clustered_runs(rng, 5, slope)
        est = ranks.correlation_by_groups(seed,
                                          lambda rows: ranks.partial_rank_correlation(x[rows], y[rows], cell[rows]))
        assert -1 < est.low <= est.value <= est.high < 1 and est.n == 5 and est.unit == "seeds"
        hits += est.low <= truth <= est.high
    assert 0.92 <= hits / simulations <= 0.99, hits / simulations  # a little conservative near +-1


def test_correlation_by_groups_is_tanh_of_the_jackknife_of_fisher_z():
    from nup.analysis.stats import jackknife_groups
    seed, cell, x, y = _clustered_runs(np.random.default_rng(5), 5, 0.5)
    statistic = lambda rows: ranks.partial_rank_correlation(x[rows], y[rows], cell[rows])  # noqa: E731
    est = ranks.correlation_by_groups(seed, statistic)
    z = jackknife_groups(seed, lambda rows: math.atanh(statistic(rows)))
    assert (est.value, est.low, est.high) == pytest.approx((math.tanh(z.value), math.tanh(z.low), math.tanh(z.high)))


def test_a_perfect_correlation_keeps_its_value_and_is_never_decided():
    x = np.arange(12.0)
    est = ranks.correlation_by_groups(np.repeat(np.arange(4), 3), lambda rows: ranks.spearman(x[rows], x[rows]))
    assert est.value == 1.0 and math.isnan(est.low) and math.isnan(est.high) and est.n == 4

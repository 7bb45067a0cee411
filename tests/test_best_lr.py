"""nup.analysis.best_lr on synthetic loss tables whose best learning rate is known."""

import math

import numpy as np
import pandas as pd
import pytest

from nup.analysis.best_lr import (best_log2_lr, best_lr_bootstrap, depth_slope, grid_around, log_loss_table,
                                  loss_table, parabola_vertex, widen)


def parabolic(x, best, curvature=0.8, base=0.05, seeds=3, noise=0.0, rng=None):
    """A loss table whose mean log-loss is exactly the parabola ``log(base) + curvature (x - best)^2``
    (per-seed offsets that sum to zero, so the mean is untouched)."""
    x = np.asarray(x, dtype=float)
    log_loss = np.log(base) + curvature * (x - best) ** 2
    offsets = np.zeros((seeds, 1))
    if noise:
        offsets = (rng or np.random.default_rng(0)).normal(0, noise, (seeds, len(x)))
        offsets -= offsets.mean(axis=0)
    return np.exp(log_loss[None, :] + offsets)


GRID = np.arange(-3, 2.01, 0.5)


@pytest.mark.parametrize("best", [-1.3, -1.0, -0.76, 0.2, 0.49])
def test_vertex_recovers_an_exact_parabola(best):
    result = best_log2_lr(GRID, parabolic(GRID, best, noise=0.3))
    assert result.edge is None
    assert result.value == pytest.approx(best, abs=1e-9)
    assert GRID[result.index] == pytest.approx(round(best * 2) / 2)


def test_vertex_stays_between_the_neighbours_and_handles_uneven_grids():
    assert parabola_vertex([0, 1, 2], [1.0, 0.0, 1.0]) == 1.0
    assert parabola_vertex([0, 1, 2], [0.0, 0.0, 1.0]) == pytest.approx(0.5)  # a tie: half a step
    assert parabola_vertex([0, 1, 2], [1.0, 1.0, 1.0]) == 1.0
    x = [0.0, 0.5, 2.0]
    y = [(v - 0.8) ** 2 for v in x]
    assert parabola_vertex(x, y) == pytest.approx(0.8)
    rng = np.random.default_rng(1)
    for _ in range(200):
        y = rng.random(3)
        y[1] = y.min()
        assert 0 <= parabola_vertex([0, 0.5, 1.0], y) <= 1.0


def test_edges_say_where_to_widen():
    low = best_log2_lr(GRID, parabolic(GRID, -5.0))
    high = best_log2_lr(GRID, parabolic(GRID, 4.0))
    assert (low.edge, low.value) == ("low", GRID[0])
    assert (high.edge, high.value) == ("high", GRID[-1])
    assert widen(GRID, "low") == [-4.0, -3.5]
    assert widen(GRID, "high", points=3) == [2.5, 3.0, 3.5]
    assert widen(GRID, None) == []
    wider = np.concatenate([widen(GRID, "low", points=6), GRID])
    assert best_log2_lr(wider, parabolic(wider, -5.0)).value == pytest.approx(-5.0)


def test_diverged_runs_count_as_the_worst_run_that_trained():
    losses = parabolic(GRID, -0.4)
    losses[:, -3:] = np.nan  # the three largest rates diverged in every seed
    losses[1, -4] = np.inf   # and one seed at the next one
    table = log_loss_table(losses)
    assert np.isfinite(table).all()
    assert table.max() == pytest.approx(np.log(np.nanmax(np.where(np.isfinite(losses), losses, np.nan))))
    result = best_log2_lr(GRID, losses)
    assert result.edge is None and result.value == pytest.approx(-0.4, abs=1e-9)
    # The optimum right at the stability edge: the wall pulls the vertex to the stable side.
    losses = parabolic(GRID, 0.9)
    losses[:, GRID > 1.0] = np.nan
    result = best_log2_lr(GRID, losses)
    assert result.edge is None and 0.5 <= result.value <= 1.0
    assert math.isnan(best_log2_lr(GRID, np.full((3, len(GRID)), np.nan)).value)


def test_bootstrap_interval():
    exact = best_lr_bootstrap(GRID, parabolic(GRID, -0.7), n_boot=200)
    assert exact.value == pytest.approx(-0.7) and exact.interval == pytest.approx((-0.7, -0.7))
    rng = np.random.default_rng(3)
    noisy = best_lr_bootstrap(GRID, parabolic(GRID, -0.7, seeds=8, noise=0.5, rng=rng), n_boot=500, seed=1)
    assert noisy.low < -0.7 < noisy.high
    assert noisy.high - noisy.low < 2.0
    again = best_lr_bootstrap(GRID, parabolic(GRID, -0.7, seeds=8, noise=0.5, rng=np.random.default_rng(3)),
                              n_boot=500, seed=1)
    assert again == noisy  # deterministic
    with pytest.raises(ValueError, match="2 seeds"):
        best_lr_bootstrap(GRID, parabolic(GRID, 0, seeds=1))


@pytest.mark.parametrize("true_slope", [0.0, -1.0, 0.5])
def test_depth_slope(true_slope):
    depths = [4, 8, 12, 16]
    tables = {d: (GRID, parabolic(GRID, -0.5 + true_slope * math.log2(d / 4))) for d in depths}
    slope = depth_slope(tables)
    assert slope.value == pytest.approx(true_slope, abs=1e-9)
    assert slope.interval == pytest.approx((true_slope, true_slope), abs=1e-9)


def test_depth_slope_interval_widens_with_seed_noise_and_nan_when_a_depth_fails():
    rng = np.random.default_rng(5)
    tables = {d: (GRID, parabolic(GRID, -0.5, curvature=0.2, seeds=4, noise=0.6, rng=rng)) for d in (4, 8, 12)}
    slope = depth_slope(tables)
    assert slope.value == pytest.approx(0.0, abs=1e-9)
    assert slope.low < 0 < slope.high and slope.high - slope.low > 0.1
    tables[12] = (GRID, np.full((4, len(GRID)), np.nan))
    assert math.isnan(depth_slope(tables).value)


def test_depth_slope_leaves_a_seed_out_at_every_depth_at_once():
    """Each seed prefers its own rate c_s at every depth (a per-seed offset shared across depths): every
    subset of seeds has the same best rate at each depth, so the paired interval has zero width.  Resampling
    each depth's seeds (or runs) independently would mix different seeds' optima into a spurious slope."""
    rng = np.random.default_rng(3)
    centres = rng.normal(-0.5, 0.6, 6)
    seeds = np.vstack([parabolic(GRID, c)[0] for c in centres])
    slope = depth_slope({d: (GRID, seeds) for d in (4, 8, 12)})
    assert slope.n == 6 and slope.unit == "seeds"
    assert slope.value == pytest.approx(0.0, abs=1e-12)
    assert slope.interval == pytest.approx((0.0, 0.0), abs=1e-12)


def test_transfer_regret_is_paired_by_seed():
    from nup.analysis.best_lr import transfer_regret

    table = parabolic(GRID, -1.0, curvature=0.4, seeds=5, noise=0.05, rng=np.random.default_rng(2))
    at_best = transfer_regret(GRID, table, -1.0)
    assert at_best.value == pytest.approx(1.0) and at_best.n == 5 and at_best.unit == "paired seeds"
    off = transfer_regret(GRID, table, 0.0)  # one log2 unit away: log-loss up by 0.4
    assert off.value == pytest.approx(math.exp(0.4), rel=0.05) and off.low > 1.25
    # Per-seed factors multiplying a seed's whole row leave the regret and its interval unchanged.
    factors = np.exp(np.random.default_rng(4).normal(0, 2.0, (5, 1)))
    shifted = transfer_regret(GRID, table * factors, 0.0)
    assert shifted.interval == pytest.approx(off.interval)
    with pytest.raises(ValueError, match="transferred=0.25"):
        transfer_regret(GRID, table, 0.25)


def test_loss_table_from_a_frame():
    rows = [dict(seed=s, log2_lr=x, loss=0.1 * (s + 1) + x**2) for s in range(3) for x in (-0.5, 0.0, 0.5)]
    x, table = loss_table(pd.DataFrame(rows))
    assert list(x) == [-0.5, 0.0, 0.5] and table.shape == (3, 3)
    assert table[2, 1] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="every"):
        loss_table(pd.DataFrame(rows[:-1]))


def test_grid_around():
    assert grid_around(-0.8, 2) == [-2.0, -1.5, -1.0, -0.5, 0.0]
    assert grid_around(0.0, 0) == [0.0]
    assert grid_around(1.3, 1, step=1.0) == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("call,name", [
    (lambda: best_log2_lr([0, 0, 1], np.ones((2, 3))), "log2_lrs"),
    (lambda: best_log2_lr([0, 1, 2], np.ones((2, 2))), "losses"),
    (lambda: best_log2_lr([0, 1, 2], -np.ones((2, 3))), "losses"),
    (lambda: depth_slope({4: ([0, 1], np.ones((2, 2)))}), "two depths"),
    (lambda: depth_slope({4: ([0, 1], np.ones((2, 2))), 8: ([0, 1], np.ones((3, 2)))}), "same seeds"),
    (lambda: widen([0, 1], "middle"), "edge"),
    (lambda: grid_around(0.0, -1), "half_points"),
    (lambda: best_lr_bootstrap([0, 1, 2], np.ones((3, 3)), n_boot=1), "n_boot"),
])
def test_bad_arguments(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_tune_along_widens_follows_and_runs_the_transferred_rate():
    """Family "flat" has its best rate at 0 at every depth; "moving" at -log2(depth/4).  Started two grid
    steps from the optimum with one point either side, both grids must widen; the tuned rate at the first
    depth is 0 for both, and it is run where a later grid does not hold it."""
    from nup.analysis.best_lr import tune_along

    best = {"flat": lambda d: 0.0, "moving": lambda d: -math.log2(d / 4)}
    runs = []  # (key, depth, log2_lr, seed, in_grid)

    def execute(depth, todo, in_grid):
        runs.extend((key, depth, x, s, in_grid) for key, x, s in todo)

    def table(key, depth):
        xs = sorted({x for k, d, x, s, g in runs if k == key and d == depth and g})
        return np.array(xs), np.vstack([parabolic(xs, best[key](depth))[0] for _ in range(2)])

    transferred = tune_along([4, 8, 16], ["flat", "moving"], [0, 1], {"flat": 1.5, "moving": 1.5}, 1, 1, 3,
                             execute, table)
    assert transferred == {"flat": 0.0, "moving": 0.0}
    first = sorted({x for k, d, x, s, g in runs if k == "flat" and d == 4})
    assert first[0] <= -0.5 and 1.5 in first  # widened downwards from the start at 1.5
    moved = {x for k, d, x, s, g in runs if k == "moving" and d == 16 and g}
    assert min(moved) <= -2.0  # followed the moving optimum (-2 at depth 16)
    extra = [(d, x) for k, d, x, s, g in runs if not g]
    assert ("moving" in {k for k, d, x, s, g in runs if not g}) == bool(extra)
    assert all(x == 0.0 for d, x in extra)
    with pytest.raises(ValueError, match="start=.*missing \\['flat'\\]"):
        tune_along([4], ["flat"], [0], {}, 1, 1, 0, execute, table)

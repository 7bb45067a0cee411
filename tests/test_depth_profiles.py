"""nup.analysis.depth_profiles on synthetic curves whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nup.analysis.depth_profiles import geometric_depths, local_exponents, settle_depth, tail_model


def test_geometric_depths_dense_then_geometric():
    grid = geometric_depths(1000, per_octave=4, dense_up_to=5)
    assert grid[0] == 1 and grid[-1] == 1000 and np.all(np.diff(grid) > 0)
    assert set(range(1, 6)) <= set(grid)
    deep = grid[grid >= 16].astype(float)
    # about per_octave points per doubling: consecutive ratios near 2^(1/4), the last step may be shorter
    np.testing.assert_allclose(np.log2(deep[1:-1] / deep[:-2]), 0.25, atol=0.06)
    assert np.sum((grid >= 64) & (grid < 128)) == 4


def test_geometric_depths_small_and_bad_input():
    assert geometric_depths(1).tolist() == [1]
    assert geometric_depths(8, per_octave=1).tolist() == [1, 2, 4, 8]
    assert geometric_depths(3, dense_up_to=10).tolist() == [1, 2, 3]  # dense part capped at max_depth
    for name, kwargs in (("max_depth", dict(max_depth=0)), ("per_octave", dict(max_depth=8, per_octave=0)),
                         ("dense_up_to", dict(max_depth=8, dense_up_to=0))):
        with pytest.raises(ValueError, match=name):
            geometric_depths(**kwargs)


def test_local_exponents_of_a_power_law_are_its_exponent():
    grid = geometric_depths(1000, per_octave=4, dense_up_to=5)
    local = local_exponents(grid, 3.0 * grid**0.8)
    np.testing.assert_allclose(local.exponent, 0.8, rtol=1e-12)
    np.testing.assert_allclose(local.depth, np.sqrt(grid[1:] * grid[:-1]))


def test_local_exponents_track_an_asymptotic_power_law():
    depths = 2.0 ** np.arange(0, 16)
    local = local_exponents(depths, depths + 100.0)  # ~ const shallow, ~ l deep
    assert local.exponent.iloc[0] < 0.05 and local.exponent.iloc[-1] > 0.99
    assert np.all(np.diff(local.exponent) > 0)


def test_local_exponents_reject_bad_curves():
    with pytest.raises(ValueError, match="values"):
        local_exponents([1, 2, 3], [1.0, -1.0, 2.0])
    with pytest.raises(ValueError, match="increasing"):
        local_exponents([1, 3, 2], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="equal length"):
        local_exponents([1, 2], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="2 depths"):
        local_exponents([1], [1.0])


def test_tail_model_recovers_the_coefficients_and_uses_only_the_tail():
    depths = np.arange(1, 2001, dtype=float)
    values = 80 + (30 + 5 * np.log(depths)) / depths
    assert tail_model(depths, values) == pytest.approx((80, 30, 5), rel=1e-9)
    # shallow depths that do not follow the model are outside the tail and do not matter
    spoiled = values.copy()
    spoiled[depths < 400] = 1e6
    assert tail_model(depths, spoiled, tail=4.0) == pytest.approx((80, 30, 5), rel=1e-9)
    with pytest.raises(ValueError, match="3 depths"):
        tail_model([1.0, 2.0, 100.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="tail"):
        tail_model(depths, values, tail=0.5)


def test_settle_depth_inside_and_extrapolated():
    depths = np.arange(1, 2001, dtype=float)
    values = 80 + (30 + 5 * np.log(depths)) / depths
    c, a, b = tail_model(depths, values)
    gap = (30 + 5 * np.log(depths)) / depths / 80
    expected = depths[np.flatnonzero(gap >= 0.05)[-1] + 1]
    assert settle_depth(depths, values, c) == (expected, False)
    shallow = depths <= expected / 2
    depth, extrapolated = settle_depth(depths[shallow], values[shallow], c, model=(c, a, b))
    assert extrapolated and depth == pytest.approx(expected, rel=0.02)
    assert settle_depth(depths[shallow], values[shallow], c) == (math.inf, True)
    # a model that never comes within the tolerance
    assert settle_depth(depths[shallow], values[shallow], c, model=(2 * c, a, b)) == (math.inf, True)


def test_settle_depth_needs_every_deeper_depth_inside():
    depths = np.arange(1, 11, dtype=float)
    values = np.array([200, 101, 150, 102, 101, 100.5, 100.2, 100.1, 100.0, 100.0])
    assert settle_depth(depths, values, 100.0, 0.05) == (4.0, False)  # depth 2 is inside, depth 3 is not
    assert settle_depth(depths, values, 100.0, 0.01) == (6.0, False)
    assert settle_depth(depths, np.full(10, 100.0), 100.0) == (1.0, False)  # inside from the start


def test_settle_depth_rejects_bad_limits():
    for name, kwargs in (("limit", dict(limit=0.0)), ("limit", dict(limit=math.inf)),
                         ("tolerance", dict(limit=1.0, tolerance=0.0))):
        with pytest.raises(ValueError, match=name):
            settle_depth([1.0, 2.0], [1.0, 1.0], **kwargs)


def test_settle_depth_of_a_model_that_passes_through_the_band_is_inf():
    depths = np.arange(1, 11)
    # limit 1.2 lies outside the band around 1.0; the curve 1.2 - 20/l passes through the band and leaves it
    assert settle_depth(depths, np.full(10, 0.5), 1.0, 0.05, model=(1.2, -20.0, 0.0)) == (math.inf, True)
    # a model that enters the band and stays (1 - 20/l: inside from l = 400 on), on a grid 1% apart
    depth, extrapolated = settle_depth(depths, np.full(10, 0.5), 1.0, 0.05, model=(1.0, -20.0, 0.0))
    assert extrapolated and 400 <= depth <= 405
    for bad in [(1.0, 2.0), (1.0, math.nan, 0.0)]:
        with pytest.raises(ValueError, match="model"):
            settle_depth(depths, np.full(10, 0.5), 1.0, 0.05, model=bad)
    with pytest.raises(ValueError, match="limit"):
        settle_depth(depths, np.full(10, 0.5), "1.0")

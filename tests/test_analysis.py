"""nup.analysis.verdicts, fits and frames on synthetic input whose answers are known."""

import math

import numpy as np
import pandas as pd
import pytest

from nup.analysis import fits, frames
from nup.analysis.verdicts import Verdict, claim_lines, compare, verdict_table, within


# ---------------------------------------------------------------------------- verdicts

@pytest.mark.parametrize("interval,expected", [((0.1, 0.4), True), ((0.6, 0.9), False), ((0.4, 0.6), None),
                                               ((0.5, 0.7), False)])
def test_compare_decides_by_the_whole_interval(interval, expected):
    assert compare("x is small", 0.45, interval, "<", 0.5).holds is expected


def test_compare_at_the_boundary_respects_strictness():
    assert compare("s", 0.5, (0.5, 0.5), "<", 0.5).holds is False
    assert compare("s", 0.5, (0.5, 0.5), "<=", 0.5).holds is True
    assert compare("s", 2.0, None, ">", 1.5).holds is True  # no interval: the point decides


def test_non_finite_estimates_are_never_true():
    assert compare("s", math.nan, (0.1, 0.2), "<", 1).holds is False
    assert within("s", 1.0, (math.nan, 1.1), 1.0, 0.2).holds is False


@pytest.mark.parametrize("interval,expected", [((0.9, 1.05), True), ((1.3, 1.5), False), ((0.5, 0.7), False),
                                               ((0.7, 0.9), None), ((0.8, 1.2), True)])
def test_within(interval, expected):
    assert within("s", 1.0, interval, 1.0, 0.2).holds is expected


def test_claim_lines_and_table():
    verdicts = [compare("a holds", 1.0, (0.9, 1.1), "<", 2), compare("b holds", 1.0, (0.9, 1.1), ">", 2),
                compare("c holds", 1.0, (0.9, 1.1), "<", 1)]
    assert claim_lines(verdicts) == ["a holds: True", "b holds: False", "c holds: undecided"]
    table = verdict_table(verdicts)
    assert list(table.verdict) == ["True", "False", "undecided"] and list(table.threshold) == ["< 2", "> 2", "< 1"]


def test_bad_verdicts_are_refused():
    with pytest.raises(ValueError, match="statement"):
        Verdict("a: b", True)
    with pytest.raises(ValueError, match="holds"):
        Verdict("fine", "yes")
    with pytest.raises(ValueError, match="op"):
        compare("s", 1, None, "==", 1)


# ---------------------------------------------------------------------------- fits

def test_power_law_recovers_exponent_and_prefactor():
    x = np.array([1, 2, 4, 8, 16.0])
    law = fits.power_law(x, 3 * x**-0.5)
    assert law.exponent == pytest.approx(-0.5, abs=1e-12) and law.prefactor == pytest.approx(3, rel=1e-12)
    assert law(4) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        fits.power_law([1, 1], [1, 2])


def _mean(v):
    return float(np.mean(v))


def test_bootstrap_interval_of_a_mean_is_about_two_standard_errors_wide():
    rng = np.random.default_rng(1)
    values = rng.normal(2.0, 1.0, 400)
    est = fits.bootstrap(values, _mean, n_boot=2000)
    se = values.std(ddof=1) / np.sqrt(len(values))
    assert est.value == pytest.approx(values.mean())
    # The percentile interval of a mean is ~ +-1.96 standard errors.
    assert est.high - est.low == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert est.low < 2.0 < est.high


def test_bootstrap_is_reproducible_and_degenerate_data_give_a_point():
    assert fits.bootstrap([1.0, 2, 3, 4], _mean) == fits.bootstrap([1.0, 2, 3, 4], _mean)
    est = fits.bootstrap([5.0, 5.0, 5.0], _mean)
    assert (est.value, est.low, est.high) == (5.0, 5.0, 5.0)
    with pytest.raises(ValueError, match="at least 2"):
        fits.bootstrap([1.0], _mean)


def test_mean_curve_exponent_keeps_whole_seeds():
    depths = [2, 4, 8, 16]
    curves = [[(1 + 0.1 * s) * d**0.75 for d in depths] for s in range(6)]  # every seed has exponent 0.75
    est = fits.mean_curve_exponent(depths, curves)
    assert est.value == pytest.approx(0.75) and est.low == pytest.approx(0.75) and est.high == pytest.approx(0.75)
    assert est.n == 6 and est.unit == "seeds"
    with pytest.raises(ValueError, match="one row per seed"):
        fits.mean_curve_exponent(depths, [row[1:] for row in curves])


# ---------------------------------------------------------------------------- frames

def _sweep_frame():
    rows = []
    for run, (lr, diverged) in enumerate([(0.1, False), (1.0, False), (10.0, True)]):
        for step, loss in enumerate([1.0, 0.5 / (run + 1), 0.25 / (run + 1)]):
            rows.append((run, lr, step, "loss", 0, loss, diverged))
            rows.append((run, lr, step, "preact_change", 1, step * lr, diverged))
    return pd.DataFrame(rows, columns=["run", "lr", "step", "metric", "layer", "value", "diverged"])


def test_per_run_reductions():
    df = _sweep_frame()
    last = frames.per_run(df, "loss")
    assert list(last.lr) == [0.1, 1.0, 10.0]
    assert last.value.tolist()[:2] == [0.25, 0.125] and math.isnan(last.value.iloc[2])
    assert frames.per_run(df, "loss", how="max", keep_diverged=True).value.tolist() == [1.0, 1.0, 1.0]
    assert frames.per_run(df, "preact_change", layer=1, how="mean").value.tolist()[:2] == pytest.approx([0.1, 1.0])
    assert math.isnan(frames.per_run(df, "no_such_metric").value.iloc[0])
    with pytest.raises(ValueError, match="how"):
        frames.per_run(df, "loss", how="median")


def test_series_and_metric():
    df = _sweep_frame()
    s = frames.series(df, "preact_change", run=1, layer=1)
    assert s.index.tolist() == [0, 1, 2] and s.tolist() == [0.0, 1.0, 2.0]
    assert len(frames.metric(df, "loss", layer=None)) == 9
    assert frames.config_columns(df) == ["lr"]
    with pytest.raises(ValueError, match="DataFrame"):
        frames.metric({"a": 1}, "loss")


def test_a_verdict_prints_the_threshold_it_is_decided_with():
    from nup.analysis.stats import Estimate

    for threshold in (1.25, 2.0, 0.5):
        inside = compare("regret below {threshold}", Estimate(1.0, threshold - 0.01, threshold - 1e-9, n=5,
                                                             unit="paired seeds"), None, "<", threshold)
        outside = compare("regret below {threshold}", Estimate(1.0, threshold + 1e-9, threshold + 0.1, n=5,
                                                              unit="paired seeds"), None, "<", threshold)
        assert (inside.holds, outside.holds) == (True, False)
        assert inside.statement == f"regret below {threshold:g}" and inside.threshold == f"< {threshold:g}"
        assert claim_lines([inside]) == [f"regret below {threshold:g} [n = 5 paired seeds]: True"]
    v = within("slope within {target} +- {tolerance}", Estimate(0.1, -0.2, 0.24, n=6, unit="seeds"), None, 0.0, 0.25)
    assert v.holds is True and v.statement == "slope within 0 +- 0.25" and v.n == 6
    with pytest.raises(ValueError, match="interval must be None"):
        compare("x", Estimate(1.0, 0.0, 2.0), (0.0, 2.0), "<", 3.0)


def test_mean_curve_exponent_keeps_seeds_whole():
    x = np.array([4.0, 8.0, 16.0])
    offsets = np.exp(np.random.default_rng(0).normal(0, 1.0, (6, 1)))  # per-seed factors: the mean curve's shape
    est = fits.mean_curve_exponent(x, offsets * x**0.5)                  # stays x^0.5 in every leave-one-out
    assert est.value == pytest.approx(0.5) and est.interval == pytest.approx((0.5, 0.5)) and est.n == 6
    assert math.isnan(fits.mean_curve_exponent(x, np.array([[1, 2, np.inf], [1, 2, 3.0]])).value)
    with pytest.raises(ValueError, match="curves has shape"):
        fits.mean_curve_exponent(x, np.ones((3, 2)))


def test_seed_curves_pivots_runs_and_keeps_missing_points():
    table = pd.DataFrame({"seed": [0, 0, 1], "depth": [4, 8, 4], "change": [1.0, 2.0, 3.0]})
    curves = frames.seed_curves(table, "depth", "change", columns=[4, 8, 12])
    assert list(curves.columns) == [4, 8, 12] and list(curves.index) == [0, 1]
    assert curves.loc[0, 8] == 2.0 and np.isnan(curves.loc[1, 8]) and curves[12].isna().all()

"""nup.experiments.ntk_at_depth (notebook 02): the statistics and verdicts on synthetic frames whose answers
are known (each threshold approached from just inside and just outside), the schema's rejections, and one
tiny end-to-end run."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from nup.analysis.depth_profiles import geometric_depths
from nup.core.activations import leaky_relu
from nup.experiments import ntk_at_depth as e
from nup.theory.kernels import ntk_kernel

TINY = dict(activations=["relu", "abs"], widths=[16, 32], depths=[2, 4, 8], n_train=32, n_networks=5,
            train_width=16, train_depths=[2, 4, 8], train_seeds=5, reference_depth=4, steps=5,
            lr_centers={"relu": 1.0, "abs": 1.0}, first_half_points=1, half_points=1, max_widen=2,
            kernel_depths=[2, 4], constant_widths=[8, 16], quadratic_base_widths=[8, 16], max_hidden_width=10000,
            n_kernel=12, kernel_networks=5, cond_deltas=[0.3, 0.5, 1.0], cond_max_depth=64, cond_draws=5,
            n_jobs=1, seed=0)


def params(**changes):
    return e.SCHEMA.validate({**TINY, **changes})


# ---------------------------------------------------------------------------- schema

@pytest.mark.parametrize("name,value", [
    ("reference_depth", 3),                 # not one of train_depths
    ("reference_depth", 8),                 # the deepest: nothing deeper to compare the rules at
    ("train_seeds", 4),                     # fewer than MIN_SEEDS
    ("n_networks", 4),
    ("kernel_networks", 4),
    ("cond_draws", 4),
    ("train_depths", [2, 4]),               # a slope and a deeper depth need three
    ("train_width", 24),                    # not one of widths
    ("lr_centers", {"relu": 1.0}),          # no centre for abs
    ("lr_centers", {"relu": 1.0, "abs": "x"}),
    ("max_widen", -1),
    ("cond_deltas", [0.3, 0.6, 1.0]),       # no relu (0.5)
    ("cond_deltas", [0.3, 0.5, 0.9]),       # no abs (1.0)
    ("activations", ["relu", "leaky_relu"]),  # no abs
    ("widths", [32, 16]),                   # not increasing
    ("widths", [16]),                       # one width: no smaller and larger
    ("max_hidden_width", 12),               # leaves fewer than two k^2 m widths at the deepest depth
    ("cond_max_depth", 32),
    ("n_jobs", 0),
])
def test_schema_rejects_bad_values_naming_them(name, value):
    with pytest.raises(ValueError, match=name):
        params(**{name: value})


def test_schema_accepts_the_tiny_set():
    p = params()
    assert p.widths == (16, 32) and p.cond_deltas == (0.3, 0.5, 1.0) and p.lr_centers["abs"] == 1.0


def test_kernel_widths_respect_the_cap():
    p = params(quadratic_base_widths=[8, 16, 32], kernel_depths=[2, 4, 8], max_hidden_width=49 * 16)
    assert e.kernel_widths(p, "quadratic", 8) == [8, 16]           # 49*32 > cap
    assert e.kernel_widths(p, "quadratic", 4) == [8, 16, 32]       # 9*32 fits
    assert e.kernel_widths(p, "constant", 8) == [8, 16]
    assert e.shared_widths(p, "quadratic") == [8, 16]


# ---------------------------------------------------------------------------- small helpers

@pytest.mark.parametrize("delta", [1.0, 0.9, 0.7, 0.5, 0.3, 0.1, 0.02])
def test_slope_for_delta_inverts_delta_phi(delta):
    slope = e.slope_for_delta(delta)
    assert -1 <= slope < 1
    assert leaky_relu(slope).delta == pytest.approx(delta, abs=1e-12)


def test_slope_for_delta_presets_and_range():
    assert e.slope_for_delta(1.0) == -1.0 and e.slope_for_delta(0.5) == 0.0
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="delta"):
            e.slope_for_delta(bad)


def test_infinite_width_lambda_matches_the_kernel():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 10))
    values = e.infinite_width_lambda(x, "abs", [1, 3, 7])
    for depth, value in zip([1, 3, 7], values):
        assert value == pytest.approx(np.linalg.eigvalsh(ntk_kernel(x, depth, "abs"))[-1], rel=1e-12)


def test_tuning_order_and_rule_rates():
    assert e.tuning_order([2, 4, 8, 16], 4) == [4, 8, 16, 2]
    assert e.tuning_order([1, 2, 4, 8], 2) == [2, 4, 8, 1]
    assert e.rule_log2_lr("fixed rate", 1.5, 16, 4) == 1.5
    assert e.rule_log2_lr("rate * l_ref/l", 1.5, 16, 4) == pytest.approx(-0.5)  # lr_ref * 4/16
    assert e.rule_log2_lr("rate * l_ref/l", 1.5, 4, 4) == 1.5  # the same rate at the reference depth
    assert e.rule_log2_lr("rate * l_ref/l", 1.5, 2, 4) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="rule"):
        e.rule_log2_lr("other", 1.5, 4, 4)


def test_run_outcome_smooth_spike_and_divergence():
    smooth = e.run_outcome(np.linspace(1.0, 0.3, 20), False)
    assert smooth["smooth"] and not smooth["diverged"] and smooth["rise"] == 0 and smooth["loss"] == pytest.approx(0.3)
    spike = e.run_outcome([1.0, 0.8, 0.9, 0.5, 0.4], False)  # 0.9/0.8 - 1 = 12.5% rise, then it recovers
    assert not spike["smooth"] and not spike["diverged"] and spike["rise"] == pytest.approx(0.125)
    tiny = e.run_outcome([1.0, 0.8, 0.805, 0.5], False)       # a 0.6% bump is not a spike
    assert tiny["smooth"]
    for curve, flag in (([1.0, 5.0, np.inf], False), ([1.0, 0.5], True), ([1.0, 0.9, 1.2], False),
                        ([1.0, 2e4], False)):
        out = e.run_outcome(curve, flag)
        assert out["diverged"] and not out["smooth"] and math.isnan(out["loss"])


# ---------------------------------------------------------------------------- growth verdicts

def _growth_frames(p, lam_exponent=1.0, noise=0.02, inf_exponent=1.0, asymptotic=1.0, block_exponent=1.0) -> dict:
    rng = np.random.default_rng(1)
    rows = []
    for act in p.activations:
        for width in sorted(set(p.widths) | {p.train_width}):
            for depth in sorted(set(p.depths) | set(p.train_depths)):
                for s in range(p.n_networks):
                    jitter = math.exp(noise * rng.standard_normal())
                    block = 0.4 * depth**block_exponent * jitter if width == p.train_width else math.nan
                    rows.append((act, width, depth, s, 0.5 * depth**lam_exponent * jitter, 3.0 * depth * jitter,
                                 block))
    spectrum = pd.DataFrame(rows, columns=["activation", "width", "depth", "seed", "lambda_max", "trace",
                                           "lambda_max_output"])
    depths = sorted(set(p.depths) | set(p.train_depths))
    spectrum_inf = pd.DataFrame([(a, d, 0.4 * d**inf_exponent) for a in p.activations for d in depths],
                                columns=["activation", "depth", "lambda_max"])
    grid = geometric_depths(256, 8)
    condition = pd.DataFrame([(draw, delta, d, 80.0, (1 + 0.01 * draw) * d**asymptotic) for draw in range(5)
                              for delta in p.cond_deltas for d in grid],
                             columns=["draw", "delta", "depth", "cond", "lambda_max"])
    return {"spectrum": spectrum, "spectrum_inf": spectrum_inf, "condition": condition}


def test_growth_claims_linear_growth_holds():
    p = params()
    verdicts = e.growth_claims(_growth_frames(p), p)
    assert [v.holds for v in verdicts] == [True] * 7
    assert verdicts[0].n == p.n_networks and verdicts[0].unit == "seeds"
    ex = e.growth_exponents(_growth_frames(p), p)
    assert set(ex.quantity) == {"lambda_max", "trace", "lambda_max_output"}
    assert set(ex[ex.quantity == "lambda_max_output"].width) == {p.train_width}
    assert set(ex.n) == {p.n_networks}
    np.testing.assert_allclose(ex.infinite_width[ex.quantity != "trace"], 1.0)


def test_growth_claims_superlinear_finite_width_is_false_and_asymptotic_deficit_too():
    p = params()
    frames = _growth_frames(p, lam_exponent=1.5, inf_exponent=1.1, asymptotic=0.85, block_exponent=1.15)
    verdicts = e.growth_claims(frames, p)
    trace, lam, inf_same, asym, gap_small, gap_large, block = [v.holds for v in verdicts]
    assert trace is True and lam is False and inf_same is True and asym is False
    assert gap_small is False and gap_large is False  # 1.5 - 1.1 = 0.4 > 0.2
    assert block is True  # one output's block: 1.15 - 1.1 = 0.05
    assert verdicts[1].estimate == pytest.approx(1.5, abs=0.05)


@pytest.mark.parametrize("exponent,holds", [(1.17, True), (1.23, False), (0.83, True), (0.77, False)])
def test_growth_exponent_just_inside_and_just_outside_the_tolerance(exponent, holds):
    p = params()
    verdict = e.growth_claims(_growth_frames(p, lam_exponent=exponent, noise=0.002), p)[1]
    assert verdict.holds is holds and verdict.estimate == pytest.approx(exponent, abs=0.01)


def test_growth_claims_straddling_exponent_is_undecided():
    """Networks growing like l^0.9 and like l^1.4: the jackknife interval of the mean curve's exponent
    straddles the tolerance's upper edge."""
    p = params()
    frames = _growth_frames(p, noise=0.0)
    spec = frames["spectrum"]
    spec["lambda_max"] = np.where(spec.seed % 2 == 0, spec.depth**0.9, spec.depth**1.4)
    verdict = e.growth_claims(frames, p)[1]
    assert verdict.holds is None and verdict.low < 1.2 < verdict.high


# ---------------------------------------------------------------------------- the learning-rate verdicts

def _runs(slope=-1.0, curvature=0.05, x_ref=1.0, depths=(2, 4, 8, 16), seeds=5, noise=0.0, shift=0.0,
          reference_depth=4, activations=("relu", "abs")) -> tuple[pd.DataFrame, pd.Series]:
    """A sweep whose mean log-loss is ``curvature * (x - x*(l))^2`` plus a per-seed offset, with
    ``x*(l) = x_ref + slope log2(l/l_ref)`` (seed ``s``'s optimum moved by ``shift * z_s``), on a grid
    wide enough that no minimum sits at an edge; ``noise``: independent log-normal noise per run."""
    rng = np.random.default_rng(4)
    rows = []
    for act in activations:
        for depth in depths:
            best = x_ref + slope * math.log2(depth / reference_depth)
            moves = shift * rng.standard_normal(seeds)
            for x in np.arange(-8.0, 8.5, 0.5):
                for s in range(seeds):
                    log_loss = -1.0 + 0.1 * s + curvature * (x - best - moves[s]) ** 2 + noise * rng.standard_normal()
                    rows.append(dict(activation=act, depth=depth, log2_lr=float(x), seed=s, lr=2.0**x,
                                     first=1.0, loss=math.exp(log_loss), rise=0.0, diverged=False, smooth=True,
                                     score=math.exp(log_loss), in_grid=True))
    return pd.DataFrame(rows), pd.Series({a: x_ref for a in activations}, name="log2_lr")


def _training_frames(p, slope=-1.0, curvature=0.05, **kwargs) -> dict:
    runs, transferred = _runs(slope, curvature, depths=p.train_depths, seeds=p.train_seeds,
                              reference_depth=p.reference_depth, **kwargs)
    frames = _growth_frames(p)
    return {"runs": runs, "transferred": transferred, "spectrum": frames["spectrum"]}


TRAIN = dict(train_depths=[2, 4, 8, 16], reference_depth=4)


def test_best_rates_and_slope_of_an_inverse_depth_optimum():
    runs, _ = _runs(slope=-1.0, shift=0.02)
    best = e.best_rates(runs)
    expected = 1.0 - np.log2(best.depth / 4)
    np.testing.assert_allclose(best.log2_best_lr, expected, atol=0.03)
    assert (best.edge == "").all() and (best.position > 1).all() and (best.position < best.n_lrs).all()
    slope = e.best_rate_slope(runs, "relu")
    assert slope.value == pytest.approx(-1.0, abs=0.02) and slope.n == 5 and slope.unit == "seeds"
    assert slope.low < slope.value < slope.high


@pytest.mark.parametrize("slope,like,shrinks", [(-1.0, True, True), (-1.15, True, True), (-0.85, True, True),
                                                (-1.25, False, True), (-0.75, False, True), (-0.3, False, True),
                                                (0.0, False, None), (0.3, False, False)])
def test_slope_verdicts_just_inside_and_outside(slope, like, shrinks):
    runs, _ = _runs(slope=slope, shift=0.01)
    slopes = {act: e.best_rate_slope(runs, act) for act in ("relu", "abs")}
    v_like, v_below = e.slope_verdicts(slopes)
    assert v_like.holds is like
    if shrinks is None:  # a slope of 0 is undecided (its interval straddles 0)
        assert v_below.holds is None and v_below.low < 0 < v_below.high
    else:
        assert v_below.holds is shrinks
    assert "within -1 +- 0.2" in v_like.statement and v_like.n == 5


def test_slope_verdict_undecided_when_the_interval_straddles_the_edge():
    runs, _ = _runs(slope=-1.2, shift=0.2, activations=("relu",))
    v_like, _ = e.slope_verdicts({"relu": e.best_rate_slope(runs, "relu")})
    assert v_like.holds is None and v_like.low < -1.2 < v_like.high


def test_regrets_of_the_two_rules_on_an_inverse_depth_optimum():
    """Slope -1: the scaled rule sits at every depth's optimum (regret 1); the fixed rate is 2 octaves off at
    depth 16 (regret exp(4 curvature)) and one octave off at depths 2 and 8."""
    runs, transferred = _runs(slope=-1.0, curvature=0.05)
    regrets = e.rule_regrets(runs, transferred, 4).set_index(["activation", "rule", "depth"])
    assert regrets.loc[("relu", "rate * l_ref/l", 16)].regret == pytest.approx(1.0)
    assert regrets.loc[("relu", "fixed rate", 16)].regret == pytest.approx(math.exp(0.2))
    assert regrets.loc[("relu", "fixed rate", 8)].regret == pytest.approx(math.exp(0.05))
    assert regrets.loc[("relu", "fixed rate", 2)].regret == pytest.approx(math.exp(0.05))
    assert 4 not in regrets.index.get_level_values("depth")
    assert set(regrets.n) == {5}


@pytest.mark.parametrize("curvature,holds", [(0.054, True), (0.057, False)])
def test_fixed_rate_regret_just_inside_and_outside_the_threshold(curvature, holds):
    """The fixed rate's worst regret, exp(4 curvature) at depth 16, against the threshold 1.25
    (exp(4 * 0.054) = 1.241, exp(4 * 0.057) = 1.256); the scaled rule transfers in both."""
    runs, transferred = _runs(slope=-1.0, curvature=curvature)
    regrets = e.rule_regrets(runs, transferred, 4)
    fixed, scaled = e.regret_verdict(e.RULES[0], regrets, 4), e.regret_verdict(e.RULES[1], regrets, 4)
    assert fixed.holds is holds and fixed.estimate == pytest.approx(math.exp(4 * curvature))
    assert scaled.holds is True
    assert "regret below 1.25" in fixed.statement and fixed.n == 5 and fixed.unit == "paired seeds"


def test_regret_verdicts_judge_deeper_depths_only():
    """A shallower depth where the scaled rule's doubled rate diverges is in the table, not in the verdict."""
    runs, transferred = _runs(slope=-1.0, curvature=0.05)
    hit = (runs.depth == 2) & np.isclose(runs.log2_lr, 2.0)  # the scaled rule's rate at depth 2
    runs.loc[hit, ["loss", "diverged", "first", "score"]] = [math.nan, True, 5.0, 5.0]
    regrets = e.rule_regrets(runs, transferred, 4)
    assert regrets[(regrets.depth == 2) & (regrets.rule == e.RULES[1])].regret.iloc[0] > 10
    assert e.regret_verdict(e.RULES[1], regrets, 4).holds is True
    assert e.regret_verdict(e.RULES[1], regrets, 1).holds is False  # were depth 2 deeper than the reference


def test_regret_of_a_transferring_rate_and_undecided_with_noise():
    """Slope 0: the fixed rate transfers and the scaled rule does not; with noisy runs the regret's interval
    straddles the threshold."""
    runs, transferred = _runs(slope=0.0, curvature=0.1)
    regrets = e.rule_regrets(runs, transferred, 4)
    assert e.regret_verdict(e.RULES[0], regrets, 4).holds is True
    assert e.regret_verdict(e.RULES[1], regrets, 4).holds is False  # exp(0.1 * 4) = 1.49 at depth 16
    runs, transferred = _runs(slope=-1.0, curvature=0.056, noise=0.3)
    assert e.regret_verdict(e.RULES[0], e.rule_regrets(runs, transferred, 4), 4).holds is None


def test_rule_comparison_and_the_first_depth_where_the_fixed_rate_loses():
    runs, transferred = _runs(slope=-1.0, curvature=0.05)
    comparison = e.rule_comparison(runs, transferred, 4)
    relu = comparison[comparison.activation == "relu"].set_index("depth")
    assert list(relu.index) == [8, 16]  # deeper than the reference only
    assert relu.fixed_over_scaled[16] == pytest.approx(math.exp(0.2))
    assert relu.fixed_over_scaled[8] == pytest.approx(math.exp(0.05))
    assert (relu.fixed == "higher").all()
    assert e.first_loss_depth(comparison).to_dict() == {"relu": 8.0, "abs": 8.0}
    assert e.crossover_verdict(comparison).holds is True
    # slope 0: the fixed rate is the best at every depth, so it ends lower
    runs, transferred = _runs(slope=0.0)
    comparison = e.rule_comparison(runs, transferred, 4)
    assert (comparison.fixed == "lower").all()
    assert e.crossover_verdict(comparison).holds is False
    assert e.first_loss_depth(comparison).to_dict() == {"relu": math.inf, "abs": math.inf}


def test_first_loss_depth_needs_every_deeper_depth_higher():
    comparison = pd.DataFrame({"activation": "relu", "depth": [8, 16, 32, 64],
                               "fixed": ["higher", "undecided", "higher", "higher"]})
    assert e.first_loss_depth(comparison)["relu"] == 32.0
    comparison["fixed"] = ["higher", "higher", "higher", "undecided"]
    assert e.first_loss_depth(comparison)["relu"] == math.inf


def test_crossover_verdict_just_above_and_below_one():
    base = dict(activation=["relu", "abs"], depth=[16, 16], n=[5, 5], fixed=["x", "x"])
    above = pd.DataFrame({**base, "fixed_over_scaled": [1.02, 1.03], "low": [1.001, 1.01], "high": [1.04, 1.05]})
    below = pd.DataFrame({**base, "fixed_over_scaled": [1.02, 0.98], "low": [1.001, 0.97], "high": [1.04, 0.999]})
    straddles = above.assign(low=[0.999, 1.01])
    assert e.crossover_verdict(above).holds is True
    assert e.crossover_verdict(below).holds is False
    assert e.crossover_verdict(straddles).holds is None


def test_diverged_runs_are_scored_at_their_initial_loss():
    """A diverged run ended no lower than it started: it counts at its initial loss (``score``), however good
    the other runs of its table are."""
    runs, transferred = _runs(slope=-1.0, curvature=0.05)
    hit = (runs.depth == 16) & np.isclose(runs.log2_lr, 1.0)  # the fixed rate at depth 16
    runs.loc[hit, ["loss", "diverged", "first", "score"]] = [math.nan, True, 2.0, 2.0]
    regrets = e.rule_regrets(runs, transferred, 4).set_index(["activation", "rule", "depth"])
    best = runs[(runs.depth == 16) & (runs.activation == "relu") & np.isclose(runs.log2_lr, -1.0)]
    assert regrets.loc[("relu", "fixed rate", 16)].regret == pytest.approx(
        math.exp(np.mean(np.log(2.0 / best.sort_values("seed").loss.to_numpy()))))
    summary = e.rule_summary(runs, transferred, 4)
    row = summary.loc[("relu", 16, "fixed rate")]
    assert row.diverged == 1.0 and math.isnan(row.final_loss) and row.score == pytest.approx(2.0)


def test_sweep_runs_score_a_diverged_run_at_its_first_loss(tmp_path, monkeypatch):
    monkeypatch.setenv("NUP_RESULTS_DIR", str(tmp_path))
    p = params(train_width=16, steps=5)
    runs = e._sweep_runs(p, 2, [("relu", 0.0, 0), ("relu", 9.0, 0)])  # lr 1 trains, lr 512 blows up
    ok, blown = runs.iloc[0], runs.iloc[1]
    assert not ok.diverged and ok.score == ok.loss < ok["first"]
    assert blown.diverged and math.isnan(blown.loss) and blown.score == blown["first"]


def test_rule_summary_and_stability_verdict():
    p = params(**TRAIN)
    frames = _training_frames(p)
    summary = e.rule_summary(frames["runs"], frames["transferred"], p.reference_depth)
    assert summary.loc[("relu", 16, "fixed rate")].lr == 2.0 and summary.loc[("relu", 16, "rate * l_ref/l")].lr == 0.5
    assert summary.loc[("relu", 16, "best grid rate")].lr == 0.5 and summary.smooth.min() == 1.0
    # lr_ref lambda_max at the deepest depth: 2 x 0.5 x 16 = 16 > 2 (True); lambda 1/16 of that: 1 (False)
    spectrum = frames["spectrum"]
    assert e.stability_verdict(spectrum, frames["transferred"], p).holds is True
    low = spectrum.assign(lambda_max=spectrum.lambda_max / 16)
    assert e.stability_verdict(low, frames["transferred"], p).holds is False


def test_training_claims_in_order():
    p = params(**TRAIN)
    verdicts = e.training_claims(_training_frames(p, slope=-1.0, curvature=0.1), p)
    assert [v.holds for v in verdicts] == [True, True, True, False, True, True]
    verdicts = e.training_claims(_training_frames(p, slope=0.0, curvature=0.1), p)
    assert [v.holds for v in verdicts[1:]] == [False, False, True, False, False]


# ---------------------------------------------------------------------------- concentration verdicts

def _distance_frame(p, exponent=-0.5, quad_growth=1.0, const_growth=2.0, abs_factor=0.6, noise=0.05,
                    seeds=16) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    shallow = min(p.kernel_depths)
    rows = []
    for act in p.activations:
        for depth in p.kernel_depths:
            for profile in ("constant", "quadratic"):
                growth = (const_growth if profile == "constant" else quad_growth) ** (
                    math.log(depth / shallow) / math.log(max(p.kernel_depths) / shallow))
                for m in e.kernel_widths(p, profile, depth):
                    for s in range(seeds):
                        value = (abs_factor if act == "abs" else 1.0) * growth * m**exponent
                        rows.append((act, profile, depth, m, s, value * math.exp(noise * rng.standard_normal())))
    return pd.DataFrame(rows, columns=["activation", "profile", "depth", "width", "seed", "relative_distance"])


KERNEL = dict(kernel_depths=[2, 4, 8], constant_widths=[16, 32, 64], quadratic_base_widths=[16, 32, 64])


def test_concentration_claims_all_hold():
    p = params(**KERNEL)
    exponent, flat, worse, closer = e.concentration_claims({"distance": _distance_frame(p)}, p)
    assert (exponent.holds, flat.holds, worse.holds, closer.holds) == (True, True, True, True)
    assert closer.estimate == pytest.approx(0.6, rel=0.05) and closer.n == 16 and closer.unit == "paired seeds"
    table = e.concentration_table({"distance": _distance_frame(p)}, p)
    np.testing.assert_allclose(table.exponent, -0.5, atol=0.05)
    assert set(table.n) == {16}


def test_concentration_claims_fail_and_straddle():
    p = params(**KERNEL)
    frames = {"distance": _distance_frame(p, exponent=-0.25, quad_growth=2.0, const_growth=1.0, abs_factor=1.3)}
    exponent, flat, worse, closer = e.concentration_claims(frames, p)
    assert (exponent.holds, flat.holds, worse.holds, closer.holds) == (False, False, False, False)
    frames = {"distance": _distance_frame(p, quad_growth=1.5, noise=0.5, seeds=6)}
    assert e.concentration_claims(frames, p)[1].holds is None  # growth 1.5 +- noise: undecided


@pytest.mark.parametrize("exponent,holds", [(-0.37, True), (-0.33, False), (-0.63, True), (-0.67, False)])
def test_concentration_exponent_just_inside_and_outside(exponent, holds):
    p = params(**KERNEL)
    verdict = e.concentration_claims({"distance": _distance_frame(p, exponent=exponent, noise=0.005)}, p)[0]
    assert verdict.holds is holds


@pytest.mark.parametrize("growth,flat,worse", [(1.45, True, False), (1.55, False, True)])
def test_depth_growth_just_either_side_of_one_and_a_half(growth, flat, worse):
    p = params(**KERNEL)
    frames = {"distance": _distance_frame(p, quad_growth=growth, const_growth=growth, noise=0.005)}
    _, v_flat, v_worse, _ = e.concentration_claims(frames, p)
    assert (v_flat.holds, v_worse.holds) == (flat, worse)


def test_depth_growth_uses_only_shared_widths():
    p = params(kernel_depths=[2, 8], quadratic_base_widths=[8, 16, 32], max_hidden_width=49 * 16)
    table = e.distance_matrix(_distance_frame(p, quad_growth=1.2, noise=0.0, seeds=5))
    growth = e.depth_growth(table, "relu", "quadratic", 2, 8, e.shared_widths(p, "quadratic"))
    assert growth.value == pytest.approx(1.2) and growth.interval == pytest.approx((1.2, 1.2))


# ---------------------------------------------------------------------------- conditioning verdicts

def _settle_frame(abs_depth=200.0, relu_depth=300.0, exponent=-0.7, limits=(82.0, 82.0, 82.0), draws=5, noise=0.02):
    rng = np.random.default_rng(3)
    rows = []
    for draw in range(draws):
        for delta, limit in zip((0.3, 0.5, 1.0), limits):
            depth = {0.5: relu_depth, 1.0: abs_depth}.get(delta, relu_depth * (delta / 0.5) ** exponent)
            rows.append((draw, delta, e.slope_for_delta(delta), limit, depth * (1 + noise * rng.standard_normal()),
                         False))
    return pd.DataFrame(rows, columns=["draw", "delta", "slope", "limit", "settle_depth", "extrapolated"])


def test_conditioning_claims():
    p = params()
    faster, shrinks, same = e.conditioning_claims({"settle": _settle_frame()}, p)
    assert (faster.holds, shrinks.holds, same.holds) == (True, True, True)
    assert faster.estimate == pytest.approx(2 / 3, rel=0.05) and faster.n == 5
    faster, shrinks, same = e.conditioning_claims(
        {"settle": _settle_frame(abs_depth=400, exponent=0.5, limits=(70, 82, 90))}, p)
    assert (faster.holds, same.holds) == (False, False)


@pytest.mark.parametrize("spread,holds", [(0.045, True), (0.055, False)])
def test_same_limit_just_inside_and_outside(spread, holds):
    p = params()
    same = e.conditioning_claims({"settle": _settle_frame(limits=(80.0, 80.0, 80.0 * (1 + spread)))}, p)[2]
    assert same.holds is holds and same.estimate == pytest.approx(spread)


def test_conditioning_uses_the_library_tail_model():
    """The settling depth of an exact tail-model curve is the library's answer on it."""
    from nup.analysis.depth_profiles import settle_depth, tail_model

    p = params()
    rows = []
    for draw in range(5):
        for delta in p.cond_deltas:
            for d in range(1, 65):
                rows.append((draw, delta, d, 80 + (30 * (1 + delta) + 5 * np.log(d)) / d, 1.0))
    condition = pd.DataFrame(rows, columns=["draw", "delta", "depth", "cond", "lambda_max"])
    d = condition[(condition.draw == 0) & (condition.delta == 1.0)]
    model = tail_model(d.depth, d.cond)
    assert model[0] == pytest.approx(80)
    assert settle_depth(d.depth, d.cond, model[0], e.SETTLE, model)[0] == pytest.approx(
        min(x for x in range(1, 65) if all((30 * 2 + 5 * np.log(y)) / y / 80 < 0.05 for y in range(x, 65))))


def test_asymptotic_exponent():
    grid = geometric_depths(512, 8)
    condition = pd.DataFrame([(draw, 1.0, d, 1.0, (2 + draw) * d**0.95) for draw in range(3) for d in grid],
                             columns=["draw", "delta", "depth", "cond", "lambda_max"])
    np.testing.assert_allclose(e.asymptotic_exponent(condition, 1.0), 0.95)
    local = e.infinite_width_exponents(condition, deltas=(1.0,))
    np.testing.assert_allclose(local.exponent, 0.95)
    # on the condition curve's own grid (dense to 64, then 2% apart) about two points per doubling survive
    dense = pd.DataFrame([(0, 1.0, d, 1.0, d**0.95) for d in sorted(e.condition_depths(2000))],
                         columns=["draw", "delta", "depth", "cond", "lambda_max"])
    local = e.infinite_width_exponents(dense, deltas=(1.0,), per_octave=2)
    deep = local.depth[local.depth > 128].to_numpy()
    assert len(deep) >= 2 * np.log2(2000 / 128) - 1 and np.all(np.diff(np.log2(deep)) < 0.75)
    np.testing.assert_allclose(local.exponent, 0.95)


def test_every_verdict_prints_its_threshold():
    """Each thresholded statement names the constant it is decided with."""
    p = params(**TRAIN)
    frames = _training_frames(p)
    statements = [v.statement for v in e.training_claims(frames, p)]
    assert "-1 +- 0.2" in statements[1] and "< 0" in statements[2]
    assert f"regret below {e.REGRET_THRESHOLD:g}" in statements[3] and "> 2" in statements[0]


# ---------------------------------------------------------------------------- running

def test_tiny_run_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("NUP_RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    p = params()
    frames = e.run_experiment(p)
    assert len(frames["spectrum"]) == 2 * 2 * 3 * 5  # activations x widths x depths x networks (train width 16)
    assert frames["spectrum"].lambda_max_output.notna().sum() == 2 * 3 * 5  # at the train width only
    runs = frames["runs"]
    assert set(runs.activation) == set(p.activations) and set(runs.depth) == set(p.train_depths)
    # every (activation, depth, rate) has every seed, and both rules' rates were run at every depth
    assert (runs.groupby(["activation", "depth", "log2_lr"]).seed.nunique() == p.train_seeds).all()
    for act in p.activations:
        for depth in p.train_depths:
            for rule in e.RULES:
                x = e.rule_log2_lr(rule, frames["transferred"][act], depth, p.reference_depth)
                assert np.isclose(runs[(runs.activation == act) & (runs.depth == depth)].log2_lr, x).any()
    # seed s is its own data draw: two seeds at the same rate start from different losses
    first = runs[(runs.depth == 2) & (runs.activation == "relu")].groupby("seed")["first"].first()
    assert first.nunique() == p.train_seeds
    assert len(frames["distance"]) == 2 * 2 * 2 * 2 * 5
    assert set(frames["settle"].delta) == set(p.cond_deltas) and len(frames["settle"]) == 3 * 5
    verdicts = e.claims(frames, p)
    assert len(verdicts) == 20
    # every verdict of a real (small) run is decided from a number the run produced, never from a NaN
    assert all(np.isfinite(v.estimate) for v in verdicts), [(v.statement, v.estimate) for v in verdicts]
    assert [v.statement for v in verdicts] == [v.statement for v in e.claims(frames, p)]


def test_loss_by_rate_is_the_geometric_mean_of_the_scores():
    runs, _ = _runs(slope=-1.0, seeds=5)
    curves = e.loss_by_rate(runs)
    row = curves[(curves.activation == "relu") & (curves.depth == 4) & (curves.log2_lr == 1.0)].iloc[0]
    # log score at the optimum: -1 + 0.1 s, mean over s = 0..4 is -0.8
    assert row.score == pytest.approx(math.exp(-0.8)) and row.diverged == 0
    assert len(curves) == runs.groupby(["activation", "depth", "log2_lr"]).ngroups

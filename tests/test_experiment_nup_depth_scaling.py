"""nup.experiments.nup_depth_scaling: sizes, grids and every statistic behind the verdicts, on synthetic
run frames whose answers are known (best rates that move with a known slope, preactivation changes that
grow with a known exponent, diverged runs), and the schema's rejection of bad values."""

import math
import re

import numpy as np
import pandas as pd
import pytest

from nup.analysis.best_lr import extrapolate_log2_lr, grid_around, next_grid

from nup.experiments import nup_depth_scaling as E

KEYS = E.FAMILY_KEYS
DEFAULTS = dict(depths=[4, 8, 12], base_width=16, const_width=64, steps=100, n_train=64, seeds=[0, 1, 2, 3, 4],
                activation="relu", lr_centers={k: 0.0 for k in KEYS}, first_half_points=3, half_points=2,
                max_widen=3, coord_steps=3, n_boot=200, n_jobs=1)


def params(**changes):
    return E.SCHEMA.validate({**DEFAULTS, **changes})


def synthetic_runs(slopes=None, exponents=None, seeds=(0, 1, 2, 3, 4), depths=(4, 8, 12), base_losses=None,
                   noise=0.0, diverge=()):
    """One row per (family, depth, rate, seed) on a grid of +-2 around each depth's best rate: log-loss a
    parabola with its vertex at ``slope * log2(depth/4)`` (seed offsets with zero mean), hidden change
    ``0.5 * (depth/4)^exponent`` at every rate.  ``diverge``: (family, depth) whose transferred-rate runs diverge."""
    slopes, exponents, base_losses = slopes or {}, exponents or {}, base_losses or {}
    rng = np.random.default_rng(0)
    rows = []
    for key in KEYS:
        for depth in depths:
            best = slopes.get(key, 0.0) * math.log2(depth / depths[0])
            grid = sorted(set(grid_around(best, 2) + [0.0]))
            offsets = rng.normal(0, noise, (len(seeds), len(grid))) if noise else np.zeros((len(seeds), len(grid)))
            offsets -= offsets.mean(axis=0)
            for j, x in enumerate(grid):
                in_grid = x in grid_around(best, 2)
                for i, seed in enumerate(seeds):
                    loss = base_losses.get(key, 0.05) * math.exp(0.7 * (x - best) ** 2 + offsets[i, j])
                    change = 0.5 * (depth / depths[0]) ** exponents.get(key, 0.0)
                    bad = (key, depth) in diverge and x == 0.0
                    rows.append((key, depth, x, seed, math.nan if bad else loss, bad, math.inf if bad else change,
                                 1.0, in_grid, x == 0.0))
    return pd.DataFrame(rows, columns=["family", "depth", "log2_lr", "seed", "loss", "diverged", "hidden_change",
                                       "output_change", "in_grid", "transferred"])


# ---------------------------------------------------------------------------- sizes and configurations

def test_matched_width_and_parameter_counts():
    p = params()
    counts = E.parameter_counts(p)
    nup12 = counts[(counts.family == "nup_per_layer") & (counts.depth == 12)].n_params.item()
    # νP at depth 12 with m = 16: 784*16 + sum_k (k^2 m)((k+1)^2 m) + 121*16*10
    expected = 784 * 16 + sum(k**2 * (k + 1) ** 2 * 256 for k in range(1, 11)) + 121 * 16 * 10
    assert nup12 == expected
    matched = counts[(counts.family == "matched_per_layer") & (counts.depth == 12)]
    w = matched.width.item()
    assert abs(matched.n_params.item() - nup12) <= 10 * 2 * w + 794  # the closest integer width
    const = counts[(counts.family == "ntk") & (counts.depth == 8)].n_params.item()
    assert const == 784 * 64 + 6 * 64 * 64 + 64 * 10
    # Same count for the residual network (a constant-width MLP's parameters) and SP.
    assert set(counts[(counts.depth == 8) & counts.family.isin(["ntk", "residual_gd", "sp_he"])].n_params) == {const}
    first = counts.groupby("family").first_hidden.first().drop("matched_per_layer")
    assert (first[["nup_per_layer", "nup_global", "k2_gd"]] == 16).all()  # νP's own first layer, m
    assert (first.drop(["nup_per_layer", "nup_global", "k2_gd"]) == 64).all()  # every rival at a width where it trains


def test_configs_follow_each_family_rule():
    p = params()
    c = E.config_for(p, "ntk_lr_depth", 12, 1.0, 2, 16)
    assert c.lr == pytest.approx(2.0 * 4 / 12) and c.parameterization == "ntk" and c.seed == 2
    assert E.config_for(p, "ntk", 12, 1.0, 0, 16).lr == pytest.approx(2.0)
    sp = E.config_for(p, "sp_he", 8, -7.5, 0, 16)
    assert sp.parameterization == "mup" and sp.base_width == 16  # μP at its own base width = SP with He init
    res = E.config_for(p, "residual_per_layer", 8, 0.0, 0, 16)
    assert (res.parameterization, res.normalize) == ("residual", "per_layer")
    nup = E.config_for(p, "nup_global", 8, 0.0, 0, 16)
    assert nup.build_parameterization().width_profile == "quadratic" and nup.normalize == "global"
    assert nup.diagnostics == ("preactivations",) and nup.diagnostic_every == nup.record_every == 100


def test_grids():
    p = params(lr_centers={**{k: 0.0 for k in KEYS}, "sp_he": -7.3})

    def first_grid(key, history, point):  # the first grid a family gets at point (nup.analysis.best_lr)
        return next_grid(history, point, p.lr_centers[key], p.first_half_points, p.half_points, E.LR_STEP)

    assert first_grid("sp_he", [], 4) == [-9.0, -8.5, -8.0, -7.5, -7.0, -6.5, -6.0]
    assert first_grid("ntk", [(4, 1.2)], 8) == [0.0, 0.5, 1.0, 1.5, 2.0]
    # Two depths: the line through log2 depth; best rate -1 per doubling of depth.
    assert extrapolate_log2_lr([4, 8], [1.0, 0.0], 16) == pytest.approx(-1.0)
    assert first_grid("ntk", [(4, 1.0), (8, 0.0)], 16) == [-2.0, -1.5, -1.0, -0.5, 0.0]
    assert first_grid("ntk", [(4, math.nan)], 8) == [-1.0, -0.5, 0.0, 0.5, 1.0]


def test_table_keeps_the_grid_only():
    runs = synthetic_runs(slopes={"ntk": -1.0})
    x, losses = E.table(runs, "ntk", 12)
    assert list(x) == grid_around(-math.log2(3), 2) and losses.shape == (5, 5)
    assert not np.isin(0.0, x)  # the transferred rate was run outside this grid


# ---------------------------------------------------------------------------- statistics

def test_best_lrs_and_slopes_recover_the_truth():
    slopes = {"nup_per_layer": 0.0, "ntk": -1.0, "const_per_layer": -0.5}
    runs = synthetic_runs(slopes=slopes, noise=0.2)
    best = E.best_lrs(runs, n_boot=100)
    row = best[(best.family == "ntk") & (best.depth == 8)]
    assert row.log2_best_lr.item() == pytest.approx(-1.0, abs=1e-9)
    assert row.edge.item() is None and row.best_loss.item() == pytest.approx(0.05, rel=0.1)
    for key, slope in slopes.items():
        assert E.slope_estimate(runs, key).value == pytest.approx(slope, abs=1e-9)


def test_preact_exponent():
    runs = synthetic_runs(exponents={"ntk": 0.5, "nup_per_layer": 0.0})
    e = E.preact_exponent(E.transferred_changes(runs, "ntk"))
    assert e.value == pytest.approx(0.5) and e.interval == pytest.approx((0.5, 0.5)) and e.n == 5
    assert E.preact_exponent(E.transferred_changes(runs, "nup_per_layer")).value == pytest.approx(0.0)
    diverged = synthetic_runs(diverge={("ntk", 12)})
    changes = E.transferred_changes(diverged, "ntk")
    assert np.isinf(changes[12]).all()
    assert math.isnan(E.preact_exponent(changes).value)
    missing = E.transferred_changes(runs[~((runs.family == "ntk") & (runs.depth == 8) & runs.transferred)], "ntk")
    assert list(missing.columns) == [4, 8, 12] and math.isnan(E.preact_exponent(missing).value)


def test_loss_ratios():
    runs = synthetic_runs(base_losses={"nup_per_layer": 0.02, "ntk": 0.2})
    ratios = E.loss_ratios(runs, 12)
    assert ratios["nup_per_layer"].value == pytest.approx(1.0)
    assert ratios["ntk"].value == pytest.approx(10.0)
    assert ratios["const_per_layer"].value == pytest.approx(2.5)


def test_regrets_recover_the_truth():
    runs = synthetic_runs(slopes={"ntk": -1.0}, noise=0.05)
    transferred = pd.Series({k: 0.0 for k in KEYS})
    reg = E.regrets(runs, transferred).set_index(["family", "depth"])
    assert reg.loc[("ntk", 8)].regret == pytest.approx(math.exp(0.7), rel=0.05)  # one log2 unit off: 0.7 in log
    assert reg.loc[("nup_per_layer", 12)].regret == pytest.approx(1.0, abs=0.05)
    assert set(reg.n) == {5}


def test_claims_on_synthetic_runs():
    slopes = {"ntk": -1.0, "const_per_layer": -0.8, "sp_he": -1.5}  # SP's transferred rate is off its deep grid
    exponents = {"k2_gd": 0.6}
    runs = synthetic_runs(slopes=slopes, exponents=exponents, noise=0.05, diverge={("sp_he", 12)},
                          base_losses={**{k: 0.03 for k in KEYS}, "nup_per_layer": 0.02, "residual_gd": 0.2})
    verdicts = E.claims({"runs": runs, "transferred": pd.Series({k: 0.0 for k in KEYS})}, params())
    assert len(verdicts) == (1 + 1 + 1 + 1) * len(KEYS)
    by = {v.statement: v for v in verdicts}
    for key, f in E.FAMILIES.items():
        trains = next(v for s, v in by.items() if s.startswith(f"{f.label} trains at the shallowest"))
        assert trains.holds is (key != "residual_gd") and trains.n == 5
        regret = next(v for s, v in by.items() if s.startswith(f"{f.label}, the rate tuned"))
        if key == "residual_gd":
            assert regret.holds is None and "not comparable" in regret.threshold
        else:
            assert regret.holds is (key not in slopes), (key, regret)
            assert regret.n == 5
        pre = next(v for s, v in by.items() if s.startswith(f"{f.label} at the transferred rate"))
        assert pre.holds is (None if key == "residual_gd" else key not in exponents and key != "sp_he")
        loss = next(v for s, v in by.items() if s.startswith(f"{f.label} at the deepest depth"))
        assert loss.holds is (key != "residual_gd")  # 10x worse than the best; the others 1.5x
    # Statements are scale-free: no number but the fixed thresholds, the depths and the k^2 of a family's name.
    for v in verdicts:
        assert not re.search(r"\d", re.sub(r"0 \+- 0\.25|factor 2|below 1\.25|k\^2", "", v.statement)), \
            v.statement


@pytest.mark.parametrize("make, threshold", [
    (lambda e: E.trains_verdict("f", e), E.TRAINS_FACTOR),
    (lambda e: E.regret_verdict("f", [e], True), E.REGRET_THRESHOLD),
    (lambda e: E.deep_loss_verdict("f", e), E.LOSS_FACTOR),
])
def test_each_verdict_prints_the_threshold_it_decides_with(make, threshold):
    from nup.analysis.stats import Estimate

    inside, outside = make(Estimate(1.0, 0.9, threshold * 0.999, n=5)), make(Estimate(3.0, threshold * 1.001, 9.0, n=5))
    assert (inside.holds, outside.holds) == (True, False)
    printed = [float(x) for x in re.findall(r"(?:factor|below) ([\d.]+)", inside.statement)]
    assert printed == [threshold], inside.statement


def test_preact_verdict_prints_its_tolerance():
    from nup.analysis.stats import Estimate

    t = E.PREACT_TOLERANCE
    inside = E.preact_verdict("f", Estimate(0.0, -t * 0.99, t * 0.99, n=5), True)
    outside = E.preact_verdict("f", Estimate(1.0, t * 1.01, 2.0, n=5), True)
    assert (inside.holds, outside.holds) == (True, False)
    assert f"within 0 +- {t:g}" in inside.statement


def test_slope_is_reported_with_whole_seeds_left_out():
    runs = synthetic_runs(slopes={"ntk": 0.2}, noise=1.5)
    s = E.slope_estimate(runs, "ntk")
    assert s.n == 5 and s.unit == "seeds" and s.low < s.value < s.high


def test_summarize_a_real_sweep_with_a_diverged_run():
    from nup.training.sweep import sweep

    p = params(steps=3, n_train=8)
    todo = [("ntk", 3, 0.0, 0), ("ntk", 3, 12.0, 0)]
    configs = [E.config_for(p, key, d, x, s, 8) for key, d, x, s in todo]
    runs, layers = E._summarize(sweep(configs, progress=False, cache=False), todo)
    assert runs.diverged.tolist() == [False, True]
    assert math.isfinite(runs.loss[0]) and math.isnan(runs.loss[1])
    assert 0 < runs.hidden_change[0] < math.inf and runs.hidden_change[1] == math.inf
    assert sorted(layers.layer) == [1, 2, 3]


# ---------------------------------------------------------------------------- schema

@pytest.mark.parametrize("changes,name", [
    (dict(const_width=32), "const_width"),
    (dict(base_width=8), "base_width"),
    (dict(seeds=[0, 1, 2, 3]), "seeds"),
    (dict(depths=[8, 4]), "depths"),
    (dict(depths=[2, 4]), "depths"),
    (dict(depths=[4]), "depths"),
    (dict(lr_centers={"ntk": 0.0}), "lr_centers"),
    (dict(lr_centers={**{k: 0.0 for k in KEYS}, "ntk": "high"}), "lr_centers"),
    (dict(activation="tanh"), "activation"),
    (dict(n_boot=10), "n_boot"),
    (dict(max_widen=-1), "max_widen"),
])
def test_schema_rejects(changes, name):
    with pytest.raises(ValueError, match=name):
        params(**changes)

"""nup.experiments.nup_width_scaling: grids, regrets, the width exponent, the choice of the depth family and
every verdict, on synthetic run frames whose answers are known (best rates that move with a known slope in log
width, preactivation changes that fall with a known exponent, diverged runs), and the schema's rejection of bad
values."""

import math
import re

import numpy as np
import pandas as pd
import pytest

from nup.analysis.best_lr import extrapolate_log2_lr, grid_around, next_grid

from nup.analysis.stats import Estimate
from nup.experiments import nup_width_scaling as E

KEYS = E.FAMILY_KEYS
DEFAULTS = dict(depth=4, widths=[8, 16, 32, 64], depths=[4, 8], depth_width=16, steps=100, n_train=64,
                seeds=[0, 1, 2, 3, 4], activation="relu", lr_centers={k: 0.0 for k in KEYS}, first_half_points=3,
                half_points=2, max_widen=3, coord_steps=3, n_jobs=1)


def params(**changes):
    return E.SCHEMA.validate({**DEFAULTS, **changes})


def synthetic_runs(slopes=None, exponents=None, depth_slope=0.0, depth_key="nup_spectral", seeds=(0, 1, 2, 3, 4),
                   widths=(8, 16, 32, 64), depths=(4, 8), noise=0.0, diverge=()):
    """One row per (family, point, rate, seed) on a grid of +-2 around each point's best rate, plus the rate 0
    (the transferred one): log-loss ``0.7 (x - best)^2`` with ``best = slope * log2(m/8)`` (widths) or
    ``depth_slope * log2(l/4)`` (depths of ``depth_key``); hidden change ``0.5 (m/8)^exponent``.
    ``diverge``: (family, width) whose transferred-rate runs diverge."""
    slopes, exponents = slopes or {}, exponents or {}
    rng = np.random.default_rng(0)
    rows = []
    points = [(key, "width", 4, w, slopes.get(key, 0.0) * math.log2(w / widths[0])) for key in KEYS for w in widths]
    points += [(depth_key, "depth", d, 16, depth_slope * math.log2(d / depths[0])) for d in depths]
    for key, axis, depth, width, best in points:
        grid = sorted(set(grid_around(best, 2) + [0.0]))
        offsets = rng.normal(0, noise, (len(seeds), len(grid))) if noise else np.zeros((len(seeds), len(grid)))
        offsets -= offsets.mean(axis=0)
        for j, x in enumerate(grid):
            for i, seed in enumerate(seeds):
                loss = 0.05 * math.exp(0.7 * (x - best) ** 2 + offsets[i, j])
                change = 0.5 * (width / widths[0]) ** exponents.get(key, 0.0)
                bad = axis == "width" and (key, width) in diverge and x == 0.0
                rows.append((key, axis, depth, width, x, seed, math.nan if bad else loss, bad,
                             math.inf if bad else change, 1.0, x in grid_around(best, 2), x == 0.0))
    return pd.DataFrame(rows, columns=E.COLUMNS + ["in_grid", "transferred"])


def frames_of(runs):
    zero = pd.Series({k: 0.0 for k in KEYS})
    return {"runs": runs, "transferred": zero, "depth_transferred": zero}


# ---------------------------------------------------------------------------- schema and configurations

@pytest.mark.parametrize("name, bad", [
    ("widths", [8]), ("widths", [16, 8, 32]), ("depths", [4]), ("depth", 2), ("seeds", [0, 1, 2, 3]),
    ("lr_centers", {"nup_per_layer": 0.0}), ("activation", "no-such"), ("depth_width", "16"), ("n_jobs", 0),
])
def test_schema_rejects_bad_values_naming_the_parameter(name, bad):
    with pytest.raises(ValueError, match=re.escape(name)):
        params(**{name: bad})


def test_configs():
    p = params()
    mup = E.config_for(p, "mup", 4, 64, -7.0, 3)
    assert mup.parameterization == "mup" and mup.base_width == 8 and mup.width == 64  # base width: the smallest m
    assert mup.lr == pytest.approx(2.0**-7) and mup.seed == mup.data_seed == 3
    sp = E.config_for(p, "nup_spectral", 4, 16, 1.0, 0)
    assert (sp.parameterization, sp.normalize) == ("nup", "spectral")
    assert sp.diagnostics == ("preactivations",) and sp.diagnostic_every == sp.record_every == 100
    counts = E.parameter_counts(p).set_index(["family", "width"])
    assert counts.loc[("nup_per_layer", 16)].n_params == 784 * 16 + 16 * 64 + 64 * 144 + 144 * 10  # k^2 m widths
    assert counts.loc[("mup", 16)].n_params == 784 * 16 + 2 * 16 * 16 + 16 * 10


def test_grids_extrapolate_in_log_width():
    p = params(lr_centers={**{k: 0.0 for k in KEYS}, "mup": -7.3})

    def first_grid(key, history, point):  # the first grid a family gets at point (nup.analysis.best_lr)
        return next_grid(history, point, p.lr_centers[key], p.first_half_points, p.half_points, E.LR_STEP)

    assert first_grid("mup", [], 8) == [-9.0, -8.5, -8.0, -7.5, -7.0, -6.5, -6.0]
    assert extrapolate_log2_lr([8, 16], [0.0, 0.5], 64) == pytest.approx(1.5)  # +0.5 per doubling of m
    assert first_grid("mup", [(8, 0.0), (16, 0.5)], 64) == [0.5, 1.0, 1.5, 2.0, 2.5]
    assert first_grid("mup", [(8, math.nan)], 16) == [-8.5, -8.0, -7.5, -7.0, -6.5]


# ---------------------------------------------------------------------------- statistics

def test_best_lrs_and_regrets_recover_the_truth():
    runs = synthetic_runs(slopes={"nup_per_layer": 0.5}, noise=0.05)
    best = E.best_lrs(runs).set_index(["family", "width"])
    assert best.loc[("nup_per_layer", 64)].log2_best_lr == pytest.approx(1.5, abs=0.05)
    assert best.loc[("mup", 64)].log2_best_lr == pytest.approx(0.0, abs=0.05)
    reg = E.regrets(runs, pd.Series({k: 0.0 for k in KEYS})).set_index(["family", "width"])
    # At m = 64 the transferred rate 0 is 1.5 log2 units off the best: regret exp(0.7 * 1.5^2).
    assert reg.loc[("nup_per_layer", 64)].regret == pytest.approx(math.exp(0.7 * 2.25), rel=0.05)
    assert reg.loc[("nup_per_layer", 16)].regret == pytest.approx(math.exp(0.7 * 0.25), rel=0.05)
    assert reg.loc[("mup", 32)].regret == pytest.approx(1.0, abs=0.05)
    assert set(reg.n) == {5} and set(reg.reset_index().width) == {16, 32, 64}


def test_width_exponent():
    runs = synthetic_runs(exponents={"nup_per_layer": -0.5})
    e = E.width_exponent(E.transferred_changes(runs, "nup_per_layer"))
    assert e.value == pytest.approx(-0.5) and e.interval == pytest.approx((-0.5, -0.5)) and e.n == 5
    assert E.width_exponent(E.transferred_changes(runs, "mup")).value == pytest.approx(0.0)
    changes = E.transferred_changes(synthetic_runs(diverge={("mup", 64)}), "mup")
    assert np.isinf(changes[64]).all() and math.isnan(E.width_exponent(changes).value)
    missing = runs[~((runs.family == "mup") & (runs.width == 32) & runs.transferred)]
    m = E.transferred_changes(missing, "mup")
    assert list(m.columns) == [8, 16, 32, 64] and math.isnan(E.width_exponent(m).value)


def test_depth_family_is_the_nup_update_that_keeps_width_transfer():
    runs = synthetic_runs(slopes={"nup_per_layer": 0.5}, noise=0.05)
    assert E.depth_family(runs, pd.Series({k: 0.0 for k in KEYS})) == ("nup_spectral", True)
    runs = synthetic_runs(slopes={"nup_spectral": 0.5}, noise=0.05)
    assert E.depth_family(runs, pd.Series({k: 0.0 for k in KEYS})) == ("nup_per_layer", True)
    # Neither transfers: the one whose largest regret is smaller, reported as not keeping width transfer.
    runs = synthetic_runs(slopes={"nup_spectral": 0.5, "nup_per_layer": 0.8}, noise=0.05)
    assert E.depth_family(runs, pd.Series({k: 0.0 for k in KEYS})) == ("nup_spectral", False)


def test_claims_on_synthetic_runs():
    runs = synthetic_runs(slopes={"nup_per_layer": 0.5}, exponents={"nup_per_layer": -0.5}, depth_slope=-0.8,
                          noise=0.05)
    verdicts = E.claims(frames_of(runs), params())
    assert len(verdicts) == 2 * len(KEYS) + 1
    by = {v.statement: v for v in verdicts}
    for key, f in E.FAMILIES.items():
        v = by[f"{f.label}, the rate tuned at the smallest width, transfers to every larger width (regret below 1.25 "
               "at each; the worst shown)"]
        assert v.holds is (key != "nup_per_layer") and v.n == 5
        rich = next(v for s, v in by.items() if s.startswith(f"{f.label} stays rich"))
        assert rich.holds is (key != "nup_per_layer") and rich.n == 5
    # per-layer: the worst regret decided above the threshold is shown (the widest m: 2 log2 units off at
    # slope 0.5 from m = 8 to 128, exp(0.7 * 2^2) ~ 16; m = 32 alone would show exp(0.7)).
    per_layer = verdicts[0]
    assert per_layer.holds is False and per_layer.estimate > 2 * math.exp(0.7)
    depth = verdicts[-1]
    assert depth.statement.startswith("The νP update that keeps width transfer")
    assert depth.holds is False and depth.estimate == pytest.approx(math.exp(0.7 * 0.64), rel=0.05)  # 0.8 log2 off


def test_statements_are_scale_free():
    """The reduced run (fewer widths and depths) must print the same statements as the full run."""
    small = synthetic_runs(widths=(8, 16, 32), depths=(4, 5))
    large = synthetic_runs(widths=(8, 16, 32, 64, 128), depths=(4, 8), slopes={"nup_spectral": 0.5})
    s = [v.statement for v in E.claims(frames_of(small), params(widths=[8, 16, 32], depths=[4, 5]))]
    t = [v.statement for v in E.claims(frames_of(large), params(widths=[8, 16, 32, 64, 128], depths=[4, 8]))]
    assert s == t
    for statement in s:
        assert not re.search(r"\d", re.sub(r"0 \+- 0\.25|below 1\.25|-1/2", "", statement)), statement


def test_width_verdict_combines_every_larger_width():
    t = E.REGRET_THRESHOLD
    below, above = Estimate(1.0, 0.9, t * 0.99, n=5), Estimate(2.0, t * 1.01, 3.0, n=5)
    straddle = Estimate(1.2, 1.0, t * 1.1, n=5)
    assert E.width_regret_verdict("f", [below, below]).holds is True
    assert E.width_regret_verdict("f", [below, straddle]).holds is None
    v = E.width_regret_verdict("f", [straddle, above, below])
    assert v.holds is False and v.estimate == 2.0 and v.n == 5
    assert E.width_regret_verdict("f", [below, straddle]).high == pytest.approx(t * 1.1)  # the largest upper end
    assert E.width_regret_verdict("f", [Estimate(math.nan, math.nan, math.nan, n=5)]).holds is False
    with pytest.raises(ValueError, match="at least one"):
        E.width_regret_verdict("f", [])


def test_claims_when_no_nup_update_keeps_width_transfer():
    runs = synthetic_runs(slopes={"nup_spectral": 0.5, "nup_per_layer": 0.8}, depth_key="nup_spectral")
    verdicts = E.claims(frames_of(runs), params())
    assert [v.holds for v in verdicts[:2]] == [False, False]
    assert E.depth_family(runs, pd.Series({k: 0.0 for k in KEYS})) == ("nup_spectral", False)
    assert verdicts[-1].holds is True  # its depth sweep (slope 0) transfers


# ---------------------------------------------------------------------------- verdicts and their thresholds

@pytest.mark.parametrize("make", [
    lambda e: E.width_regret_verdict("f", [e]),
    lambda e: E.depth_regret_verdict(e),
])
def test_regret_verdicts_print_the_threshold_they_decide_with(make):
    t = E.REGRET_THRESHOLD
    inside, outside = make(Estimate(1.0, 0.9, t * 0.999, n=5)), make(Estimate(3.0, t * 1.001, 9.0, n=5))
    straddle = make(Estimate(1.2, 1.0, t * 1.01, n=5))
    assert (inside.holds, outside.holds, straddle.holds) == (True, False, None)
    assert [float(x) for x in re.findall(r"below ([\d.]+)", inside.statement)] == [t], inside.statement
    assert inside.n == 5


def test_rich_verdict_prints_its_tolerance():
    t = E.PREACT_TOLERANCE
    inside = E.rich_verdict("f", Estimate(0.0, -t * 0.99, t * 0.99, n=5))
    outside = E.rich_verdict("f", Estimate(-0.5, -0.7, -t * 1.01, n=5))
    nan = E.rich_verdict("f", Estimate(math.nan, math.nan, math.nan, n=5))
    assert (inside.holds, outside.holds, nan.holds) == (True, False, False)
    assert f"within 0 +- {t:g}" in inside.statement

"""nup.experiments.ntk_at_depth (notebook 02): the statistics and verdicts on synthetic frames whose answers
are known, the schema's rejections, and one tiny end-to-end run."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from nup.analysis.verdicts import Verdict
from nup.core.activations import leaky_relu
from nup.experiments import ntk_at_depth as e
from nup.theory.kernels import ntk_kernel

BOOT = dict(n_boot=200, seed=0)

TINY = dict(activations=["relu", "abs"], widths=[16, 32], depths=[2, 4, 8], n_train=32, n_networks=3,
            train_width=16, train_depths=[2, 4, 8], train_seeds=2, reference_depth=4, steps=5,
            kernel_depths=[2, 4], constant_widths=[8, 16], quadratic_base_widths=[8, 16], max_hidden_width=10000,
            n_kernel=12, kernel_networks=3, cond_deltas=[0.3, 0.5, 1.0], cond_max_depth=64, cond_draws=2,
            n_jobs=1, seed=0)


def params(**changes):
    return e.SCHEMA.validate({**TINY, **changes})


# ---------------------------------------------------------------------------- schema

@pytest.mark.parametrize("name,value", [
    ("reference_depth", 3),                 # not one of train_depths
    ("train_seeds", 4),                     # more than n_networks
    ("train_width", 24),                    # not one of widths
    ("cond_deltas", [0.3, 0.6, 1.0]),       # no relu (0.5)
    ("cond_deltas", [0.3, 0.5, 0.9]),       # no abs (1.0)
    ("activations", ["relu", "leaky_relu"]),  # no abs
    ("widths", [32, 16]),                   # not increasing
    ("widths", [16]),                       # one width: no smaller and larger
    ("max_hidden_width", 12),               # leaves fewer than two k^2 m widths at the deepest depth
    ("cond_max_depth", 32),
    ("cond_draws", 1),
    ("kernel_networks", 1),
    ("n_jobs", 0),
])
def test_schema_rejects_bad_values_naming_them(name, value):
    with pytest.raises(ValueError, match=name):
        params(**{name: value})


def test_schema_accepts_the_tiny_set():
    p = params()
    assert p.widths == (16, 32) and p.cond_deltas == (0.3, 0.5, 1.0)


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


def test_geometric_depths_and_local_exponents():
    grid = e.geometric_depths(1000, per_octave=4, dense_up_to=5)
    assert grid[0] == 1 and grid[-1] == 1000 and np.all(np.diff(grid) > 0)
    assert set(range(1, 6)) <= set(grid)
    local = e.local_exponents(grid, 3.0 * grid**0.8)
    np.testing.assert_allclose(local.exponent, 0.8, rtol=1e-12)
    np.testing.assert_allclose(local.depth, np.sqrt(grid[1:] * grid[:-1]))


def test_exponent_statistics():
    xs = np.array([2.0, 4.0, 8.0, 16.0])
    rows = np.stack([c * xs**1.3 for c in (1.0, 2.0, 3.0)])
    assert e.mean_exponent(xs, rows) == pytest.approx(1.3)
    assert e.median_exponent(xs, rows) == pytest.approx(1.3)


def test_infinite_width_lambda_matches_the_kernel():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 10))
    values = e.infinite_width_lambda(x, "abs", [1, 3, 7])
    for depth, value in zip([1, 3, 7], values):
        assert value == pytest.approx(np.linalg.eigvalsh(ntk_kernel(x, depth, "abs"))[-1], rel=1e-12)


def test_output_block_top_eigenvalue_against_the_dense_block():
    import torch

    from nup.core.param import NTK
    from nup.linalg.tangent_kernel import empirical_ntk

    model = NTK().build(12, 3, 4, 24, "relu", seed=3, dtype=torch.float64)
    x = torch.randn(10, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    k = empirical_ntk(model, x).reshape(10, 3, 10, 3)
    for output in range(3):
        dense = torch.linalg.eigvalsh(k[:, output, :, output])[-1].item()
        assert e.output_block_top_eigenvalue(model, x, output, tol=1e-10) == pytest.approx(dense, rel=1e-8)
    assert e.output_block_top_eigenvalue(model, x, 0) < torch.linalg.eigvalsh(k.reshape(30, 30))[-1].item()
    with pytest.raises(ValueError, match="output"):
        e.output_block_top_eigenvalue(model, x, 3)


def test_rule_lr():
    assert e.rule_lr(0.3, "fixed eta", 16, 4) == 0.3
    assert e.rule_lr(0.3, "eta * l_ref/l", 16, 4) == pytest.approx(0.075)
    assert e.rule_lr(0.3, "eta * l_ref/l", 4, 4) == 0.3  # the same run at the reference depth
    with pytest.raises(ValueError, match="rule"):
        e.rule_lr(0.3, "other", 4, 4)


# ---------------------------------------------------------------------------- run outcomes

def test_run_outcome_smooth_spike_and_divergence():
    smooth = e.run_outcome(np.linspace(1.0, 0.3, 20), False)
    assert smooth["smooth"] and not smooth["diverged"] and smooth["rise"] == 0 and smooth["last"] == pytest.approx(0.3)
    spike = e.run_outcome([1.0, 0.8, 0.9, 0.5, 0.4], False)  # 0.9/0.8 - 1 = 12.5% rise, then it recovers
    assert not spike["smooth"] and not spike["diverged"] and spike["rise"] == pytest.approx(0.125)
    tiny = e.run_outcome([1.0, 0.8, 0.805, 0.5], False)       # a 0.6% bump is not a spike
    assert tiny["smooth"]
    for curve, flag in (([1.0, 5.0, np.inf], False), ([1.0, 0.5], True), ([1.0, 0.9, 1.2], False),
                        ([1.0, 2e4], False)):
        out = e.run_outcome(curve, flag)
        assert out["diverged"] and not out["smooth"] and math.isnan(out["last"])


def _outcomes(diverged_at: dict, last: dict | None = None, depths=(2, 4, 8, 16), seeds=3) -> pd.DataFrame:
    """Outcomes where the fixed rule diverges in seed 0 from ``diverged_at[activation]`` on; final losses
    ``last[(activation, rule)]`` (a function of depth and seed) elsewhere."""
    rows = []
    for act in ("relu", "abs"):
        for rule in e.RULES:
            for depth in depths:
                for s in range(seeds):
                    div = rule == e.RULES[0] and depth >= diverged_at.get(act, math.inf) and s == 0
                    value = last[act, rule](depth, s) if last else 0.5
                    rows.append(dict(activation=act, rule=rule, depth=depth, seed=s, lr=0.1, first=1.0,
                                     last=math.nan if div else value, rise=0.0, diverged=div, smooth=not div,
                                     eta_lambda=1.0))
    return pd.DataFrame(rows)


def test_first_divergence_and_deepest_stable_depth():
    out = _outcomes({"relu": 8})
    first = e.first_divergence(out)
    assert first["relu"] == 8 and first["abs"] == math.inf
    assert e.deepest_stable_depth(out, "relu") == 4 and e.deepest_stable_depth(out, "abs") == 16
    assert math.isnan(e.deepest_stable_depth(_outcomes({"relu": 2}), "relu"))


def test_training_summary():
    summary = e.training_summary(_outcomes({"relu": 8}))
    row = summary.loc["relu", e.RULES[0], 8]
    assert row.diverged == pytest.approx(1 / 3) and row.runs == 3 and row.final_loss == pytest.approx(0.5)


# ---------------------------------------------------------------------------- verdicts on synthetic frames

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
    grid = e.geometric_depths(256, 8)
    condition = pd.DataFrame([(draw, delta, d, 80.0, (1 + 0.01 * draw) * d**asymptotic) for draw in range(3)
                              for delta in p.cond_deltas for d in grid],
                             columns=["draw", "delta", "depth", "cond", "lambda_max"])
    return {"spectrum": spectrum, "spectrum_inf": spectrum_inf, "condition": condition}


def test_growth_claims_linear_growth_holds():
    p = params()
    verdicts = e.growth_claims(_growth_frames(p), p, BOOT)
    assert [v.holds for v in verdicts] == [True] * 7
    ex = e.growth_exponents(_growth_frames(p), p)
    assert set(ex.quantity) == {"lambda_max", "trace", "lambda_max_output"}
    assert set(ex[ex.quantity == "lambda_max_output"].width) == {p.train_width}
    np.testing.assert_allclose(ex.infinite_width[ex.quantity != "trace"], 1.0)


def test_growth_claims_superlinear_finite_width_is_false_and_asymptotic_deficit_too():
    p = params()
    frames = _growth_frames(p, lam_exponent=1.5, inf_exponent=1.1, asymptotic=0.85, block_exponent=1.15)
    verdicts = e.growth_claims(frames, p, BOOT)
    trace, lam, inf_same, asym, gap_small, gap_large, block = [v.holds for v in verdicts]
    assert trace is True and lam is False and inf_same is True and asym is False
    assert gap_small is False and gap_large is False  # 1.5 - 1.1 = 0.4 > 0.2
    assert block is True  # one output's block: 1.15 - 1.1 = 0.05
    assert verdicts[1].estimate == pytest.approx(1.5, abs=0.05)


def test_growth_claims_straddling_exponent_is_undecided():
    """Two networks, one growing like l^0.9 and one like l^1.4: the resamples of only one of them put the
    interval's ends on both sides of the tolerance's upper edge."""
    p = params(n_networks=2)
    frames = _growth_frames(p, noise=0.0)
    spec = frames["spectrum"]
    spec["lambda_max"] = np.where(spec.seed == 0, spec.depth**0.9, spec.depth**1.4)
    verdict = e.growth_claims(frames, p, BOOT)[1]
    assert verdict.holds is None and verdict.low < 1.2 < verdict.high


def _training_frames(p, eta_lambda_deep=4.0, last=None, diverged_at=None) -> dict:
    frames = _growth_frames(p)
    spec = frames["spectrum"]
    spec.loc[spec.depth == max(p.train_depths), "lambda_max"] = eta_lambda_deep / 0.5 * (
        1 + 0.01 * spec.loc[spec.depth == max(p.train_depths), "seed"])
    frames["eta"] = pd.DataFrame({"activation": list(p.activations), "eta": 0.5})
    frames["outcomes"] = _outcomes(diverged_at or {}, last, depths=p.train_depths, seeds=p.train_seeds)
    return frames


def test_training_claims():
    p = params(train_depths=[2, 4, 8, 16], train_seeds=3)
    lower = {(a, r): (lambda d, s, r=r: (0.3 if r == e.RULES[0] else 0.4) + 0.01 * s)
             for a in ("relu", "abs") for r in e.RULES}
    frames = _training_frames(p, last=lower, diverged_at={"relu": 8, "abs": 16})
    leaves, smooth, diverges, spikes = e.training_claims(frames, p, BOOT)
    assert leaves.holds is True and leaves.estimate == pytest.approx(4.0, rel=0.02)
    assert smooth.holds is True and diverges.holds is True and diverges.estimate == 16
    assert spikes.holds is True and spikes.estimate < 1
    # nothing diverges: the third verdict fails (first divergence beyond the depths trained)
    frames = _training_frames(p, eta_lambda_deep=1.5, last=lower)
    leaves, smooth, diverges, spikes = e.training_claims(frames, p, BOOT)
    assert leaves.holds is False and diverges.holds is False and math.isinf(diverges.estimate)
    # the fixed rate ends higher: the fourth fails; a scaled run that spikes breaks the second
    higher = {(a, r): (lambda d, s, r=r: (0.5 if r == e.RULES[0] else 0.4) + 0.01 * s)
              for a in ("relu", "abs") for r in e.RULES}
    frames = _training_frames(p, last=higher, diverged_at={"relu": 16, "abs": 16})
    frames["outcomes"].loc[frames["outcomes"].rule == e.RULES[1], "smooth"] = [False] + [True] * 23
    _, smooth, _, spikes = e.training_claims(frames, p, BOOT)
    assert smooth.holds is False and spikes.holds is False


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


def test_concentration_claims_all_hold():
    p = params(kernel_depths=[2, 4, 8], constant_widths=[16, 32, 64], quadratic_base_widths=[16, 32, 64])
    exponent, flat, worse, closer = e.concentration_claims({"distance": _distance_frame(p)}, p, BOOT)
    assert (exponent.holds, flat.holds, worse.holds, closer.holds) == (True, True, True, True)
    assert closer.estimate == pytest.approx(0.6, rel=0.05)
    table = e.concentration_table({"distance": _distance_frame(p)}, p)
    np.testing.assert_allclose(table.exponent, -0.5, atol=0.05)


def test_concentration_claims_fail_and_straddle():
    p = params(kernel_depths=[2, 4, 8], constant_widths=[16, 32, 64], quadratic_base_widths=[16, 32, 64])
    frames = {"distance": _distance_frame(p, exponent=-0.25, quad_growth=2.0, const_growth=1.0, abs_factor=1.3)}
    exponent, flat, worse, closer = e.concentration_claims(frames, p, BOOT)
    assert (exponent.holds, flat.holds, worse.holds, closer.holds) == (False, False, False, False)
    frames = {"distance": _distance_frame(p, quad_growth=1.5, noise=0.5, seeds=6)}
    assert e.concentration_claims(frames, p, BOOT)[1].holds is None  # growth 1.5 +- noise: undecided


def test_depth_growth_uses_only_shared_widths():
    p = params(kernel_depths=[2, 8], quadratic_base_widths=[8, 16, 32], max_hidden_width=49 * 16)
    table = e.distance_matrix(_distance_frame(p, quad_growth=1.2, noise=0.0, seeds=4))
    growth = e.depth_growth(table, "relu", "quadratic", 2, 8, e.shared_widths(p, "quadratic"), **BOOT)
    assert growth.value == pytest.approx(1.2) and growth.interval == pytest.approx((1.2, 1.2))


def test_tail_model_and_settle_depth():
    depths = np.arange(1, 2001, dtype=float)
    cond = 80 + (30 + 5 * np.log(depths)) / depths
    c, a, b = e.tail_model(depths, cond)
    assert (c, a, b) == pytest.approx((80, 30, 5), rel=1e-9)
    gap = (30 + 5 * np.log(depths)) / depths / 80
    expected = depths[np.flatnonzero(gap >= 0.05)[-1] + 1]
    assert e.settle_depth(depths, cond, c) == (expected, False)
    # computed only to a depth where the curve is still outside: extrapolated with the model
    shallow = depths <= expected / 2
    depth, extrapolated = e.settle_depth(depths[shallow], cond[shallow], c, model=(c, a, b))
    assert extrapolated and depth == pytest.approx(expected, rel=0.02)
    assert e.settle_depth(depths[shallow], cond[shallow], c) == (math.inf, True)


def test_settle_depth_needs_every_deeper_depth_inside():
    depths = np.arange(1, 11, dtype=float)
    cond = np.array([200, 101, 150, 102, 101, 100.5, 100.2, 100.1, 100.0, 100.0])
    assert e.settle_depth(depths, cond, 100.0, 0.05) == (4.0, False)  # depth 2 is inside, depth 3 is not


def _settle_frame(abs_depth=200.0, relu_depth=300.0, exponent=-0.7, limits=(82.0, 82.0, 82.0), draws=5):
    rng = np.random.default_rng(3)
    rows = []
    for draw in range(draws):
        for delta, limit in zip((0.3, 0.5, 1.0), limits):
            depth = {0.5: relu_depth, 1.0: abs_depth}.get(delta, relu_depth * (delta / 0.5) ** exponent)
            rows.append((draw, delta, e.slope_for_delta(delta), limit, depth * (1 + 0.02 * rng.standard_normal()),
                         False))
    return pd.DataFrame(rows, columns=["draw", "delta", "slope", "limit", "settle_depth", "extrapolated"])


def test_conditioning_claims():
    p = params()
    faster, shrinks, same = e.conditioning_claims({"settle": _settle_frame()}, p, BOOT)
    assert (faster.holds, shrinks.holds, same.holds) == (True, True, True)
    assert faster.estimate == pytest.approx(2 / 3, rel=0.05)
    faster, shrinks, same = e.conditioning_claims(
        {"settle": _settle_frame(abs_depth=400, exponent=0.5, limits=(70, 82, 90))}, p, BOOT)
    assert (faster.holds, same.holds) == (False, False)


def test_asymptotic_exponent():
    grid = e.geometric_depths(512, 8)
    condition = pd.DataFrame([(draw, 1.0, d, 1.0, (2 + draw) * d**0.95) for draw in range(3) for d in grid],
                             columns=["draw", "delta", "depth", "cond", "lambda_max"])
    np.testing.assert_allclose(e.asymptotic_exponent(condition, 1.0), 0.95)
    local = e.infinite_width_exponents(condition, deltas=(1.0,))
    np.testing.assert_allclose(local.exponent, 0.95)


def test_all_of():
    t = Verdict("a", True, 1.0, 0.9, 1.1, "< 2")
    t2 = Verdict("b", True, 1.5, 1.4, 1.6, "< 2")
    u = Verdict("c", None, 1.9, 1.7, 2.1, "< 2")
    f = Verdict("d", False, 2.5, 2.2, 2.8, "< 2")
    assert e.all_of("s", [t, t2]).holds is True
    assert e.all_of("s", [t, t2], lambda v: v.estimate).estimate == 1.5  # the closest to failing
    v = e.all_of("s", [t, u, f, t2])
    assert v.holds is False and v.estimate == 2.5 and v.statement == "s"
    assert e.all_of("s", [t, u]).holds is None
    with pytest.raises(ValueError):
        e.all_of("s", [])


# ---------------------------------------------------------------------------- running

def test_parallel_map_keeps_order_and_does_not_depend_on_n_jobs():
    tasks = [(d,) for d in (1.0, 0.7, 0.5, 0.2)]
    serial = e.parallel_map(e.slope_for_delta, tasks, 1)
    assert serial == [e.slope_for_delta(d) for d, in tasks]
    assert e.parallel_map(e.slope_for_delta, tasks, 2) == serial


def test_tiny_run_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("NUP_RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    p = params()
    frames = e.run(p)
    assert len(frames["spectrum"]) == 2 * 2 * 3 * 3  # activations x widths x depths x networks (train width 16)
    assert frames["spectrum"].lambda_max_output.notna().sum() == 2 * 3 * 3  # at the train width only
    assert set(frames["outcomes"].rule) == set(e.RULES) and len(frames["outcomes"]) == 2 * 2 * 3 * 2
    # the reference-depth runs are shared by both rules
    ref = frames["outcomes"][frames["outcomes"].depth == p.reference_depth]
    assert ref.groupby(["activation", "seed"])["last"].nunique().max() == 1
    assert len(frames["distance"]) == 2 * 2 * 2 * 2 * 3
    assert set(frames["settle"].delta) == set(p.cond_deltas) and len(frames["settle"]) == 3 * 2
    verdicts = e.claims(frames, p)
    assert len(verdicts) == 18 and all(v.holds in (True, False, None) for v in verdicts)
    assert [v.statement for v in verdicts] == [v.statement for v in e.claims(frames, p)]

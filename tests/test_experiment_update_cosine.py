"""nup.experiments.update_cosine: its statistics, summaries and claims on synthetic input with known answers."""

import math

import numpy as np
import pandas as pd
import pytest

import nup
from nup.experiments import update_cosine as e

P = e.SCHEMA.validate(dict(depth=3, steps=40, n_train=32, probe_size=8, ntk_every=10, lrs=[0.1, 1.0], widths=[4, 8],
                           batch_sizes=[0, 8], label_noises=[0.0, 0.5], momenta=[0.9], plain_width=16,
                           plain_lrs=[0.01, 0.1], plain_batch_size=8, seeds=[0, 1, 2, 3, 4], n_jobs=1,
                           steer_lr=0.25, steer_width=4, steer_betas=[-1.0, 0.0, 1.0, 2.0]))



# ------------------------------------------------------------------------------------ statistics
# (average ranks and partial rank correlations: tests/test_ranks.py)

def _runs(rng, n_seeds=5, slope=1.0, noise=0.0):
    """Normalized runs in 4 (lr, width) cells whose feature learning is ``slope * cos + cell offset + noise``;
    the cell with the larger lr has the smaller cosine and the larger feature learning (the confound)."""
    rows = []
    run = 0
    for lr, width, offset in [(0.1, 4, 0.0), (1.0, 4, 5.0), (0.1, 8, 1.0), (1.0, 8, 6.0)]:
        for knob, b in [("GD", 0), ("SGD b=8", 8), ("SGD b=2", 2)]:
            for seed in range(n_seeds):
                cos = (0.9 if lr < 1 else 0.2) - 0.1 * (b > 0) - 0.1 * (b == 2) + 0.01 * rng.normal()
                fl = slope * cos + offset + noise * rng.normal()
                rows.append(dict(run=run, family=e.NORMALIZED, width=width, lr=lr, batch_size=b, label_noise=0.0,
                                 momentum=0.0, knob=knob, seed=seed, diverged=False, collapsed=False, mean_cos=cos,
                                 mean_cos_k2=cos, mean_cos_k10=cos, mean_step=lr, ntk_change=fl, preact_change=fl,
                                 alignment_gain=fl, distance=fl))
                run += 1
    return pd.DataFrame(rows)


def test_fixed_step_correlation_sees_through_the_learning_rate():
    runs = _runs(np.random.default_rng(3))
    assert e.rank_correlation(runs, "mean_cos", "ntk_change") < -0.5  # the confound, across cells
    assert e.fixed_step_correlation(runs, "mean_cos", "ntk_change") > 0.95
    assert e.fixed_step_correlation(runs.assign(ntk_change=-runs.ntk_change), "mean_cos", "ntk_change") < -0.95
    rows, statistic = e.fixed_step_statistic(runs, "mean_cos", "ntk_change", "cell+step")
    assert statistic(np.arange(len(rows))) == pytest.approx(e.fixed_step_correlation(runs, "mean_cos", "ntk_change"))
    with pytest.raises(ValueError, match="controls='lr'"):
        e.fixed_step_correlation(runs, "mean_cos", "ntk_change", "lr")


def test_partial_residuals_correlate_to_the_statistic():
    runs = _runs(np.random.default_rng(4), noise=0.05)
    rx, ry = e.partial_residuals(runs, "mean_cos", "preact_change")
    assert np.corrcoef(rx, ry)[0, 1] == pytest.approx(e.fixed_step_correlation(runs, "mean_cos", "preact_change"))


def test_lr_statistic_finds_the_cosine_falling_with_the_learning_rate():
    runs = _runs(np.random.default_rng(5))
    rows, statistic = e.lr_statistic(runs)
    assert statistic(np.arange(len(rows))) < -0.8


def test_seed_correlation_leaves_out_whole_seeds():
    """The interval is over seeds (n = 5), not over the 60 runs; with the seeds' runs alike it is narrow."""
    runs = _runs(np.random.default_rng(9), noise=0.05)
    rows, statistic = e.fixed_step_statistic(runs, "mean_cos", "ntk_change")
    est = e.seed_correlation(rows, statistic)
    assert est.n == 5 and est.unit == "seeds"
    assert est.value == pytest.approx(e.fixed_step_correlation(runs, "mean_cos", "ntk_change"))
    assert -1 < est.low < est.value < est.high < 1


def test_seed_medians_take_the_median_within_a_seed():
    assoc = pd.DataFrame({"seed": [0, 0, 0, 1, 1], "raw": [0.1, 0.9, 0.5, np.nan, 0.2]})
    assert e.seed_medians(assoc, "raw").tolist() == pytest.approx([0.5, 0.2])


def test_detrending_removes_a_shared_time_trend():
    """Both series fall with t (raw association 1), but their step-to-step fluctuations are opposed."""
    t = np.arange(20.0)
    wiggle = 0.1 * np.random.default_rng(8).normal(size=20)  # small against the trend's steps of 1
    cos, growth = 10 - t + wiggle, 10 - t - wiggle
    assert e.raw_association(cos, growth) == pytest.approx(1.0)
    assert e.detrended_association(cos, growth) == pytest.approx(-1.0)
    assert math.isnan(e.detrended_association([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]))  # two differences
    assert math.isnan(e.raw_association([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]))


def test_within_run_associations_per_run():
    windows = pd.DataFrame({"run": np.repeat([0, 1], 6), "start": np.tile(np.arange(6) * 10, 2),
                            "cos": np.r_[np.arange(6.0), [0, 2, 1, 3, 2, 4.0]],
                            "ntk_growth": np.r_[np.arange(6.0) ** 2, [0, 4, 2, 6, 4, 8.0]]})
    runs = pd.DataFrame({"run": [0, 1], "seed": [0, 0], "family": e.NORMALIZED, "lr": 0.1, "width": 4, "knob": "GD"})
    a = e.within_run_associations(windows.sample(frac=1, random_state=0), runs).set_index("run")  # order restored
    assert a.raw[0] == pytest.approx(1.0) and a.raw[1] == pytest.approx(1.0)
    assert math.isnan(a.detrended[0])  # the cosine's first differences are constant
    assert a.detrended[1] == pytest.approx(1.0)


# --------------------------------------------------------------------------------- the identity

def test_reconstruct_distance_rebuilds_a_random_path():
    rng = np.random.default_rng(6)
    steps = rng.normal(size=(30, 5)) + 0.3
    path = np.vstack([np.zeros(5), np.cumsum(steps, axis=0)])
    norms = np.linalg.norm(steps, axis=1)
    cos = [math.nan] + [float(steps[t] @ path[t] / (norms[t] * np.linalg.norm(path[t]))) for t in range(1, 30)]
    np.testing.assert_allclose(e.reconstruct_distance(norms, cos), np.linalg.norm(path, axis=1), rtol=1e-10)


def test_growth_law_exponents_of_the_two_extremes():
    assert e.growth_exponent(np.arange(1, 50), 3 * np.arange(1, 50) ** 0.7, fit_from=1) == pytest.approx(0.7)
    assert e.constant_cosine_exponent(1.0, 200, 10) == pytest.approx(1.0)   # |D_t| = t
    assert e.constant_cosine_exponent(0.0, 200, 10) == pytest.approx(0.5)   # |D_t| = sqrt(t)
    assert math.isnan(e.growth_exponent([1.0, 2.0], [1.0, 2.0], fit_from=5))


def test_identity_error_is_zero_on_a_consistent_series():
    d = np.arange(6.0)  # a straight path: unit steps, cosine 1
    series = pd.DataFrame({"run": 0, "step": np.arange(6), "cos": np.r_[math.nan, np.ones(5)],
                           "update_norm": np.ones(6), "distance": d})
    assert e.identity_error({"series": series}) == pytest.approx(0.0, abs=1e-12)
    assert e.identity_error({"series": series.assign(distance=d * 1.1)}) == pytest.approx(1 - 1 / 1.1)


# ------------------------------------------------------------------------------- runs and frames

def test_run_table_spells_out_the_design():
    configs, table = e.run_table(P)
    knobs = len(P.batch_sizes) * len(P.label_noises) + len(P.momenta)
    n_norm = len(P.widths) * len(P.lrs) * knobs * len(P.seeds)
    assert len(configs) == len(table) == n_norm + len(P.plain_lrs) * 2 * len(P.seeds)
    norm = table[table.family == e.NORMALIZED]
    assert len(norm) == n_norm and set(norm.knob) == {"GD", "GD, noise 0.5", "SGD b=8", "SGD b=8, noise 0.5",
                                                      "GD, momentum 0.9"}
    for config, row in zip(configs, table.itertuples()):
        assert config.lr == pytest.approx(row.lr * (1 - row.momentum)) and config.momentum == row.momentum
        assert config.batch_size == (row.batch_size or None) and config.label_noise == row.label_noise
        assert config.normalize == ("per_layer" if row.family == e.NORMALIZED else None)
        assert set(e.RECORDED_DIAGNOSTICS) <= set(config.diagnostics) and config.diagnostic_every == P.ntk_every


def _fake_sweep():
    """A two-run sweep frame (depth 2, steps 0..4, diagnostics every 2) with known values."""
    rows = []
    for run in (0, 1):
        for step in range(4):
            rows += [(run, step, "cos_cumulative", layer, math.nan if step == 0 else 0.5 + 0.1 * layer + 0.1 * run)
                     for layer in (0, 1, 2)]
            rows += [(run, step, "update_norm", 0, 1.0), (run, step, "distance_from_init", 0, float(step))]
            if step >= 2:
                rows += [(run, step, "cos_cumulative_k2", layer, 0.7) for layer in (0, 1, 2)]
            if step >= 10:
                rows += [(run, step, "cos_cumulative_k10", layer, 0.7) for layer in (0, 1, 2)]
        for step, ntk, align in ((0, 0.0, 0.2), (2, 0.3, 0.25), (4, 0.5, 0.4 if run == 0 else math.nan)):
            rows += [(run, step, "ntk_change", 0, ntk), (run, step, "kernel_alignment", 0, align),
                     (run, step, "preact_change", 1, ntk / 2), (run, step, "preact_change", 2, 99.0),
                     (run, step, "loss", 0, 1.0 - step / 10)]
    df = pd.DataFrame(rows, columns=["run", "step", "metric", "layer", "value"])
    return df.assign(diverged=False)


def test_summarize_reads_the_right_rows():
    out = e.summarize(_fake_sweep(), depth=2, ntk_every=2)
    runs = out["runs"].set_index("run")
    assert runs.mean_cos[0] == pytest.approx(0.5) and runs.mean_cos[1] == pytest.approx(0.6)
    assert runs.mean_cos_k2[0] == pytest.approx(0.7) and math.isnan(runs.mean_cos_k10[0])
    assert runs.ntk_change[0] == pytest.approx(0.5) and runs.preact_change[0] == pytest.approx(0.25)  # hidden only
    assert runs.alignment_gain[0] == pytest.approx(0.2) and not runs.collapsed[0]
    assert runs.collapsed[1] and math.isnan(runs.alignment_gain[1])
    assert runs.mean_step[0] == 1.0 and runs.distance[0] == 3.0 and runs.final_loss[0] == pytest.approx(0.6)
    windows = out["windows"][out["windows"].run == 0]
    assert windows.start.tolist() == [0, 2]
    assert windows.ntk_growth.tolist() == pytest.approx([0.3, 0.2])
    assert windows.cos.tolist() == pytest.approx([0.5, 0.5])  # step 0's NaN cosine is skipped
    layers = out["layers"].set_index(["run", "layer"])
    assert layers.mean_cos[0, 2] == pytest.approx(0.7) and layers.preact_change[0, 2] == 99.0


def test_summarize_on_a_tiny_real_run():
    """The summaries of a real training run equal the recorded rows they summarize."""
    config = nup.RunConfig(parameterization="nup", normalize="per_layer", dataset="teacher", n_train=16, depth=3,
                           width=3, steps=24, lr=0.05, probe_size=8, diagnostics=e.RECORDED_DIAGNOSTICS, diagnostic_every=6)
    df = nup.train(config).df.assign(run=0, diverged=False)
    out = e.summarize(df, depth=3, ntk_every=6)
    runs = out["runs"].iloc[0]
    cos = df[(df.metric == "cos_cumulative") & (df.layer == 0)].value
    k10 = df[(df.metric == "cos_cumulative_k10") & (df.layer == 0)].value
    assert runs.mean_cos == pytest.approx(cos.mean()) and runs.mean_cos_k10 == pytest.approx(k10.mean())
    assert runs.mean_step == pytest.approx(0.05 * math.sqrt(3), rel=1e-5)  # every layer moves by exactly lr
    assert len(out["series"]) == config.steps and len(out["windows"]) == config.steps // 6
    assert e.identity_error(out) < 1e-5


# ------------------------------------------------------------------------------------- verdicts

def _frames(slope=1.0, noise=0.0, lazy_drop=0.45, lazy_ratio=1.0, detrended=True, lazy_cos=0.9):
    rng = np.random.default_rng(7)
    runs = _runs(rng, slope=slope, noise=noise)
    plain = []
    for seed in range(5):
        for b, cos in ((0, lazy_cos), (8, lazy_cos - lazy_drop)):
            ntk = 0.1 * (1 + 0.1 * seed) * (lazy_ratio if b else 1.0)
            plain.append(dict(run=1000 + 2 * seed + (b > 0), family=e.PLAIN, width=64, lr=0.01, batch_size=b,
                              label_noise=0.0, momentum=0.0, knob="GD" if b == 0 else "SGD b=8", seed=seed,
                              diverged=False, collapsed=False, mean_cos=cos + 0.001 * seed, mean_cos_k2=cos,
                              mean_cos_k10=cos, mean_step=0.01, ntk_change=ntk, preact_change=ntk, alignment_gain=0.0,
                              distance=1.0))
    runs = pd.concat([runs, pd.DataFrame(plain)], ignore_index=True)
    t = np.arange(20.0)
    windows = []
    for run in runs.run:
        wiggle = rng.normal(size=20) * 0.1
        growth = 10 - t + (wiggle if detrended else -wiggle)
        windows.append(pd.DataFrame({"run": run, "start": t * 10, "cos": 10 - t + wiggle, "ntk_growth": growth}))
    return {"runs": runs, "windows": pd.concat(windows, ignore_index=True)}


def test_claims_when_the_cosine_explains_feature_learning():
    verdicts = e.claims(_frames(), P)
    assert len(verdicts) == 16
    holds = [v.holds for v in verdicts]
    assert holds[0] is False  # the confound: across cells the correlation is negative
    assert holds[1] is True   # the cosine falls with the learning rate
    assert holds[2:11] == [True] * 9, [(v.statement, v.estimate, v.low, v.high) for v in verdicts[2:11]]
    assert holds[11:] == [True] * 5


def test_claims_when_feature_learning_ignores_the_cosine():
    verdicts = e.claims(_frames(slope=0.0, noise=1.0, lazy_drop=0.05, lazy_ratio=1.5, detrended=False), P)
    holds = [v.holds for v in verdicts]
    assert all(h is not True for h in holds[2:11]), [(v.estimate, v.low, v.high) for v in verdicts[2:11]]
    assert holds[11] is True and holds[12] is False  # raw: shared trend; first differences: opposed
    assert holds[13] is True and holds[14] is False and holds[15] is False


LAZY_CASES = {  # verdict index, _frames keyword, a value just inside, just outside its threshold
    "lazy cosine": (13, "lazy_cos", e.LAZY_COSINE + 0.01, e.LAZY_COSINE - 0.01),
    "noise drop": (14, "lazy_drop", e.NOISE_DROP + 0.01, e.NOISE_DROP - 0.01),
    "ntk ratio above": (15, "lazy_ratio", 1 + e.LAZY_NTK_TOLERANCE - 0.01, 1 + e.LAZY_NTK_TOLERANCE + 0.01),
    "ntk ratio below": (15, "lazy_ratio", 1 - e.LAZY_NTK_TOLERANCE + 0.01, 1 - e.LAZY_NTK_TOLERANCE - 0.01),
}


@pytest.mark.parametrize("case", LAZY_CASES)
@pytest.mark.parametrize("side", ["inside", "outside"])
def test_each_lazy_end_verdict_is_decided_at_its_threshold(case, side):
    index, keyword, inside, outside = LAZY_CASES[case]
    kwargs = {keyword: inside if side == "inside" else outside}
    if keyword == "lazy_cos":
        kwargs["lazy_drop"] = 0.3  # the mini-batch run stays above 0
    verdict = e.claims(_frames(**kwargs), P)[index]
    assert verdict.holds is (side == "inside"), (verdict.statement, verdict.estimate, verdict.low, verdict.high)
    assert verdict.n == 5 and verdict.unit == ("seeds" if keyword == "lazy_cos" else "paired seeds")


@pytest.mark.parametrize("side", ["inside", "outside"])
def test_each_correlation_verdict_is_decided_at_its_threshold(side, monkeypatch):
    """Every pooled correlation just inside or just outside its threshold (on its claimed side: above STRONG,
    below FALLS), with an interval over 5 seeds of half-width 0.01."""
    calls = []

    def at_threshold(rows, statistic):  # the claims ask in order: across runs, falls with lr, fixed step ...
        calls.append(statistic)
        threshold, sign = (e.FALLS, -1) if len(calls) == 2 else (e.STRONG, 1)
        value = threshold + sign * (0.02 if side == "inside" else -0.02)
        return e.Estimate(value, value - 0.01, value + 0.01, n=5, unit="seeds")

    monkeypatch.setattr(e, "seed_correlation", at_threshold)
    verdicts = e.claims(_frames(), P)[:11]
    assert [v.holds for v in verdicts] == [side == "inside"] * 11, [(v.statement, v.estimate) for v in verdicts]
    assert all(v.n == 5 for v in verdicts)
    assert f"< {e.FALLS:g} " in verdicts[1].statement and all(f"> {e.STRONG:g})" in v.statement
                                                               for i, v in enumerate(verdicts) if i != 1)


@pytest.mark.parametrize("value, holds", [(e.STRONG + 0.01, True), (e.STRONG - 0.01, False)])
def test_the_within_run_verdicts_are_decided_at_their_threshold(value, holds, monkeypatch):
    """Every run of every seed with the same association: the seeds' medians equal it, the interval has no width."""
    def constant(windows, runs):
        return runs[["run", "seed"]].assign(raw=value, detrended=value)

    monkeypatch.setattr(e, "within_run_associations", constant)
    verdicts = e.claims(_frames(), P)[11:13]
    assert [v.holds for v in verdicts] == [holds] * 2 and all(v.n == 5 and v.unit == "seeds" for v in verdicts)


def test_statements_are_scale_free_and_unique():
    verdicts = e.claims(_frames(), P)
    statements = [v.statement for v in verdicts]
    assert len(set(statements)) == len(statements)
    assert not any(str(n) in s for s in statements for n in (P.steps, P.n_train, P.plain_width))


def test_diverged_and_collapsed_runs_are_left_out():
    frames = _frames()
    frames["runs"].loc[0, "diverged"] = True
    frames["runs"].loc[1, "collapsed"] = True
    assert not set(e.usable(frames["runs"]).run) & {frames["runs"].run[0], frames["runs"].run[1]}
    assert len(e.fixed_step_runs(frames["runs"])) == (frames["runs"].family == e.NORMALIZED).sum() - 2


# --------------------------------------------------------------------------------------- schema

@pytest.mark.parametrize("change,pattern", [
    (dict(steps=30), "steps=30"), (dict(ntk_every=20, steps=60), "steps=60"),
    (dict(batch_sizes=[0, 64]), "batch_sizes"), (dict(probe_size=64), "probe_size=64"), (dict(seeds=[0, 1]), "seeds"),
    (dict(momenta=[0.0]), "momenta"), (dict(lrs=[1.0, 0.1]), "lrs"), (dict(label_noises=[1.0]), "label_noises"),
    (dict(plain_batch_size=100), "plain_batch_size"), (dict(steer_betas=[-1.0, 1.0, 2.0]), "steer_betas"),
    (dict(steer_betas=[0.0, 1.0, 2.0]), "steer_betas"), (dict(steer_betas=[-1.0, 0.0]), "steer_betas"),
    (dict(steer_lr=0.0), "steer_lr"), (dict(steer_width=1), "steer_width"),
])
def test_schema_refuses_bad_sizes(change, pattern):
    with pytest.raises(ValueError, match=pattern):
        e.SCHEMA.validate({**P, **change})


# --------------------------------------------------------------------------------- tables

def test_partial_table_covers_every_lag_measure_and_population():
    frames = _frames(noise=0.3)
    table = e.partial_table(frames)
    assert len(table) == 2 * len(e.LAGS) * (len(e.MEASURES) + 1)
    fixed = table[(table.runs == "fixed step (no momentum)") & (table.k == 1) & (table.measure == "ntk_change")]
    runs = e.fixed_step_runs(frames["runs"])
    assert fixed.estimate.iloc[0] == pytest.approx(e.fixed_step_correlation(runs, "mean_cos", "ntk_change"))
    assert set(table.controls) == {"lr, width", "lr, width, step length"}
    assert (table.low <= table.estimate + 1e-12).all() and (table.estimate <= table.high + 1e-12).all()


def test_layer_table_per_layer():
    frames = _frames()
    runs = e.fixed_step_runs(frames["runs"])
    layers = pd.concat([pd.DataFrame({"run": runs.run, "layer": k, "mean_cos": runs.mean_cos * k,
                                      "mean_cos_k2": 0.5, "mean_cos_k10": 0.25,
                                      "preact_change": (runs.mean_cos if k < 3 else -runs.mean_cos) + runs.lr})
                        for k in (1, 2, 3)], ignore_index=True)
    table = e.layer_table({**frames, "layers": layers}).set_index("layer")
    assert table.mean_cos[2] == pytest.approx(2 * runs.mean_cos.mean()) and table.mean_cos_k10[3] == 0.25
    # Monotone within every cell; global ranks interleave the cells, so not exactly +-1.
    assert table.partial_corr_preact[1] > 0.95 and table.partial_corr_preact[3] < -0.95
    assert table.low[1] <= table.partial_corr_preact[1] <= table.high[1] and table.low[1] > 0.9


def test_example_runs_pick_the_lazy_end_and_the_two_nup_extremes():
    runs = _frames()["runs"]
    picks = e.example_runs(runs)
    chosen = runs.set_index("run").loc[list(picks.values())]
    assert list(chosen.family) == [e.PLAIN, e.NORMALIZED, e.NORMALIZED] and (chosen.knob == "GD").all()
    assert chosen.lr.tolist() == [runs[runs.family == e.PLAIN].lr.min(), 0.1, 1.0]
    assert chosen.width.tolist()[1:] == [8, 4] and (chosen.seed == 0).all()


# ------------------------------------------------------------------------------- the intervention

BETAS = (-1.0, 0.0, 1.0, 2.0)


def _intervention(shift=0.3, order=(0, 1, 2, 3), control_cos=0.0, control_ratio=1.0, seeds=range(5)):
    """A synthetic intervention frame: per seed, the steered arm's mean cosine ``0.1 + shift * beta`` (plus a
    per-seed offset and a tiny wiggle), each measure ranked over the betas by ``order`` (its ranks: 0..3), the
    control at every non-zero beta with the unsteered cosine plus ``control_cos`` and every measure times
    ``control_ratio``.  Every seed carries a large offset that pairing by seed must cancel."""
    rows = []
    for seed in seeds:
        offset = 0.05 * seed
        base = {m: 1.0 + seed for m in e.MEASURES}
        for i, beta in enumerate(BETAS):
            row = dict(arm=e.STEER, beta=beta, seed=seed, diverged=False, collapsed=False,
                       mean_cos=0.1 + shift * beta + offset + 1e-4 * (seed % 2), final_loss=0.1, distance=2.0 + i,
                       **{m: base[m] * (1 + order[i]) for m in e.MEASURES})
            rows.append(row)
        for beta in BETAS[2:] + BETAS[:1]:
            rows.append(dict(arm=e.CONTROL, beta=beta, seed=seed, diverged=False, collapsed=False,
                             mean_cos=0.1 + offset + control_cos + 1e-4 * (seed % 2), final_loss=0.1, distance=3.0,
                             **{m: base[m] * (1 + order[1]) * control_ratio * (1 + 1e-4 * (seed % 2))
                                for m in e.MEASURES}))
    return e.with_per_distance(pd.DataFrame(rows))


def _by_statement(verdicts, *words):
    found = [v for v in verdicts if all(w in v.statement for w in words)]
    assert len(found) >= 1, words
    return found


def test_intervention_table_spells_out_the_design():
    configs, table = e.intervention_table(P)
    assert len(configs) == (len(P.steer_betas) + len(P.steer_betas) - 1) * len(P.seeds) == len(table)
    assert all(c.data_seed == c.seed for c in configs)  # every seed on its own data draw
    assert all(c.threads == nup.experiments.RUN_THREADS for c in configs)  # pinned, as every notebook run
    assert all(c.lr == P.steer_lr and c.width == P.steer_width and c.normalize == "per_layer" for c in configs)
    assert {(c.steer_mode, c.steer_beta) for c in configs} == (
        {(e.STEER, b) for b in P.steer_betas} | {(e.CONTROL, b) for b in P.steer_betas if b})
    assert list(table.columns) == ["arm", "beta", "seed"]


def test_per_distance_divides_by_the_distance_and_is_nan_at_zero():
    runs = pd.DataFrame({"distance": [2.0, 0.0], **{m: [4.0, 1.0] for m in e.MEASURES}})
    out = e.with_per_distance(runs)
    assert out.ntk_change_per_distance.iloc[0] == 2.0 and math.isnan(out.preact_change_per_distance.iloc[1])


def test_paired_statistics_cancel_a_per_seed_offset():
    frame = _intervention()
    diff = e.paired_difference(frame, (e.STEER, 2.0), (e.STEER, 0.0), "mean_cos")
    assert diff.value == pytest.approx(0.6) and diff.high - diff.low < 1e-9 and diff.n == 5
    assert diff.unit == "paired seeds"
    ratio = e.paired_ratio(_intervention(control_ratio=1.2), (e.CONTROL, 2.0), (e.STEER, 0.0), "ntk_change")
    assert ratio.value == pytest.approx(1.2, rel=1e-3) and ratio.n == 5


def test_follow_correlations_per_seed():
    frame = _intervention(order=(0, 2, 1, 3))  # one swap among 4 arms: Spearman 0.8
    assert e.follow_correlations(frame, "ntk_change").tolist() == pytest.approx([0.8] * 5)
    assert e.follow_estimate(frame, "ntk_change").value == pytest.approx(0.8)


@pytest.mark.parametrize("shift, holds", [(e.COSINE_SHIFT + 0.01, True), (e.COSINE_SHIFT - 0.01, False)])
def test_the_manipulation_check_is_decided_at_its_threshold(shift, holds):
    # the cosine moves by shift * |beta|: at beta = 2 twice, at beta = -1 once
    verdicts = e.intervention_claims(_intervention(shift=shift))
    lower = _by_statement(verdicts, "beta = -1 lowers the mean cosine")[0]
    assert lower.holds is holds and lower.n == 5
    assert f"more than {e.COSINE_SHIFT:g} " in lower.statement
    assert _by_statement(verdicts, "beta = 2 raises the mean cosine")[0].holds is True


@pytest.mark.parametrize("order, holds", [((0, 1, 3, 2), True), ((1, 0, 3, 2), True), ((0, 3, 1, 2), False),
                                          ((3, 2, 1, 0), False)])
def test_features_follow_the_set_cosine_decided_at_its_threshold(order, holds):
    # Spearman over 4 arms: 0.8 (one swap), 0.6 (two adjacent swaps), 0.4 (a longer swap), -1 (reversed)
    verdicts = e.intervention_claims(_intervention(order=order))
    follow = _by_statement(verdicts, "rises with the realized mean cosine")
    raw = [v for v in follow if "per unit distance" not in v.statement]
    assert len(raw) == len(e.MEASURES) and len(follow) == 2 * len(e.MEASURES)
    assert all(v.holds is holds for v in raw), [(v.estimate, v.low, v.high) for v in raw]
    assert all(f"> {e.FOLLOW:g})" in v.statement and v.n == 5 for v in follow)


@pytest.mark.parametrize("ratio, holds", [(1 + e.CONTROL_TOLERANCE - 0.01, True), (1 - e.CONTROL_TOLERANCE + 0.01, True),
                                          (1 + e.CONTROL_TOLERANCE + 0.01, False),
                                          (1 - e.CONTROL_TOLERANCE - 0.01, False)])
def test_the_control_is_decided_at_its_tolerance(ratio, holds):
    verdicts = e.intervention_claims(_intervention(control_ratio=ratio))
    control = _by_statement(verdicts, "do not follow a direction change alone")
    assert len(control) == len(e.MEASURES)
    assert all(v.holds is holds for v in control), [(v.estimate, v.low, v.high) for v in control]
    assert all(f"within {e.CONTROL_TOLERANCE:g} " in v.statement and "to 1," in v.statement for v in control)


@pytest.mark.parametrize("shift, holds", [(e.CONTROL_COSINE - 0.01, True), (-(e.CONTROL_COSINE + 0.01), False)])
def test_the_control_cosine_is_decided_at_its_tolerance(shift, holds):
    verdict = _by_statement(e.intervention_claims(_intervention(control_cos=shift)), "leaves the mean cosine")[0]
    assert verdict.holds is holds and f"within {e.CONTROL_COSINE:g} " in verdict.statement


def test_claims_add_the_intervention_when_it_was_run():
    frames = {**_frames(), "intervention": _intervention()}
    verdicts = e.claims(frames, P)
    assert len(verdicts) == 16 + 2 + 2 * len(e.MEASURES) + 1 + len(e.MEASURES)
    statements = [v.statement for v in verdicts]
    assert len(set(statements)) == len(statements) and not any("{" in s for s in statements)
    assert all(v.holds is True for v in verdicts[16:])


def test_usable_intervention_drops_failed_runs_and_their_seeds():
    frame = _intervention()
    frame.loc[(frame.seed == 3) & (frame.beta == 2.0) & (frame.arm == e.STEER), "diverged"] = True
    kept = e.usable_intervention(frame)
    assert 3 not in set(kept.seed) and set(kept.seed) == {0, 1, 2, 4}
    summary = e.intervention_summary(kept)
    assert (summary.n == 4).all() and len(summary) == len(BETAS) + len(BETAS) - 1


def test_steering_sets_the_cosine_of_a_tiny_real_run(tmp_path, monkeypatch):
    """The steered arm's realized mean cosine rises with beta; the control's stays near the unsteered run's."""
    monkeypatch.setenv("NUP_RESULTS_DIR", str(tmp_path))
    p = e.SCHEMA.validate({**P, "steps": 40, "steer_betas": [-1.0, 0.0, 2.0], "depth": 3})
    frame = e.run_intervention(p)
    steered = frame[frame.arm == e.STEER].groupby("beta").mean_cos.mean()
    assert steered[-1.0] < steered[0.0] - 0.1 and steered[2.0] > steered[0.0] + 0.3
    control = frame[frame.arm == e.CONTROL].groupby("beta").mean_cos.mean()
    assert abs(control[2.0] - steered[0.0]) < 0.15
    assert {"ntk_change_per_distance", "final_loss", "distance"} <= set(frame.columns)

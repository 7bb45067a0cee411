"""nup.experiments.prolonged_catapult (notebook 06): configurations, tuning on the validation split, per-run
summaries and the claims, on synthetic frames whose answers are known (and one tiny run of the warmup-to-constant
baseline)."""

import math

import numpy as np
import pandas as pd
import pytest

import nup
from nup.experiments import prolonged_catapult as e

BASE = dict(activation="relu", depth=3, widths={"ntk": 16, "nup": 8}, n_train=32, n_val=32, n_test=32, steps=400,
            seeds=[0, 1, 2, 3, 4], tune_seed=9,
            grids={"ntk": {"constant": [2.5, 5.0], "warmup_cosine": [32.0], "warmup_constant": [8.0]},
                   "nup": {"constant": [1.5], "warmup_cosine": [4.5], "warmup_constant": [1.5]}},
            caps={"geometric_ntk": [1000.0], "geometric_gradient": [30.0, 100.0]}, catapult_ratio=5.0, c=3.0,
            ntk_every=5, diagnostic_every=20, probe_size=8, spike_rise=0.2, n_jobs=1)
P = e.SCHEMA.validate(BASE)


# ---------------------------------------------------------------------------- configurations

def test_configs_of_every_method():
    lam = 4.0
    const = e.config(P, "ntk", 1, "constant", 5.0, lam)
    assert const.lr == pytest.approx(1.25) and const.schedule == "constant" and const.n_val == 32
    assert e.config(P, "nup", 1, "constant", 1.5, lam).lr == 1.5  # νP: the normalized step length itself
    wc = e.config(P, "ntk", 1, "warmup_cosine", 32.0, lam)
    assert (wc.lr, wc.schedule, wc.schedule_options) == (8.0, "warmup_cosine", ())
    wk = e.config(P, "ntk", 1, "warmup_constant", 8.0, lam)
    assert wk.schedule == "warmup_cosine" and dict(wk.schedule_options) == {"final_fraction": 1.0}
    geo = e.config(P, "ntk", 1, "geometric_ntk", 1000.0, lam)
    assert geo.schedule == "geometric" and dict(geo.schedule_options) == dict(c=3.0, curvature="ntk", every=5,
                                                                              max_lr=250.0)
    grad = dict(e.config(P, "nup", 1, "geometric_gradient", 100.0, lam).schedule_options)
    assert grad["curvature"] == "gradient" and grad["every"] == 1 and grad["max_lr"] == 25.0
    with pytest.raises(ValueError, match="method"):
        e.config(P, "ntk", 1, "cosine", 1.0, lam)


def test_warmup_to_constant_holds_its_peak_after_the_warmup():
    config = e.config(P, "ntk", 0, "warmup_constant", 2.0, 4.0).replace(steps=20, diagnostics=(), n_test=0, n_val=0)
    lr = nup.train(config).metric("lr")
    assert lr.iloc[0] < lr.iloc[1] < 0.5  # warmup over the first 10% (2 steps)
    assert lr.iloc[2:].to_numpy() == pytest.approx(0.5)  # then constant at the peak


def test_choose_picks_the_best_validation_accuracy_and_the_smaller_knob_on_a_tie():
    tuning = pd.DataFrame([("ntk", "constant", 2.5, 0.6, 0.9), ("ntk", "constant", 5.0, 0.7, 0.1),
                           ("ntk", "warmup_cosine", 32.0, 0.5, 0.5), ("ntk", "warmup_cosine", 8.0, 0.5, 0.5)],
                          columns=["parameterization", "method", "knob", "val_accuracy", "test_accuracy"])
    assert e.choose(tuning) == {("ntk", "constant"): 5.0, ("ntk", "warmup_cosine"): 8.0}  # never test accuracy


# ---------------------------------------------------------------------------- summaries

def test_cap_step_and_spikes_per_part():
    lr = pd.Series([1.0, 50.0, 99.5, 100.0, 100.0], index=[0, 1, 2, 3, 4])
    assert e.cap_step(lr, 100.0) == 2.0 and math.isnan(e.cap_step(lr, 1000.0))
    loss = np.linspace(1, 0.1, 100)
    loss[[5, 55, 95]] = 5.0  # one spike in the first, sixth and last tenth
    assert e.spikes_per_part(loss, 0.2) == [1, 0, 0, 0, 0, 1, 0, 0, 0, 1]


def _long_frame(n_steps=100, every=20, lam0=2.0, eta=1.0, spike_at=(), lam_fn=lambda t: 2.0):
    rows = []
    for t in range(n_steps + 1):
        loss = 1.0 / (1 + t) * (10.0 if t in spike_at else 1.0)
        rows += [(t, "loss", 0, loss), (t, "lr", 0, eta)]
        if t % every == 0 or t == n_steps:
            rows += [(t, "ntk_lambda", 0, lam_fn(t)), (t, "ntk_shape_step", 0, 0.1 if t else 0.0),
                     (t, "val_accuracy", 0, 0.6), (t, "test_accuracy", 0, 0.5), (t, "test_loss", 0, 1.0),
                     (t, "ntk_shape_change", 0, 0.3), (t, "ntk_change", 0, 0.2), (t, "kernel_alignment", 0, 0.4),
                     (t, "preact_change", 1, 0.2), (t, "preact_change", 2, 0.4)]
    frame = pd.DataFrame(rows, columns=["step", "metric", "layer", "value"])
    return frame.assign(run=0, diverged=False)


def test_summarize_a_synthetic_run():
    frame = _long_frame(spike_at=(15, 95), lam_fn=lambda t: 2.0 * 0.5 ** (t / 50))
    row = e.summarize(frame, [("ntk", 0, "geometric_ntk", 10.0)], {("ntk", 0): 2.0}, P).iloc[0]
    assert row.spikes == [0, 1, 0, 0, 0, 0, 0, 0, 0, 1] and row.tenths_with_spike == 2
    assert row.late_spikes == 2 and row.final_loss == pytest.approx(1 / 101)
    assert row.preact_change == pytest.approx(0.3)  # mean over the hidden layers at the last step
    assert row.lambda_q4 < row.lambda_q2 and row.eta_lambda_end == pytest.approx(1.0 * 2.0 * 0.25)
    assert math.isnan(row.cap_step) and row.at_cap_fraction == 0  # eta*lambda_0 = 2, far below the cap 10
    capped = e.summarize(frame, [("ntk", 0, "geometric_gradient", 2.0)], {("ntk", 0): 2.0}, P).iloc[0]
    assert capped.cap_step == 0 and capped.at_cap_fraction == 1.0


def test_loosest_cap_runs_are_added_for_the_dynamics_only():
    runs = _runs()
    loose = runs[(runs.parameterization == "ntk") & (runs.method == "geometric_ntk")].assign(knob=100.0, role="dynamics")
    runs = pd.concat([runs, loose], ignore_index=True)
    runs.loc[(runs.method == "geometric_ntk") & (runs.role == "dynamics"), "test_accuracy"] = 0.0
    assert e.loosest_cap(P) == 1000.0 and (e.loose_runs(runs, P).knob == 1000.0).all()
    verdicts = e.claims({"runs": runs}, P)  # the extra runs never enter the tuned comparisons
    assert all(v.holds is True for v in verdicts if "beats" in v.statement)


def test_method_summary_and_dynamics_runs():
    runs = _runs().assign(run=lambda d: range(len(d)))
    summary = e.method_summary(runs, ["test_accuracy"])
    row = summary[(summary.parameterization == "ntk") & (summary.method == "geometric_ntk")].iloc[0]
    assert row["mean"] == pytest.approx(0.63) and row.low <= row["mean"] <= row.high and row.seeds == 5
    chosen = e.dynamics_runs(runs, P, seed=3)
    assert list(chosen) == ["constant", "geometric_ntk", "geometric_gradient", "geometric_ntk_loosest"]
    picked = runs.set_index("run").loc[list(chosen.values())]
    assert (picked.seed == 3).all() and (picked.parameterization == "ntk").all()
    assert picked.knob.iloc[0] == P.catapult_ratio


def test_paired_difference_pairs_by_seed():
    a = pd.Series([0.70, 0.72, 0.74], index=[2, 0, 1])
    b = pd.Series([0.60, 0.62, 0.64], index=[0, 1, 2])
    d = e.paired_difference(a, b)
    assert d.value == pytest.approx(np.mean([0.72 - 0.60, 0.74 - 0.62, 0.70 - 0.64]))


# ---------------------------------------------------------------------------- claims

def _runs(acc_gain=0.03, noise=0.002, geo_tenths=10, cap_hit=False):
    rows = []
    for param in e.PARAMS:
        for s in P.seeds:
            for m in e.METHODS:
                geometric = m in e.GEOMETRIC
                spikes = [1] * geo_tenths + [0] * (10 - geo_tenths) if geometric else [1] + [0] * 9
                knob = {"constant": 5.0, "geometric_ntk": 1000.0}.get(m, 1.0)  # 1000: the loosest cap of P
                rows.append(dict(parameterization=param, seed=s, method=m, knob=knob,
                                 role="tuned", test_accuracy=0.6 + (acc_gain + noise * (s - 2) if geometric else 0),
                                 final_loss=0.01 if geometric else 0.001, spikes=spikes,
                                 late_spikes=sum(spikes[1:]), eta_lambda_end=3.0 if geometric else 1.0,
                                 lambda_q2=0.1, lambda_q4=0.05 if geometric else 0.1,
                                 path_q4=1.0 if geometric else 0.2,
                                 cap_step=10.0 if (cap_hit and m == "geometric_gradient") else math.nan))
    return pd.DataFrame(rows)


def test_claims_on_a_schedule_that_prolongs_the_catapult_and_helps():
    verdicts = e.claims({"runs": _runs()}, P)
    assert len(verdicts) == 29
    assert all(v.holds is True for v in verdicts), [(v.statement, v.estimate, v.low, v.high) for v in verdicts
                                                    if v.holds is not True]


def test_claims_when_spikes_stop_the_cap_binds_and_the_gain_is_within_noise():
    verdicts = e.claims({"runs": _runs(acc_gain=0.01, noise=0.02, geo_tenths=7, cap_hit=True)}, P)
    by = {v.statement: v for v in verdicts}
    spikes = [v for s, v in by.items() if "the loss spikes in every tenth" in s]
    assert [v.holds for v in spikes] == [False] * 3 and spikes[0].estimate == pytest.approx(0.7)
    capped = [v for s, v in by.items() if "(gradient variant, tuned cap) stays below its cap" in s]
    assert [v.holds for v in capped] == [False, False]
    beats = [v for s, v in by.items() if "beats" in s]
    assert all(v.holds is None for v in beats)  # a one-point gain with a two-point seed spread: undecided


# ---------------------------------------------------------------------------- schema

@pytest.mark.parametrize("name,value", [("tune_seed", 3), ("c", 4.5), ("catapult_ratio", 1.5),
                                        ("diagnostic_every", 150), ("seeds", [1]),
                                        ("grids", {"ntk": {"constant": [1.0]}, "nup": {}}),
                                        ("caps", {"geometric_ntk": []})])
def test_schema_refuses(name, value):
    with pytest.raises(ValueError, match=name):
        e.SCHEMA.validate({**BASE, name: value})

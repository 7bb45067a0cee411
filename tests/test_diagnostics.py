"""The training diagnostics against independent computations.

* ``"updates"``: the recorded cosines, norms and distances against a float64 computation from
  parameter snapshots taken by training the same configuration by hand;
* the identity ``|D_{t+1}|^2 = |D_t|^2 + |Delta_t|^2 + 2 |Delta_t| |D_t| cos_t`` on recorded runs;
* ``"ntk"``: the NTK change is exactly zero when training leaves the network unchanged (a
  run whose loss is already zero, so every gradient is zero), and positive otherwise;
* ``"preactivations"``: the relative change against a direct forward pass.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pandas as pd
import pytest
import torch

import nup
from nup import RunConfig, train
from nup.linalg.tangent_kernel import empirical_ntk
from nup.diagnostics.updates import EveryStepUpdateTracker, LaggedUpdateCosine, UpdateTracker
from nup.training.config import LOSS_FUNCTIONS, TrainContext
from nup.training.loop import load_data

nup_train = importlib.import_module("nup.training.loop")

TINY = dict(dataset="teacher", n_train=12, depth=3, width=3, steps=12, dtype="float64", activation="relu")
CASES = {
    "ntk plain GD": dict(parameterization="ntk", lr=0.3),
    "nup per_layer": dict(parameterization="nup", lr=0.05, normalize="per_layer"),
    "nup global": dict(parameterization="nup", lr=0.05, normalize="global"),
    "mup momentum": dict(parameterization="mup", base_width=3, lr=0.05, momentum=0.5),
}


def manual_snapshots(config: RunConfig):
    """``theta_0, ..., theta_T`` (one float64 array per layer) and the losses, training by hand."""
    dtype = torch.float64
    x, y, _ = load_data(config, torch.device("cpu"), dtype)
    model = config.build_parameterization().build(x.shape[1], y.shape[1], config.depth, config.width,
                                                  config.activation, seed=config.seed, dtype=dtype)
    optimizer = model.parameterization.optimizer(model, config.lr, momentum=config.momentum)
    snapshots, losses = [], []
    for _ in range(config.steps + 1):
        snapshots.append([layer.weight.detach().numpy().astype(np.float64).copy() for layer in model.layers])
        loss = LOSS_FUNCTIONS[config.loss](model(x), y)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return snapshots, losses[: config.steps + 1]


def recorded(df, metric, layer):
    rows = df[(df.metric == metric) & (df.layer == layer)]
    return dict(zip(rows.step, rows.value))


def np_cos(u, v):
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    return float(u @ v / (nu * nv)) if nu > 0 and nv > 0 else math.nan


@pytest.mark.parametrize("every", [1, 3])
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_update_diagnostics_match_float64_snapshots(case, every):
    config = RunConfig(**TINY, **CASES[case], diagnostics=("updates",), diagnostic_every=every)
    df = train(config).df
    snapshots, losses = manual_snapshots(config)
    # The hand-made trajectory is the recorded one.
    np.testing.assert_allclose([recorded(df, "loss", 0)[t] for t in range(config.steps + 1)], losses, rtol=1e-12)

    def flat(t, layer):  # layer 0: all parameters
        parts = snapshots[t] if layer == 0 else [snapshots[t][layer - 1]]
        return np.concatenate([p.ravel() for p in parts])

    for layer in range(config.depth + 1):
        cos_cum, cos_con = recorded(df, "cos_cumulative", layer), recorded(df, "cos_consecutive", layer)
        norms, dist = recorded(df, "update_norm", layer), recorded(df, "distance_from_init", layer)
        recorded_steps = list(range(0, config.steps, every))  # diagnostic steps that take an update
        assert sorted(cos_cum) == sorted(norms) == sorted(dist) == recorded_steps
        assert sorted(cos_con) == recorded_steps[1:]
        for t in recorded_steps:
            delta = flat(t + 1, layer) - flat(t, layer)
            cumulative = flat(t, layer) - flat(0, layer)
            assert norms[t] == pytest.approx(np.linalg.norm(delta), rel=1e-10, abs=1e-14)
            assert dist[t] == pytest.approx(np.linalg.norm(cumulative), rel=1e-10, abs=1e-14)
            if t == 0:
                assert math.isnan(cos_cum[t])  # D_0 = 0: undefined
            else:
                assert cos_cum[t] == pytest.approx(np_cos(delta, cumulative), abs=1e-10)
                previous = flat(t, layer) - flat(t - 1, layer)
                assert cos_con[t] == pytest.approx(np_cos(delta, previous), abs=1e-10)


def test_cosines_are_not_trivial():
    """The cases above exercise both signs and values away from +-1 (else the test would be weak)."""
    values = []
    for case in CASES.values():
        df = train(RunConfig(**TINY, **case, diagnostics=("updates",))).df
        values += list(df[df.metric.isin(["cos_cumulative", "cos_consecutive"])].value.dropna())
    values = np.array(values)
    assert (np.abs(values) < 0.95).any() and (values > 0.5).any()


@pytest.mark.parametrize("dtype,rel", [("float64", 1e-10), ("float32", 2e-4)])
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_distance_identity_on_recorded_runs(case, dtype, rel):
    """``|D_{t+1}|^2 = |D_t|^2 + |Delta_t|^2 + 2 |Delta_t| |D_t| cos_t``, per layer and globally."""
    config = RunConfig(**dict(TINY, dtype=dtype, steps=25), **CASES[case], diagnostics=("updates",),
                       diagnostic_every=1)
    df = train(config).df
    for layer in range(config.depth + 1):
        d, u, c = (recorded(df, m, layer) for m in ("distance_from_init", "update_norm", "cos_cumulative"))
        for t in range(config.steps - 1):
            cross = 0.0 if t == 0 else 2 * u[t] * d[t] * c[t]
            assert d[t + 1] ** 2 == pytest.approx(d[t] ** 2 + u[t] ** 2 + cross, rel=rel)
        # The cosines carry weight (about 0.3-0.5 of |D_{t+1}|^2 here): a wrong cos_t breaks the identity.
        assert max(abs(2 * u[t] * d[t] * c[t]) / d[t + 1] ** 2 for t in range(1, config.steps - 1)) > 0.1


UPDATE_METRICS = ["update_norm", "distance_from_init", "cos_cumulative", "cos_consecutive"]


def update_rows(df):
    return df[df.metric.isin(UPDATE_METRICS)].reset_index(drop=True)


@pytest.mark.parametrize("every", [2, 3, 10, 30])
@pytest.mark.parametrize("case", ["nup per_layer", "mup momentum"])
def test_updates_at_diagnostic_steps_equal_the_every_step_rows_exactly(case, every):
    """Honouring ``diagnostic_every`` changes which steps are recorded, never a value: cos_consecutive
    at step t is still cos(Delta_t, Delta_{t-1}), from a copy of theta_{t-1}."""
    config = RunConfig(**dict(TINY, dtype="float32", steps=25), **CASES[case], diagnostics=("updates",))
    every_step = update_rows(train(config.replace(diagnostic_every=1)).df)
    sparse = update_rows(train(config.replace(diagnostic_every=every)).df)
    expected = every_step[every_step.step % every == 0].reset_index(drop=True)
    assert sorted(set(sparse.step)) == list(range(0, config.steps, every))
    pd.testing.assert_frame_equal(sparse, expected, check_exact=True)


def test_every_step_update_tracker_ignores_diagnostic_every(monkeypatch):
    monkeypatch.setitem(nup.DIAGNOSTICS, "updates_every_step", EveryStepUpdateTracker)
    config = RunConfig(**TINY, **CASES["nup global"], diagnostic_every=5)
    every_step = update_rows(train(config.replace(diagnostics=("updates",), diagnostic_every=1)).df)
    df = update_rows(train(config.replace(diagnostics=("updates_every_step",))).df)
    pd.testing.assert_frame_equal(df, every_step, check_exact=True)


def test_every_step_and_lag_diagnostics_are_registered():
    assert nup.DIAGNOSTICS["updates_every_step"] is EveryStepUpdateTracker
    assert nup.DIAGNOSTICS["update_lags"] is LaggedUpdateCosine


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_lagged_update_cosines_match_float64_snapshots(case):
    """``cos_cumulative_k{k}`` at step s is cos(theta_{s+1} - theta_{s+1-k}, theta_{s+1-k} - theta_0)."""
    config = RunConfig(**dict(TINY, steps=16), **CASES[case], diagnostics=("update_lags",), diagnostic_every=5)
    df = train(config).df
    snapshots, _ = manual_snapshots(config)

    def flat(t, layer):
        parts = snapshots[t] if layer == 0 else [snapshots[t][layer - 1]]
        return np.concatenate([p.ravel() for p in parts])

    for k in LaggedUpdateCosine.LAGS:
        for layer in range(config.depth + 1):
            cos = recorded(df, f"cos_cumulative_k{k}", layer)
            assert sorted(cos) == list(range(k, config.steps))  # every step whose window starts after theta_0
            for s in cos:
                start = s + 1 - k
                expected = np_cos(flat(s + 1, layer) - flat(start, layer), flat(start, layer) - flat(0, layer))
                assert cos[s] == pytest.approx(expected, abs=1e-10)


def test_lag_one_is_the_every_step_cosine(monkeypatch):
    monkeypatch.setattr(LaggedUpdateCosine, "LAGS", (1, 3))
    config = RunConfig(**TINY, **CASES["mup momentum"], diagnostics=("update_lags", "updates_every_step"),
                       diagnostic_every=4)
    df = train(config).df
    for layer in range(config.depth + 1):
        lag1, cos = recorded(df, "cos_cumulative_k1", layer), recorded(df, "cos_cumulative", layer)
        assert sorted(lag1) == list(range(1, config.steps))
        assert all(lag1[s] == pytest.approx(cos[s], abs=1e-12) for s in lag1)
    k3 = recorded(df, "cos_cumulative_k3", 0)
    assert any(abs(k3[s] - recorded(df, "cos_cumulative", 0)[s]) > 1e-3 for s in k3)  # a different quantity


@pytest.mark.parametrize("lags,pattern", [((), "lags=()"), ((2, 2), r"lags=\(2, 2\)"), ((0,), "lags=0")])
def test_lagged_update_cosine_validates_lags(lags, pattern):
    config = RunConfig(**TINY)
    model, x, y, _, _ = nup_train.build_model_and_data(config)
    ctx = TrainContext(config, model, None, x, y, LOSS_FUNCTIONS["mse"])
    with pytest.raises(ValueError, match=pattern):
        LaggedUpdateCosine(ctx, lags=lags)


def test_update_tracker_every_is_validated():
    config = RunConfig(**TINY)
    model, x, y, _, _ = nup_train.build_model_and_data(config)
    ctx = TrainContext(config, model, None, x, y, LOSS_FUNCTIONS["mse"])
    with pytest.raises(ValueError, match="every=0 is out of range"):
        UpdateTracker(ctx, every=0)


def test_update_tracker_holds_at_most_three_weight_copies():
    """theta_0, theta_t and one of theta_{t-1} / Delta_{t-1}: never one copy per step."""
    config = RunConfig(**dict(TINY, steps=40), **CASES["ntk plain GD"], diagnostic_every=7)
    model, x, y, _, _ = nup_train.build_model_and_data(config)
    optimizer = model.parameterization.optimizer(model, config.lr)
    ctx = TrainContext(config, model, optimizer, x, y, LOSS_FUNCTIONS["mse"])
    tracker = UpdateTracker(ctx)
    for step in range(config.steps):
        tracker(step, ctx, None)
        loss = ctx.loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        tracker.after_step(step, ctx)
        held = [tracker.initial, tracker.before, tracker.earlier, tracker.update[1] if tracker.update else None]
        assert sum(h is not None and h is not tracker.initial for h in held) <= 2


def _zero_loss_run(monkeypatch, perturb: float):
    """A run whose targets are the network's own outputs at init (plus ``perturb``): zero loss and
    zero gradients when ``perturb = 0``."""
    config = RunConfig(**dict(TINY, steps=8), parameterization="ntk", lr=0.5,
                       diagnostics=("ntk", "updates", "preactivations"), diagnostic_every=2, probe_size=8)
    x, _, _ = load_data(config, torch.device("cpu"), torch.float64)
    model = config.build_parameterization().build(x.shape[1], 1, config.depth, config.width, config.activation,
                                                  seed=config.seed, dtype=torch.float64)
    with torch.no_grad():
        y = model(x) + perturb
    monkeypatch.setattr(nup_train, "load_data", lambda *args: (x, y, (None, None)))
    return train(config).df


def test_ntk_change_is_zero_when_training_leaves_the_network_unchanged(monkeypatch):
    df = _zero_loss_run(monkeypatch, perturb=0.0)
    assert (df[df.metric == "loss"].value == 0).all()
    assert (df[df.metric == "update_norm"].value == 0).all()
    change = df[df.metric == "ntk_change"]
    assert len(change) == 5 and (change.value == 0).all()
    assert (df[df.metric == "preact_change"].value == 0).all()
    alignment = df[df.metric == "kernel_alignment"].value
    assert alignment.nunique() == 1  # the kernel, hence its alignment, never moved


def test_ntk_change_is_positive_when_the_network_trains(monkeypatch):
    df = _zero_loss_run(monkeypatch, perturb=1.0)
    change = recorded(df, "ntk_change", 0)
    assert change[8] > 1e-4
    # |K_8 - K_0|_F/|K_0|_F on the probe batch of the same run trained by hand (plain GD, y = f_0(x) + 1).
    config = RunConfig(**dict(TINY, steps=8), parameterization="ntk", lr=0.5)
    x, _, _ = load_data(config, torch.device("cpu"), torch.float64)
    model = config.build_parameterization().build(x.shape[1], 1, 3, 3, "relu", seed=0, dtype=torch.float64)
    y = model(x).detach() + 1.0
    k0 = empirical_ntk(model, x[:8])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(8):
        optimizer.zero_grad()
        nup.mse_loss(model(x), y).backward()
        optimizer.step()
    expected = torch.linalg.matrix_norm(empirical_ntk(model, x[:8]) - k0) / torch.linalg.matrix_norm(k0)
    assert change[8] == pytest.approx(float(expected), rel=1e-9)


def test_preactivation_change_against_a_direct_forward_pass():
    config = RunConfig(**TINY, parameterization="ntk", lr=0.3, diagnostics=("preactivations",),
                       diagnostic_every=4, probe_size=5)
    df = train(config).df
    snapshots, _ = manual_snapshots(config)
    x, _, _ = load_data(config, torch.device("cpu"), torch.float64)
    model = config.build_parameterization().build(x.shape[1], 1, config.depth, config.width, config.activation,
                                                  seed=config.seed, dtype=torch.float64)

    def preacts(t):
        with torch.no_grad():
            for layer, w in zip(model.layers, snapshots[t]):
                layer.weight.copy_(torch.from_numpy(w))
            return [h.numpy() for h in model(x[:5], return_preactivations=True)[1]]

    h0 = preacts(0)
    for t in (4, 8, 12):
        ht = preacts(t)
        for k in range(1, config.depth + 1):
            expected = np.linalg.norm(ht[k - 1] - h0[k - 1]) / np.linalg.norm(h0[k - 1])
            assert recorded(df, "preact_change", k)[t] == pytest.approx(expected, rel=1e-9)
            norm2 = (ht[k - 1] ** 2).sum(1).mean() / ht[k - 1].shape[1]
            assert recorded(df, "preact_norm2", k)[t] == pytest.approx(norm2, rel=1e-9)

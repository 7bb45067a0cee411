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
import pytest
import torch

import nup
from nup import RunConfig, train
from nup.training.config import LOSS_FUNCTIONS
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


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_update_diagnostics_match_float64_snapshots(case):
    config = RunConfig(**TINY, **CASES[case], diagnostics=("updates",))
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
        assert sorted(cos_cum) == list(range(config.steps))  # one row per update taken
        assert sorted(cos_con) == list(range(1, config.steps))
        for t in range(config.steps):
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
    config = RunConfig(**dict(TINY, dtype=dtype, steps=25), **CASES[case], diagnostics=("updates",))
    df = train(config).df
    for layer in range(config.depth + 1):
        d, u, c = (recorded(df, m, layer) for m in ("distance_from_init", "update_norm", "cos_cumulative"))
        for t in range(config.steps - 1):
            cross = 0.0 if t == 0 else 2 * u[t] * d[t] * c[t]
            assert d[0] == 0 and (t > 0 or math.isnan(c[t]))
            assert d[t + 1] ** 2 == pytest.approx(d[t] ** 2 + u[t] ** 2 + cross, rel=rel)


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
    assert change[0] == 0 and change[8] > 1e-4


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

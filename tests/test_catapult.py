"""Tests for nup.analysis.catapult: lambda_0 of a config, spike counting, phase classification, the window edge,
and the "ntk_lambda" / "ntk_motion" diagnostics."""

from __future__ import annotations

import math

import numpy as np

import nup.diagnostics
import pytest
import torch

from nup.analysis import catapult
from nup.analysis.catapult import (classify_phase, config_for_ratio, constant_loss, count_spikes, initial_eigenvalues,
                                   initial_ntk_eigenvalue, largest_rise, spike_steps, window_edge)
from nup.linalg.tangent_kernel import empirical_ntk
from nup.training.config import RunConfig
from nup.training.loop import load_data, train

TINY = dict(parameterization="ntk", dataset="teacher", n_train=24, depth=3, width=16, dtype="float64",
            device="cpu", steps=30, diagnostic_every=5)


def tiny(**changes) -> RunConfig:
    return RunConfig(**{**TINY, **changes})


def dense_lambda0(config: RunConfig) -> float:
    x, y, _ = load_data(config, torch.device("cpu"), torch.float64)
    model = config.build_parameterization().build(x.shape[1], y.shape[1], config.depth, config.width,
                                                  config.activation, seed=config.seed, dtype=torch.float64)
    return float(torch.linalg.eigvalsh(empirical_ntk(model, x))[-1])


# ---------------------------------------------------------------------------- lambda_0

@pytest.mark.parametrize("seed", [0, 1])
def test_initial_ntk_eigenvalue_matches_the_dense_kernel_of_the_trained_model(seed):
    config = tiny(seed=seed)
    # Lanczos to a relative 1e-4, then 4 significant digits (at most 5e-4 relative): within 1e-3 of the dense kernel.
    value = initial_ntk_eigenvalue(config)
    assert value == pytest.approx(dense_lambda0(config), rel=1e-3)
    assert value == float(f"{value:.4g}")
    assert value == initial_eigenvalues([config, tiny(seed=seed + 7)])[0]  # one way to compute lambda_0


def test_config_for_ratio_sets_eta_times_lambda0():
    config = tiny()
    lam = dense_lambda0(config)
    assert config_for_ratio(config, 3.0).lr * lam == pytest.approx(3.0, rel=1e-3)
    assert config_for_ratio(config, 2.0, lambda0=4.0).lr == 0.5
    with pytest.raises(ValueError, match="ratio"):
        config_for_ratio(config, 0.0)
    with pytest.raises(ValueError, match="lambda0"):
        config_for_ratio(config, 1.0, lambda0=-1.0)
    with pytest.raises(ValueError, match="RunConfig"):
        initial_ntk_eigenvalue({"lr": 1.0})
    with pytest.raises(ValueError, match="configs"):
        initial_eigenvalues([config, {"lr": 1.0}])
    with pytest.raises(ValueError, match="digits"):
        initial_eigenvalues([config], digits=0)


def test_constant_loss_is_the_loss_of_the_mean_output():
    config = tiny()
    _, y, _ = load_data(config, torch.device("cpu"), torch.float64)
    expected = float(((y - y.mean(0)) ** 2).sum() / (2 * len(y)))
    assert constant_loss(config) == pytest.approx(expected)


# ---------------------------------------------------------------------------- loss curves

def test_spikes_of_synthetic_curves():
    decay = np.exp(-np.arange(50) / 10.0)
    assert count_spikes(decay) == 0
    one = decay.copy()
    one[10:13] = [3.0, 5.0, 2.0]
    assert spike_steps(one).tolist() == [10]
    # an oscillation counts once per excursion
    osc = np.tile([1.0, 1.5], 10)
    assert count_spikes(osc, rise=0.2) == 10
    assert count_spikes(osc, rise=0.6) == 0
    # a non-finite value ends the scan
    assert spike_steps([1.0, 2.0, math.nan, 1.0, 5.0]).tolist() == [1]
    with pytest.raises(ValueError, match="rise"):
        spike_steps(decay, rise=0)
    with pytest.raises(ValueError, match="empty"):
        spike_steps([])


def test_largest_rise():
    assert largest_rise([3.0, 2.0, 1.0]) == 0.0
    assert largest_rise([4.0, 2.0, 3.0, 1.0]) == pytest.approx(0.5)
    assert largest_rise([1.0, math.inf]) == math.inf
    assert largest_rise([1.0]) == 0.0


def test_classify_phase():
    t = np.arange(100)
    assert classify_phase(np.exp(-t / 20)) == "lazy"
    spike = np.exp(-t / 20)
    spike[3:6] = [4.0, 9.0, 2.0]
    assert classify_phase(spike) == "catapult"
    assert classify_phase(spike, diverged=True) == "divergent"
    assert classify_phase([1.0, 10.0, math.nan]) == "divergent"
    assert classify_phase(spike, blowup=5) == "divergent"  # a spike above blowup x the initial loss
    flat = np.r_[1.0, 0.9 * np.ones(99)]  # never comes back below half the initial loss
    assert classify_phase(flat) == "divergent"
    assert classify_phase(spike, lambda_ratio=0.0) == "divergent"  # ended dead
    assert classify_phase(spike, lambda_ratio=math.nan) == "divergent"
    assert classify_phase(spike, lambda_ratio=0.1) == "catapult"
    assert classify_phase(spike, baseline=spike[-1]) == "divergent"  # no better than a constant output
    assert classify_phase(spike, baseline=2 * spike[-1]) == "catapult"
    slow = np.linspace(2.0, 1.5, 100)  # no spike, merely slow: lazy even above a baseline (settle=1: came back)
    assert classify_phase(slow, settle=1.0, baseline=1.0) == "lazy"
    assert classify_phase(spike, accuracy=0.35, chance=0.1) == "catapult"
    assert classify_phase(spike, accuracy=0.1, chance=0.1) == "divergent"  # ended at chance
    assert classify_phase(spike, accuracy=math.nan, chance=0.1) == "divergent"
    ended_above = spike.copy()
    ended_above[-1] = 1.2 * spike[0]  # came down, then ended above its initial loss: never a catapult
    assert classify_phase(ended_above, settle=1.0) == "divergent"
    with pytest.raises(ValueError, match="chance"):
        classify_phase(spike, accuracy=0.5)
    late = np.exp(-t / 20)
    late[90::2] *= 1.5  # oscillating at the end (Edge of Stability) still counts as settled
    assert classify_phase(late) == "catapult"
    with pytest.raises(ValueError, match="settle"):
        classify_phase(spike, settle=0)


def test_window_edge():
    ratios = [0.5, 1, 2, 4, 8, 16]
    phases = ["lazy", "lazy", "catapult", "catapult", "divergent", "divergent"]
    assert window_edge(ratios[::-1], phases[::-1]) == (4.0, 8.0)
    assert window_edge([1, 2], ["lazy", "catapult"]) == (2.0, math.inf)
    lo, hi = window_edge([1, 2], ["divergent", "divergent"])
    assert math.isnan(lo) and hi == 1.0
    with pytest.raises(ValueError, match="same length"):
        window_edge([1, 2], ["lazy"])
    with pytest.raises(ValueError, match="phase"):
        window_edge([1], ["exploded"])


# ---------------------------------------------------------------------------- real runs and diagnostics

def test_small_rates_are_lazy_and_huge_rates_diverge():
    config = tiny(steps=60)
    lam = initial_ntk_eigenvalue(config)
    lazy = train(config.replace(lr=0.5 / lam))
    assert classify_phase(lazy.metric("loss").values, lazy.diverged) == "lazy"
    blown = train(config.replace(lr=200 / lam))
    assert classify_phase(blown.metric("loss").values, blown.diverged) == "divergent"


def test_ntk_lambda_diagnostic_starts_at_lambda0_and_ntk_motion_at_zero():
    config = tiny(diagnostics=("ntk_lambda", "ntk_motion"), probe_size=8, lr=0.05)
    result = train(config)
    lam = result.metric("ntk_lambda")
    assert lam.index.tolist() == list(range(0, config.steps + 1, config.diagnostic_every))
    assert lam.iloc[0] == pytest.approx(dense_lambda0(config), rel=1e-3)
    change, step = result.metric("ntk_shape_change"), result.metric("ntk_shape_step")
    assert change.iloc[0] == pytest.approx(0, abs=1e-12) and step.iloc[0] == pytest.approx(0, abs=1e-12)
    assert (change.iloc[1:] > 0).all() and (change <= 2 + 1e-12).all()
    # the path length bounds the distance from the start (triangle inequality)
    assert step.cumsum().iloc[-1] >= change.iloc[-1] - 1e-12


def test_diagnostics_are_registered():
    from nup.diagnostics import DIAGNOSTICS

    assert DIAGNOSTICS["ntk_lambda"] is nup.diagnostics.NTKLambda
    assert DIAGNOSTICS["ntk_motion"] is nup.diagnostics.NTKMotion

"""nup.experiments.catapult (notebook 05): phases, brackets, the stop point of the Edge-of-Stability runs and the
claims, on synthetic curves and frames whose answers are known."""

import math

import numpy as np
import pandas as pd
import pytest

from nup.analysis.catapult import classify_phase
from nup.experiments import catapult as e

BASE = dict(activations=["abs", "relu"], depths=[3, 8], width=16, nup_depths=[2, 3], nup_width=4, n_train=32,
            steps=20, seeds=[0, 1, 2], ratios=[1.9, 4.0, 8.0, 16.0], bisection_rounds=1, diagnostic_every=5,
            example_steps=10, example_every=2, eos_ratio=0.5, eos_seeds=[0, 1, 2], eos_max_steps=200, eos_every=10,
            eos_window=50, n_jobs=1)
P = e.SCHEMA.validate(BASE)
BASELINE = 0.45


# ---------------------------------------------------------------------------- phases of runs

def test_phase_rule_on_known_curves():
    steps = np.arange(50)
    lazy = 2.0 * 0.9 ** steps
    assert classify_phase(lazy, False, lambda_ratio=0.5, baseline=BASELINE) == "lazy"
    catapult = lazy.copy()
    catapult[3:6] = [5.0, 8.0, 3.0]  # a spike, then back down below the constant output's loss
    assert classify_phase(catapult, False, lambda_ratio=0.3, baseline=BASELINE) == "catapult"
    died = catapult.copy()
    died[6:] = BASELINE  # spiked, then stuck at the best constant output: died in the spike
    assert classify_phase(died, False, lambda_ratio=0.3, baseline=BASELINE) == "divergent"
    slow = np.linspace(2.0, 0.5, 50)  # no spike, merely slow: stays lazy although it ends above the baseline
    assert classify_phase(slow, False, lambda_ratio=0.5, baseline=BASELINE) == "lazy"
    assert classify_phase(lazy[:10], True, lambda_ratio=math.nan, baseline=BASELINE) == "divergent"
    assert classify_phase(catapult, False, lambda_ratio=1e-9, baseline=BASELINE) == "divergent"  # dead network


def test_summarize_run_scales_lambda_by_the_ratio():
    loss = 2.0 * 0.9 ** np.arange(21)
    lam = np.array([10.0, 4.0, 3.0, 6.0, 5.0])  # lambda_t every 5 steps
    s = e.summarize_run(loss, lam, False, lambda0=10.0, ratio=4.0, baseline=BASELINE)
    assert s["phase"] == "lazy" and s["rise"] == 0
    assert s["eta_lambda_min"] == pytest.approx(1.2) and s["eta_lambda_end"] == pytest.approx(2.0)
    diverged = e.summarize_run(loss[:5], lam[:1], True, 10.0, 4.0, BASELINE)
    assert diverged["phase"] == "divergent" and math.isnan(diverged["eta_lambda_end"])


def _runs(phases_by_cell: dict) -> pd.DataFrame:
    rows = []
    for cell, points in phases_by_cell.items():
        rows += [dict(zip(e.CELL, cell), ratio=r, phase=ph) for r, ph in points]
    return pd.DataFrame(rows)


def test_brackets_bisection_and_censoring():
    runs = _runs({("ntk", "abs", 3, 0): [(1.9, "lazy"), (4.0, "catapult"), (8.0, "divergent"), (16.0, "divergent")],
                  ("ntk", "abs", 3, 1): [(1.9, "lazy"), (4.0, "catapult"), (8.0, "catapult"), (16.0, "catapult")],
                  ("ntk", "abs", 3, 2): [(1.9, "divergent"), (4.0, "divergent")]})
    assert e.bisection_points(runs) == [(("ntk", "abs", 3, 0), pytest.approx(math.sqrt(32)))]
    edges = e.window_edges(runs).set_index("seed")
    assert edges.loc[0, "edge"] == pytest.approx(math.sqrt(32)) and edges.loc[0, "censored"] == ""
    assert edges.loc[0, "first_spike"] == 4.0
    assert edges.loc[1, "edge"] == 16.0 and edges.loc[1, "censored"] == "above"  # never diverged: a lower bound
    assert edges.loc[2, "edge"] == 1.9 and edges.loc[2, "censored"] == "below"
    assert math.isnan(edges.loc[2, "first_spike"])


def test_example_ratios_pick_one_run_per_phase():
    runs = _runs({("ntk", "abs", 3, 0): [(1.0, "lazy"), (1.9, "lazy"), (2.8, "catapult"), (4.0, "catapult"),
                                         (5.6, "catapult"), (8.0, "divergent"), (16.0, "divergent")]})
    assert e.example_ratios(runs) == {"lazy": 1.9, "catapult": 4.0, "divergent": 8.0}
    assert e.example_ratios(runs[runs.phase != "divergent"]) == {"lazy": 1.9, "catapult": 4.0}


def test_phases_in_order():
    assert e.phases_in_order([4.0, 1.9, 8.0], ["catapult", "lazy", "divergent"])
    assert e.phases_in_order([1.9, 8.0], ["lazy", "divergent"])
    assert not e.phases_in_order([1.9, 4.0, 8.0], ["lazy", "divergent", "catapult"])


# ---------------------------------------------------------------------------- Edge of Stability

def test_stop_point_loss_flat_and_bound():
    steps = np.arange(0, 201, 10)
    falling = np.logspace(0, -6, len(steps))
    rising = 1.0 + steps / 100.0
    assert e.stop_point(steps, rising, falling, window=50) == (int(steps[np.argmax(falling <= 1e-4)]), "loss")
    flat = np.ones(len(steps))
    assert e.stop_point(steps, flat, np.ones(len(steps)), window=50) == (100, "flat")  # two full windows needed
    nearly_flat = 1.0 + 0.005 * (steps >= 100)  # a 0.5% move is "stopped changing" (tolerance 1%)
    assert e.stop_point(steps, nearly_flat, np.ones(len(steps)), window=50) == (100, "flat")
    assert e.stop_point(steps, rising, np.ones(len(steps)), window=50) == (200, "max_steps")


def test_summarize_eos_takes_the_median_of_the_last_window():
    steps = np.arange(0, 201, 10)
    s = np.where(steps < 100, 0.5 + steps / 100, 2.0)
    s[steps == 60] = 10.0  # an outlier before the stop does not move the median but sets the peak
    out = e.summarize_eos(steps, s, np.ones(len(steps)), window=50)
    # (70, 120] holds 1.3, 1.4, 2, 2, 2 and (120, 170] only 2: the medians agree first at 170
    assert (out["stop_reason"], out["stop_step"]) == ("flat", 170)
    assert out["start"] == 0.5 and out["peak"] == 10.0 and out["final"] == pytest.approx(2.0)


# ---------------------------------------------------------------------------- claims

def _edges(edge_fn, seeds=(0, 1, 2), noise=0.02):
    rows = []
    for param, depths in (("ntk", P.depths), ("nup", P.nup_depths)):
        for act in P.activations:
            for depth in depths:
                for s in seeds:
                    rows.append(dict(parameterization=param, activation=act, depth=depth, seed=s,
                                     edge=edge_fn(param, act, depth) * (1 + noise * (s - 1)), censored=""))
    return pd.DataFrame(rows)


def _frames(edge_fn, eos_final):
    runs = []
    for param, depths in (("ntk", P.depths), ("nup", P.nup_depths)):
        for act in P.activations:
            for depth in depths:
                for s in P.seeds:
                    runs += [dict(parameterization=param, activation=act, depth=depth, seed=s, ratio=r, phase=ph,
                                  eta_lambda_min=m, eta_lambda_end=m)
                             for r, ph, m in ((1.9, "lazy", 1.0), (4.0, "catapult", 1.5), (64.0, "divergent", math.nan))]
    eos = pd.DataFrame([dict(parameterization=pa, activation=a, seed=s, final=eos_final[pa, a] * (1 + 0.01 * s))
                        for pa in ("ntk", "sp") for a in P.activations for s in P.eos_seeds])
    return {"runs": pd.DataFrame(runs), "edges": _edges(edge_fn), "eos_summary": eos}


EOS_IDEAL = {("ntk", "abs"): 0.3, ("ntk", "relu"): 0.3, ("sp", "abs"): 2.0, ("sp", "relu"): 2.0}


def test_claims_on_depth_independent_edges_at_the_literature_values():
    verdicts = e.claims(_frames(lambda param, act, depth: 4.0 if act == "abs" else 12.0, EOS_IDEAL), P)
    holds = {v.statement: v.holds for v in verdicts}
    assert len(verdicts) == 18
    assert all(holds[s] is True for s in holds if "edge" in s), [(v.statement, v.estimate, v.low, v.high) for v in verdicts]
    assert all(v.holds is True for v in verdicts[:6])
    assert verdicts[-3].holds is False and verdicts[-2].holds is True and verdicts[-1].holds is True


def test_claims_on_edges_that_grow_with_depth():
    frames = _frames(lambda param, act, depth: (4.0 if act == "abs" else 12.0) * depth / 3, EOS_IDEAL)
    verdicts = {v.statement: v for v in e.claims(frames, P)}
    depth_free = next(v for s, v in verdicts.items() if s.startswith("the upper edge does not depend on depth"))
    assert depth_free.holds is False and depth_free.estimate == pytest.approx(8 / 3 - 1, rel=0.05)
    shallow = [v for s, v in verdicts.items() if s.startswith("at the shallowest depth")]
    assert [v.holds for v in shallow] == [True, True]
    every = [v for s, v in verdicts.items() if s.startswith("at every depth") and "NTK" in s]
    assert [v.holds for v in every] == [False, False]


def test_an_edge_whose_interval_straddles_the_tolerance_is_undecided():
    frames = _frames(lambda param, act, depth: 5.0 if act == "abs" else 12.0, EOS_IDEAL)
    frames["edges"] = _edges(lambda param, act, depth: 5.0 if act == "abs" else 12.0, noise=0.1)
    verdict = next(v for v in e.claims(frames, P) if v.statement.startswith("at the shallowest depth the upper edge for abs"))
    assert verdict.holds is None and verdict.low < 5.0 < verdict.high


def test_a_single_non_lazy_run_below_two_makes_the_first_verdict_false():
    frames = _frames(lambda param, act, depth: 4.0 if act == "abs" else 12.0, EOS_IDEAL)
    frames["runs"].loc[0, "phase"] = "catapult"
    first = e.claims(frames, P)[0]
    assert first.holds is False and first.estimate == pytest.approx(1 - 1 / 24)  # 24 networks, one run each below 2


def test_edge_summary_is_the_geometric_mean_over_seeds():
    edges = _edges(lambda param, act, depth: 4.0, noise=0.0)
    edges.loc[edges.seed == 0, "edge"] = 1.0
    edges.loc[edges.seed == 1, "edge"] = 8.0
    edges.loc[edges.seed == 2, "edge"] = 8.0
    summary = e.edge_summary(edges)
    assert summary.edge.to_numpy() == pytest.approx(4.0) and (summary.seed_min == 1.0).all()


# ---------------------------------------------------------------------------- schema

@pytest.mark.parametrize("name,value", [("activations", ["relu", "tanh"]), ("activations", ["relu"]),
                                        ("ratios", [2.5, 8.0, 16.0]), ("ratios", [1.0, 2.0, 3.0]),
                                        ("eos_window", 55), ("eos_window", 150), ("eos_ratio", 2.5),
                                        ("seeds", [0]), ("depths", [8, 3])])
def test_schema_refuses(name, value):
    with pytest.raises(ValueError, match=name):
        e.SCHEMA.validate({**BASE, name: value})


def test_network_config_trains_nup_networks_by_plain_gd():
    ntk = e.network_config(P, "ntk", "abs", 8, 1)
    nup = e.network_config(P, "nup", "relu", 3, 2)
    assert (ntk.width, ntk.depth, ntk.seed, ntk.normalize) == (16, 8, 1, None)
    assert (nup.width, nup.normalize, nup.build_parameterization().width_profile) == (4, "none", "quadratic")
    assert ntk.diagnostics == ("ntk_lambda",) and ntk.diagnostic_every == 5

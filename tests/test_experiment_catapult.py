"""nup.experiments.catapult (notebook 05): phases, brackets, the stop point of the Edge-of-Stability runs and the
claims, on synthetic curves and frames whose answers are known."""

import math

import numpy as np
import pandas as pd
import pytest

from nup.analysis.catapult import classify_phase
from nup.experiments import catapult as e

BASE = dict(activations=["abs", "relu"], depths=[3, 8, 16], width=32, second_width=16, nup_depths=[2, 3],
            nup_width=4, n_train=32, steps=20, seeds=[0, 1, 2, 3, 4], ratios=[1.9, 4.0, 8.0, 16.0], bisection_rounds=1,
            diagnostic_every=5, example_steps=10, example_every=2, eos_ratio=0.5, eos_seeds=[0, 1, 2, 3, 4],
            eos_max_steps=200, eos_every=10, eos_window=50, n_jobs=1)
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
    runs = _runs({("ntk", "abs", 16, 3, 0): [(1.9, "lazy"), (4.0, "catapult"), (8.0, "divergent"), (16.0, "divergent")],
                  ("ntk", "abs", 16, 3, 1): [(1.9, "lazy"), (4.0, "catapult"), (8.0, "catapult"), (16.0, "catapult")],
                  ("ntk", "abs", 16, 3, 2): [(1.9, "divergent"), (4.0, "divergent")]})
    assert e.bisection_points(runs) == [(("ntk", "abs", 16, 3, 0), pytest.approx(math.sqrt(32)))]
    edges = e.window_edges(runs).set_index("seed")
    assert edges.loc[0, "edge"] == pytest.approx(math.sqrt(32)) and edges.loc[0, "censored"] == ""
    assert edges.loc[0, "first_spike"] == 4.0
    assert edges.loc[1, "edge"] == 16.0 and edges.loc[1, "censored"] == "above"  # never diverged: a lower bound
    assert edges.loc[2, "edge"] == 1.9 and edges.loc[2, "censored"] == "below"
    assert math.isnan(edges.loc[2, "first_spike"])


def test_example_ratios_pick_one_run_per_phase():
    runs = _runs({("ntk", "abs", 16, 3, 0): [(1.0, "lazy"), (1.9, "lazy"), (2.8, "catapult"), (4.0, "catapult"),
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

def _networks():
    for param, depths in (("ntk", P.depths), ("nup", P.nup_depths)):
        for act in P.activations:
            for width in e.scan_widths(P, param):
                for depth in depths:
                    yield param, act, width, depth


def _edges(edge_fn, seeds=tuple(P.seeds), noise=0.02):
    """Edges ``edge_fn(param, act, width, depth)`` times a per-seed factor ``1 + noise * (s - 2)``, shared by
    every cell of a seed (a seed-level offset), plus a small cell-level wobble that keeps intervals finite."""
    rows = []
    for param, act, width, depth in _networks():
        for s in seeds:
            wobble = 1 + 0.003 * math.sin(7 * s + depth + width)
            rows.append(dict(parameterization=param, activation=act, width=width, depth=depth, seed=s,
                             edge=edge_fn(param, act, width, depth) * (1 + noise * (s - 2)) * wobble, censored=""))
    return pd.DataFrame(rows)


def _frames(edge_fn, eos_final):
    runs = []
    for param, act, width, depth in _networks():
        for s in P.seeds:
            runs += [dict(parameterization=param, activation=act, width=width, depth=depth, seed=s, ratio=r, phase=ph,
                          eta_lambda_min=m, eta_lambda_end=m)
                     for r, ph, m in ((1.9, "lazy", 1.0), (4.0, "catapult", 1.5), (64.0, "divergent", math.nan))]
    eos = pd.DataFrame([dict(parameterization=pa, activation=a, seed=s, final=eos_final[pa, a] * (1 + 0.01 * s))
                        for pa in ("ntk", "sp") for a in P.activations for s in P.eos_seeds])
    return {"runs": pd.DataFrame(runs), "edges": _edges(edge_fn), "eos_summary": eos}


EOS_IDEAL = {("ntk", "abs"): 0.3, ("ntk", "relu"): 0.3, ("sp", "abs"): 2.0, ("sp", "relu"): 2.0}


def test_progressive_sharpening_is_decided_for_each_activation():
    """One activation sharpening to 2 at the EOC and the other not: each verdict follows its own activation
    (no interval on a maximum over activations)."""
    verdicts = _by_statement(e.claims(_frames(lambda *cell: LITERATURE[cell[1]],
                                              {**EOS_IDEAL, ("ntk", "relu"): 2.0}), P),
                             "at the EOC (NTK parameterization) progressive sharpening")
    assert [("relu" in v.statement, v.holds) for v in verdicts] == [(False, False), (True, True)]
    assert all(f"{e.STABILITY * (1 - e.EOS_TOLERANCE):g} or above" in v.statement and v.n == 5 for v in verdicts)
LITERATURE = {"abs": 4.0, "relu": 12.0}


def _by_statement(verdicts, start):
    return [v for v in verdicts if v.statement.startswith(start)]


def test_claims_on_depth_independent_edges_at_the_literature_values():
    verdicts = e.claims(_frames(lambda param, act, width, depth: LITERATURE[act], EOS_IDEAL), P)
    assert len(verdicts) == 23
    edge = [v for v in verdicts if "edge" in v.statement and "follows" not in v.statement]
    assert all(v.holds is True for v in edge), [(v.statement, v.estimate, v.low, v.high) for v in edge]
    assert all(v.holds is True for v in verdicts[:6])
    # no progressive sharpening at the EOC (each activation on its own), SP hovers at 2 (each activation)
    assert [v.holds for v in verdicts[-4:]] == [False, False, True, True]
    assert all(v.n == 5 and v.unit in ("seeds", "paired seeds") for v in verdicts[6:])
    # a flat edge has no depth exponent to share: neither depth nor depth/width is decided True
    assert [v.holds for v in verdicts if "follows" in v.statement] != [True] * 4


def test_claims_on_edges_that_grow_with_depth():
    frames = _frames(lambda param, act, width, depth: LITERATURE[act] * depth / 3, EOS_IDEAL)
    verdicts = e.claims(frames, P)
    depth_free = _by_statement(verdicts, "the upper edge does not depend on depth")[0]
    assert depth_free.holds is False and depth_free.estimate == pytest.approx(16 / 3, rel=0.05)
    shallow = [v for v in verdicts if "at the shallowest depth" in v.statement]
    assert [v.holds for v in shallow] == [True, True]
    every = [v for v in verdicts if "at every depth" in v.statement and "NTK" in v.statement]
    assert [v.holds for v in every] == [False, False]


def _share_verdicts(share, noise=0.02, exponent=0.9):
    """The depth / depth-width verdicts on edges ``4 (l/3)^a (w/32)^(-share a)``."""
    frames = _frames(lambda param, act, width, depth: LITERATURE[act] * (depth / 3) ** exponent
                     * (width / 32) ** (-share * exponent), EOS_IDEAL)
    frames["edges"] = _edges(lambda param, act, width, depth: LITERATURE[act] * (depth / 3) ** exponent
                             * (width / 32) ** (-share * exponent), noise=noise)
    return {act: [v for v in e.claims(frames, P) if v.statement.startswith(f"the upper edge for {act} follows")]
            for act in P.activations}


def test_an_edge_that_follows_depth_is_decided_depth():
    for depth_only, depth_per_width in _share_verdicts(0.0).values():
        assert "follows depth, not depth/width" in depth_only.statement and "within 0.5 of 0" in depth_only.statement
        assert (depth_only.holds, depth_per_width.holds) == (True, False), (depth_only, depth_per_width)
        assert depth_only.estimate == pytest.approx(0.0, abs=0.01) and depth_only.unit == "paired seeds"
        assert depth_only.n == 5


def test_an_edge_that_follows_depth_per_width_is_decided_depth_per_width():
    for depth_only, depth_per_width in _share_verdicts(1.0).values():
        assert "within 0.5 of 1" in depth_per_width.statement
        assert (depth_only.holds, depth_per_width.holds) == (False, True), (depth_only, depth_per_width)
        assert depth_per_width.estimate == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("share,holds", [(e.SHARE_TOLERANCE - 0.05, (True, False)),
                                         (e.SHARE_TOLERANCE + 0.05, (False, True))])
def test_the_share_is_decided_at_its_tolerance(share, holds):
    """Just inside the depth hypothesis' half of the line (0.45) and just outside it (0.55)."""
    for depth_only, depth_per_width in _share_verdicts(share, noise=0.0).values():
        assert (depth_only.holds, depth_per_width.holds) == holds
        assert depth_only.high - depth_only.low < 0.1  # narrow enough that the tolerance decides


def test_a_noisy_share_is_undecided():
    frames = _frames(lambda param, act, width, depth: 4.0 * depth ** 0.9 * width ** -0.45, EOS_IDEAL)
    edges = frames["edges"]
    rng = np.random.default_rng(0)
    frames["edges"] = edges.assign(edge=edges.edge * np.exp(0.3 * rng.standard_normal(len(edges))))
    follows = [v for v in e.claims(frames, P) if "follows" in v.statement]
    assert all(v.holds is not True for v in follows)
    assert any(v.holds is None for v in follows)


def test_edge_fit_recovers_the_exponents_and_share():
    depths, widths = [3, 8, 16, 3, 8, 16], [16, 16, 16, 32, 32, 32]
    log_e = np.log([[2.0 * d ** 0.8 * w ** -0.2 for d, w in zip(depths, widths)]] * 3)
    a, b = e.edge_fit(log_e, depths, widths)
    assert (a, b) == (pytest.approx(0.8), pytest.approx(-0.2))
    assert e.width_share(log_e, depths, widths) == pytest.approx(0.25)


def test_censored_seeds_are_left_out_of_the_scaling_and_counted():
    edges = _edges(lambda param, act, width, depth: 4.0 * (depth / width) ** 0.9)
    edges.loc[(edges.parameterization == "ntk") & (edges.activation == "relu") & (edges.seed == 3)
              & (edges.depth == 16), "censored"] = "above"
    relu, abs_ = e.edge_scaling(edges, "relu"), e.edge_scaling(edges, "abs")
    assert (relu["seeds"], relu["excluded"], abs_["seeds"], abs_["excluded"]) == (4, 1, 5, 0)
    assert relu["share"].n == 4 and relu["share"].value == pytest.approx(1.0, abs=0.01)
    table = e.scaling_table(edges, ["abs", "relu"]).set_index("activation")
    assert table.loc["relu", "excluded_censored"] == 1 and table.loc["abs", "n"] == 5


def test_every_verdict_prints_the_threshold_it_is_decided_with():
    import re

    constants = {e.STABILITY, e.UV_EDGE, e.UV_TOLERANCE * e.UV_EDGE, e.RELU_EDGE, e.RELU_TOLERANCE * e.RELU_EDGE,
                 e.DEPTH_TOLERANCE, e.DEPTH_ONLY_SHARE, e.DEPTH_PER_WIDTH_SHARE, e.SHARE_TOLERANCE,
                 e.STABILITY * (1 - e.EOS_TOLERANCE), e.STABILITY * e.EOS_TOLERANCE, 1.0}
    for v in e.claims(_frames(lambda param, act, width, depth: LITERATURE[act] * depth / 3, EOS_IDEAL), P):
        if v.n is None:  # a statement about every run: the fraction of runs that satisfy it must be 1
            assert v.threshold == ">= 1" and "every" in v.statement, v
            continue
        numbers = re.findall(r"-?\d+(?:\.\d+)?", v.threshold)
        assert numbers, v
        for decided in numbers:
            assert re.search(rf"(?<![\d.]){re.escape(decided)}(?![\d.])", v.statement), (v.threshold, v.statement)
            assert float(decided) in constants, (decided, v.statement)


def test_an_edge_whose_interval_straddles_the_tolerance_is_undecided():
    frames = _frames(lambda param, act, width, depth: 5.0 if act == "abs" else 12.0, EOS_IDEAL)
    frames["edges"] = _edges(lambda param, act, width, depth: 5.0 if act == "abs" else 12.0, noise=0.1)
    verdict = next(v for v in e.claims(frames, P) if v.statement.startswith("the upper edge for abs lies within")
                   and "shallowest" in v.statement)
    assert verdict.holds is None and verdict.low < 5.0 < verdict.high


def test_a_single_non_lazy_run_below_two_makes_the_first_verdict_false():
    frames = _frames(lambda param, act, width, depth: LITERATURE[act], EOS_IDEAL)
    frames["runs"].loc[0, "phase"] = "catapult"
    first = e.claims(frames, P)[0]
    networks = len(list(_networks())) * len(P.seeds)
    assert first.holds is False and first.estimate == pytest.approx(1 - 1 / networks)  # one run each below 2


def test_edge_summary_is_the_geometric_mean_over_seeds():
    edges = _edges(lambda param, act, width, depth: 4.0, noise=0.0)
    edges["edge"] = edges.seed.map({0: 1.0, 1: 8.0, 2: 8.0, 3: 2.0, 4: 4.0})
    summary = e.edge_summary(edges)
    assert summary.edge.to_numpy() == pytest.approx(512 ** 0.2) and (summary.seed_min == 1.0).all()
    assert ((summary.low < summary.edge) & (summary.edge < summary.high)).all()


# ---------------------------------------------------------------------------- schema

@pytest.mark.parametrize("name,value", [("activations", ["relu", "tanh"]), ("activations", ["relu"]),
                                        ("ratios", [2.5, 8.0, 16.0]), ("ratios", [1.0, 2.0, 3.0]),
                                        ("eos_window", 55), ("eos_window", 150), ("eos_ratio", 2.5),
                                        ("seeds", [0]), ("seeds", [0, 1, 2, 3]), ("eos_seeds", [0, 1]),
                                        ("second_width", 32), ("depths", [8, 3])])
def test_schema_refuses(name, value):
    with pytest.raises(ValueError, match=name):
        e.SCHEMA.validate({**BASE, name: value})


def test_network_config_trains_nup_networks_by_plain_gd():
    ntk = e.network_config(P, "ntk", "abs", 16, 8, 1)
    nup = e.network_config(P, "nup", "relu", 4, 3, 2)
    assert (ntk.width, ntk.depth, ntk.seed, ntk.normalize) == (16, 8, 1, None)
    assert (nup.width, nup.normalize, nup.build_parameterization().width_profile) == (4, "none", "quadratic")
    assert ntk.diagnostics == ("ntk_lambda",) and ntk.diagnostic_every == 5


def test_the_scan_covers_both_widths_of_the_ntk_parameterization():
    assert e.scan_widths(P, "ntk") == (32, 16) and e.scan_widths(P, "nup") == (4,)

"""nup.experiments.prolonged_catapult (notebook 06): configurations, tuning on the validation split with grids
widened at their edges, the grid-position report, phases, per-run summaries and every verdict on synthetic
frames just inside and just outside its threshold (and tiny runs of the warmup-to-constant and GD baselines)."""

import math
import re

import numpy as np
import pandas as pd
import pytest

import nup
from nup.experiments import prolonged_catapult as e

CENTERS = {key: 2.0 for key in e.FAMILY_KEYS}
BASE = dict(activation="relu", depth=3, widths={"ntk": 16, "nup": 8}, n_train=32, n_val=32, n_test=32, steps=400,
            seeds=[0, 1, 2, 3, 4], tune_seeds=[8, 9], log2_centers=CENTERS, grid_step=1.0, first_half_points=1,
            max_widen=3, loose_cap=1000.0, catapult_ratio=5.0, c=3.0, ntk_every=5, diagnostic_every=20, probe_size=8,
            spike_rise=0.2, n_jobs=1)
P = e.SCHEMA.validate(BASE)


# ---------------------------------------------------------------------------- configurations

def test_configs_of_every_method_with_per_seed_data():
    lam = 4.0
    const = e.config(P, "ntk", 1, "constant", 5.0, lam)
    assert const.lr == pytest.approx(1.25) and const.schedule == "constant" and const.n_val == 32
    assert const.data_seed == 1 and e.config(P, "ntk", 3, "constant", 5.0, lam).data_seed == 3  # its own draw
    assert e.config(P, "nup", 1, "constant", 1.5, lam).lr == 1.5  # νP: the normalized step length itself
    wc = e.config(P, "ntk", 1, "warmup_cosine", 32.0, lam)
    assert (wc.lr, wc.schedule, wc.schedule_options) == (8.0, "warmup_cosine", ())
    wk = e.config(P, "ntk", 1, "warmup_constant", 8.0, lam)
    assert wk.schedule == "warmup_cosine" and dict(wk.schedule_options) == {"final_fraction": 1.0}
    gd = e.config(P, "nup", 1, "gd_warmup_cosine", 32.0, lam)
    assert (gd.parameterization, gd.normalize, gd.lr, gd.schedule) == ("nup", "none", 8.0, "warmup_cosine")
    with pytest.raises(ValueError, match="gd_warmup_cosine"):
        e.config(P, "ntk", 1, "gd_warmup_cosine", 32.0, lam)
    geo = e.config(P, "ntk", 1, "geometric_ntk", 1000.0, lam)
    assert geo.schedule == "geometric" and dict(geo.schedule_options) == dict(c=3.0, curvature="ntk", every=5,
                                                                              max_lr=250.0)
    grad = dict(e.config(P, "nup", 1, "geometric_gradient", 100.0, lam).schedule_options)
    assert grad["curvature"] == "gradient" and grad["every"] == 1 and grad["max_lr"] == 25.0
    with pytest.raises(ValueError, match="method"):
        e.config(P, "ntk", 1, "cosine", 1.0, lam)


def test_tuning_runs_never_load_the_test_split():
    t = e.tune_config(P, "nup", 8, "constant", 1.0, 2.0)
    assert t.n_test == 0 and t.n_val == 32 and t.diagnostics == () and t.data_seed == 8


def test_families_include_gd_on_nup_only():
    assert ("nup", "gd_warmup_cosine") in e.FAMILIES and ("ntk", "gd_warmup_cosine") not in e.FAMILIES
    assert len(e.FAMILIES) == 11 and e.split_key("nup_gd_warmup_cosine") == ("nup", "gd_warmup_cosine")


def test_warmup_to_constant_holds_its_peak_after_the_warmup():
    config = e.config(P, "ntk", 0, "warmup_constant", 2.0, 4.0).replace(steps=20, diagnostics=(), n_test=0, n_val=0)
    lr = nup.train(config).metric("lr")
    assert lr.iloc[0] < lr.iloc[1] < 0.5  # warmup over the first 10% (2 steps)
    assert lr.iloc[2:].to_numpy() == pytest.approx(0.5)  # then constant at the peak


def test_gd_baseline_on_nup_takes_plain_gradient_steps():
    config = e.config(P, "nup", 0, "gd_warmup_cosine", 2.0, 4.0).replace(steps=5, diagnostics=(), n_test=0, n_val=0)
    assert nup.train(config).config.build_parameterization().normalize == "none"


# ---------------------------------------------------------------------------- tuning and the grid report

def _tuning(rows):
    """Rows ``(family, seed, log2_knob, val_accuracy, diverged)``."""
    frame = pd.DataFrame(rows, columns=["family", "seed", "log2_knob", "val_accuracy", "diverged"])
    split = frame.family.map(e.split_key)
    return frame.assign(parameterization=split.str[0], method=split.str[1], knob=2.0 ** frame.log2_knob)


def test_grid_positions_pick_the_best_mean_validation_accuracy_and_report_where_it_sits():
    rows = []
    for s in (8, 9):
        rows += [("ntk_constant", s, x, acc, False) for x, acc in zip([1, 2, 3], [0.5, 0.7 + 0.01 * s, 0.6])]
        rows += [("nup_constant", s, x, acc, False) for x, acc in zip([-2, -1, 0], [0.8, 0.7, 0.6])]
        # a tie: the smaller knob; a diverged run (accuracy at chance) counts as the table's worst
        rows += [("ntk_geometric_ntk", s, x, acc, d) for x, acc, d in zip([6, 7, 8], [0.6, 0.6, 0.1], [0, 0, 1])]
        # seed 8 prefers 3, seed 9 prefers 2: the mean accuracy decides (0.66 at 2 against 0.65 at 3)
        rows += [("nup_warmup_cosine", s, x, acc, False) for x, acc in
                 zip([1, 2, 3, 4], [0.1, 0.62 if s == 8 else 0.70, 0.68 if s == 8 else 0.62, 0.2])]
    grid = e.grid_positions(_tuning(rows)).set_index("family")
    assert grid.loc["ntk_constant", ["index", "knob", "position"]].tolist() == [1, 4.0, "interior"]
    assert grid.loc["ntk_constant", "grid"] == [2.0, 4.0, 8.0]
    assert grid.loc["nup_constant", ["index", "position"]].tolist() == [0, "low edge"]
    assert grid.loc["ntk_geometric_ntk", ["index", "position"]].tolist() == [0, "low edge"]
    assert grid.loc["nup_warmup_cosine", ["index", "knob", "position"]].tolist() == [1, 4.0, "interior"]
    assert grid.loc["nup_warmup_cosine", "val_accuracy"] == pytest.approx(0.66)
    rows = [("nup_constant", s, x, acc, False) for s in (8, 9) for x, acc in zip([-2, -1, 0], [0.6, 0.7, 0.8])]
    assert e.grid_positions(_tuning(rows)).position.iloc[0] == "high edge"
    assert e.chosen_knobs(grid.reset_index())[("nup", "warmup_cosine")] == 4.0


def test_tune_widens_every_grid_until_its_choice_is_interior(monkeypatch):
    """A fake sweep whose validation accuracy peaks at log2 knob 5 for every family, far above the centres (2):
    each grid is widened upward until the peak is interior."""
    def fake_config(p, param, seed, method, knob, lambda0):
        return (param, seed, method, knob)

    def fake_sweep(configs, n_jobs, progress):
        rows = []
        for i, (param, seed, method, knob) in enumerate(configs):
            acc = 0.9 - 0.05 * abs(math.log2(knob) - 5) + 0.001 * seed
            rows += [dict(run=i, step=P.steps, metric=m, layer=0, value=v, diverged=False)
                     for m, v in (("loss", 0.1), ("val_accuracy", acc))]
        return pd.DataFrame(rows)

    monkeypatch.setattr(e, "tune_config", fake_config)
    monkeypatch.setattr(e, "sweep", fake_sweep)
    lam = {(param, s): 1.0 for param in e.PARAMS for s in P.tune_seeds}
    tuning = e.tune(P, lam)
    grid = e.grid_positions(tuning)
    assert (grid.position == "interior").all() and (grid.knob == 32.0).all()
    # 2, 4, 8; 16 and 32 beyond the high edge (32 is then the edge); 64 and 128: 32 is interior
    assert (grid.n_points == 7).all() and grid.grid.iloc[0] == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]
    assert set(tuning.seed) == {8, 9} and len(tuning) == len(e.FAMILIES) * 7 * 2


def test_tuning_summary_counts_a_diverged_run_at_chance():
    frame = pd.DataFrame([dict(run=0, step=10, metric="loss", layer=0, value=0.1, diverged=False),
                          dict(run=0, step=10, metric="val_accuracy", layer=0, value=0.7, diverged=False),
                          dict(run=1, step=3, metric="loss", layer=0, value=5.0, diverged=True),
                          dict(run=1, step=0, metric="val_accuracy", layer=0, value=0.3, diverged=True)])
    t = e.tuning_summary(frame, [("nup_constant", 0.0, 8), ("ntk_warmup_cosine", 7.0, 9)])
    assert t.val_accuracy.tolist() == [0.7, e.CHANCE] and t.knob.tolist() == [1.0, 128.0]
    x, table = e.tuning_table(t, "ntk_warmup_cosine")
    assert x.tolist() == [7.0] and np.isnan(table).all()


# ---------------------------------------------------------------------------- summaries and phases

def test_cap_step_and_spikes_per_part():
    lr = pd.Series([1.0, 50.0, 99.5, 100.0, 100.0], index=[0, 1, 2, 3, 4])
    assert e.cap_step(lr, 100.0) == 2.0 and math.isnan(e.cap_step(lr, 1000.0))
    loss = np.linspace(1, 0.1, 100)
    loss[[5, 55, 95]] = 5.0  # one spike in the first, sixth and last tenth
    assert e.spikes_per_part(loss, 0.2) == [1, 0, 0, 0, 0, 1, 0, 0, 0, 1]


def test_phase_of_uses_notebook_05s_rule_and_chance():
    spiky = np.r_[np.linspace(0.6, 0.05, 50), 0.5, np.linspace(0.05, 0.01, 49)]
    assert e.phase_of(spiky, False, 0.5, 0.45, 0.7) == "catapult"
    assert e.phase_of(np.r_[spiky[:-1], 1.107], False, 0.5, 0.45, 0.7) == "divergent"  # ends above its start
    assert e.phase_of(spiky, False, 0.5, 0.45, e.CHANCE) == "divergent"  # ended at chance
    assert e.phase_of(spiky, False, 1e-9, 0.45, 0.7) == "divergent"  # ended dead
    assert e.phase_of(np.linspace(0.6, 0.01, 100), False, 0.5, 0.45, 0.7) == "lazy"


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
    row = e.summarize(frame, [("ntk", 0, "geometric_ntk", 10.0)], {("ntk", 0): 2.0}, {0: 0.45}, P).iloc[0]
    assert row.spikes == [0, 1, 0, 0, 0, 0, 0, 0, 0, 1] and row.tenths_with_spike == 2
    assert row.late_spikes == 2 and row.final_loss == pytest.approx(1 / 101)
    assert row.phase == "catapult" and row.val_accuracy == 0.6 and row.test_accuracy == 0.5
    assert row.preact_change == pytest.approx(0.3)  # mean over the hidden layers at the last step
    assert row.lambda_q4 < row.lambda_q2 and row.eta_lambda_end == pytest.approx(1.0 * 2.0 * 0.25)
    assert math.isnan(row.cap_step) and row.at_cap_fraction == 0  # eta*lambda_0 = 2, far below the cap 10
    capped = e.summarize(frame, [("ntk", 0, "geometric_gradient", 2.0)], {("ntk", 0): 2.0}, {0: 0.45}, P).iloc[0]
    assert capped.cap_step == 0 and capped.at_cap_fraction == 1.0
    dead = e.summarize(frame.assign(diverged=True), [("ntk", 0, "constant", 2.0)], {("ntk", 0): 2.0}, {0: 0.45}, P)
    assert dead.phase.iloc[0] == "divergent" and dead.test_accuracy.iloc[0] == e.CHANCE


def test_costs_differ_between_the_networks():
    c = e.costs(P).set_index("parameterization")
    assert c.loc["ntk", "widths"] == [784, 16, 16, 10] and c.loc["nup", "widths"][1] == 8
    assert c.loc["ntk", "n_params"] == 784 * 16 + 16 * 16 + 16 * 10
    assert c.loc["ntk", "flops_per_step"] == 32 * (6 * c.loc["ntk", "n_params"] - 2 * 784 * 16)


# ---------------------------------------------------------------------------- verdicts on synthetic runs

def _runs(acc_gain=0.03, noise=0.002, geo_tenths=10, cap_hit=False, falls=0.5, moves=5.0, settle=1.0, loss_ratio=10.0,
          divergent_seed=None, const_first=1, const_late=0):
    """Every family at its tuned knob on seeds 0-4, plus the dynamics runs (constant at 5, the loose cap 1000)."""
    rows = []
    for param, m in [*e.FAMILIES, ("ntk", "constant_dyn"), ("ntk", "geometric_ntk_loose")]:
        method = m.replace("_dyn", "").replace("_loose", "")
        role = "dynamics" if m != method else "tuned"
        knob = {"constant_dyn": 5.0, "geometric_ntk_loose": 1000.0}.get(m, 1.0)
        for s in P.seeds:
            geometric = method in e.GEOMETRIC
            spikes = ([1] * geo_tenths + [0] * (10 - geo_tenths) if geometric
                      else [const_first] + [const_late] * 9)
            jitter = noise * (s - 2)
            rows.append(dict(parameterization=param, seed=s, method=method, knob=knob, role=role,
                             phase="divergent" if (geometric and s == divergent_seed) else "catapult",
                             test_accuracy=0.6 + (acc_gain + jitter if geometric else 0),
                             final_loss=0.001 * (loss_ratio * math.exp(jitter) if geometric else 1.0), spikes=spikes,
                             late_spikes=sum(spikes[1:]), eta_lambda_end=3.0 if geometric else settle + jitter,
                             lambda_q2=0.1, lambda_q4=0.1 * (falls + jitter if geometric else 1.0),
                             path_q4=0.2 * (moves + jitter if geometric else 1.0),
                             cap_step=10.0 if (cap_hit and method == "geometric_gradient") else math.nan))
    runs = pd.DataFrame(rows)
    return runs.assign(run=range(len(runs)))


def _by(verdicts, *words):
    return [v for v in verdicts if all(w in v.statement for w in words)]


def test_every_verdict_holds_on_a_schedule_that_prolongs_the_catapult_and_helps():
    verdicts = e.claims({"runs": _runs()}, P)
    assert len(verdicts) == 36
    assert all(v.holds is True for v in verdicts), [(v.statement, v.estimate, v.low, v.high) for v in verdicts
                                                    if v.holds is not True]
    assert all(v.n == 5 for v in verdicts)  # every verdict prints its n


@pytest.mark.parametrize("field,inside,outside,words", [
    ("settle", 1.95, 2.05, ("settles",)),
    ("falls", 0.89, 0.91, ("keeps falling",)),
    ("moves", 1.55, 1.45, ("keeps moving",)),
    ("acc_gain", 0.0105, 0.0095, ("beats",)),
    ("loss_ratio", 1.01, 0.99, ("higher training loss",)),
])
def test_each_threshold_decides_just_inside_and_just_outside(field, inside, outside, words):
    for value, expected in ((inside, True), (outside, False)):
        verdicts = _by(e.claims({"runs": _runs(noise=1e-5, **{field: value})}, P), *words)
        assert verdicts and all(v.holds is expected for v in verdicts), (field, value, verdicts)


def test_the_thresholds_are_printed_in_the_statements():
    text = "\n".join(v.statement for v in e.claims({"runs": _runs()}, P))
    for threshold in (e.STABILITY, e.KEEPS_FALLING, e.KEEPS_MOVING, e.MARGIN, e.HIGHER_LOSS, e.EVERY):
        # as a number of its own, not as a digit of another ("1" inside "0.01" does not count)
        assert re.search(rf"(?<![\d.]){re.escape(f'{threshold:g}')}(?![\d.]|\.\d)", text), threshold
    assert "{threshold}" not in text


def test_constant_rate_spike_verdicts():
    assert all(v.holds is False for v in _by(e.claims({"runs": _runs(const_first=0)}, P), "spikes in the first tenth"))
    assert all(v.holds is False for v in _by(e.claims({"runs": _runs(const_late=1)}, P), "never spikes after"))


def test_spikes_in_nine_tenths_are_not_a_prolonged_catapult():
    spikes = _by(e.claims({"runs": _runs(geo_tenths=9)}, P), "spikes in every tenth")
    assert len(spikes) == 3 and all(v.holds is False and v.estimate == 0 for v in spikes)


def test_a_divergent_run_is_never_counted_as_a_prolonged_catapult():
    verdicts = e.claims({"runs": _runs(divergent_seed=0)}, P)
    spikes = _by(verdicts, "spikes in every tenth")
    assert all(v.holds is False and v.estimate == pytest.approx(0.8) for v in spikes)  # 4 of 5: seed 0 is divergent
    assert all(v.holds is False for v in _by(verdicts, "no divergent run"))
    # the means over seeds leave the divergent run out (and say how many remain)
    assert all(v.n == 4 and v.holds is True for v in _by(verdicts, "keeps falling"))
    assert all(v.n == 4 and v.holds is True for v in _by(verdicts, "keeps moving"))
    # a divergent run with spectacular numbers changes nothing in the means
    runs = _runs(divergent_seed=0)
    runs.loc[(runs.seed == 0) & runs.method.isin(e.GEOMETRIC), ["lambda_q4", "path_q4"]] = [1e-6, 1e6]
    assert [v.estimate for v in _by(e.claims({"runs": runs}, P), "keeps")] == \
        [v.estimate for v in _by(verdicts, "keeps")]


def test_cap_verdicts_and_an_undecided_gain():
    verdicts = e.claims({"runs": _runs(acc_gain=0.01, noise=0.02, cap_hit=True)}, P)
    capped = _by(verdicts, "gradient variant, tuned cap", "stays below its cap")
    assert [v.holds for v in capped] == [False, False]
    assert all(v.holds is None for v in _by(verdicts, "beats"))  # a one-point gain with a two-point spread


def test_gd_baseline_is_compared_under_nup_only():
    beats = _by(e.claims({"runs": _runs()}, P), "plain-GD warmup+cosine")
    assert len(beats) == 2 and all("under νP" in v.statement for v in beats)


def test_extra_dynamics_runs_never_enter_the_tuned_comparisons():
    runs = _runs()
    runs.loc[runs.role == "dynamics", "test_accuracy"] = 0.0
    assert all(v.holds is True for v in _by(e.claims({"runs": runs}, P), "beats"))
    assert (e.loose_runs(runs, P).knob == 1000.0).all()


def test_method_summary_phase_counts_and_dynamics_runs():
    runs = _runs(divergent_seed=1)
    summary = e.method_summary(runs, ["test_accuracy"])
    row = summary[(summary.parameterization == "ntk") & (summary.method == "geometric_ntk")].iloc[0]
    assert row["mean"] == pytest.approx(0.63) and row.low <= row["mean"] <= row.high and row.seeds == 5
    counts = e.phase_counts(runs)
    assert counts.loc[("ntk", "geometric_ntk", 1.0)].tolist() == [0, 4, 1]
    chosen = e.dynamics_runs(runs, P, seed=3)
    assert list(chosen) == ["constant", "geometric_ntk", "geometric_gradient", "geometric_ntk_loose"]
    picked = runs.set_index("run").loc[list(chosen.values())]
    assert (picked.seed == 3).all() and (picked.parameterization == "ntk").all()
    assert picked.knob.iloc[0] == P.catapult_ratio and picked.knob.iloc[3] == P.loose_cap


def test_paired_difference_pairs_by_seed():
    a = pd.Series([0.70, 0.72, 0.74], index=[2, 0, 1])
    b = pd.Series([0.60, 0.62, 0.64], index=[0, 1, 2])
    d = e.paired_difference(a, b)
    assert d.value == pytest.approx(np.mean([0.72 - 0.60, 0.74 - 0.62, 0.70 - 0.64]))
    assert d.n == 3 and d.unit == "paired seeds"


# ---------------------------------------------------------------------------- schema

@pytest.mark.parametrize("name,value", [("tune_seeds", [3, 9]), ("tune_seeds", [9]), ("c", 4.5),
                                        ("catapult_ratio", 1.5), ("diagnostic_every", 150), ("seeds", [1, 2, 3, 4]),
                                        ("log2_centers", {"ntk_constant": 1.0}), ("grid_step", 0.0)])
def test_schema_refuses(name, value):
    with pytest.raises(ValueError, match=name):
        e.SCHEMA.validate({**BASE, name: value})

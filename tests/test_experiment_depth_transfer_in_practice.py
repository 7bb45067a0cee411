"""nup.experiments.depth_transfer_in_practice (notebook 07): the schema, the grid and selection helpers, the
regret and gap statistics, spike counting and the verdicts, on small synthetic frames whose answers are known;
one tiny timing run."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from nup.analysis.verdicts import claim_lines
from nup.experiments import depth_transfer_in_practice as ex

FAMILIES = list(ex.FAMILIES)
DEPTHS = (3, 8)
SEEDS = (0, 1, 2, 3, 4)
CENTERS = {"nup": -2.5, "residual": 2.5, "ntk": 2.5, "sp_sgd": -5.5, "sp_adam": -9.5, "residual_m": 2.5,
           "sp_adam_m": -6.0, "residual_matched": 2.5}


def params(**changes):
    values = dict(families=FAMILIES, depths=list(DEPTHS), width=32, nup_width=8, n_train=2000, n_val=500,
                  n_test=1000, batch_size=100, epochs=1, momentum=0.9,
                  lr_centers=CENTERS,
                  grid_half_width=1, deep_half_width=1, max_widen=1, seeds=list(SEEDS), schedule_family="nup",
                  schedule_depth=3, schedule_c=3.0, schedule_curvature="hessian", schedule_every=5,
                  schedule_probe=128, record_every=2, long_families=["nup", "residual"], long_epochs=3, n_jobs=1)
    values.update(changes)
    return ex.SCHEMA.validate(values)


def synthetic_frames(accuracy, p=None, schedule=None, test=None, long=None):
    """Frames as ``run`` returns them, with ``val = accuracy(family, depth, j, seed)`` and ``test = test(...)``
    (default: the same) on the grid j = -1, 0, 1 at every depth (NaN: a diverged run).  ``long``: the long
    runs' validation accuracy ``long(family, seed)`` (default: the short run's plus 0.01)."""
    p = p or params()
    test = test or accuracy
    rows = []
    for f in p.families:
        for d in p.depths:
            for j in (-1, 0, 1):
                for s in p.seeds:
                    a, t = accuracy(f, d, j, s), test(f, d, j, s)
                    rows.append(dict(stage="transfer", family=f, depth=d, j=j, lr=ex.grid_lr(0.0, j), seed=s,
                                     val_accuracy=a, test_accuracy=t, val_loss=1.0, test_loss=1.0,
                                     diverged=bool(np.isnan(a))))
    chosen = ex.choices(pd.DataFrame(rows), p.families, p.depths)
    for f in p.long_families:
        j = int(chosen[(chosen.family == f) & (chosen.depth == p.depths[0])].tuned_step.iloc[0])
        for s in p.seeds:
            a = long(f, s) if long else accuracy(f, p.depths[0], j, s) + 0.01
            rows.append(dict(stage="long", family=f, depth=p.depths[0], j=0, lr=ex.grid_lr(0.0, j), seed=s,
                             val_accuracy=a, test_accuracy=a, val_loss=1.0, test_loss=1.0, diverged=False))
    runs = pd.DataFrame(rows)
    schedule = schedule or {"geometric": [0.80] * len(p.seeds), "geometric_annealed": [0.80] * len(p.seeds),
                            "warmup_cosine": [0.80] * len(p.seeds)}
    sched = pd.DataFrame([dict(method=m, seed=s, lr=1.0, test_accuracy=a, diverged=False, spikes=0)
                          for m, values in schedule.items() for s, a in zip(p.seeds, values)])
    return {"runs": runs, "choices": chosen, "costs": ex.cost_table(p), "schedule": sched,
            "long": ex.long_table(runs, p)}, p


def lines(verdicts):
    return {v.statement: v.holds for v in verdicts}


def find(verdicts, text):
    (match,) = [v for v in verdicts if text in v.statement]
    return match


# ---------------------------------------------------------------------------- schema

@pytest.mark.parametrize("changes,name", [
    (dict(families=["residual", "ntk"]), "families"),
    (dict(families=["nup", "ntk"]), "families"),
    (dict(lr_centers={**CENTERS, "nup": -2.4}), "lr_centers"),
    (dict(lr_centers={"nup": -2.5}), "lr_centers"),
    (dict(n_train=55_000, n_val=10_000), "n_train"),
    (dict(schedule_depth=5), "schedule_depth"),
    (dict(schedule_family="sp_adam"), "schedule_family"),
    (dict(depths=[3]), "depths"),
    (dict(depths=[8, 3]), "depths"),
    (dict(depths=[2, 8]), "depths"),
    (dict(seeds=[0, 1, 2, 3]), "seeds"),
    (dict(long_families=["nup"]), "long_families"),
    (dict(families=["nup", "residual", "ntk"], lr_centers={"nup": -2.5, "residual": 2.5, "ntk": 2.5},
          long_families=["nup", "sp_sgd"]), "long_families"),
    (dict(batch_size=3000), "batch_size"),
    (dict(schedule_probe=5000), "schedule_probe"),
    (dict(momentum=1.0), "momentum"),
])
def test_schema_rejects_bad_values_by_name(changes, name):
    with pytest.raises(ValueError, match=name):
        params(**changes)


# ---------------------------------------------------------------------------- configurations

def test_family_configs():
    p = params()
    sp_sgd = ex.family_config(p, "sp_sgd", 3, 0.01, 0)
    assert (sp_sgd.parameterization, sp_sgd.base_width, sp_sgd.width, sp_sgd.momentum) == ("mup", 32, 32, 0.9)
    adam = ex.family_config(p, "sp_adam", 3, 0.001, 0)
    assert (adam.optimizer, adam.momentum) == ("adam", 0.0)
    nu = ex.family_config(p, "nup", 3, 0.1, 1)
    assert (nu.parameterization, nu.width, nu.build_parameterization().normalize) == ("nup", 8, "per_layer")
    assert (nu.schedule, nu.loss, nu.n_val, nu.full_loss, nu.diagnostic_every) == ("warmup_cosine", "ce", 500,
                                                                                    False, nu.steps)
    assert nu.steps == p.epochs * (p.n_train // p.batch_size) == 20
    # SP with He init: the μP layer rules at base_width = width are N(0, 2/fan_in), multiplier 1, one rate.
    model = ex.family_config(p, "sp_sgd", 4, 0.01, 0).build_parameterization().build(784, 10, 4, 32)
    stds = [layer.weight.std().item() for layer in model.layers[1:-1]]
    assert all(abs(s / math.sqrt(2 / 32) - 1) < 0.1 for s in stds)
    assert model.lr_mults == (1.0, 1.0, 1.0, 1.0) and set(model.multipliers) == {1.0}


def test_depth_rule_and_grid():
    assert ex.depth_factor("ntk", 12, 3) == 0.25
    assert all(ex.depth_factor(f, 12, 3) == 1.0 for f in FAMILIES if f != "ntk")
    assert [ex.grid_lr(-2.5, j) for j in (-1, 0, 1)] == [2.0 ** -3, 2.0 ** -2.5, 2.0 ** -2]  # exact


def test_parameter_count_and_the_width_controls():
    p = params(nup_width=16)
    assert ex.parameter_count(p, "nup", 3) == 784 * 16 + 16 * 64 + 64 * 10
    assert ex.parameter_count(p, "residual", 3) == 784 * 32 + 32 * 32 + 32 * 10
    assert ex.parameter_count(p, "ntk", 4) == 784 * 32 + 2 * 32 * 32 + 32 * 10
    assert ex.parameter_count(p, "residual_m", 3) == ex.parameter_count(p, "sp_adam_m", 3) == 784 * 16 + 16 * 16 + 160
    assert ex.layer_widths(p, "residual_m", 8)[1] == ex.layer_widths(p, "nup", 8)[1] == 16
    residual_m, adam_m = ex.family_config(p, "residual_m", 3, 1.0, 0), ex.family_config(p, "sp_adam_m", 3, 1.0, 0)
    assert (residual_m.parameterization, residual_m.width) == ("residual", 16)
    assert (adam_m.parameterization, adam_m.width, adam_m.base_width, adam_m.optimizer) == ("mup", 16, 16, "adam")
    # the matched residual network: the constant width whose count at the deepest depth is closest to νP's
    target = ex.parameter_count(p, "nup", 8)
    w = ex.family_width(p, "residual_matched")
    count = ex.parameter_count(p, "residual_matched", 8)
    assert count == 6 * w * w + 794 * w
    assert all(abs(count - target) <= abs(6 * v * v + 794 * v - target) for v in (w - 1, w + 1))
    assert ex.matched_width(784 * 50 + 50 * 50 + 500, 3, 784, 10) == 50


def test_cost_table_counts_flops_from_the_layer_shapes():
    p = params(nup_width=16)
    costs = ex.cost_table(p).set_index(["family", "depth"])
    assert len(costs) == len(FAMILIES) * len(DEPTHS)
    row = costs.loc[("residual", 3)]
    assert (row.first_hidden, row.params) == (32, 784 * 32 + 32 * 32 + 320)
    assert row.flops_per_step == p.batch_size * (6 * row.params - 2 * 784 * 32)
    assert costs.loc[("nup", 8)].first_hidden == 16 and costs.loc[("residual_matched", 8)].width > 32
    assert ex.flop_ratio(p) == costs.loc[("nup", 8)].flops_per_step / costs.loc[("residual", 8)].flops_per_step


# ---------------------------------------------------------------------------- selection

def test_accuracy_table_counts_a_diverged_run_at_chance_and_best_index_takes_the_first_tie():
    runs = pd.DataFrame([dict(stage="transfer", family="nup", depth=3, j=j, seed=s, val_accuracy=a)
                         for j, vals in ((-1, [0.5, 0.7]), (0, [0.6, np.nan]), (1, [0.6, 0.6])) for s, a in
                         zip((0, 1), vals)])
    table = ex.accuracy_table(runs, "nup", 3, "val_accuracy")
    assert table.loc[0].tolist() == [0.6, ex.CHANCE]
    assert ex.best_index(table) == -1  # means 0.6, 0.35, 0.6: the first of the tie
    assert ex.edge([-1, 0, 1], -1) == "low" and ex.edge([-1, 0, 1], 1) == "high" and ex.edge([-1, 0, 1], 0) is None


def test_regret_statistic_selects_on_validation_and_measures_on_test():
    # val prefers index 2; test there is 0.80, at the transferred index 1 it is 0.85: regret -0.05.
    val = np.array([[0.7, 0.8, 0.9]] * 3)
    test = np.array([[0.7, 0.85, 0.80]] * 3)
    replicates = np.stack([val, test], axis=1)
    assert ex.regret_statistic(replicates, 1) == pytest.approx(-0.05)
    assert ex.regret_statistic(replicates, 2) == 0.0


def test_choices_at_the_shallowest_depth_transfer_the_tuned_rate():
    frames, p = synthetic_frames(lambda f, d, j, s: 0.86 - 0.01 * abs(j - 1) * (d == 3) - 0.02 * abs(j + 1) * (d == 8))
    c = frames["choices"].set_index(["family", "depth"])
    assert c.loc[("nup", 3), "tuned_step"] == 1 and c.loc[("nup", 3), "lr_transferred"] == c.loc[("nup", 3), "lr_tuned"]
    assert c.loc[("nup", 3), "regret"] == 0.0 and bool(c.loc[("nup", 3), "at_edge"])
    assert c.loc[("nup", 8), "tuned_step"] == -1
    assert c.loc[("nup", 8), "regret"] == pytest.approx(0.02)


# ---------------------------------------------------------------------------- statistics

def test_gap_statistic_selects_the_best_family_on_validation():
    families = ["nup", "sp_adam", "ntk"]
    val = np.array([[0.80, 0.85, 0.70]] * 5)
    test = np.array([[0.80, 0.84, 0.90]] * 5)  # ntk is best on test, sp_adam on validation
    replicates = np.stack([val, test], axis=1)
    assert ex.gap_statistic(replicates, families) == pytest.approx(0.04)
    assert ex.gap_statistic(replicates[:, :, [0, 2]], ["nup", "ntk"]) == 0.0


def test_spikes_on_the_smoothed_curve():
    flat = np.linspace(2.0, 0.5, 100)
    assert ex.spikes(flat, 5, 0.25) == 0
    curve = flat.copy()
    curve[30:40] *= 3.0
    curve[70:80] *= 3.0
    assert ex.spikes(curve, 5, 0.25) == 2
    noisy = flat * (1 + 0.3 * (np.arange(100) % 2))  # alternating +-30% noise: smoothing removes it
    assert ex.spikes(noisy, 1, 0.25) > 10 and ex.spikes(noisy, 10, 0.25) == 0
    assert ex.smoothed([1.0, 3.0, 5.0], 2).tolist() == [1.0, 2.0, 4.0]
    assert ex.spike_window(params(record_every=10)) == 5 and ex.spike_window(params(record_every=100)) == 1


# ---------------------------------------------------------------------------- verdicts

def trained_accuracy(regret_of=None, level=0.87):
    """0.87 at the transferred rate everywhere; at the deepest depth, j = 1 is better by ``regret_of[family]``."""
    regret_of = regret_of or {}

    def accuracy(f, d, j, s):
        if d == DEPTHS[-1] and j == 1:
            return level + regret_of.get(f, -0.01)
        return level - 0.01 * abs(j)
    return accuracy


def test_claims_when_everything_transfers():
    frames, p = synthetic_frames(trained_accuracy())
    verdicts = ex.claims(frames, p)
    assert len(verdicts) == 1 + len(FAMILIES) + 1 + len(ex.CONTROLS) + 1 + 1 + 2
    assert find(verdicts, "reaches at least 0.85").holds is True
    for f in FAMILIES:
        v = find(verdicts, f"for {ex.LABELS[f]},")
        assert v.holds is True and v.estimate == 0.0 and (v.n, v.unit) == (5, "paired seeds")
    assert find(verdicts, "best on validation").holds is True
    for control in ex.CONTROLS:
        assert find(verdicts, f"below that of {ex.LABELS[control]}").holds is True
    flops = find(verdicts, "FLOPs per training step")
    assert "within 3x" in flops.statement and flops.estimate == pytest.approx(ex.flop_ratio(p)) and flops.n is None
    assert flops.holds is (ex.flop_ratio(p) <= 3)
    long = find(verdicts, "stays ahead")
    assert long.holds is False and long.estimate == 0.0  # every family alike: no lead
    for name in ("(mini-batches", "annealed by a cosine"):
        schedule = find(verdicts, name)
        assert schedule.holds is False and schedule.estimate == 0.0
    assert claim_lines(verdicts)[1].endswith("[n = 5 paired seeds]: True")


def test_selection_uses_validation_not_test():
    """Validation prefers j = -1 everywhere and sp_sgd as the best family; the test split prefers j = 1 and
    ntk.  Every selection must follow validation; test is only reported at the chosen configurations."""
    def val(f, d, j, s):
        return 0.86 + 0.01 * (j == -1) + 0.02 * (f == "sp_sgd") - 0.001 * s

    def test(f, d, j, s):
        return 0.80 + 0.05 * (j == 1) + 0.05 * (f == "ntk")
    frames, p = synthetic_frames(val, test=test)
    c = frames["choices"].set_index(["family", "depth"])
    assert (c.tuned_step == -1).all()  # the best rate: on validation
    assert c.loc[("ntk", 3), "test_tuned"] == pytest.approx(0.85)  # reported on test at that rate
    family, depth, val_acc, test_acc = ex.best_family(frames)
    assert family == "sp_sgd" and depth == 3  # on test ntk would win
    assert np.mean(val_acc) == pytest.approx(0.89 - 0.002) and np.mean(test_acc) == pytest.approx(0.80)
    assert "SP SGD" in ex.training_note(frames)
    # the gate reads validation: 0.888 validation, 0.80 test, so it holds only if it reads validation
    assert find(ex.claims(frames, p), "reaches at least").holds is True
    # the regret re-tunes on validation (j = -1) and reports test there against the transferred j = 0
    assert find(ex.claims(frames, p), f"for {ex.LABELS['nup']},").estimate == pytest.approx(0.0)


def test_long_ranking_on_validation():
    def val(f, d, j, s):
        return 0.87 - 0.01 * abs(j) + 0.02 * (f == "residual")

    frames, p = synthetic_frames(val, long=lambda f, s: 0.90 + 0.02 * (f == "residual") + 0.001 * s)
    leader, runner, lead = ex.long_ranking(frames["long"], p)
    assert (leader, runner) == ("residual", "nup") and lead.value == pytest.approx(0.02)
    assert find(ex.claims(frames, p), "stays ahead").holds is True
    frames, p = synthetic_frames(val, long=lambda f, s: 0.90 - 0.02 * (f == "residual") + 0.001 * s * (f == "nup"))
    assert find(ex.claims(frames, p), "stays ahead").holds is False
    table = frames["long"]
    assert set(table.epochs) == {p.epochs, p.long_epochs} and len(table) == 2 * 2 * len(SEEDS)


def test_claims_regret_above_a_point_is_false_and_noise_across_it_is_undecided():
    frames, p = synthetic_frames(trained_accuracy({"ntk": 0.02}))
    v = find(ex.claims(frames, p), "for NTK with lr/depth,")
    assert v.holds is False and v.estimate == pytest.approx(0.02)

    def noisy(f, d, j, s):  # j = 1 better by 0.005 + 0.02 * (s - 2): mean 0.005, seeds from -0.035 to 0.045
        base = trained_accuracy()(f, d, j, s)
        return base + (0.015 + 0.02 * (s - 2)) * (f == "sp_sgd" and d == DEPTHS[-1] and j == 1)
    frames, p = synthetic_frames(noisy)
    v = find(ex.claims(frames, p), "for SP (He init) with SGD")
    assert v.holds is None and v.low < 0.01 < v.high


def test_claims_nup_behind_the_best_and_costly():
    def accuracy(f, d, j, s):
        return trained_accuracy()(f, d, j, s) - 0.03 * (f == "nup")
    frames, p = synthetic_frames(accuracy, p=params(depths=[3, 8]))
    verdicts = ex.claims(frames, p)
    gap = find(verdicts, "best on validation")
    assert gap.holds is False and gap.estimate == pytest.approx(0.03)
    assert find(verdicts, "below that of the residual network at νP's first").holds is False
    flops = find(verdicts, "FLOPs per training step")
    assert flops.holds is False and flops.estimate > 3  # νP's k^2 m widths at depth 8
    frames, p = synthetic_frames(trained_accuracy(), p=params(depths=[3, 4]))
    assert find(ex.claims(frames, p), "FLOPs per training step").holds is True  # narrow at depth 4


def test_claims_schedule_gain():
    frames, p = synthetic_frames(trained_accuracy(), schedule={"geometric": [0.83, 0.84, 0.83, 0.84, 0.83],
                                                                "geometric_annealed": [0.1, 0.82, 0.8, 0.8, 0.8],
                                                                "warmup_cosine": [0.81, 0.81, 0.81, 0.81, 0.81]})
    verdicts = ex.claims(frames, p)
    v = find(verdicts, "(mini-batches")
    assert v.holds is True and v.estimate == pytest.approx(0.024)
    v = find(verdicts, "annealed by a cosine")
    assert v.holds is None and v.estimate == pytest.approx(-0.146)  # one diverged seed: a wide t interval


def test_undertrained_setups_leave_the_accuracy_comparisons_undecided():
    frames, p = synthetic_frames(trained_accuracy({"ntk": 0.05}, level=0.70))
    verdicts = ex.claims(frames, p)
    assert find(verdicts, "reaches at least 0.85").holds is False
    assert find(verdicts, "for NTK with lr/depth,").holds is None  # would be False if trained
    assert "undertrained" in find(verdicts, "for NTK with lr/depth,").threshold
    assert find(verdicts, "best on validation").holds is None and find(verdicts, "stays ahead").holds is None
    assert find(verdicts, "(mini-batches").holds is None and find(verdicts, "annealed by a cosine").holds is None
    assert find(verdicts, "FLOPs per training step").holds is not None  # cost does not depend on training
    assert "UNDERTRAINED" in ex.training_note(frames)
    assert "UNDERTRAINED" not in ex.training_note(synthetic_frames(trained_accuracy())[0])


def test_statements_are_scale_free_and_the_same_for_any_numbers():
    a = [v.statement for v in ex.claims(*synthetic_frames(trained_accuracy()))]
    b = [v.statement for v in ex.claims(*synthetic_frames(trained_accuracy({"nup": 0.04}, level=0.6)))]
    assert a == b


def test_summary_table():
    frames, _ = synthetic_frames(trained_accuracy())
    table = ex.summary(frames)
    assert len(table) == len(FAMILIES) * len(DEPTHS)
    assert set(table.family) == set(ex.SHORT.values())
    assert list(table.columns[:5]) == ["family", "depth", "first_hidden", "params", "flops_per_step"]


def test_no_wall_clock_in_the_module():
    import inspect
    source = inspect.getsource(ex)
    assert "import time" not in source and "perf_counter" not in source and "timing_steps" not in source


def test_schedule_configs():
    p = params()
    plain, annealed = ex.schedule_config(p, 1, 0.5), ex.schedule_config(p, 1, 0.5, annealed=True)
    options = dict(plain.schedule_options)
    assert (plain.schedule, plain.momentum, plain.seed, plain.lr) == ("geometric", ex.SCHEDULE_MOMENTUM, 1, 0.5)
    assert options["probe_size"] == 128 and options["curvature"] == "hessian" and "anneal_steps" not in options
    assert dict(annealed.schedule_options)["anneal_steps"] == annealed.steps == 20


def test_every_verdict_prints_the_threshold_it_is_decided_with():
    """Each statement carries the number its verdict is decided against (filled from the same constant by
    ``compare``): deciding at one threshold while printing another would fail here."""
    import re

    frames, p = synthetic_frames(trained_accuracy())
    for v in ex.claims(frames, p):
        decided = re.search(r"-?\d+(?:\.\d+)?", v.threshold).group(0)
        assert re.search(rf"(?<![\d.]){re.escape(decided)}(?![\d.])", v.statement), (v.threshold, v.statement)
    constants = {ex.TRAINED_ACCURACY, ex.MAX_REGRET, ex.MAX_GAP, ex.MAX_FLOP_RATIO, ex.MIN_SCHEDULE_GAIN}
    assert {float(re.search(r"-?\d+(?:\.\d+)?", v.threshold).group(0)) for v in ex.claims(frames, p)} <= constants | {0.0}

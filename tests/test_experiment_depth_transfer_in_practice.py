"""nup.experiments.depth_transfer_in_practice (notebook 07): the schema, the grid and selection helpers, the
regret and gap statistics, spike counting and the verdicts, on small synthetic frames whose answers are known;
one tiny timing run."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from nup.experiments import depth_transfer_in_practice as ex

FAMILIES = list(ex.FAMILIES)
DEPTHS = (3, 8)
SEEDS = (0, 1, 2, 3, 4)


def params(**changes):
    values = dict(families=FAMILIES, depths=list(DEPTHS), width=32, nup_width=8, n_train=2000, n_val=500,
                  n_test=1000, batch_size=100, epochs=1, momentum=0.9,
                  lr_centers={"nup": -2.5, "residual": 2.5, "ntk": 2.5, "sp_sgd": -5.5, "sp_adam": -9.5},
                  grid_half_width=1, deep_half_width=1, max_widen=1, seeds=list(SEEDS), schedule_family="nup",
                  schedule_depth=3, schedule_c=3.0, schedule_curvature="hessian", schedule_every=5,
                  schedule_probe=128, record_every=2, timing_steps=5, n_jobs=1)
    values.update(changes)
    return ex.SCHEMA.validate(values)


def synthetic_frames(accuracy, p=None, times=None, schedule=None):
    """Frames as ``run`` returns them, with ``val = test = accuracy(family, depth, j, seed)`` on the grid
    j = -1, 0, 1 at every depth (NaN: a diverged run)."""
    p = p or params()
    rows = []
    for f in p.families:
        for d in p.depths:
            for j in (-1, 0, 1):
                for s in p.seeds:
                    a = accuracy(f, d, j, s)
                    rows.append(dict(stage="transfer", family=f, depth=d, j=j, lr=ex.grid_lr(0.0, j), seed=s,
                                     val_accuracy=a, test_accuracy=a, val_loss=1.0, test_loss=1.0,
                                     diverged=bool(np.isnan(a))))
    runs = pd.DataFrame(rows)
    times = times or {"nup": [2.0] * 5, "residual": [1.0] * 5}
    costs = pd.DataFrame([dict(family=f, depth=d, params=1, repeat=r, clock="cpu", seconds_per_epoch=t,
                               cpu_per_epoch=t, wall_per_epoch=t)
                          for f in p.families for d in p.depths for r, t in enumerate(times.get(f, [1.0] * 5))])
    schedule = schedule or {"geometric": [0.80] * len(p.seeds), "geometric_annealed": [0.80] * len(p.seeds),
                            "warmup_cosine": [0.80] * len(p.seeds)}
    sched = pd.DataFrame([dict(method=m, seed=s, lr=1.0, test_accuracy=a, diverged=False, spikes=0)
                          for m, values in schedule.items() for s, a in zip(p.seeds, values)])
    return {"runs": runs, "choices": ex.choices(runs, p.families, p.depths), "costs": costs, "schedule": sched}, p


def lines(verdicts):
    return {v.statement: v.holds for v in verdicts}


def find(verdicts, text):
    (match,) = [v for v in verdicts if text in v.statement]
    return match


# ---------------------------------------------------------------------------- schema

@pytest.mark.parametrize("changes,name", [
    (dict(families=["residual", "ntk"]), "families"),
    (dict(families=["nup", "ntk"]), "families"),
    (dict(lr_centers={"nup": -2.4, "residual": 2.5, "ntk": 2.5, "sp_sgd": -5.5, "sp_adam": -9.5}), "lr_centers"),
    (dict(lr_centers={"nup": -2.5}), "lr_centers"),
    (dict(n_train=55_000, n_val=10_000), "n_train"),
    (dict(schedule_depth=5), "schedule_depth"),
    (dict(schedule_family="sp_adam"), "schedule_family"),
    (dict(depths=[3]), "depths"),
    (dict(depths=[8, 3]), "depths"),
    (dict(depths=[2, 8]), "depths"),
    (dict(seeds=[0, 1]), "seeds"),
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
    assert all(ex.depth_factor(f, 12, 3) == 1.0 for f in ("nup", "residual", "sp_sgd", "sp_adam"))
    assert [ex.grid_lr(-2.5, j) for j in (-1, 0, 1)] == [2.0 ** -3, 2.0 ** -2.5, 2.0 ** -2]  # exact


def test_parameter_count():
    p = params(nup_width=16)
    assert ex.parameter_count(p, "nup", 3) == 784 * 16 + 16 * 64 + 64 * 10
    assert ex.parameter_count(p, "residual", 3) == 784 * 32 + 32 * 32 + 32 * 10
    assert ex.parameter_count(p, "ntk", 4) == 784 * 32 + 2 * 32 * 32 + 32 * 10


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

def test_gap_statistic_and_independent_bootstrap():
    samples = {"nup": [0.80, 0.80, 0.80], "sp_adam": [0.85, 0.85, 0.85], "ntk": [0.70, 0.70, 0.70]}
    assert ex.gap_statistic(samples) == pytest.approx(0.05)
    assert ex.gap_statistic({"nup": [0.9, 0.9], "ntk": [0.8, 0.8]}) == 0.0
    est = ex.independent_bootstrap(samples, ex.gap_statistic, n_boot=200)
    assert est.value == pytest.approx(0.05) and est.low == pytest.approx(0.05) and est.high == pytest.approx(0.05)
    noisy = ex.independent_bootstrap({"nup": [0.80, 0.82, 0.84], "ntk": [0.79, 0.83, 0.87]}, ex.gap_statistic,
                                     n_boot=500)
    assert noisy.low <= noisy.value <= noisy.high and noisy.low == 0.0 < noisy.high


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
    assert len(verdicts) == 1 + len(FAMILIES) + 4
    assert find(verdicts, "reaches at least 85%").holds is True
    for f in FAMILIES:
        v = find(verdicts, f"for {ex.LABELS[f]},")
        assert v.holds is True and v.estimate == 0.0
    assert find(verdicts, "within 1 point of the best").holds is True
    assert find(verdicts, "within 3x").holds is True and find(verdicts, "within 3x").estimate == 2.0
    for name in ("(mini-batches", "annealed by a cosine"):
        schedule = find(verdicts, name)
        assert schedule.holds is False and schedule.estimate == 0.0


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


def test_claims_nup_behind_the_best_and_slow():
    def accuracy(f, d, j, s):
        return trained_accuracy()(f, d, j, s) - 0.03 * (f == "nup")
    frames, p = synthetic_frames(accuracy, times={"nup": [4.0, 4.1, 3.9, 4.0, 4.2], "residual": [1.0] * 5})
    verdicts = ex.claims(frames, p)
    gap = find(verdicts, "within 1 point of the best")
    assert gap.holds is False and gap.estimate == pytest.approx(0.03)
    time_verdict = find(verdicts, "within 3x")
    assert time_verdict.holds is False and time_verdict.low > 3


def test_claims_schedule_gain():
    frames, p = synthetic_frames(trained_accuracy(), schedule={"geometric": [0.83, 0.84, 0.83, 0.84, 0.83],
                                                                "geometric_annealed": [0.1, 0.82, 0.8, 0.8, 0.8],
                                                                "warmup_cosine": [0.81, 0.81, 0.81, 0.81, 0.81]})
    verdicts = ex.claims(frames, p)
    v = find(verdicts, "(mini-batches")
    assert v.holds is True and v.estimate == pytest.approx(0.024)
    v = find(verdicts, "annealed by a cosine")
    assert v.holds is False and v.estimate == pytest.approx(-0.146)


def test_undertrained_setups_leave_the_accuracy_comparisons_undecided():
    frames, p = synthetic_frames(trained_accuracy({"ntk": 0.05}, level=0.70),
                                 times={"nup": [5.0] * 5, "residual": [1.0] * 5})
    verdicts = ex.claims(frames, p)
    assert find(verdicts, "reaches at least 85%").holds is False
    assert find(verdicts, "for NTK with lr/depth,").holds is None  # would be False if trained
    assert "undertrained" in find(verdicts, "for NTK with lr/depth,").threshold
    assert find(verdicts, "within 1 point of the best").holds is None
    assert find(verdicts, "(mini-batches").holds is None and find(verdicts, "annealed by a cosine").holds is None
    assert find(verdicts, "within 3x").holds is False  # cost does not depend on training
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
    assert list(table.columns[:4]) == ["family", "depth", "params", "seconds_per_epoch"]


# ---------------------------------------------------------------------------- timing

def test_timing_round_robin_measures_every_config_in_every_round(tmp_path, monkeypatch):
    monkeypatch.setenv("NUP_RESULTS_DIR", str(tmp_path))
    p = params(n_train=200, n_val=100, n_test=100, batch_size=50)
    configs = [ex.family_config(p, "residual", 3, 1.0, 0, device="cpu"), ex.schedule_config(p, 0).replace(device="cpu")]
    timings = ex.time_per_step(configs, 3, 2)
    assert len(timings) == 2
    for timing in timings:
        assert len(timing["cpu"]) == len(timing["wall"]) == 2 and timing["device"] == "cpu"
        assert all(t > 0 for t in timing["cpu"] + timing["wall"])
    assert ex.time_per_step(configs, 3, 2) == timings  # cached
    assert (tmp_path / "timings").is_dir()


def test_time_ratio_is_the_ratio_of_best_rounds():
    times = np.array([[4.0, 1.0], [3.0, 1.5], [5.0, 1.2]])
    assert ex.time_ratio(times) == 3.0


def test_schedule_configs():
    p = params()
    plain, annealed = ex.schedule_config(p, 1, 0.5), ex.schedule_config(p, 1, 0.5, annealed=True)
    options = dict(plain.schedule_options)
    assert (plain.schedule, plain.momentum, plain.seed, plain.lr) == ("geometric", ex.SCHEDULE_MOMENTUM, 1, 0.5)
    assert options["probe_size"] == 128 and options["curvature"] == "hessian" and "anneal_steps" not in options
    assert dict(annealed.schedule_options)["anneal_steps"] == annealed.steps == 20

"""Notebook 06, claim 8: a geometry-aware learning-rate schedule prolongs the catapult phase.

The abstract states that *a geometry-aware learning-rate schedule prolongs the catapult phase
indefinitely*; the rule is ours (``nup.training.schedules.GeometricLR``): ``eta_t = c / lambda_t`` with ``c``
in (2, 4), capped by ``max_lr``, with ``lambda_t`` the top eigenvalue of the full-batch NTK (``"ntk"``, every
``ntk_every`` steps) or the cheap Rayleigh quotient ``q_t = r^T K r/|r|^2`` (``"gradient"``, every step).

Two questions, full-batch GD with MSE on Fashion-MNIST subsets, ReLU at the EOC:

* **Dynamics** (NTK parameterization, every seed): against a constant rate inside the catapult window
  (``eta * lambda_0 = catapult_ratio``), does the schedule keep the loss spiking through the whole run
  (every tenth), ``lambda_t`` falling and the NTK moving, and where does ``max_lr`` bind, if ever?  The rule
  itself runs at ``loose_cap``, a cap meant never to bind (a verdict checks it), beside the tuned caps.
* **Does it help?** Test accuracy against tuned baselines (constant, warmup + cosine, warmup to a constant),
  under νP and the NTK parameterization, paired by seed.  Under νP the schedule turns the normalized step
  into GD's step at ``eta_t`` (``GeometricLR``), so νP's network also gets a plain-GD warmup + cosine
  baseline (``gd_warmup_cosine``: ``normalize="none"``, peak ``eta * lambda_0``): the schedule against GD.

Families (``FAMILIES``, keys ``"<parameterization>_<method>"``): every method under both parameterizations,
and ``gd_warmup_cosine`` under νP only (the NTK parameterization's baselines already are plain GD).  The knob
of a family: a baseline's rate (NTK parameterization and νP's GD: ``eta * lambda_0``, the peak for the warmup
schedules; νP's normalized update: the step length), a schedule variant's cap ``max_lr * lambda_0``.

Data.  Seed ``s`` is the network's initialization and its data draw (``data_seed = s``): ``n_train``
training images, ``n_val`` validation images held out of the same draw, ``n_test`` test images.

Tuning (every knob the same way).  On the networks ``tune_seeds`` (not evaluation seeds), every family's
knob runs on a grid of ``2 first_half_points + 1`` values ``2^grid_step`` apart around ``2^log2_centers``;
while the best value sits at the grid's edge two more values beyond it are run (at most ``max_widen``
times; ``nup.analysis.best_lr.tune_along``).  The best value: the highest mean final *validation*
accuracy over the tuning networks (smallest knob on a tie; a run whose loss became non-finite counts as the
worst run of its table).  ``tune_along`` minimises the mean of the log of its table, so the table holds
``exp(-val_accuracy)``, whose mean log is minus the mean accuracy.  Tuning runs never load the test split;
each final configuration's test accuracy is read once, at its last step.  ``c = 3`` (the middle of the uv
window) and ``ntk_every`` are fixed, not tuned; the warmups last 10% of the run.

Phases (``nup.analysis.catapult.classify_phase``, the call of notebook 05: ``settle = 0.5``, ``lambda_ratio =
lambda_end/lambda_0``, ``baseline`` = the loss of the best constant output), plus *ended at chance*: the final
validation accuracy not above ``CHANCE``.  A divergent run is never counted as a prolonged catapult: "the
loss spikes in every tenth" counts a run only if it is not divergent, and the means over seeds of
``lambda_t`` falling and the NTK moving are over the non-divergent runs (their n printed).  A run whose loss
became non-finite has no final network; its accuracies count as ``CHANCE`` (what NaN outputs score).

Frames (``run_experiment``): ``lambda0``; ``tuning`` (one row per tuning run); ``grid`` (per family: its final
grid, the chosen knob and where it sits, ``grid_positions``); ``runs`` (one row per evaluation run, with its
``phase``; its ``run`` indexes ``frame``); ``frame`` (the long frame of the evaluation runs); ``costs``
(parameter count and FLOPs per step of each family's network).

Verdicts: statements about every seed are decided by the seeds (estimate: the fraction that satisfy them,
n printed); means use 95% jackknife-t intervals over seeds (``nup.analysis.stats``), paired by seed where two
methods are compared (the same networks and data draws).  Thresholds are the constants below, fixed before
the runs, printed in the statements.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from nup.analysis.best_lr import best_log2_lr, tune_along
from nup.analysis.catapult import classify_phase, constant_loss, count_spikes, initial_eigenvalues
from nup.analysis.stats import Estimate, fraction, mean_interval, nan_estimate, paired_log_ratio, ratio_of_means
from nup.analysis.verdicts import Verdict, compare
from nup.core.activations import ACTIVATIONS
from nup.core.cost import parameter_count, training_flops
from nup.experiments import RUN_THREADS
from nup.experiments.schema import MIN_SEEDS, Choice, Dict, Float, Int, List, Schema
from nup.training.config import RunConfig
from nup.training.sweep import sweep

NOTEBOOK = "06_prolonged_catapult"
PARAMS = ("nup", "ntk")
BASELINES = ("constant", "warmup_cosine", "warmup_constant", "gd_warmup_cosine")
GEOMETRIC = ("geometric_ntk", "geometric_gradient")
METHODS = (*BASELINES, *GEOMETRIC)
# gd_warmup_cosine: νP's network trained by plain GD; under the NTK parameterization every baseline is GD.
FAMILIES = tuple((param, m) for param in PARAMS for m in METHODS if m != "gd_warmup_cosine" or param == "nup")
FAMILY_KEYS = tuple(f"{param}_{m}" for param, m in FAMILIES)
PARTS = 10  # "every tenth of the run"
D_IN, D_OUT = 784, 10  # Fashion-MNIST, one-hot MSE targets


def split_key(key: str) -> tuple[str, str]:
    param, method = key.split("_", 1)
    return param, method


def _check(p) -> None:
    common = sorted(set(p.tune_seeds) & set(p.seeds))
    if common:
        raise ValueError(f"tune_seeds={list(p.tune_seeds)!r} is not allowed; the knobs are tuned on other networks "
                         f"than the evaluation seeds {list(p.seeds)} (shared: {common})")
    if not 2 < p.c < 4:
        raise ValueError(f"c={p.c!r} is not allowed; the schedule keeps eta*lambda in the catapult window, c in (2, 4)")
    if not p.catapult_ratio > 2:
        raise ValueError(f"catapult_ratio={p.catapult_ratio!r} is not allowed; it must be above 2 (the catapult "
                         "window)")
    if p.steps < 4 * p.diagnostic_every:
        raise ValueError(f"diagnostic_every={p.diagnostic_every!r} is not allowed; the quarters of the run need "
                         f"lambda_t, so diagnostic_every must be at most steps/4 ({p.steps // 4})")


SCHEMA = Schema(
    Choice("activation", choices=tuple(ACTIVATIONS)),
    Int("depth", minimum=2),
    Dict("widths", keys=PARAMS, value=Int("width", minimum=1),
         help="ntk: constant width; nup: base width m of the k^2 m profile"),
    Int("n_train", minimum=16),
    Int("n_val", minimum=10, help="validation samples held out of each training draw; every knob is tuned on them"),
    Int("n_test", minimum=10, help="test samples (test split), read once per final configuration"),
    Int("steps", minimum=100),
    List("seeds", item=Int("seed", minimum=0), min_length=MIN_SEEDS, distinct=True,
         help=f"evaluation networks, each its own data draw; at least {MIN_SEEDS} (interval coverage)"),
    List("tune_seeds", item=Int("seed", minimum=0), min_length=2, distinct=True,
         help="the networks (and data draws) the knobs are tuned on; not evaluation seeds"),
    Dict("log2_centers", keys=FAMILY_KEYS, value=Float("log2_knob"),
         help="log2 of the centre of each family's first grid (rate: eta*lambda_0 or νP's step length; cap: "
              "max_lr*lambda_0), rounded to a multiple of grid_step"),
    Float("grid_step", positive=True, help="grid spacing in log2 units (1: factors of 2)"),
    Int("first_half_points", minimum=1, help="grid points on each side of the centre"),
    Int("max_widen", minimum=0, help="how many times a grid is widened by two points at its edge"),
    Float("loose_cap", positive=True, help="max_lr*lambda_0 of the rule itself in the dynamics comparison"),
    Float("catapult_ratio", positive=True, help="the constant rate (ntk, eta*lambda_0) of the dynamics comparison"),
    Float("c", positive=True, help="eta_t * lambda_t of the schedule, in (2, 4); fixed, not tuned"),
    Int("ntk_every", minimum=1, help="lambda_t of the NTK-curvature schedule every this many steps"),
    Int("diagnostic_every", minimum=1, help="lambda_t, NTK shape, preactivations, validation and test metrics"),
    Int("probe_size", minimum=2),
    Float("spike_rise", positive=True, help="a spike: the loss rises by this factor above its running minimum"),
    Int("n_jobs", minimum=1),
    checks=(_check,),
)

# Thresholds, fixed before the runs.
STABILITY = 2.0         # eta * lambda = 2
KEEPS_FALLING = 0.9     # lambda_t: last-quarter median at most 0.9 x the second-quarter median
KEEPS_MOVING = 1.5      # the NTK's shape travels at least 1.5 x as far in the last quarter as under the constant rate
MARGIN = 0.01           # "beats": higher mean test accuracy by at least one point
HIGHER_LOSS = 1.0       # "ends with a higher training loss": geometric mean ratio above 1
EVERY = 1.0             # "every seed": the fraction of seeds that satisfy a statement
AT_CAP = 0.99           # the schedule runs at its cap where eta_t >= 0.99 max_lr
CHANCE = 0.1            # ten balanced classes: a final accuracy not above it "ended at chance" (divergent)


# ---------------------------------------------------------------------------- configurations

def base_config(p, parameterization: str, seed: int) -> RunConfig:
    """An evaluation run's network, data draw (``data_seed = seed``) and diagnostics."""
    return RunConfig(parameterization=parameterization, activation=p.activation, depth=p.depth,
                     width=p.widths[parameterization], n_train=p.n_train, n_val=p.n_val, n_test=p.n_test,
                     steps=p.steps, seed=seed, data_seed=seed, probe_size=p.probe_size,
                     diagnostic_every=p.diagnostic_every,
                     diagnostics=("ntk_lambda", "ntk_motion", "ntk", "preactivations"), threads=RUN_THREADS)


def config(p, parameterization: str, seed: int, method: str, knob: float, lambda0: float) -> RunConfig:
    """One evaluation run.  Baselines: ``knob`` is the rate (``eta * lambda_0``, the peak for the warmup
    schedules, except νP's normalized update: its step length).  Schedules: ``knob`` is the cap
    ``max_lr * lambda_0``."""
    b = base_config(p, parameterization, seed)
    if method == "gd_warmup_cosine":
        if parameterization != "nup":
            raise ValueError(f"method={method!r} is not allowed under parameterization={parameterization!r}; "
                             "it is νP's network trained by plain GD (the NTK parameterization's baselines are GD)")
        return b.replace(normalize="none", lr=knob / lambda0, schedule="warmup_cosine", schedule_options=())
    if method in BASELINES:
        lr = knob / lambda0 if parameterization == "ntk" else knob
        options = {"constant": (), "warmup_cosine": (), "warmup_constant": (("final_fraction", 1.0),)}[method]
        return b.replace(lr=lr, schedule="constant" if method == "constant" else "warmup_cosine",
                         schedule_options=options)
    if method not in GEOMETRIC:
        raise ValueError(f"method={method!r} is not allowed; one of {', '.join(METHODS)}")
    curvature = method.split("_")[1]
    every = p.ntk_every if curvature == "ntk" else 1
    return b.replace(lr=1 / lambda0, schedule="geometric",
                     schedule_options=dict(c=p.c, curvature=curvature, every=every, max_lr=knob / lambda0))


def tune_config(p, parameterization: str, seed: int, method: str, knob: float, lambda0: float) -> RunConfig:
    """A tuning run: the evaluation run's training, only the final validation metrics, no test split."""
    return config(p, parameterization, seed, method, knob, lambda0).replace(
        diagnostics=(), diagnostic_every=p.steps, n_test=0)


# ---------------------------------------------------------------------------- summaries

def cap_step(lr_times_lambda0: pd.Series, cap: float) -> float:
    """The first step at which ``eta_t * lambda_0`` is at its cap (``>= AT_CAP * cap``); NaN if never."""
    at_cap = lr_times_lambda0[lr_times_lambda0 >= AT_CAP * cap]
    return float(at_cap.index[0]) if len(at_cap) else math.nan


def spikes_per_part(loss, rise: float, parts: int = PARTS) -> list[int]:
    """Loss spikes (``nup.analysis.catapult.count_spikes``) in each of ``parts`` equal parts of the run."""
    loss = np.asarray(loss, dtype=float)
    edges = np.linspace(0, len(loss), parts + 1).astype(int)
    return [count_spikes(loss[a:b], rise) if b - a > 1 else 0 for a, b in zip(edges[:-1], edges[1:])]


def final_accuracy(series: pd.Series, diverged: bool) -> float:
    """The last recorded accuracy; ``CHANCE`` for a run whose loss became non-finite (no final network)."""
    return CHANCE if diverged or series.empty else float(series.iloc[-1])


def phase_of(loss, diverged: bool, lambda_ratio: float, baseline: float, accuracy: float) -> str:
    """Notebook 05's phase rule (``classify_phase`` with its defaults, ``lambda_ratio`` and ``baseline``) and
    "ended at chance" (``accuracy`` not above ``CHANCE``)."""
    return classify_phase(loss, diverged, lambda_ratio=lambda_ratio, baseline=baseline, accuracy=accuracy,
                          chance=CHANCE)


def summarize(frame: pd.DataFrame, keys: list[tuple], lambda0: dict, baseline: dict, p) -> pd.DataFrame:
    """One row per run of ``frame`` (``keys[i] = (parameterization, seed, method, knob)`` for run ``i``):
    phase, final loss, validation and test accuracy, feature-learning measures, spikes per tenth,
    ``lambda_t`` medians over the second and last quarters (relative to ``lambda_0``), the NTK shape's path
    length over the last quarter, ``eta * lambda_t`` at the end, and where the schedule reaches its cap."""
    rows = []
    layer0 = frame[frame.layer == 0]
    grouped = {run: d for run, d in layer0.groupby("run")}
    preact = frame[frame.metric == "preact_change"]
    for i, (param, seed, method, knob) in enumerate(keys):
        d = grouped[i]
        get = lambda m: d[d.metric == m].sort_values("step").set_index("step")["value"]  # noqa: E731
        lam0 = lambda0[param, seed]
        loss, lam, lr, shape_step = get("loss"), get("ntk_lambda") / lam0, get("lr"), get("ntk_shape_step")
        diverged = bool(d["diverged"].iloc[0])
        n_lam, n_step = len(lam), len(shape_step)
        last = preact[(preact.run == i) & (preact.step == preact[preact.run == i].step.max())]
        tenth = spikes_per_part(loss.to_numpy(), p.spike_rise)
        cap = knob if method in GEOMETRIC else math.nan
        at_cap = (lr * lam0 >= AT_CAP * cap) if method in GEOMETRIC else pd.Series(False, index=lr.index)
        val_accuracy = final_accuracy(get("val_accuracy"), diverged)
        lambda_ratio = float(lam.iloc[-1]) if n_lam and not diverged else math.nan
        products = get("schedule_products")
        rows.append(dict(
            parameterization=param, seed=seed, method=method, knob=knob, diverged=diverged,
            phase=phase_of(loss.to_numpy(), diverged, lambda_ratio, baseline[seed], val_accuracy),
            final_loss=float(loss.iloc[-1]), val_accuracy=val_accuracy,
            test_accuracy=final_accuracy(get("test_accuracy"), diverged), test_loss=float(get("test_loss").iloc[-1]),
            ntk_shape_change=float(get("ntk_shape_change").iloc[-1]), ntk_change=float(get("ntk_change").iloc[-1]),
            kernel_alignment=float(get("kernel_alignment").iloc[-1]), preact_change=float(last["value"].mean()),
            spikes=tenth, tenths_with_spike=sum(s > 0 for s in tenth),
            late_spikes=count_spikes(loss.to_numpy()[len(loss) // PARTS:], p.spike_rise),
            lambda_q2=float(lam.iloc[n_lam // 4: n_lam // 2].median()),
            lambda_q4=float(lam.iloc[3 * n_lam // 4:].median()),
            eta_lambda_end=float(lr.iloc[-1] * lam.iloc[-1] * lam0) if not diverged else math.nan,
            path_q4=float(shape_step.iloc[3 * n_step // 4 + 1:].sum()),
            cap_step=cap_step(lr * lam0, cap) if method in GEOMETRIC else math.nan,
            at_cap_fraction=float(at_cap.mean()), schedule_products=float(products.sum()) if len(products) else 0.0))
    return pd.DataFrame(rows)


def tuning_summary(frame: pd.DataFrame, todo: list[tuple]) -> pd.DataFrame:
    """One row per tuning run (``todo[i] = (family key, log2 knob, seed)`` for run ``i``): final loss and
    validation accuracy (``CHANCE`` when the loss became non-finite), and whether it diverged."""
    rows = []
    layer0 = frame[frame.layer == 0]
    for i, (key, x, seed) in enumerate(todo):
        d = layer0[layer0.run == i]
        diverged = bool(d["diverged"].iloc[0])
        loss = d[d.metric == "loss"].sort_values("step")["value"]
        acc = d[d.metric == "val_accuracy"].sort_values("step")["value"]
        param, method = split_key(key)
        rows.append(dict(family=key, parameterization=param, method=method, seed=seed, log2_knob=float(x),
                         knob=2.0 ** x, diverged=diverged, final_loss=float(loss.iloc[-1]),
                         val_accuracy=final_accuracy(acc, diverged)))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- tuning

def tuning_table(tuning: pd.DataFrame, key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(log2 knobs, exp(-val_accuracy))`` of one family: tuning seeds x grid values; NaN where a run's loss
    became non-finite (the worst of its table for ``best_log2_lr``).  The mean log of ``exp(-accuracy)`` is
    minus the mean accuracy, so ``best_log2_lr``'s minimum is the highest mean validation accuracy."""
    d = tuning[tuning.family == key].assign(score=lambda t: np.where(t.diverged, np.nan, np.exp(-t.val_accuracy)))
    t = d.pivot_table(index="seed", columns="log2_knob", values="score", aggfunc="first", dropna=False)
    return t.columns.to_numpy(dtype=float), t.to_numpy(dtype=float)


def grid_positions(tuning: pd.DataFrame) -> pd.DataFrame:
    """Per family: its final grid, the chosen knob (highest mean validation accuracy over the tuning seeds,
    ``best_log2_lr`` of ``tuning_table``), its index in the grid and whether it sits at an edge."""
    rows = []
    for key in dict.fromkeys(tuning.family):
        x, table = tuning_table(tuning, key)
        best = best_log2_lr(x, table)
        param, method = split_key(key)
        mean_acc = tuning[tuning.family == key].groupby("log2_knob").val_accuracy.mean()
        position = {"low": "low edge", "high": "high edge", None: "interior"}[best.edge]
        rows.append(dict(family=key, parameterization=param, method=method,
                         grid=[float(f"{2.0 ** v:.4g}") for v in x], n_points=len(x), index=best.index,
                         knob=2.0 ** x[best.index], position=position,
                         val_accuracy=float(mean_acc[x[best.index]])))
    return pd.DataFrame(rows)


def chosen_knobs(grid: pd.DataFrame) -> dict:
    """``{(parameterization, method): knob}`` from ``grid_positions``."""
    return {(r.parameterization, r.method): float(r.knob) for r in grid.itertuples()}


# ---------------------------------------------------------------------------- costs

def layer_widths(p, parameterization: str) -> list[int]:
    return base_config(p, parameterization, 0).build_parameterization().widths(D_IN, D_OUT, p.depth,
                                                                               p.widths[parameterization])


def costs(p, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per parameterization: widths, parameter count and FLOPs of one full-batch gradient step
    (``nup.core.cost``); with ``runs``, each schedule's mean number of NTK matrix-vector products per run
    (the eigen-solver's extra work, each about a forward and a backward pass)."""
    rows = []
    for param in PARAMS:
        w = layer_widths(p, param)
        row = dict(parameterization=param, widths=w, n_params=parameter_count(w),
                   flops_per_step=training_flops(w, p.n_train))
        if runs is not None:
            t = tuned(runs)
            row["ntk_products_per_run"] = float(t[(t.parameterization == param)
                                                  & (t.method == "geometric_ntk")].schedule_products.mean())
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- run

def lambda0s(p) -> dict:
    keys = [(param, seed) for param in PARAMS for seed in (*p.tune_seeds, *p.seeds)]
    values = initial_eigenvalues([base_config(p, *k) for k in keys], p.n_jobs)
    return dict(zip(keys, values))


def tune(p, lambda0: dict) -> pd.DataFrame:
    """Every family's knob on the tuning seeds, grids widened at their edges (``tune_along`` at one point,
    the network's depth); one row per tuning run."""
    parts: list[pd.DataFrame] = []
    current: dict[str, pd.DataFrame] = {}

    def execute(_depth, todo, _in_grid):
        keys = [(*split_key(key), seed, 2.0 ** x) for key, x, seed in todo]
        configs = [tune_config(p, param, seed, m, knob, lambda0[param, seed]) for param, m, seed, knob in keys]
        parts.append(tuning_summary(sweep(configs, n_jobs=p.n_jobs, progress=False), todo))
        current["tuning"] = pd.concat(parts, ignore_index=True)

    tune_along([p.depth], list(FAMILY_KEYS), list(p.tune_seeds), dict(p.log2_centers), p.first_half_points, 1,
               p.max_widen, execute, lambda key, _depth: tuning_table(current["tuning"], key), p.grid_step,
               desc="tuning")
    return current["tuning"]


def run_keys(p, keys: list[tuple], lambda0: dict, baseline: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    configs = [config(p, param, seed, method, knob, lambda0[param, seed]) for param, seed, method, knob in keys]
    frame = sweep(configs, n_jobs=p.n_jobs)
    return frame, summarize(frame, keys, lambda0, baseline, p)


def run_experiment(p) -> dict:
    """Tune every knob on the validation split of ``tune_seeds``, then run the chosen knobs on every evaluation
    seed, and for the dynamics comparison (NTK parameterization) the constant rate at ``catapult_ratio`` and the
    NTK-curvature schedule at ``loose_cap`` (where they differ from the chosen knobs; ``role = "dynamics"``)."""
    lambda0 = lambda0s(p)
    tuning = tune(p, lambda0)
    grid = grid_positions(tuning)
    chosen = chosen_knobs(grid)
    keys = [(param, s, m, chosen[param, m]) for param, m in FAMILIES for s in p.seeds]
    for method, knob in (("constant", p.catapult_ratio), ("geometric_ntk", p.loose_cap)):
        if chosen["ntk", method] != knob:
            keys += [("ntk", s, method, knob) for s in p.seeds]
    # The loss of the best constant output on each seed's training draw (the same for both parameterizations).
    baseline = {s: constant_loss(base_config(p, "ntk", s)) for s in p.seeds}
    frame, runs = run_keys(p, keys, lambda0, baseline)
    runs["role"] = ["tuned" if k[3] == chosen[k[0], k[2]] else "dynamics" for k in keys]
    runs.insert(0, "run", range(len(runs)))  # the run's index in ``frame``
    lam = pd.DataFrame([dict(parameterization=k[0], seed=k[1], lambda0=v) for k, v in lambda0.items()])
    return {"lambda0": lam, "tuning": tuning, "grid": grid, "runs": runs, "frame": frame, "costs": costs(p, runs)}


# ---------------------------------------------------------------------------- statistics

def tuned(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs at the chosen knobs (without the dynamics comparison's extra runs)."""
    return runs[runs.role == "tuned"]


def loose_runs(runs: pd.DataFrame, p) -> pd.DataFrame:
    """The NTK-curvature schedule at ``loose_cap`` (NTK parameterization), by seed."""
    d = runs[(runs.parameterization == "ntk") & (runs.method == "geometric_ntk") & (runs.knob == p.loose_cap)]
    return d.set_index("seed").sort_index()


def dynamics_constant(runs: pd.DataFrame, catapult_ratio: float) -> pd.DataFrame:
    """The constant-rate runs at ``eta * lambda_0 = catapult_ratio`` (NTK parameterization), by seed."""
    d = runs[(runs.parameterization == "ntk") & (runs.method == "constant") & (runs.knob == catapult_ratio)]
    return d.set_index("seed").sort_index()


def by_seed(runs: pd.DataFrame, parameterization: str, method: str) -> pd.DataFrame:
    t = tuned(runs)
    return t[(t.parameterization == parameterization) & (t.method == method)].set_index("seed").sort_index()


def dynamics_runs(runs: pd.DataFrame, p, seed: int) -> dict[str, int]:
    """``{label: run}`` of the dynamics comparison on one seed (NTK parameterization): the constant rate at
    ``catapult_ratio``, both schedule variants at their tuned caps and the NTK-curvature schedule at
    ``loose_cap`` (``"geometric_ntk_loose"``)."""
    d = runs[(runs.parameterization == "ntk") & (runs.seed == seed)]
    chosen = {"constant": int(d[(d.method == "constant") & (d.knob == p.catapult_ratio)].run.iloc[0])}
    for m in GEOMETRIC:
        chosen[m] = int(d[(d.method == m) & (d.role == "tuned")].run.iloc[0])
    chosen["geometric_ntk_loose"] = int(d[(d.method == "geometric_ntk") & (d.knob == p.loose_cap)].run.iloc[0])
    return chosen


def phase_counts(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs per parameterization, method, knob and phase (every evaluation run)."""
    counts = runs.groupby(["parameterization", "method", "knob", "phase"]).size().unstack("phase", fill_value=0)
    return counts.reindex(columns=["lazy", "catapult", "divergent"], fill_value=0)


def seed_mean(values) -> Estimate:
    """The mean over seeds with its t interval; NaN (never decided) with fewer than 2 values."""
    v = np.asarray(values, dtype=float)
    return mean_interval(v) if len(v) >= 2 else nan_estimate(len(v), "seeds")


def every_seed(mask) -> Estimate:
    """The fraction of seeds for which ``mask`` holds (an "every seed" statement holds at ``EVERY``), with n."""
    mask = np.asarray(mask, dtype=bool)
    f = fraction(mask)
    return Estimate(f, f, f, n=int(mask.size), unit="seeds")


def method_summary(runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per parameterization, method and metric: the mean over seeds of the tuned runs with its 95% t interval
    (``low``, ``high``) and n."""
    rows = []
    for (param, method), g in tuned(runs).groupby(["parameterization", "method"]):
        for name in metrics:
            est = seed_mean(g[name])
            rows.append(dict(parameterization=param, method=method, metric=name, mean=est.value, low=est.low,
                             high=est.high, seeds=est.n))
    return pd.DataFrame(rows)


def paired_difference(a: pd.Series, b: pd.Series) -> Estimate:
    """The mean over seeds of ``a - b`` (paired by seed: the same networks and data draws) with its t interval."""
    joined = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner")
    if len(joined) < 2:
        return nan_estimate(len(joined), "paired seeds")
    return mean_interval((joined.a - joined.b).to_numpy(), unit="paired seeds")


def prolonged(g: pd.DataFrame) -> np.ndarray:
    """Per run: a spike in every tenth of the run and not divergent (a divergent run never counts)."""
    return np.array([all(s > 0 for s in spikes) and phase != "divergent" for spikes, phase in zip(g.spikes, g.phase)],
                    dtype=bool)


# ---------------------------------------------------------------------------- verdicts

LABELS = {"geometric_ntk": "NTK curvature", "geometric_gradient": "gradient variant"}
BASELINE_NAMES = {"constant": "constant rate", "warmup_cosine": "warmup+cosine", "warmup_constant": "warmup+constant",
                  "gd_warmup_cosine": "plain-GD warmup+cosine"}
PARAM_NAMES = {"nup": "νP", "ntk": "the NTK parameterization"}


def _dynamics(g: pd.DataFrame, const: pd.DataFrame, which: str) -> list[Verdict]:
    """Spikes in every tenth, ``lambda_t`` falling and the NTK moving, for the schedule runs ``g`` (by seed);
    the last two over the non-divergent runs (paired with the non-divergent constant-rate runs)."""
    ok = g[g.phase != "divergent"]
    falls = seed_mean(ok.lambda_q4 / ok.lambda_q2)
    joined = pd.concat([ok.path_q4.rename("geo"), const[const.phase != "divergent"].path_q4.rename("const")],
                       axis=1, join="inner")
    moves = (ratio_of_means(joined.geo.to_numpy(), joined.const.to_numpy(), paired=True) if len(joined) >= 2
             else nan_estimate(len(joined), "paired seeds"))
    return [
        compare(f"with the geometric schedule ({which}) the loss spikes in every tenth of the run and the run is not "
                "divergent (repeated catapults; fraction of seeds at least {threshold})", every_seed(prolonged(g)),
                None, ">=", EVERY),
        compare(f"with the geometric schedule ({which}) lambda_t keeps falling (last-quarter median at most "
                "{threshold} x the second-quarter median, mean over the non-divergent seeds)", falls, None, "<=",
                KEEPS_FALLING),
        compare(f"with the geometric schedule ({which}) the NTK keeps moving (its shape travels at least {{threshold}} "
                "x as far in the last quarter as under the constant rate, non-divergent runs paired by seed)", moves,
                None, ">=", KEEPS_MOVING),
    ]


def _not_divergent(g: pd.DataFrame, param: str, which: str) -> Verdict:
    return compare(f"under {PARAM_NAMES[param]} the schedule ({which}) ends in no divergent run (notebook 05's phase "
                   "rule; fraction of seeds at least {threshold})", every_seed(g.phase != "divergent"), None, ">=",
                   EVERY)


def _below_cap(g: pd.DataFrame, param: str, which: str) -> Verdict:
    return compare(f"under {PARAM_NAMES[param]} the schedule ({which}) stays below its cap max_lr for the whole run "
                   "(fraction of seeds at least {threshold})", every_seed(g.cap_step.isna()), None, ">=", EVERY)


def claims(frames: dict, p) -> list[Verdict]:
    runs = frames["runs"]
    const = dynamics_constant(runs, p.catapult_ratio)
    verdicts = [
        compare("with a constant rate in the catapult window the loss spikes in the first tenth of the run (fraction "
                "of seeds at least {threshold})", every_seed(const.spikes.map(lambda s: s[0] >= 1)), None, ">=", EVERY),
        compare("with a constant rate in the catapult window the loss never spikes after the first tenth of the run "
                "(fraction of seeds at least {threshold})", every_seed(const.late_spikes == 0), None, ">=", EVERY),
        compare("with a constant rate eta*lambda_t settles at or below {threshold} (mean over seeds)",
                seed_mean(const.eta_lambda_end), None, "<=", STABILITY),
    ]
    # The rule itself: the NTK-curvature schedule at a cap meant never to bind.
    loose = loose_runs(runs, p)
    verdicts += _dynamics(loose, const, "NTK curvature, loose cap")
    which = "NTK curvature, loose cap"
    verdicts += [_below_cap(loose, "ntk", which), _not_divergent(loose, "ntk", which)]
    # The schedule as tuned on the validation split.
    verdicts += _dynamics(by_seed(runs, "ntk", "geometric_ntk"), const, "NTK curvature, tuned cap")
    gradient = by_seed(runs, "ntk", "geometric_gradient")
    verdicts.append(compare("with the geometric schedule (gradient variant, tuned cap) the loss spikes in every tenth "
                            "of the run and the run is not divergent (repeated catapults; fraction of seeds at least "
                            "{threshold})", every_seed(prolonged(gradient)), None, ">=", EVERY))
    for m in GEOMETRIC:
        for param in PARAMS:
            d = by_seed(runs, param, m)
            which = f"{LABELS[m]}, tuned cap"
            verdicts += [_below_cap(d, param, which), _not_divergent(d, param, which)]
    # Does it help?  Test accuracy, paired by seed, against every tuned baseline of the parameterization.
    for param in PARAMS:
        for m in GEOMETRIC:
            for baseline in BASELINES:
                if (param, baseline) not in FAMILIES:
                    continue
                e = paired_difference(by_seed(runs, param, m).test_accuracy,
                                      by_seed(runs, param, baseline).test_accuracy)
                verdicts.append(compare(f"under {PARAM_NAMES[param]} the schedule ({LABELS[m]}) beats the tuned "
                                        f"{BASELINE_NAMES[baseline]} in mean test accuracy by at least {{threshold}} "
                                        "(paired by seed)", e, None, ">=", MARGIN))
        geo, wc = by_seed(runs, param, "geometric_ntk").final_loss, by_seed(runs, param, "warmup_cosine").final_loss
        joined = pd.concat([geo.rename("geo"), wc.rename("wc")], axis=1, join="inner")
        e = paired_log_ratio(joined.geo.to_numpy(), joined.wc.to_numpy())
        verdicts.append(compare(f"under {PARAM_NAMES[param]} the schedule (NTK curvature) ends with a higher training "
                                "loss than the tuned warmup+cosine (geometric mean ratio over paired seeds above "
                                "{threshold})", e, None, ">", HIGHER_LOSS))
    return verdicts

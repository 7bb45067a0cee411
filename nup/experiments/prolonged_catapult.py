"""Notebook 06, claim 8: a geometry-aware learning-rate schedule prolongs the catapult phase.

The abstract states that *a geometry-aware learning-rate schedule prolongs the catapult phase
indefinitely*; the rule is ours (``nup.training.schedules.GeometricLR``): ``eta_t = c / lambda_t`` with ``c``
in (2, 4), capped by ``max_lr``, with ``lambda_t`` the top eigenvalue of the full-batch NTK (``"ntk"``, every
``ntk_every`` steps) or the cheap Rayleigh quotient ``q_t = r^T K r/|r|^2`` (``"gradient"``, every step).

Two questions, full-batch GD with MSE on a Fashion-MNIST subset, ReLU at the EOC:

* **Dynamics** (NTK parameterization, every seed): against a constant rate inside the catapult window
  (``eta * lambda_0 = catapult_ratio``), does the schedule keep the loss spiking through the whole run
  (every tenth), ``lambda_t`` falling and the NTK moving, and where does ``max_lr`` bind, if ever?
* **Does it help?** Test accuracy against three tuned baselines (constant, warmup + cosine, warmup to a
  constant), under νP and the NTK parameterization, paired by seed.

Tuning.  Every knob that is tuned is tuned the same way, on the *validation* split (``n_val`` samples of
the training split held out of training; ``nup.training.loop.load_validation``), never on the test split:
on the network of ``tune_seed`` (not one of the evaluation ``seeds``), the final validation accuracy picks
each baseline's rate from its grid and each schedule variant's cap ``max_lr`` from its grid (``caps``).
``c`` and ``ntk_every`` are fixed before any run (``c = 3``, the middle of the uv model's window (2, 4)) and
not tuned; the warmup is 10% of the run.  The chosen knobs then run on every evaluation seed.

Frames (``run``): ``lambda0``, ``tuning`` (one summary row per tuning run), ``chosen`` (the knob per
method), ``runs`` (one summary row per evaluation run; its ``run`` indexes ``frame``), ``frame`` (the long
frame of the evaluation runs).

Verdicts: statements about every seed are decided by the seeds (estimate: the fraction that satisfy
them); comparisons of means use a 95% bootstrap interval over seeds, paired by seed where two methods are
compared (``nup.analysis.verdicts``).  Thresholds are the constants below, fixed before the runs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from nup.analysis.catapult import count_spikes, initial_eigenvalues
from nup.analysis.fits import bootstrap, mean_bootstrap, ratio_bootstrap
from nup.analysis.stats import fraction
from nup.analysis.verdicts import Verdict, compare
from nup.core.activations import ACTIVATIONS
from nup.experiments import RUN_THREADS
from nup.experiments.schema import Choice, Dict, Float, Int, List, Schema
from nup.training.config import RunConfig
from nup.training.sweep import sweep

NOTEBOOK = "06_prolonged_catapult"
PARAMS = ("nup", "ntk")
BASELINES = ("constant", "warmup_cosine", "warmup_constant")
GEOMETRIC = ("geometric_ntk", "geometric_gradient")
METHODS = (*BASELINES, *GEOMETRIC)
PARTS = 10  # "every tenth of the run"


def _check(p) -> None:
    if p.tune_seed in p.seeds:
        raise ValueError(f"tune_seed={p.tune_seed!r} is not allowed; it must not be one of the evaluation seeds "
                         f"{list(p.seeds)} (the knobs are tuned on another network)")
    if not 2 < p.c < 4:
        raise ValueError(f"c={p.c!r} is not allowed; the schedule keeps eta*lambda in the catapult window, c in (2, 4)")
    if not p.catapult_ratio > 2:
        raise ValueError(f"catapult_ratio={p.catapult_ratio!r} is not allowed; it must be above 2 (the catapult window)")
    if p.steps < 4 * p.diagnostic_every:
        raise ValueError(f"diagnostic_every={p.diagnostic_every!r} is not allowed; the quarters of the run need "
                         f"lambda_t, so diagnostic_every must be at most steps/4 ({p.steps // 4})")


_GRID = List("rates", item=Float("rate", positive=True), distinct=True)

SCHEMA = Schema(
    Choice("activation", choices=tuple(ACTIVATIONS)),
    Int("depth", minimum=2),
    Dict("widths", keys=PARAMS, value=Int("width", minimum=1),
         help="ntk: constant width; nup: base width m of the k^2 m profile"),
    Int("n_train", minimum=16),
    Int("n_val", minimum=10, help="validation samples held out of the training split; every knob is tuned on it"),
    Int("n_test", minimum=10, help="test samples (test split), reported only"),
    Int("steps", minimum=100),
    List("seeds", item=Int("seed", minimum=0), min_length=2, distinct=True, help="evaluation networks"),
    Int("tune_seed", minimum=0, help="the network the knobs are tuned on (not an evaluation seed)"),
    Dict("grids", keys=PARAMS, value=Dict("grid", keys=BASELINES, value=_GRID),
         help="baseline rates: ntk eta*lambda_0 (peak), nup the normalized step length"),
    Dict("caps", keys=GEOMETRIC, value=_GRID, help="max_lr * lambda_0 of each schedule variant"),
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
AT_CAP = 0.99           # the schedule runs at its cap where eta_t >= 0.99 max_lr
N_BOOT = 2000


# ---------------------------------------------------------------------------- configurations

def base_config(p, parameterization: str, seed: int) -> RunConfig:
    return RunConfig(parameterization=parameterization, activation=p.activation, depth=p.depth,
                     width=p.widths[parameterization], n_train=p.n_train, n_val=p.n_val, n_test=p.n_test,
                     steps=p.steps, seed=seed, probe_size=p.probe_size, diagnostic_every=p.diagnostic_every,
                     diagnostics=("ntk_lambda", "ntk_motion", "ntk", "preactivations"), threads=RUN_THREADS)


def config(p, parameterization: str, seed: int, method: str, knob: float, lambda0: float) -> RunConfig:
    """One run.  Baselines: ``knob`` is the rate (ntk: ``eta * lambda_0``, the peak for the warmup schedules;
    nup: the normalized step length).  Schedules: ``knob`` is the cap ``max_lr * lambda_0``."""
    b = base_config(p, parameterization, seed)
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


def knobs(p, parameterization: str, method: str) -> tuple[float, ...]:
    return p.grids[parameterization][method] if method in BASELINES else p.caps[method]


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


def summarize(frame: pd.DataFrame, keys: list[tuple], lambda0: dict, p) -> pd.DataFrame:
    """One row per run of ``frame`` (``keys[i] = (parameterization, seed, method, knob)`` for run ``i``):
    final loss, validation and test accuracy, feature-learning measures, spikes per tenth, ``lambda_t``
    medians over the second and last quarters (relative to ``lambda_0``), the NTK shape's path length over
    the last quarter, ``eta * lambda_t`` at the end, and where the schedule reaches its cap."""
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
        rows.append(dict(
            parameterization=param, seed=seed, method=method, knob=knob, diverged=diverged,
            final_loss=float(loss.iloc[-1]), val_accuracy=float(get("val_accuracy").iloc[-1]),
            test_accuracy=float(get("test_accuracy").iloc[-1]), test_loss=float(get("test_loss").iloc[-1]),
            ntk_shape_change=float(get("ntk_shape_change").iloc[-1]), ntk_change=float(get("ntk_change").iloc[-1]),
            kernel_alignment=float(get("kernel_alignment").iloc[-1]), preact_change=float(last["value"].mean()),
            spikes=tenth, tenths_with_spike=sum(s > 0 for s in tenth),
            late_spikes=count_spikes(loss.to_numpy()[len(loss) // PARTS:], p.spike_rise),
            lambda_q2=float(lam.iloc[n_lam // 4: n_lam // 2].median()), lambda_q4=float(lam.iloc[3 * n_lam // 4:].median()),
            eta_lambda_end=float(lr.iloc[-1] * lam.iloc[-1] * lam0) if not diverged else math.nan,
            path_q4=float(shape_step.iloc[3 * n_step // 4 + 1:].sum()),
            cap_step=cap_step(lr * lam0, cap) if method in GEOMETRIC else math.nan,
            at_cap_fraction=float(at_cap.mean())))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- run

def lambda0s(p) -> dict:
    keys = [(param, seed) for param in PARAMS for seed in (p.tune_seed, *p.seeds)]
    values = initial_eigenvalues([base_config(p, *k) for k in keys], p.n_jobs)
    return dict(zip(keys, values))


def choose(tuning: pd.DataFrame) -> dict:
    """``{(parameterization, method): knob}`` with the best final validation accuracy (the smaller knob on a tie)."""
    best = tuning.sort_values(["parameterization", "method", "val_accuracy", "knob"], ascending=[True, True, False, True])
    return {(r.parameterization, r.method): float(r.knob) for r in best.drop_duplicates(["parameterization", "method"])
            .itertuples()}


def run_keys(p, keys: list[tuple], lambda0: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    configs = [config(p, param, seed, method, knob, lambda0[param, seed]) for param, seed, method, knob in keys]
    frame = sweep(configs, n_jobs=p.n_jobs)
    return frame, summarize(frame, keys, lambda0, p)


def loosest_cap(p) -> float:
    """The largest cap of the NTK-curvature schedule's grid: the dynamics of the rule itself are also run at it
    (a cap that binds turns the schedule into a constant rate)."""
    return max(p.caps["geometric_ntk"])


def run(p) -> dict:
    """Tune every knob on the validation split of ``tune_seed``, then run the chosen knobs on every evaluation
    seed, and for the dynamics comparison (NTK parameterization) the constant rate at ``catapult_ratio`` and
    the NTK-curvature schedule at its loosest cap (where they differ from the chosen knobs; ``role`` =
    ``"dynamics"``)."""
    lambda0 = lambda0s(p)
    tune_keys = [(param, p.tune_seed, m, k) for param in PARAMS for m in METHODS for k in knobs(p, param, m)]
    _, tuning = run_keys(p, tune_keys, lambda0)
    chosen = choose(tuning)
    keys = [(param, s, m, chosen[param, m]) for param in PARAMS for s in p.seeds for m in METHODS]
    for method, knob in (("constant", p.catapult_ratio), ("geometric_ntk", loosest_cap(p))):
        if chosen["ntk", method] != knob:
            keys += [("ntk", s, method, knob) for s in p.seeds]
    frame, runs = run_keys(p, keys, lambda0)
    runs["role"] = ["tuned" if k[3] == chosen[k[0], k[2]] else "dynamics" for k in keys]
    runs.insert(0, "run", range(len(runs)))  # the run's index in ``frame``
    lam = pd.DataFrame([dict(parameterization=k[0], seed=k[1], lambda0=v) for k, v in lambda0.items()])
    chosen_frame = pd.DataFrame([dict(parameterization=k[0], method=k[1], knob=v) for k, v in chosen.items()])
    return {"lambda0": lam, "tuning": tuning, "chosen": chosen_frame, "runs": runs, "frame": frame}


# ---------------------------------------------------------------------------- statistics and verdicts

def tuned(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs at the chosen knobs (without the dynamics comparison's extra runs)."""
    return runs[runs.role == "tuned"]


def loose_runs(runs: pd.DataFrame, p) -> pd.DataFrame:
    """The NTK-curvature schedule at its loosest cap (NTK parameterization), by seed."""
    d = runs[(runs.parameterization == "ntk") & (runs.method == "geometric_ntk") & (runs.knob == loosest_cap(p))]
    return d.set_index("seed").sort_index()


def dynamics_constant(runs: pd.DataFrame, catapult_ratio: float) -> pd.DataFrame:
    """The constant-rate runs at ``eta * lambda_0 = catapult_ratio`` (NTK parameterization), by seed."""
    d = runs[(runs.parameterization == "ntk") & (runs.method == "constant") & (runs.knob == catapult_ratio)]
    return d.set_index("seed").sort_index()


def by_seed(runs: pd.DataFrame, parameterization: str, method: str) -> pd.DataFrame:
    return tuned(runs)[(tuned(runs).parameterization == parameterization) & (tuned(runs).method == method)] \
        .set_index("seed").sort_index()


def dynamics_runs(runs: pd.DataFrame, p, seed: int) -> dict[str, int]:
    """``{label: run}`` of the dynamics comparison on one seed (NTK parameterization): the constant rate at
    ``catapult_ratio``, both schedule variants at their tuned caps and the NTK-curvature schedule at its
    loosest cap (``"geometric_ntk_loosest"``)."""
    d = runs[(runs.parameterization == "ntk") & (runs.seed == seed)]
    chosen = {"constant": int(d[(d.method == "constant") & (d.knob == p.catapult_ratio)].run.iloc[0])}
    for m in GEOMETRIC:
        chosen[m] = int(d[(d.method == m) & (d.role == "tuned")].run.iloc[0])
    loosest = d[(d.method == "geometric_ntk") & (d.knob == loosest_cap(p))]
    chosen["geometric_ntk_loosest"] = int(loosest.run.iloc[0])
    return chosen


def method_summary(runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per parameterization, method and metric: the mean over seeds of the tuned runs with its 95% bootstrap
    interval (``low``, ``high``)."""
    rows = []
    for (param, method), g in tuned(runs).groupby(["parameterization", "method"]):
        for name in metrics:
            est = mean_bootstrap(g[name].to_numpy(dtype=float), n_boot=N_BOOT, seed=0)
            rows.append(dict(parameterization=param, method=method, metric=name, mean=est.value, low=est.low,
                             high=est.high, seeds=len(g)))
    return pd.DataFrame(rows)


def paired_difference(a: pd.Series, b: pd.Series, n_boot: int = N_BOOT):
    """The mean over seeds of ``a - b`` (paired by seed: the same networks) with its bootstrap interval."""
    joined = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner")
    if len(joined) < 2:
        raise ValueError("a paired difference needs at least 2 common seeds")
    return mean_bootstrap((joined.a - joined.b).to_numpy(), n_boot=n_boot, seed=0)


LABELS = {"geometric_ntk": "NTK curvature", "geometric_gradient": "gradient variant"}
BASELINE_NAMES = {"constant": "constant rate", "warmup_cosine": "warmup+cosine", "warmup_constant": "warmup+constant"}
PARAM_NAMES = {"nup": "νP", "ntk": "the NTK parameterization"}


def _dynamics(g: pd.DataFrame, const: pd.DataFrame, which: str) -> list[Verdict]:
    """Spikes in every tenth, ``lambda_t`` falling and the NTK moving, for the schedule runs ``g`` (by seed)."""
    every_tenth = fraction(np.stack(g.spikes.to_numpy()) > 0)
    falls = mean_bootstrap((g.lambda_q4 / g.lambda_q2).to_numpy(), n_boot=N_BOOT, seed=0)
    joined = pd.concat([g.path_q4.rename("geo"), const.path_q4.rename("const")], axis=1, join="inner")
    moves = ratio_bootstrap(joined.geo, joined.const, paired=True, n_boot=N_BOOT, seed=0)
    return [
        compare(f"with the geometric schedule ({which}) the loss spikes in every tenth of the run (repeated catapults, "
                "every seed)", every_tenth, None, ">=", 1.0),
        compare(f"with the geometric schedule ({which}) lambda_t keeps falling (last-quarter median at most "
                f"{KEEPS_FALLING} x the second-quarter median, mean over seeds)", falls.value, falls.interval, "<=",
                KEEPS_FALLING),
        compare(f"with the geometric schedule ({which}) the NTK keeps moving (its shape travels at least {KEEPS_MOVING} "
                "x as far in the last quarter as under the constant rate, paired by seed)", moves.value, moves.interval,
                ">=", KEEPS_MOVING),
    ]


def claims(frames: dict, p) -> list[Verdict]:
    runs = frames["runs"]
    const = dynamics_constant(runs, p.catapult_ratio)
    settles = mean_bootstrap(const.eta_lambda_end.to_numpy(), n_boot=N_BOOT, seed=0)
    verdicts = [
        compare("with a constant rate in the catapult window the loss spikes in the first tenth of the run (every seed)",
                fraction(const.spikes.map(lambda s: s[0] >= 1)), None, ">=", 1.0),
        compare("with a constant rate in the catapult window the loss never spikes after the first tenth of the run "
                "(every seed)", fraction(const.late_spikes == 0), None, ">=", 1.0),
        compare("with a constant rate eta*lambda_t settles at or below 2 (mean over seeds)", settles.value,
                settles.interval, "<=", STABILITY),
    ]
    # The rule itself: the NTK-curvature schedule at the loosest cap of its grid.
    loose = loose_runs(runs, p)
    verdicts += _dynamics(loose, const, "NTK curvature, loosest cap")
    verdicts.append(compare("under the NTK parameterization the schedule (NTK curvature, loosest cap) stays below its "
                            "cap max_lr for the whole run (every seed)", fraction(loose.cap_step.isna()), None, ">=", 1.0))
    # The schedule as tuned on the validation split.
    verdicts += _dynamics(by_seed(runs, "ntk", "geometric_ntk"), const, "NTK curvature, tuned cap")
    gradient = by_seed(runs, "ntk", "geometric_gradient")
    verdicts.append(compare("with the geometric schedule (gradient variant, tuned cap) the loss spikes in every tenth "
                            "of the run (repeated catapults, every seed)",
                            fraction(np.stack(gradient.spikes.to_numpy()) > 0), None, ">=", 1.0))
    for m in GEOMETRIC:
        for param in PARAMS:
            d = by_seed(runs, param, m)
            verdicts.append(compare(f"under {PARAM_NAMES[param]} the schedule ({LABELS[m]}, tuned cap) stays below its "
                                    "cap max_lr for the whole run (every seed)", fraction(d.cap_step.isna()), None,
                                    ">=", 1.0))
    # Does it help?  Test accuracy, paired by seed, against every tuned baseline.
    for param in PARAMS:
        for m in GEOMETRIC:
            for baseline in BASELINES:
                e = paired_difference(by_seed(runs, param, m).test_accuracy, by_seed(runs, param, baseline).test_accuracy)
                verdicts.append(compare(f"under {PARAM_NAMES[param]} the schedule ({LABELS[m]}) beats the tuned "
                                        f"{BASELINE_NAMES[baseline]} in mean test accuracy by at least one point "
                                        "(paired by seed)", e.value, e.interval, ">=", MARGIN))
        geo_loss, wc_loss = by_seed(runs, param, "geometric_ntk").final_loss, by_seed(runs, param, "warmup_cosine").final_loss
        joined = pd.concat([geo_loss.rename("geo"), wc_loss.rename("wc")], axis=1, join="inner")
        e = bootstrap(np.log(joined.to_numpy()), lambda x: float(np.mean(x[:, 0] - x[:, 1])), n_boot=N_BOOT, seed=0)
        verdicts.append(compare(f"under {PARAM_NAMES[param]} the schedule (NTK curvature) ends with a higher training "
                                "loss than the tuned warmup+cosine (mean log ratio over seeds, paired)", e.value,
                                e.interval, ">", 0.0))
    return verdicts

"""Notebook 07: does νP help a practitioner?  Depth transfer with mini-batches on Fashion-MNIST, judged by
accuracy and cost, against rivals that separate "a narrow first layer" from "νP".

The practitioner's protocol, for every family of networks trained with mini-batches and cross-entropy on
the Fashion-MNIST training split, a validation split held out of it for every decision, and the test split
read once per chosen configuration, for what is reported:

* **tune** each family's peak learning rate (warmup + cosine, the schedule practitioners use) on the
  validation accuracy at the shallowest depth, over a ``sqrt(2)`` grid and several seeds;
* **transfer**: train the deeper networks at the rate its depth rule gives (the same rate, or ``lr/depth``
  for the NTK family) and also **re-tune** at every depth on a ``sqrt(2)`` grid around the transferred rate;
* report the **transfer regret** (test accuracy at the per-depth optimum, chosen on validation, minus at the
  transferred rate), the test accuracy itself, the parameter count and the FLOPs of a training step.

Families (``FAMILIES``): νP (``k^2 m`` widths, per-layer normalized SGD), the residual depth-μP network
(``nup.core.param.Residual``, plain SGD), the constant-width NTK parameterization with ``lr/depth``, and
standard practice, SP with He initialization with SGD+momentum and with Adam, all at ``width``; and three
controls that separate νP's narrow first layer (``m = nup_width`` units) from νP itself: the residual network
and SP+Adam at width ``m`` (``residual_m``, ``sp_adam_m``), and the residual network at νP's parameter count
at the deepest depth (``residual_matched``: the constant width ``nup.core.cost.matched_width`` solves the count;
it is used at every depth).  SP with He init is ``parameterization="mup"`` at ``base_width = width`` (then every μP
factor is 1: ``W ~ N(0, sigma_k^2/fan_in)`` with the EOC ``sigma^2 = 2`` for ReLU, multiplier 1, one learning
rate).  Every SGD family uses the same ``momentum``.  A grid whose optimum (by mean validation accuracy) sits
at its edge is widened by ``WIDEN_BY`` points on that side, up to ``max_widen`` times.  A diverged run counts
at chance accuracy.

**Data.** Seed ``s`` draws its own training, validation and test images (``data_seed = s``), so the intervals
over seeds hold data variance.  The same seed is the same draw in every family, rate and stage: the verdicts
that compare two configurations pair them by seed (unit: paired seeds), differences on a shared draw.

**Selection on validation.** The tuned rate, the best family and the trained gate are all decided on the
validation accuracy; ``test_accuracy`` is read only to report the configurations so chosen (``choices``,
``regret_statistic``, the verdict statistics, the schedule and long-run tables).

**Epoch budget.** ``long_families`` are trained ``long_epochs`` epochs (instead of ``epochs``) at the
shallowest depth at the rate tuned there: whether the ranking after ``epochs`` epochs (on validation) holds.

The geometric schedule (``nup.training.schedules.GeometricLR``) runs with mini-batches on one family and
depth, its curvature (the loss Hessian's top eigenvalue by default) measured on a fixed probe batch
(``schedule_options probe_size``), as designed and annealed by a cosine (``anneal_steps``), against that
family's tuned warmup+cosine runs at that depth; loss spikes are counted on the smoothed mini-batch loss.

**Cost** is counted, not timed: parameters and FLOPs of one training step (``nup.core.cost``, from the layer
shapes, the same on every machine).  Wall-clock time belongs to ``bench/``.

Verdicts (``claims``) are decided by 95% jackknife-t intervals over seeds or paired seeds
(``nup.analysis.stats``; each line prints its n), thresholds fixed before the runs (the constants below),
the FLOPs ratio exactly.  If the best family (on validation) stays below ``TRAINED_ACCURACY`` validation
accuracy the setup is undertrained, and the verdicts that compare accuracies are printed *undecided*.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from nup.analysis.catapult import count_spikes
from nup.analysis.frames import per_run
from nup.analysis.stats import Estimate, jackknife_t, mean_interval
from nup.analysis.verdicts import Verdict, compare
from nup.core.cost import matched_width, training_flops
from nup.core.cost import parameter_count as count_parameters
from nup.experiments import RUN_THREADS
from nup.experiments.schema import Choice, Dict, Float, Int, List, Schema
from nup.progress import progress
from nup.training.config import RunConfig
from nup.training.schedules import CURVATURES
from nup.training.sweep import sweep

NOTEBOOK = "07_depth_transfer_in_practice"

FAMILIES = ("nup", "residual", "ntk", "sp_sgd", "sp_adam", "residual_m", "sp_adam_m", "residual_matched")
LABELS = {"nup": "νP", "residual": "the residual depth-μP network", "ntk": "NTK with lr/depth",
          "sp_sgd": "SP (He init) with SGD and momentum", "sp_adam": "SP (He init) with Adam",
          "residual_m": "the residual network at νP's first hidden width m",
          "sp_adam_m": "SP (He init) with Adam at νP's first hidden width m",
          "residual_matched": "the residual network at νP's parameter count at the deepest depth"}
SHORT = {"nup": "νP", "residual": "residual μP", "ntk": "NTK lr/depth", "sp_sgd": "SP SGD", "sp_adam": "SP Adam",
         "residual_m": "residual, width m", "sp_adam_m": "SP Adam, width m",
         "residual_matched": "residual, νP's params"}
CONTROLS = ("residual_m", "sp_adam_m", "residual_matched")  # the rivals that separate the narrow layer from νP
ADAM = ("sp_adam", "sp_adam_m")
N_CLASSES = 10
N_INPUTS = 784
CHANCE = 1 / N_CLASSES   # the accuracy a diverged run counts at
WIDEN_BY = 2             # grid points added beyond an edge that holds the optimum (a factor 2 in lr)
SCHEDULE_TOL = 1e-2      # relative tolerance of the schedule's eigen-solver (warm-started Lanczos)
SCHEDULE_MAX_ITER = 50
SCHEDULE_MOMENTUM = 0.0  # the schedule sets the step GD takes (with momentum 0.9 it diverged in a pilot)
SPIKE_RISE = 0.25        # a loss spike: the smoothed mini-batch loss rises 25% above its running minimum
SPIKE_WINDOW_STEPS = 50  # the moving average of the mini-batch loss spans this many steps

# Thresholds, fixed before the runs.
TRAINED_ACCURACY = 0.85  # the best family's validation accuracy must reach this (an MLP gets ~88%) to compare
MAX_REGRET = 0.01        # the transferred rate loses at most 0.01 (1 point) of test accuracy at the deepest depth
MAX_GAP = 0.01           # νP at most 0.01 behind the best family (and behind each control) at the deepest depth
MAX_FLOP_RATIO = 3.0     # νP's FLOPs per training step within 3x of the residual network's at the deepest depth
MIN_SCHEDULE_GAIN = 0.01  # the geometric schedule (either variant) beats the tuned warmup+cosine by 0.01
SCHEDULE_VARIANTS = {"geometric": "schedule", "geometric_annealed": "schedule_annealed"}  # method -> stage


def _checks(p) -> None:
    for name in ("nup", "residual"):
        if name not in p.families:
            raise ValueError(f"families={list(p.families)!r} is not allowed; families must include {name!r} "
                             "(the verdicts compare νP with the best family and with the residual network)")
    if set(p.lr_centers) != set(p.families):
        raise ValueError(f"lr_centers={dict(p.lr_centers)!r} is not allowed; lr_centers must have one entry per "
                         f"family, exactly {list(p.families)}")
    for family, center in p.lr_centers.items():
        if not float(2 * center).is_integer():
            raise ValueError(f"lr_centers[{family!r}]={center!r} is not allowed; a log2 learning rate on the sqrt(2) "
                             "grid, a multiple of 0.5")
    if p.n_train + p.n_val > 60_000:
        raise ValueError(f"n_train + n_val = {p.n_train + p.n_val} is not allowed; both come out of the 60,000 "
                         "training images, so n_train + n_val must be <= 60000")
    if p.batch_size > p.n_train:
        raise ValueError(f"batch_size={p.batch_size!r} is not allowed; batch_size must be <= n_train ({p.n_train})")
    if p.schedule_depth not in p.depths:
        raise ValueError(f"schedule_depth={p.schedule_depth!r} is not allowed; schedule_depth must be one of "
                         f"depths {list(p.depths)} (its tuned warmup+cosine runs are the baseline)")
    if p.schedule_family not in p.families:
        raise ValueError(f"schedule_family={p.schedule_family!r} is not allowed; schedule_family must be one of the "
                         "SGD families in families (the schedule sets an SGD step)")
    if p.schedule_probe > p.n_train:
        raise ValueError(f"schedule_probe={p.schedule_probe!r} is not allowed; schedule_probe must be <= n_train")
    if not set(p.long_families) <= set(p.families):
        raise ValueError(f"long_families={list(p.long_families)!r} is not allowed; long_families must be among "
                         f"families {list(p.families)}")


SCHEMA = Schema(
    List("families", item=Choice("family", choices=FAMILIES), distinct=True,
         help="nup, residual, ntk (lr/depth), sp_sgd (He init, SGD+momentum), sp_adam (He init, Adam); controls: "
              "residual_m and sp_adam_m (width nup_width), residual_matched (νP's parameter count)"),
    List("depths", item=Int("depth", minimum=3), min_length=2, increasing=True,
         help="number of layers l; the first is where the rates are tuned (the residual network needs l >= 3)"),
    Int("width", minimum=1, help="hidden width of the constant-width families"),
    Int("nup_width", minimum=1, help="νP's base width m (hidden widths k^2 m), also the width-m controls' width"),
    Int("n_train", minimum=100, maximum=60_000, help="training images"),
    Int("n_val", minimum=100, maximum=59_900, help="validation images, held out of the training split"),
    Int("n_test", minimum=100, maximum=10_000, help="test images (the test split has 10,000)"),
    Int("batch_size", minimum=1),
    Int("epochs", minimum=1),
    Float("momentum", minimum=0.0, maximum=0.99, help="momentum of every SGD family"),
    Dict("lr_centers", keys=FAMILIES, value=Float("log2 lr"), partial=True,
         help="log2 of the centre of each family's grid at the shallowest depth"),
    Int("grid_half_width", minimum=1, help="sqrt(2) steps either side of the centre at the shallowest depth"),
    Int("deep_half_width", minimum=1, help="sqrt(2) steps either side of the transferred rate at deeper depths"),
    Int("max_widen", minimum=0, help="how often a grid whose optimum sits at an edge is widened"),
    List("seeds", item=Int("seed", minimum=0), min_length=5, distinct=True,
         help="each seed its own initialization and its own draw of the images"),
    Choice("schedule_family", choices=tuple(f for f in FAMILIES if f not in ADAM)),
    Int("schedule_depth", minimum=3),
    Float("schedule_c", positive=True, help="eta_t * lambda_t of the geometric schedule"),
    Choice("schedule_curvature", choices=CURVATURES),
    Int("schedule_every", minimum=1, help="re-estimate lambda_t every this many steps"),
    Int("schedule_probe", minimum=1, help="probe batch of the curvature: the first training images"),
    Int("record_every", minimum=1, help="record the mini-batch loss every this many steps"),
    List("long_families", item=Choice("family", choices=FAMILIES), min_length=2, distinct=True,
         help="families trained long_epochs at the shallowest depth at their tuned rate"),
    Int("long_epochs", minimum=1, help="epochs of the long runs (the epoch-budget check)"),
    Int("n_jobs", minimum=1),
    checks=(_checks,),
)


# ---------------------------------------------------------------------------- configurations

def steps_per_epoch(p) -> int:
    return p.n_train // p.batch_size


def spike_window(p) -> int:
    """Records in the moving average of the mini-batch loss (``SPIKE_WINDOW_STEPS`` steps)."""
    return max(1, SPIKE_WINDOW_STEPS // p.record_every)


def nup_widths(p, depth: int) -> list[int]:
    return layer_widths(p, "nup", depth)


def family_width(p, family: str) -> int:
    """The width argument of a family: ``nup_width`` (νP and the width-m controls), ``width``, or the width at
    νP's parameter count at the deepest depth."""
    if family in ("nup", "residual_m", "sp_adam_m"):
        return p.nup_width
    if family == "residual_matched":
        return matched_width(count_parameters(nup_widths(p, p.depths[-1])), p.depths[-1], N_INPUTS, N_CLASSES)
    return p.width


def family_options(p, family: str) -> dict:
    """The RunConfig fields that make a family."""
    width = family_width(p, family)
    if family == "nup":
        return dict(parameterization="nup", width=width, momentum=p.momentum)
    if family in ("residual", "ntk", "residual_m", "residual_matched"):
        return dict(parameterization="ntk" if family == "ntk" else "residual", width=width, momentum=p.momentum)
    he = dict(parameterization="mup", width=width, base_width=width)  # SP with He (EOC) init
    return {**he, "momentum": p.momentum} if family == "sp_sgd" else {**he, "optimizer": "adam"}


def family_config(p, family: str, depth: int, lr: float, seed: int, epochs: int | None = None,
                  **changes) -> RunConfig:
    """One run of the protocol: warmup + cosine at peak rate ``lr`` over ``epochs`` (default ``p.epochs``),
    evaluated once at the end; seed ``seed`` draws its own images (``data_seed = seed``)."""
    steps = (epochs or p.epochs) * steps_per_epoch(p)
    values = dict(activation="relu", depth=depth, lr=lr, seed=seed, data_seed=seed, loss="ce",
                  n_train=p.n_train, n_val=p.n_val, n_test=p.n_test, batch_size=p.batch_size, steps=steps,
                  diagnostic_every=steps, full_loss=False, record_every=p.record_every, schedule="warmup_cosine",
                  threads=RUN_THREADS, **family_options(p, family))
    values.update(changes)
    return RunConfig(**values)


def depth_factor(family: str, depth: int, shallowest: int) -> float:
    """The family's depth rule for the learning rate: ``shallowest/depth`` for NTK, 1 for the others."""
    return shallowest / depth if family == "ntk" else 1.0


def grid_lr(anchor: float, j: int) -> float:
    """The ``j``-th point of the ``sqrt(2)`` grid around ``2**anchor`` (``anchor``: a log2 rate)."""
    return float(2.0 ** (anchor + j / 2))


def layer_widths(p, family: str, depth: int) -> list[int]:
    config = family_config(p, family, depth, 1.0, 0)
    return list(config.build_parameterization().widths(N_INPUTS, N_CLASSES, depth, config.width))


def parameter_count(p, family: str, depth: int) -> int:
    return count_parameters(layer_widths(p, family, depth))


def cost_table(p) -> pd.DataFrame:
    """Per family and depth: the width argument, the first hidden width, the parameters and the FLOPs of one
    training step of ``batch_size`` images (``nup.core.cost``, from the layer shapes)."""
    rows = []
    for f in p.families:
        for d in p.depths:
            w = layer_widths(p, f, d)
            rows.append(dict(family=f, depth=d, width=family_width(p, f), first_hidden=w[1],
                             params=count_parameters(w), flops_per_step=training_flops(w, p.batch_size)))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- selection (pure functions)

def accuracy_table(runs: pd.DataFrame, family: str, depth: int, metric: str, stage: str = "transfer") -> pd.DataFrame:
    """``metric`` of one family at one depth: rows the grid index ``j``, columns the seeds; a diverged run
    counts at chance."""
    d = runs[(runs.stage == stage) & (runs.family == family) & (runs.depth == depth)]
    table = d.pivot_table(index="j", columns="seed", values=metric, aggfunc="first", dropna=False)
    return table.reindex(sorted(d.j.unique())).fillna(CHANCE)


def best_index(table: pd.DataFrame) -> int:
    """The grid index whose mean over seeds is highest (the first such on ties)."""
    means = table.mean(axis=1)
    return int(means.index[int(np.argmax(means.to_numpy()))])


def edge(js, best: int) -> str | None:
    """``"low"`` or ``"high"`` when ``best`` is the grid's first or last index, else None."""
    js = sorted(js)
    return "low" if best == js[0] else "high" if best == js[-1] else None


def regret_statistic(replicates: np.ndarray, transferred: int) -> float:
    """``replicates``: ``(seeds, 2, grid)`` of validation and test accuracy.  The mean test accuracy at the
    rate with the best mean validation accuracy minus at the transferred rate (row ``transferred``)."""
    val, test = replicates[:, 0, :].mean(0), replicates[:, 1, :].mean(0)
    return float(test[int(np.argmax(val))] - test[transferred])


def regret_replicates(runs: pd.DataFrame, family: str, depth: int) -> tuple[np.ndarray, int]:
    """The ``(seeds, 2, grid)`` array of ``regret_statistic`` and the column of the transferred rate (``j = 0``)."""
    val = accuracy_table(runs, family, depth, "val_accuracy")
    test = accuracy_table(runs, family, depth, "test_accuracy")  # reported at the rates chosen on validation
    return np.stack([val.to_numpy().T, test.to_numpy().T], axis=1), list(val.index).index(0)


def regret(runs: pd.DataFrame, family: str, depth: int) -> Estimate:
    """Transfer regret with its jackknife-t interval over paired seeds (the selection on validation is redone
    on each leave-one-out sample)."""
    replicates, transferred = regret_replicates(runs, family, depth)
    return jackknife_t(replicates, lambda r: regret_statistic(r, transferred), unit="paired seeds")


def gap_statistic(replicates: np.ndarray, families, family: str = "nup") -> float:
    """``replicates``: ``(seeds, 2, families)`` of validation and test accuracy on shared draws.  The mean test
    accuracy of the family with the best mean validation accuracy minus ``family``'s (0 when it is the best)."""
    val, test = replicates[:, 0, :].mean(0), replicates[:, 1, :].mean(0)
    return float(test[int(np.argmax(val))] - test[list(families).index(family)])


def smoothed(values, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` values (shorter at the start)."""
    return pd.Series(np.asarray(values, dtype=float)).rolling(window, min_periods=1).mean().to_numpy()


def spikes(values, window: int, rise: float) -> int:
    """Loss spikes of a mini-batch loss curve: ``count_spikes`` on its moving average."""
    return count_spikes(smoothed(values, window), rise)


# ---------------------------------------------------------------------------- runs

def _sweep(configs: list[RunConfig], n_jobs: int) -> pd.DataFrame:
    """``nup.sweep`` without loky's notice that an idle worker timed out between two sweeps (the sweep
    resubmits; a run that really failed raises in ``_summaries``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="A worker stopped while some jobs were given to the executor")
        return sweep(configs, n_jobs=n_jobs)


def _summaries(frame: pd.DataFrame, keys: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per run (keys + final metrics) and the recorded curves of a sweep over ``keys``."""
    failed = frame.drop_duplicates("run").error.dropna()
    if len(failed):
        first = keys[int(frame.run[failed.index[0]])]
        raise RuntimeError(f"{len(failed)} run(s) failed, e.g. {first}, with {failed.iloc[0]}")
    runs = pd.DataFrame(keys)
    for name in ("val_accuracy", "test_accuracy", "val_loss", "test_loss"):
        runs[name] = per_run(frame, name).value.to_numpy()
    runs["diverged"] = frame.drop_duplicates("run").diverged.to_numpy()
    rows = frame[frame.metric.isin(["batch_loss", "lr", "schedule_eta", "schedule_eigenvalue"])]
    curves = rows[["run", "step", "metric", "value"]].merge(runs[list(keys[0])].assign(run=range(len(keys))), on="run")
    return runs, curves.drop(columns="run")


def _tune(p, anchors: dict, half_width: int, desc: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every seed on a sqrt(2) grid around each ``anchors[(family, depth)]`` (a log2 rate), widened while the
    optimum sits at an edge.  Returns the runs and their curves."""
    grids = {key: list(range(-half_width, half_width + 1)) for key in anchors}
    runs, curves = [], []
    done = set()
    for round_ in progress(range(p.max_widen + 1), desc=desc):
        keys = [dict(stage="transfer", family=f, depth=d, j=j, lr=grid_lr(anchors[f, d], j), seed=s)
                for (f, d), js in grids.items() for j in js for s in p.seeds if (f, d, j, s) not in done]
        if keys:
            configs = [family_config(p, k["family"], k["depth"], k["lr"], k["seed"]) for k in keys]
            r, c = _summaries(_sweep(configs, p.n_jobs), keys)
            runs.append(r)
            curves.append(c)
            done.update((k["family"], k["depth"], k["j"], k["seed"]) for k in keys)
        if round_ == p.max_widen:
            break
        table = pd.concat(runs, ignore_index=True)
        widened = False
        for (f, d), js in grids.items():
            side = edge(js, best_index(accuracy_table(table, f, d, "val_accuracy")))
            if side == "low":
                grids[f, d] = list(range(js[0] - WIDEN_BY, js[0])) + js
            elif side == "high":
                grids[f, d] = js + list(range(js[-1] + 1, js[-1] + 1 + WIDEN_BY))
            widened |= side is not None
        if not widened:
            break
    return pd.concat(runs, ignore_index=True), pd.concat(curves, ignore_index=True)


def choices(runs: pd.DataFrame, families, depths) -> pd.DataFrame:
    """Per family and depth: the transferred rate (at the shallowest depth, ``depths[0]``, the rate tuned
    there), the rate tuned at that depth (best mean validation accuracy), whether that optimum still sits at
    the grid's edge, the validation accuracies at both, and, for reporting, the test accuracies at both (mean
    and std over seeds) with their difference, the regret."""
    rows = []
    for f in families:
        for d in depths:
            val = accuracy_table(runs, f, d, "val_accuracy")
            best = best_index(val)
            moved = 0 if d != depths[0] else best  # the grid index of the transferred rate
            lrs = runs[(runs.stage == "transfer") & (runs.family == f) & (runs.depth == d)].groupby("j").lr.first()
            test = accuracy_table(runs, f, d, "test_accuracy").loc[sorted({moved, best})]  # the chosen rates only
            rows.append(dict(family=f, depth=d, lr_transferred=lrs[moved], lr_tuned=lrs[best], tuned_step=best,
                             at_edge=edge(val.index, best) is not None,
                             val_transferred=val.loc[moved].mean(), val_tuned=val.loc[best].mean(),
                             test_transferred=test.loc[moved].mean(), test_transferred_std=test.loc[moved].std(),
                             test_tuned=test.loc[best].mean(), test_tuned_std=test.loc[best].std(),
                             regret=test.loc[best].mean() - test.loc[moved].mean()))
    return pd.DataFrame(rows)


def _tuned_lr(chosen: pd.DataFrame, family: str, depth: int) -> float:
    return float(chosen[(chosen.family == family) & (chosen.depth == depth)].lr_tuned.iloc[0])


def schedule_config(p, seed: int, lr: float = 1.0, annealed: bool = False) -> RunConfig:
    """A run of the geometric schedule (``lr`` only sets the per-layer ratios; ``annealed``: times a cosine)."""
    options = dict(c=p.schedule_c, curvature=p.schedule_curvature, every=p.schedule_every,
                   probe_size=p.schedule_probe, tol=SCHEDULE_TOL, max_iter=SCHEDULE_MAX_ITER)
    if annealed:
        options["anneal_steps"] = p.epochs * steps_per_epoch(p)
    return family_config(p, p.schedule_family, p.schedule_depth, lr, seed, schedule="geometric",
                         schedule_options=options, momentum=SCHEDULE_MOMENTUM)


def _schedule_runs(p, chosen: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    f, d = p.schedule_family, p.schedule_depth
    lr = _tuned_lr(chosen, f, d)
    keys = [dict(stage=stage, family=f, depth=d, j=0, lr=lr, seed=s) for stage in SCHEDULE_VARIANTS.values()
            for s in p.seeds]
    configs = [schedule_config(p, k["seed"], lr, annealed=k["stage"] == "schedule_annealed") for k in keys]
    return _summaries(_sweep(configs, p.n_jobs), keys)


def _long_runs(p, chosen: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``long_families`` at the shallowest depth and their tuned rate, ``long_epochs`` epochs, every seed."""
    d = p.depths[0]
    keys = [dict(stage="long", family=f, depth=d, j=0, lr=_tuned_lr(chosen, f, d), seed=s)
            for f in p.long_families for s in p.seeds]
    configs = [family_config(p, k["family"], d, k["lr"], k["seed"], epochs=p.long_epochs) for k in keys]
    return _summaries(_sweep(configs, p.n_jobs), keys)


# ---------------------------------------------------------------------------- the experiment

def run_experiment(p) -> dict:
    """Tune at the shallowest depth, transfer and re-tune at every deeper depth, run the geometric schedule
    and the long runs.  Frames: ``runs`` (one row per run), ``curves`` (mini-batch loss, rate and the
    schedule's eta and lambda over steps), ``choices`` (per family and depth), ``costs`` (counted),
    ``schedule`` and ``long``."""
    shallow = p.depths[0]
    anchors = {(f, shallow): p.lr_centers[f] for f in p.families}
    runs, curves = _tune(p, anchors, p.grid_half_width, desc=f"tuning at depth {shallow}")
    best = choices(runs, p.families, (shallow,))
    tuned = {f: p.lr_centers[f] + j / 2 for f, j in zip(best.family, best.tuned_step)}  # log2 of the tuned rates
    anchors = {(f, d): tuned[f] + math.log2(depth_factor(f, d, shallow)) for f in p.families for d in p.depths[1:]}
    deep_runs, deep_curves = _tune(p, anchors, p.deep_half_width, desc="transfer and re-tuning at depth")
    runs = pd.concat([runs, deep_runs], ignore_index=True)
    curves = [curves, deep_curves]
    chosen = choices(runs, p.families, p.depths)
    schedule_runs, schedule_curves = _schedule_runs(p, chosen)
    long_runs, long_curves = _long_runs(p, chosen)
    runs = pd.concat([runs, schedule_runs, long_runs], ignore_index=True)
    curves = pd.concat([*curves, schedule_curves, long_curves], ignore_index=True)
    return {"runs": runs, "curves": curves, "choices": chosen, "costs": cost_table(p),
            "schedule": schedule_table(runs, curves, chosen, p), "long": long_table(runs, p)}


def schedule_table(runs: pd.DataFrame, curves: pd.DataFrame, chosen: pd.DataFrame, p) -> pd.DataFrame:
    """Per seed: test accuracy (reported) and loss spikes of both variants of the geometric schedule and of
    the tuned warmup+cosine."""
    f, d = p.schedule_family, p.schedule_depth
    tuned_j = int(chosen[(chosen.family == f) & (chosen.depth == d)].tuned_step.iloc[0])
    rows = []
    for method, stage, j in (*((m, stage, 0) for m, stage in SCHEDULE_VARIANTS.items()),
                             ("warmup_cosine", "transfer", tuned_j)):
        sel = runs[(runs.stage == stage) & (runs.family == f) & (runs.depth == d) & (runs.j == j)]
        for r in sel.itertuples():
            loss = curves[(curves.stage == stage) & (curves.family == f) & (curves.depth == d) & (curves.j == j)
                          & (curves.seed == r.seed) & (curves.metric == "batch_loss")].sort_values("step").value
            accuracy = CHANCE if r.diverged else r.test_accuracy
            rows.append(dict(method=method, seed=r.seed, lr=r.lr, test_accuracy=accuracy, diverged=r.diverged,
                             spikes=spikes(loss, spike_window(p), SPIKE_RISE)))
    return pd.DataFrame(rows)


def long_table(runs: pd.DataFrame, p) -> pd.DataFrame:
    """Per long family and seed: validation accuracy (the ranking) and test accuracy (reported) after
    ``epochs`` and after ``long_epochs`` epochs at the rate tuned at the shallowest depth."""
    d = p.depths[0]
    tuned = choices(runs, p.long_families, (d,)).set_index("family").tuned_step
    rows = []
    for f in p.long_families:
        for stage, j, epochs in (("transfer", int(tuned[f]), p.epochs), ("long", 0, p.long_epochs)):
            sel = runs[(runs.stage == stage) & (runs.family == f) & (runs.depth == d) & (runs.j == j)]
            for r in sel.itertuples():
                rows.append(dict(family=f, epochs=epochs, seed=r.seed, lr=r.lr,
                                 val_accuracy=CHANCE if r.diverged else r.val_accuracy,
                                 test_accuracy=CHANCE if r.diverged else r.test_accuracy))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- tables for the notebook

def summary(frames: dict) -> pd.DataFrame:
    """Per family and depth: first hidden width, parameters, FLOPs per step, both rates, validation accuracy at
    the tuned rate, test accuracy at both rates, and the regret."""
    table = frames["choices"].merge(frames["costs"], on=["family", "depth"])
    table["family"] = table.family.map(SHORT)
    columns = ["family", "depth", "first_hidden", "params", "flops_per_step", "lr_transferred", "lr_tuned",
               "at_edge", "val_tuned", "test_transferred", "test_tuned", "regret"]
    return table[columns]


def best_family(frames: dict) -> tuple[str, int, np.ndarray, np.ndarray]:
    """The family and depth with the highest mean validation accuracy at its tuned rate, and that
    configuration's per-seed validation and (reported) test accuracies."""
    chosen = frames["choices"]
    row = chosen.loc[chosen.val_tuned.idxmax()]
    runs = frames["runs"]
    sel = runs[(runs.stage == "transfer") & (runs.family == row.family) & (runs.depth == row.depth)
               & (runs.j == row.tuned_step)].sort_values("seed")
    return row.family, int(row.depth), sel.val_accuracy.fillna(CHANCE).to_numpy(), \
        sel.test_accuracy.fillna(CHANCE).to_numpy()


def training_note(frames: dict) -> str:
    family, depth, val, test = best_family(frames)
    head = (f"best family (on validation): {SHORT[family]} at depth {depth}, mean validation accuracy "
            f"{np.mean(val):.4f} at its tuned rate (test: {np.mean(test):.4f}). ")
    if np.mean(val) >= TRAINED_ACCURACY:
        return head + (f"That is at least {TRAINED_ACCURACY:.0%} (an MLP reaches about 88% on Fashion-MNIST): "
                       "the families are compared in a regime where they learn.")
    return head + (f"That is below {TRAINED_ACCURACY:.0%}, far from the ~88% an MLP reaches: the setup is "
                   "UNDERTRAINED, so the verdicts that compare accuracies are left undecided.")


# ---------------------------------------------------------------------------- verdicts

def _gated(verdict: Verdict, trained: bool | None) -> Verdict:
    """The verdict, or the same numbers marked undecided when the setup is not shown to be trained."""
    if trained:
        return verdict
    return Verdict(verdict.statement, None, verdict.estimate, verdict.low, verdict.high,
                   f"{verdict.threshold} (not decided: undertrained)", verdict.n, verdict.unit)


def _transferred(runs: pd.DataFrame, families, depth: int) -> np.ndarray:
    """``(seeds, 2, families)``: validation and test accuracy at each family's transferred rate."""
    return np.stack([np.stack([accuracy_table(runs, f, depth, m).loc[0].to_numpy() for f in families], axis=1)
                     for m in ("val_accuracy", "test_accuracy")], axis=1)


def flop_ratio(p) -> float:
    """νP's FLOPs per training step over the residual network's at the deepest depth (exact, counted)."""
    d = p.depths[-1]
    return (training_flops(layer_widths(p, "nup", d), p.batch_size)
            / training_flops(layer_widths(p, "residual", d), p.batch_size))


def long_ranking(long: pd.DataFrame, p) -> tuple[str, str, Estimate]:
    """The long family ahead on mean validation accuracy after ``epochs`` epochs, the one behind it, and the
    leader's validation lead after ``long_epochs`` epochs (paired seeds)."""
    short = long[long.epochs == p.epochs].groupby("family").val_accuracy.mean()
    ranked = [f for f in short.sort_values(ascending=False, kind="stable").index]
    leader, runner = ranked[0], ranked[1]
    late = long[long.epochs == p.long_epochs].pivot_table(index="seed", columns="family", values="val_accuracy")
    return leader, runner, mean_interval((late[leader] - late[runner]).to_numpy(), unit="paired seeds")


def claims(frames: dict, p) -> list[Verdict]:
    runs, deepest = frames["runs"], p.depths[-1]
    _, _, best_val, _ = best_family(frames)
    trained = compare("the best family (on validation) reaches at least {threshold} validation accuracy (else the "
                      "setup is undertrained and accuracies are not compared)", mean_interval(best_val), None, ">=",
                      TRAINED_ACCURACY)
    verdicts = [trained]
    for f in p.families:
        verdicts.append(_gated(compare(f"for {LABELS[f]}, the rate tuned at the shallowest depth loses at most "
                                       "{threshold} test accuracy at the deepest depth (rate re-tuned on validation)",
                                       regret(runs, f, deepest), None, "<=", MAX_REGRET), trained.holds))
    families = list(p.families)
    replicates = _transferred(runs, families, deepest)
    gap = jackknife_t(replicates, lambda r: gap_statistic(r, families), unit="paired seeds")
    verdicts.append(_gated(compare("νP's test accuracy at the deepest depth (each family at its transferred rate) is at "
                                   "most {threshold} below the family best on validation", gap, None, "<=", MAX_GAP),
                           trained.holds))
    for control in (c for c in CONTROLS if c in families):
        pair = replicates[:, 1, [families.index(control), families.index("nup")]]
        lead = mean_interval(pair[:, 0] - pair[:, 1], unit="paired seeds")
        verdicts.append(_gated(compare(f"νP's test accuracy at the deepest depth (transferred rates) is at most "
                                       f"{{threshold}} below that of {LABELS[control]}", lead, None, "<=", MAX_GAP),
                               trained.holds))
    verdicts.append(compare("νP's FLOPs per training step at the deepest depth are within {threshold}x of the "
                            "residual network's (counted from the layer shapes)", flop_ratio(p), None, "<=",
                            MAX_FLOP_RATIO))
    leader, runner, lead = long_ranking(frames["long"], p)
    verdicts.append(_gated(compare("trained long_epochs instead of epochs at the shallowest depth (tuned rate), the long "
                                   "family ahead on validation after epochs stays ahead on validation by more than "
                                   "{threshold}", lead, None, ">", 0.0), trained.holds))
    sched = frames["schedule"].pivot_table(index="seed", columns="method", values="test_accuracy")
    names = {"geometric": "the geometric schedule (mini-batches, curvature on a probe batch)",
             "geometric_annealed": "the geometric schedule annealed by a cosine (the mini-batch option)"}
    for method, name in names.items():
        gain = mean_interval((sched[method] - sched["warmup_cosine"]).to_numpy(), unit="paired seeds")
        verdicts.append(_gated(compare(f"{name} beats a tuned warmup+cosine in test accuracy by at least "
                                       "{threshold}", gain, None, ">=", MIN_SCHEDULE_GAIN), trained.holds))
    return verdicts

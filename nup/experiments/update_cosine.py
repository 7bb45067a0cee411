"""Notebook 04, claim 6: the cosine of the new and the cumulative update, and feature learning.

The abstract: "feature learning is explained by the cosine of the new and the cumulative parameter
update", ``cos_t = cos(Delta_t, D_t)`` with ``Delta_t = theta_{t+1} - theta_t`` and
``D_t = theta_t - theta_0``.  Across learning rates the cosine mostly tracks the step size (large
steps oscillate at the Edge of Stability, cosine near 0, and change the features most; small-step
GD follows a smooth path, cosine near 1), so a correlation across learning rates says little.  This
module tests the hypothesis itself:

* **Fixed step length.**  νP with the per-layer normalized update (every layer moves by exactly its
  learning rate per step), at each (learning rate, width) cell, with what changes the direction's
  consistency but not the step length varied: the batch size and label noise (a fraction of the
  training labels moved to another class, ``RunConfig.label_noise``), in a full factorial.
* **Partial rank correlation** of a run's mean cosine with its feature learning (NTK change, hidden
  preactivation change, gain in kernel-target alignment) over these fixed-step runs, controlling for
  learning rate and width (one indicator per cell: ``partial_rank_correlation``).
* **Momentum** is applied after the normalization (``nup.core.optim``), so it changes the step length
  (up to ``lr/(1-beta)``, less when the directions disagree): its runs train at ``lr (1 - beta)`` and
  enter a second, reported but unjudged, partial correlation over every normalized run that also
  controls for the log of the measured mean step length (``partial_table``).
* **Multi-step cosines** ``cos(theta_{t+k} - theta_t, theta_t - theta_0)`` for k = 2 and 10
  (the ``"update_lags"`` diagnostic), which filter the period-2 oscillation of the Edge of
  Stability, and **per-layer** cosines.
* **Within runs**: per window of ``ntk_every`` steps, the mean cosine against the growth of the NTK
  change, raw (both decay with t, so they share a time trend) and after removing the trend by first
  differences (``within_run_associations``).
* **The lazy end**: the NTK parameterization with plain (S)GD, widest network, smallest learning rate:
  small-step GD has a cosine near 1 (the earlier "lazy runs have a cosine near 0" was our reading, and
  is wrong for GD), and mini-batch noise lowers that cosine without changing the features.
* **The growth law** ``|D_{t+1}|^2 = |D_t|^2 + |Delta_t|^2 + 2 |Delta_t| |D_t| cos_t`` is an identity:
  with fixed-length steps a cosine held away from 0 gives ``|D_t| ~ t`` and a cosine near 0 gives
  ``~ sqrt(t)``.  It is shown (``reconstruct_distance``, ``constant_cosine_exponent``), not judged.

* **The intervention** (``run_intervention``): the correlations above cannot say whether the cosine
  *explains* feature learning, because the knobs that move it also change what the gradient carries.
  So the cosine is *set*: νP at one width (``steer_width``) and rate (``steer_lr``), each layer's step
  of fixed length ``steer_lr`` but turned towards (``beta > 0``) or away from (``beta < 0``) its
  cumulative update, ``u = -G_k/|G_k| + beta D_k/|D_k|`` (``NormalizedSGD``'s ``steer_beta``,
  ``nup.core.optim``, "Steering"), over ``steer_betas``; the control turns the direction by the same
  angle within the complement of ``D_k`` (``steer_mode="orthogonal_random"``), leaving each step's
  cosine with ``D_k`` as it was.  Every seed has its own data draw (``data_seed = seed``).  Verdicts:
  the manipulation moves the mean cosine (paired by seed against ``beta = 0``); the features follow the
  realized cosine across the steered arms (a rank correlation per seed, averaged), raw and per unit
  distance travelled from init; and the control leaves them unchanged (a paired ratio to ``beta = 0``).
  These verdicts use jackknife-t intervals over seeds (``nup.analysis.stats``).

The correlational verdicts are decided by 95% jackknife-t intervals over seeds (the unit: a seed, its
runs left out together): a (partial) rank correlation pooled over the runs has the leave-one-seed-out
interval of its Fisher z (``nup.analysis.ranks.correlation_by_groups``, coverage checked on clustered data
at 5 seeds in ``tests/test_ranks.py``); the within-run association is the median over a seed's runs,
averaged over seeds with Student's t interval; the lazy end's mean cosine, its drop (paired by seed) and
the NTK ratio (``ratio_of_means``, paired by seed) as in ``nup.analysis.stats``.  Every verdict prints
its n.  The thresholds are the constants below, fixed before the full-size run.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from nup.analysis.ranks import (average_ranks, control_residuals, correlation_by_groups, partial_rank_correlation,
                                spearman)
from nup.analysis.stats import Estimate, mean_interval, ratio_of_means
from nup.analysis.verdicts import Verdict, compare, within
from nup.experiments import RUN_THREADS
from nup.experiments.schema import MIN_SEEDS, Float, Int, List, Schema
from nup.progress import progress

NOTEBOOK = "04_update_cosine"


def _check_sizes(p) -> None:
    if p.steps < 4 * p.ntk_every:
        raise ValueError(f"steps={p.steps} is not allowed; steps must be at least 4 * ntk_every = {4 * p.ntk_every}")
    for name in ("probe_size", "plain_batch_size"):
        if getattr(p, name) > p.n_train:
            raise ValueError(f"{name}={getattr(p, name)} is not allowed; {name} must be <= n_train = {p.n_train}")
    for b in p.batch_sizes:
        if b > p.n_train:
            raise ValueError(f"batch_sizes={list(p.batch_sizes)} is not allowed; each must be <= n_train = {p.n_train}")
    betas = list(p.steer_betas)
    if 0 not in betas or not any(b > 0 for b in betas) or not any(b < 0 for b in betas):
        raise ValueError(f"steer_betas={betas} is not allowed; steer_betas must contain 0 (the unsteered arm), "
                         "a negative and a positive beta")


SCHEMA = Schema(
    Int("depth", minimum=2, help="number of layers (weight matrices)"),
    Int("steps", minimum=40, help="T, training steps"),
    Int("n_train", minimum=16, help="Fashion-MNIST training subset (class-balanced)"),
    Int("probe_size", minimum=4, help="probe batch for the NTK and the preactivations"),
    Int("ntk_every", minimum=2, help="NTK and preactivations every ntk_every steps: the windows"),
    List("lrs", item=Float("lr", positive=True), increasing=True, min_length=2,
         help="νP learning rates: each layer's step length per step"),
    List("widths", item=Int("width", minimum=2), increasing=True, help="νP base widths m (hidden widths k^2 m)"),
    List("batch_sizes", item=Int("batch_size", minimum=0), distinct=True, help="0: full batch"),
    List("label_noises", item=Float("label_noise", minimum=0.0, maximum=0.9), distinct=True,
         help="fraction of training labels moved to another class"),
    List("momenta", item=Float("momentum", positive=True, maximum=0.99), distinct=True,
         help="full batch, no label noise, learning rate lr (1 - momentum)"),
    Int("plain_width", minimum=2, help="the lazy reference: NTK parameterization, plain (S)GD"),
    List("plain_lrs", item=Float("plain_lr", positive=True), increasing=True, min_length=2),
    Int("plain_batch_size", minimum=1, help="the mini-batch of the plain SGD runs"),
    Float("steer_lr", positive=True, help="the intervention: νP per-layer step length"),
    Int("steer_width", minimum=2, help="the intervention: νP base width m"),
    List("steer_betas", item=Float("steer_beta", minimum=-10.0, maximum=10.0), increasing=True, min_length=3,
         help="the intervention: steering strengths, with 0, a negative and a positive one"),
    List("seeds", item=Int("seed", minimum=0), distinct=True, min_length=MIN_SEEDS,
         help=f"initialization seeds; at least {MIN_SEEDS} (interval coverage)"),
    Int("n_jobs", minimum=1),
    checks=(_check_sizes,),
)

# Thresholds, fixed before the full-size run.
STRONG = 0.5                # "goes with": a (partial) rank correlation above 0.5, as in the earlier notebook
FALLS = -0.5                # "falls with the learning rate": a partial rank correlation below -0.5
LAZY_COSINE = 0.5           # small-step GD: mean cosine above 0.5 (near 1, not near 0)
NOISE_DROP = 0.2            # at the lazy end, mini-batches lower the mean cosine by more than 0.2 ...
LAZY_NTK_TOLERANCE = 0.10   # ... while the NTK change stays within 10% (ratio SGD/GD)
LAGS = (1, 2, 10)           # cos(theta_{t+k} - theta_t, theta_t - theta_0); k = 1 is the abstract's cosine
MEASURES = {"ntk_change": "NTK change", "preact_change": "hidden preactivation change",
            "alignment_gain": "gain in kernel-target alignment"}
NORMALIZED, PLAIN = "νP, normalized", "NTK, plain (S)GD"
RECORDED_DIAGNOSTICS = ("updates_every_step", "update_lags", "preactivations", "ntk")
CHUNK = 48                  # runs per sweep call: each chunk is summarized and its raw rows dropped
# The intervention (thresholds fixed before the full-size run):
COSINE_SHIFT = 0.1          # (a) steering moves the mean cosine by more than 0.1 from the unsteered run's
FOLLOW = 0.5                # (b) features follow the set cosine: rank correlation over the arms above 0.5
CONTROL_TOLERANCE = 0.1     # (c) the control leaves a feature measure within 10% of the unsteered run's
CONTROL_COSINE = 0.05       # ... and the mean cosine within 0.05 of it
STEER, CONTROL = "cumulative", "orthogonal_random"  # the two arms (RunConfig.steer_mode)
PER_DISTANCE = {m: f"{m}_per_distance" for m in MEASURES}  # a measure divided by |D_T|, the distance from init


# ---------------------------------------------------------------------------------------- runs

def knob_label(batch_size: int, label_noise: float, momentum: float) -> str:
    """``"GD"``, ``"SGD b=8"``, ``"GD, noise 0.5"``, ``"GD, momentum 0.9"`` ..."""
    label = "GD" if batch_size == 0 else f"SGD b={batch_size}"
    if label_noise:
        label += f", noise {label_noise:g}"
    if momentum:
        label += f", momentum {momentum:g}"
    return label


def run_table(p) -> tuple[list, pd.DataFrame]:
    """Every run's ``RunConfig`` and its key row (family, width, lr, batch_size (0: full batch),
    label_noise, momentum, knob, seed).  ``lr`` is the nominal rate; momentum runs train at
    ``lr (1 - momentum)``."""
    from nup.training.config import RunConfig

    common = dict(depth=p.depth, steps=p.steps, n_train=p.n_train, probe_size=p.probe_size, activation="relu",
                  diagnostics=RECORDED_DIAGNOSTICS, diagnostic_every=p.ntk_every, threads=RUN_THREADS)
    knobs = [(b, noise, 0.0) for b in p.batch_sizes for noise in p.label_noises] + [(0, 0.0, m) for m in p.momenta]
    configs, keys = [], []
    for width in p.widths:
        for lr in p.lrs:
            for b, noise, m in knobs:
                for seed in p.seeds:
                    configs.append(RunConfig(parameterization="nup", normalize="per_layer", width=width,
                                             lr=lr * (1 - m), momentum=m, batch_size=b or None, label_noise=noise,
                                             seed=seed, **common))
                    keys.append((NORMALIZED, width, lr, b, noise, m, knob_label(b, noise, m), seed))
    for lr in p.plain_lrs:
        for b in (0, p.plain_batch_size):
            for seed in p.seeds:
                configs.append(RunConfig(parameterization="ntk", width=p.plain_width, lr=lr, batch_size=b or None,
                                         seed=seed, **common))
                keys.append((PLAIN, p.plain_width, lr, b, 0.0, 0.0, knob_label(b, 0.0, 0.0), seed))
    table = pd.DataFrame(keys, columns=["family", "width", "lr", "batch_size", "label_noise", "momentum", "knob",
                                        "seed"])
    return configs, table


def run_experiment(p) -> dict:
    """Train every run (through the run cache, ``CHUNK`` at a time) and summarize it: frames ``runs``
    (one row per run), ``layers`` (per run and layer), ``windows`` (per run and window of
    ``ntk_every`` steps) and ``series`` (per run and step: the global cosines, step length, distance)."""
    from nup.training.sweep import sweep

    configs, table = run_table(p)
    parts = []
    chunks = range(0, len(configs), CHUNK)
    for start in progress(chunks, desc=f"{len(configs)} runs, {CHUNK} per chunk"):
        df = sweep(configs[start:start + CHUNK], n_jobs=p.n_jobs, progress=False)
        df["run"] += start
        parts.append(summarize(df, p.depth, p.ntk_every))
    frames = {name: pd.concat([part[name] for part in parts], ignore_index=True) for name in parts[0]}
    frames["runs"] = table.join(frames["runs"].set_index("run")).rename_axis("run").reset_index()
    frames["intervention"] = run_intervention(p)
    return frames


def intervention_table(p) -> tuple[list, pd.DataFrame]:
    """The intervention's ``RunConfig``s and key rows (arm, beta, seed): the steered arm at every beta
    of ``steer_betas`` (beta = 0 is the unsteered run) and the control at every non-zero beta, each seed
    on its own data draw."""
    from nup.training.config import RunConfig

    common = dict(parameterization="nup", normalize="per_layer", width=p.steer_width, lr=p.steer_lr, depth=p.depth,
                  steps=p.steps, n_train=p.n_train, probe_size=p.probe_size, activation="relu",
                  diagnostics=RECORDED_DIAGNOSTICS, diagnostic_every=p.ntk_every, threads=RUN_THREADS)
    arms = [(STEER, float(b)) for b in p.steer_betas] + [(CONTROL, float(b)) for b in p.steer_betas if b != 0]
    configs, keys = [], []
    for arm, beta in arms:
        for seed in p.seeds:
            configs.append(RunConfig(steer_beta=beta, steer_mode=arm, seed=seed, data_seed=seed, **common))
            keys.append((arm, beta, seed))
    return configs, pd.DataFrame(keys, columns=["arm", "beta", "seed"])


def run_intervention(p) -> pd.DataFrame:
    """One row per intervention run: its keys (``intervention_table``), the run summary of ``summarize``
    and each measure per unit distance from init (``PER_DISTANCE``)."""
    from nup.training.sweep import sweep

    configs, table = intervention_table(p)
    df = sweep(configs, n_jobs=p.n_jobs, progress=False)
    runs = table.join(summarize(df, p.depth, p.ntk_every)["runs"].set_index("run")).rename_axis("run")
    return with_per_distance(runs.reset_index())


def with_per_distance(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with each measure divided by the distance from init ``|D_T|`` (NaN at distance 0)."""
    distance = runs["distance"].where(runs["distance"] > 0)
    return runs.assign(**{column: runs[m] / distance for m, column in PER_DISTANCE.items()})


def summarize(df: pd.DataFrame, depth: int, ntk_every: int) -> dict:
    """The per-run summaries of a sweep frame (see ``run_experiment``).  A run's cosine is the mean over its
    steps; its feature learning is read at the last step: ``ntk_change``, ``preact_change`` (the mean
    over the hidden layers 1..depth-1) and ``alignment_gain`` (last minus first kernel alignment).
    ``collapsed``: the kernel alignment is undefined at the end (every ReLU dead, the NTK 0), or the run
    failed (an error instead of rows)."""
    per_run = df.groupby("run")[["diverged"]].first()
    lag_metrics = ["cos_cumulative"] + [f"cos_cumulative_k{k}" for k in LAGS if k > 1]
    every = df[(df.layer == 0) & df.metric.isin([*lag_metrics, "update_norm", "distance_from_init"])]
    series = every.pivot(index=["run", "step"], columns="metric", values="value").reset_index()
    series = series.reindex(columns=["run", "step", *lag_metrics, "update_norm", "distance_from_init"])
    series = series.rename(columns={"cos_cumulative": "cos", "distance_from_init": "distance",
                                    **{f"cos_cumulative_k{k}": f"cos_k{k}" for k in LAGS if k > 1}})
    means = series.groupby("run")[[cos_column(k) for k in LAGS] + ["update_norm"]].mean()
    means.columns = [f"mean_{c}" for c in means.columns[:-1]] + ["mean_step"]
    diag = df[df.metric.isin(["ntk_change", "kernel_alignment"]) & (df.layer == 0)]
    diag = diag.pivot(index=["run", "step"], columns="metric", values="value").reset_index()
    last_step = diag.groupby("run").step.transform("max")
    first = diag[diag.step == 0].set_index("run")
    last = diag[diag.step == last_step].set_index("run")
    pre = df[(df.metric == "preact_change") & (df.layer >= 1)]
    pre = pre[pre.step == pre.groupby("run").step.transform("max")]
    hidden = pre[pre.layer < depth].groupby("run").value.mean()
    loss = df[(df.metric == "loss") & (df.layer == 0)]
    runs = per_run.join(means).assign(
        ntk_change=last["ntk_change"], preact_change=hidden,
        alignment_gain=last["kernel_alignment"] - first["kernel_alignment"],
        collapsed=last["kernel_alignment"].isna().reindex(per_run.index, fill_value=True),
        final_loss=loss.groupby("run").value.last(),
        distance=series.groupby("run").distance.last(),
        exponent=series.groupby("run")[["step", "distance"]].apply(lambda s: growth_exponent(s.step, s.distance,
                                                                                              ntk_every)))
    runs["diverged"] = runs["diverged"].astype(bool)
    return {"runs": runs.reset_index(), "layers": _layers(df, pre), "windows": _windows(series, diag),
            "series": series[["run", "step", *(cos_column(k) for k in LAGS), "update_norm", "distance"]]}


def cos_column(k: int) -> str:
    """The column of the ``k``-step cosine in the ``series`` frame (``"mean_" + ...`` in ``runs``)."""
    return "cos" if k == 1 else f"cos_k{k}"


def _layers(df: pd.DataFrame, pre_last: pd.DataFrame) -> pd.DataFrame:
    """Per run and layer: the mean of each lag's cosine over the steps, and the last preactivation change."""
    metrics = ["cos_cumulative"] + [f"cos_cumulative_k{k}" for k in LAGS if k > 1]
    cos = df[df.metric.isin(metrics) & (df.layer >= 1)]
    table = cos.groupby(["run", "layer", "metric"]).value.mean().unstack("metric").reindex(columns=metrics)
    table = table.rename(columns={"cos_cumulative": "mean_cos",
                                  **{f"cos_cumulative_k{k}": f"mean_cos_k{k}" for k in LAGS if k > 1}})
    table["preact_change"] = pre_last.set_index(["run", "layer"]).value
    return table.reset_index()


def _windows(series: pd.DataFrame, diag: pd.DataFrame) -> pd.DataFrame:
    """Per run and window ``[t_w, t_{w+1})`` between diagnostic steps: the mean cosine over its steps and
    the growth ``ntk_change(t_{w+1}) - ntk_change(t_w)``."""
    rows = []
    for run, d in diag.groupby("run"):
        starts = d.step.to_numpy()
        ntk = d.ntk_change.to_numpy()
        s = series[series.run == run]
        window = np.searchsorted(starts, s.step.to_numpy(), side="right") - 1
        cos = pd.Series(s.cos.to_numpy()).groupby(window).mean()
        for w in range(len(starts) - 1):
            rows.append((run, int(starts[w]), float(cos.get(w, math.nan)), float(ntk[w + 1] - ntk[w])))
    return pd.DataFrame(rows, columns=["run", "start", "cos", "ntk_growth"])


# ------------------------------------------------------------------------------------ statistics

def growth_exponent(t, distance, fit_from: int) -> float:
    """Exponent ``p`` of ``|D_t| ~ t^p``, least squares on a log-log scale over ``t >= fit_from``."""
    t, d = np.asarray(t, dtype=float), np.asarray(distance, dtype=float)
    keep = (t >= fit_from) & (d > 0) & np.isfinite(d)
    if keep.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(t[keep]), np.log(d[keep]), 1)[0])


def constant_cosine_exponent(c: float, steps: int, fit_from: int) -> float:
    """The exponent ``growth_exponent`` finds for unit steps at a cosine held at ``c``: the identity
    ``d_{t+1}^2 = d_t^2 + 1 + 2 c d_t`` from ``d_0 = 0``."""
    d = np.zeros(steps)
    for t in range(steps - 1):
        d[t + 1] = math.sqrt(max(d[t] ** 2 + 1 + 2 * d[t] * c, 0.0))
    return growth_exponent(np.arange(steps), d, fit_from)


def reconstruct_distance(update_norm, cos) -> np.ndarray:
    """``|D_t|`` rebuilt from the steps' lengths and cosines alone by the identity
    ``|D_{t+1}|^2 = |D_t|^2 + |Delta_t|^2 + 2 |Delta_t| |D_t| cos_t`` (``cos_0`` is undefined and unused)."""
    u, c = np.asarray(update_norm, dtype=float), np.asarray(cos, dtype=float)
    d = np.zeros(len(u) + 1)
    for t in range(len(u)):
        cross = 0.0 if t == 0 else 2 * u[t] * d[t] * c[t]
        d[t + 1] = math.sqrt(max(d[t] ** 2 + u[t] ** 2 + cross, 0.0))
    return d


CONTROLS = ("cell", "cell+step")


def _controls(frame: pd.DataFrame, controls: str):
    """``"cell"``: one indicator per (lr, width) cell; ``"cell+step"``: and the log mean step length."""
    if controls not in CONTROLS:
        raise ValueError(f"controls={controls!r} is not allowed; one of {', '.join(map(repr, CONTROLS))}")
    cells = np.unique(np.column_stack([frame["lr"].to_numpy(float), frame["width"].to_numpy(float)]), axis=0,
                      return_inverse=True)[1].ravel()
    covariates = np.log(frame["mean_step"].to_numpy(float)) if controls == "cell+step" else None
    return cells, covariates


def partial_residuals(frame: pd.DataFrame, x: str, y: str, controls: str = "cell") -> tuple[np.ndarray, np.ndarray]:
    """The rank residuals whose correlation ``fixed_step_correlation`` is (for plotting)."""
    frame = frame.dropna(subset=[x, y, "mean_step"])
    cells, covariates = _controls(frame, controls)
    values = (average_ranks(frame[x].to_numpy(float)), average_ranks(frame[y].to_numpy(float)))
    return tuple(control_residuals(values, cells, covariates))


def fixed_step_statistic(frame: pd.DataFrame, x: str, y: str, controls: str = "cell"):
    """``(rows, statistic)``: the rows of ``frame`` with ``x``, ``y`` and the step length, and
    ``statistic(idx)``, the partial rank correlation of ``x`` and ``y`` over the rows ``idx`` of them,
    controlling for the (lr, width) cell and (``controls="cell+step"``) the log mean step length."""
    frame = frame.dropna(subset=[x, y, "mean_step"])
    cells, covariates = _controls(frame, controls)
    xv, yv = frame[x].to_numpy(float), frame[y].to_numpy(float)

    def statistic(idx):
        return partial_rank_correlation(xv[idx], yv[idx], cells[idx], None if covariates is None else covariates[idx])

    return frame, statistic


def fixed_step_correlation(frame: pd.DataFrame, x: str, y: str, controls: str = "cell") -> float:
    """``partial_rank_correlation`` of columns ``x`` and ``y`` controlling for the (lr, width) cell and
    (``controls="cell+step"``) the log mean step length; rows with a NaN in ``x`` or ``y`` are dropped."""
    rows, statistic = fixed_step_statistic(frame, x, y, controls)
    return statistic(np.arange(len(rows)))


def lr_statistic(frame: pd.DataFrame, x: str = "mean_cos"):
    """``(rows, statistic)`` as ``fixed_step_statistic`` for the rank correlation of ``x`` with the
    learning rate, controlling for width and knob (one indicator per combination)."""
    frame = frame.dropna(subset=[x])
    cells = (frame["width"].astype(str) + "/" + frame["knob"]).to_numpy()
    xv, lr = frame[x].to_numpy(float), frame["lr"].to_numpy(float)
    return frame, lambda idx: partial_rank_correlation(xv[idx], lr[idx], cells[idx])


def plain_statistic(frame: pd.DataFrame, x: str, y: str):
    """``(rows, statistic)``: the rank correlation of ``x`` and ``y`` without controls."""
    frame = frame.dropna(subset=[x, y])
    xv, yv = frame[x].to_numpy(float), frame[y].to_numpy(float)
    return frame, lambda idx: partial_rank_correlation(xv[idx], yv[idx])


def rank_correlation(frame: pd.DataFrame, x: str, y: str) -> float:
    """The rank correlation of columns ``x`` and ``y`` without controls (rows with a NaN dropped)."""
    rows, statistic = plain_statistic(frame, x, y)
    return statistic(np.arange(len(rows)))


def raw_association(cos, growth) -> float:
    """Rank correlation of two window series as they are (their time trend included); NaN with fewer
    than 3 windows or a constant series."""
    return spearman(np.asarray(cos, dtype=float), np.asarray(growth, dtype=float))


def detrended_association(cos, growth) -> float:
    """Rank correlation of the first differences of two window series (a common time trend removed);
    NaN with fewer than 3 differences or a constant one."""
    return spearman(np.diff(np.asarray(cos, dtype=float)), np.diff(np.asarray(growth, dtype=float)))


def within_run_associations(windows: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per run of ``runs`` (which carries ``run``, ``seed``, ``family``, ``lr``, ``width``, ``knob``):
    the ``raw`` and ``detrended`` association of its window cosines with its window NTK growth."""
    rows = []
    for run, w in windows[windows.run.isin(runs.run)].sort_values(["run", "start"]).groupby("run"):
        rows.append((run, raw_association(w.cos, w.ntk_growth), detrended_association(w.cos, w.ntk_growth)))
    table = pd.DataFrame(rows, columns=["run", "raw", "detrended"])
    return runs[["run", "seed", "family", "lr", "width", "knob"]].merge(table, on="run")


def usable(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that neither diverged nor collapsed."""
    return runs[~runs.diverged.astype(bool) & ~runs.collapsed.astype(bool)]


def fixed_step_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The usable normalized runs without momentum: every step of a layer has exactly its learning rate's
    length, so within an (lr, width) cell only the directions differ."""
    runs = usable(runs)
    return runs[(runs.family == NORMALIZED) & (runs.momentum == 0)]


def lazy_pair(runs: pd.DataFrame) -> pd.DataFrame:
    """Per seed, the lazy end's full-batch GD and mini-batch SGD run (plain family, smallest lr):
    columns ``seed``, ``cos_gd``, ``cos_sgd``, ``ntk_gd``, ``ntk_sgd``."""
    plain = runs[runs.family == PLAIN]
    plain = plain[plain.lr == plain.lr.min()]
    gd, sgd = plain[plain.batch_size == 0].set_index("seed"), plain[plain.batch_size > 0].set_index("seed")
    pair = pd.DataFrame({"cos_gd": gd.mean_cos, "cos_sgd": sgd.mean_cos, "ntk_gd": gd.ntk_change,
                         "ntk_sgd": sgd.ntk_change})
    return pair.dropna().rename_axis("seed").reset_index()


def example_runs(runs: pd.DataFrame) -> dict[str, int]:
    """Three runs to show through time (first seed): the lazy end (plain GD, smallest lr), and νP GD at the
    smallest lr (widest) and at the largest lr (narrowest; the Edge of Stability)."""
    runs = usable(runs)
    runs = runs[(runs.seed == runs.seed.min()) & (runs.knob == "GD")]
    plain, norm = runs[runs.family == PLAIN], runs[runs.family == NORMALIZED]
    small = norm[(norm.lr == norm.lr.min()) & (norm.width == norm.width.max())]
    large = norm[(norm.lr == norm.lr.max()) & (norm.width == norm.width.min())]
    picks = {"lazy: NTK plain GD, smallest lr": plain[plain.lr == plain.lr.min()],
             "νP GD, smallest lr, widest": small, "νP GD, largest lr, narrowest": large}
    return {name: int(r.run.iloc[0]) for name, r in picks.items() if len(r)}


def lag_name(k: int) -> str:
    return "mean cosine" if k == 1 else f"mean {k}-step cosine"


def seed_correlation(rows: pd.DataFrame, statistic) -> Estimate:
    """``statistic(idx)``, a correlation over the positions ``idx`` of ``rows`` (from ``fixed_step_statistic``,
    ``lr_statistic`` or ``plain_statistic``), with its leave-one-seed-out jackknife-t interval (Fisher z):
    a seed's runs are left out together."""
    return correlation_by_groups(rows["seed"].to_numpy(), statistic)


def partial_table(frames: dict) -> pd.DataFrame:
    """Every lag against every feature-learning measure (and the distance from init, which the identity
    ties to the cosine), with its jackknife-t interval over seeds: over the fixed-step runs controlling for
    (lr, width) (what the verdicts use), and over every normalized run, momentum included, controlling
    for (lr, width) and the log mean step length."""
    runs = usable(frames["runs"])
    populations = {"fixed step (no momentum)": (fixed_step_runs(runs), "cell"),
                   "all normalized (with momentum)": (runs[runs.family == NORMALIZED], "cell+step")}
    rows = []
    for population, (frame, controls) in populations.items():
        for k in LAGS:
            for measure in [*MEASURES, "distance"]:
                est = seed_correlation(*fixed_step_statistic(frame, f"mean_{cos_column(k)}", measure, controls))
                rows.append((population, "lr, width" + (", step length" if controls == "cell+step" else ""), k,
                             measure, est.value, est.low, est.high))
    return pd.DataFrame(rows, columns=["runs", "controls", "k", "measure", "estimate", "low", "high"])


def layer_table(frames: dict) -> pd.DataFrame:
    """Per layer: its mean cosine (k = 1, 2, 10) over the fixed-step runs, and the partial rank
    correlation of the layer's mean cosine with its preactivation change at fixed (lr, width), with its
    jackknife-t interval over seeds (``low``, ``high``)."""
    runs = fixed_step_runs(frames["runs"])[["run", "lr", "width", "mean_step", "seed"]]
    layers = frames["layers"].merge(runs, on="run")
    rows = []
    for layer, d in layers.groupby("layer"):
        row = {"layer": layer, **{f"mean_{cos_column(k)}": d[f"mean_{cos_column(k)}"].mean() for k in LAGS}}
        est = seed_correlation(*fixed_step_statistic(d, "mean_cos", "preact_change"))
        rows.append({**row, "partial_corr_preact": est.value, "low": est.low, "high": est.high})
    return pd.DataFrame(rows)


def identity_error(frames: dict) -> float:
    """The largest relative error, over every run and step, of ``|D_t|`` rebuilt from the recorded step
    lengths and cosines (``reconstruct_distance``) against the recorded ``|D_t|``: float rounding only."""
    worst = 0.0
    for _, s in frames["series"].groupby("run"):
        s = s.sort_values("step")
        rebuilt = reconstruct_distance(s.update_norm.to_numpy(), s.cos.to_numpy())[:-1]
        d = s.distance.to_numpy()
        keep = d > 0
        if keep.any():
            worst = max(worst, float(np.max(np.abs(rebuilt[keep] / d[keep] - 1))))
    return worst


# ------------------------------------------------------------------------------- the intervention

def usable_intervention(frame: pd.DataFrame) -> pd.DataFrame:
    """The intervention runs that neither diverged nor collapsed, keeping only seeds with every arm."""
    frame = frame[~frame.diverged.astype(bool) & ~frame.collapsed.astype(bool)]
    arms = frame.groupby("seed")[["arm", "beta"]].apply(lambda d: len(set(zip(d.arm, d.beta))))
    return frame[frame.seed.isin(arms.index[arms == arms.max()])] if len(arms) else frame


def arm_values(frame: pd.DataFrame, arm: str, beta: float, column: str) -> pd.Series:
    """``column`` of the ``arm`` at ``beta``, indexed by seed."""
    rows = frame[(frame.arm == arm) & np.isclose(frame.beta, beta)]
    return rows.set_index("seed")[column].sort_index()


def _paired(frame: pd.DataFrame, a: tuple[str, float], b: tuple[str, float], column: str) -> tuple[np.ndarray, ...]:
    pair = pd.concat([arm_values(frame, *a, column).rename("a"), arm_values(frame, *b, column).rename("b")],
                     axis=1).dropna()
    return pair.a.to_numpy(float), pair.b.to_numpy(float)


def paired_difference(frame: pd.DataFrame, a: tuple[str, float], b: tuple[str, float], column: str) -> Estimate:
    """The mean over seeds of ``column`` in arm ``a = (arm, beta)`` minus arm ``b``, paired by seed, with its
    jackknife-t (Student t) interval (unit: paired seeds)."""
    x, y = _paired(frame, a, b, column)
    return mean_interval(x - y, unit="paired seeds")


def paired_ratio(frame: pd.DataFrame, a: tuple[str, float], b: tuple[str, float], column: str) -> Estimate:
    """``mean(column in a)/mean(column in b)`` over the seeds both have, jackknife-t over paired seeds."""
    x, y = _paired(frame, a, b, column)
    return ratio_of_means(x, y, paired=True)


def follow_correlations(frame: pd.DataFrame, column: str, x: str = "mean_cos") -> pd.Series:
    """Per seed, the rank correlation over the steered arms (every beta) of the realized ``x`` with
    ``column`` (NaN for fewer than 3 arms or a constant series)."""
    steered = frame[frame.arm == STEER]
    return steered.groupby("seed")[[x, column]].apply(
        lambda d: spearman(d[x].to_numpy(float), d[column].to_numpy(float)))


def follow_estimate(frame: pd.DataFrame, column: str, x: str = "mean_cos") -> Estimate:
    """The mean over seeds of ``follow_correlations`` with its jackknife-t interval (unit: seeds)."""
    return mean_interval(follow_correlations(frame, column, x).to_numpy(float))


def intervention_summary(frame: pd.DataFrame, columns=None) -> pd.DataFrame:
    """Per arm and beta: the mean over seeds of each column with its t interval (``<column>_low``,
    ``<column>_high``) and the number of seeds ``n``."""
    columns = columns or ["mean_cos", *MEASURES, *PER_DISTANCE.values(), "distance", "final_loss"]
    rows = []
    for (arm, beta), d in frame.groupby(["arm", "beta"], sort=True):
        row = {"arm": arm, "beta": beta, "n": d.seed.nunique()}
        for column in columns:
            v = d[column].dropna().to_numpy(float)
            est = mean_interval(v) if len(v) >= 2 else Estimate(float(np.mean(v)) if len(v) else math.nan,
                                                                math.nan, math.nan)
            row.update({column: est.value, f"{column}_low": est.low, f"{column}_high": est.high})
        rows.append(row)
    return pd.DataFrame(rows)


def intervention_claims(frame: pd.DataFrame) -> list[Verdict]:
    """The interventional verdicts (module docstring): (a) the manipulation check, (b) the features follow
    the set cosine, (c) the control leaves the cosine and the features alone."""
    frame = usable_intervention(frame)
    betas = sorted(frame.beta.unique())
    low, high = min(betas), max(betas)
    base = (STEER, 0.0)
    verdicts = []
    up = paired_difference(frame, (STEER, high), base, "mean_cos")
    verdicts.append(compare(f"setting the cosine moves it, steering with beta = {high:g} raises the mean cosine above "
                            "the unsteered run's by more than {threshold} (paired by seed)", up, None, ">",
                            COSINE_SHIFT))
    down = paired_difference(frame, base, (STEER, low), "mean_cos")
    verdicts.append(compare(f"setting the cosine moves it, steering with beta = {low:g} lowers the mean cosine below "
                            "the unsteered run's by more than {threshold} (paired by seed)", down, None, ">",
                            COSINE_SHIFT))
    for kind, columns in (("", {m: m for m in MEASURES}), (" per unit distance from init", PER_DISTANCE)):
        for measure, column in columns.items():
            est = follow_estimate(frame, column)
            verdicts.append(compare(f"when the cosine is set (beta from {low:g} to {high:g}), the {MEASURES[measure]}"
                                    f"{kind} rises with the realized mean cosine (rank correlation over the arms, mean "
                                    "over seeds > {threshold})", est, None, ">", FOLLOW))
    top = max(b for b in betas if b != 0)
    shift = paired_difference(frame, (CONTROL, top), base, "mean_cos")
    verdicts.append(within(f"the control (direction turned as by beta = {top:g}, orthogonally to the cumulative "
                           "update) leaves the mean cosine within {tolerance} of the unsteered run's (paired by "
                           "seed)", shift, None, 0.0, CONTROL_COSINE))
    for measure, name in MEASURES.items():
        est = paired_ratio(frame, (CONTROL, top), base, measure)
        verdicts.append(within(f"the features do not follow a direction change alone, the control at beta = {top:g} "
                               f"leaves the {name} within {{tolerance}} of the unsteered run's (ratio of means to "
                               "{target}, paired by seed)", est, None, 1.0, CONTROL_TOLERANCE))
    return verdicts


# -------------------------------------------------------------------------------------- verdicts

def seed_medians(assoc: pd.DataFrame, column: str) -> np.ndarray:
    """Per seed, the median over its runs of ``column`` of ``within_run_associations`` (NaN runs left out)."""
    return assoc.groupby("seed")[column].median().to_numpy(float)


def claims(frames: dict, p) -> list[Verdict]:
    runs = usable(frames["runs"])
    norm, fixed = runs[runs.family == NORMALIZED], fixed_step_runs(runs)
    verdicts = []
    across = seed_correlation(*plain_statistic(runs, "mean_cos", "ntk_change"))
    verdicts.append(compare("across runs from lazy to rich, without controls, a larger mean cosine goes with a "
                            "larger NTK change (rank correlation > {threshold})", across, None, ">", STRONG))
    falls = seed_correlation(*lr_statistic(norm))
    verdicts.append(compare("with normalized updates the mean cosine falls as the learning rate grows (partial rank "
                            "correlation < {threshold} at fixed width and knobs)", falls, None, "<", FALLS))
    for k in LAGS:
        for measure, name in MEASURES.items():
            est = seed_correlation(*fixed_step_statistic(fixed, f"mean_{cos_column(k)}", measure))
            verdicts.append(compare(f"at fixed learning rate and width (fixed step length), runs with a larger "
                                    f"{lag_name(k)} show a larger {name} (partial rank correlation > {{threshold}})",
                                    est, None, ">", STRONG))
    assoc = within_run_associations(frames["windows"], norm)
    for column, how in (("raw", "as they are"), ("detrended", "after removing the common time trend (first "
                                                               "differences)")):
        est = mean_interval(seed_medians(assoc, column))
        verdicts.append(compare(f"within runs, {how}, windows with a larger mean cosine show a faster-growing NTK "
                                "change (median rank correlation over a seed's runs, mean over seeds > {threshold})",
                                est, None, ">", STRONG))
    pair = lazy_pair(runs)
    gd = mean_interval(pair.cos_gd.to_numpy(float))
    verdicts.append(compare("small-step full-batch GD at the lazy end has a mean cosine above {threshold} (near 1, "
                            "not near 0)", gd, None, ">", LAZY_COSINE))
    drop = mean_interval((pair.cos_gd - pair.cos_sgd).to_numpy(float), unit="paired seeds")
    verdicts.append(compare("at the lazy end, mini-batch noise lowers the mean cosine by more than {threshold}",
                            drop, None, ">", NOISE_DROP))
    ratio = ratio_of_means(pair.ntk_sgd.to_numpy(float), pair.ntk_gd.to_numpy(float), paired=True)
    verdicts.append(within(f"at the lazy end, mini-batch noise leaves the NTK change unchanged (ratio within "
                           f"{LAZY_NTK_TOLERANCE:.0%} of {{target}})", ratio, None, 1.0, LAZY_NTK_TOLERANCE))
    if "intervention" in frames:
        verdicts += intervention_claims(frames["intervention"])
    return verdicts

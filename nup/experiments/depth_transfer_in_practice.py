"""Notebook 07: does νP help a practitioner?  Depth transfer with mini-batches on Fashion-MNIST, judged by
test accuracy and cost.

The practitioner's protocol, for five families of networks trained with mini-batches and cross-entropy on the
Fashion-MNIST training split, a validation split held out of it for every tuning decision, and the full
10,000-image test split for what is reported:

* **tune** each family's peak learning rate (warmup + cosine, the schedule practitioners use) on the
  validation accuracy at the shallowest depth, over a ``sqrt(2)`` grid and several seeds;
* **transfer**: train the deeper networks at the rate its depth rule gives (the same rate, or ``lr/depth``
  for the NTK family) and also **re-tune** at every depth on a ``sqrt(2)`` grid around the transferred rate;
* report the **transfer regret** (test accuracy at the per-depth optimum minus at the transferred rate), the
  test accuracy itself, the parameter count and the time per epoch.

Families (``FAMILIES``): νP (``k^2 m`` widths, per-layer normalized SGD), the residual depth-μP network
(``nup.core.param.Residual``, plain SGD), the constant-width NTK parameterization with ``lr/depth``, and
standard practice, SP with He initialization with SGD+momentum and with Adam.  SP with He init is
``parameterization="mup"`` at ``base_width = width`` (then every μP factor is 1: ``W ~ N(0, sigma_k^2/fan_in)``
with the EOC ``sigma^2 = 2`` for ReLU, multiplier 1, one learning rate).  Every SGD family uses the same
``momentum``.  A grid whose optimum (by mean validation accuracy) sits at its edge is widened by
``WIDEN_BY`` points on that side, up to ``max_widen`` times.  A diverged run counts at chance accuracy.

The geometric schedule (``nup.training.schedules.GeometricLR``) runs with mini-batches on one family and
depth, its curvature (the loss Hessian's top eigenvalue by default) measured on a fixed probe batch
(``schedule_options probe_size``, the option added for mini-batches), as designed and annealed by a cosine
(``anneal_steps``, the second option mini-batches need), against that family's tuned warmup+cosine runs at
that depth; loss spikes are counted on the smoothed mini-batch loss.

Time per epoch: ``timing_steps`` training steps (forward, loss, backward, divergence check, optimizer and
schedule step, as in ``nup.training.loop.train``) of every family and depth in turn, ``TIMING_REPEATS`` rounds
(round robin, so that a change in the machine's load hits all alike), in this process under the runs' single
torch thread, scaled to an epoch; the best round counts.  On a CPU the thread's CPU time is used (what a quiet
machine's wall clock would show; the shared machines this runs on inflate wall time), on CUDA the synchronized
wall time.  Timings are cached like runs (``results/timings``), so a re-run of the notebook prints the same
numbers; a fresh measurement on another machine, or under another load, gives other numbers.

Verdicts (``claims``) are decided by 95% bootstrap intervals over seeds (timing: over rounds), thresholds
fixed before the runs (the constants below).  If the best family stays below ``TRAINED_ACCURACY`` the setup
is undertrained, and the verdicts that compare accuracies are printed *undecided* rather than decided in a
regime where nothing has learned.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pandas as pd
import torch

from nup.analysis.catapult import count_spikes
from nup.analysis.fits import Estimate, bootstrap, mean_bootstrap
from nup.analysis.frames import per_run
from nup.analysis.verdicts import Verdict, compare
from nup.experiments.schema import Choice, Dict, Float, Int, List, Schema
from nup.progress import progress
from nup.training import cache as nup_cache
from nup.training.config import LOSS_FUNCTIONS, RunConfig, TrainContext
from nup.training.loop import build_model_and_data, build_optimizer, gradients_finite, torch_threads
from nup.training.schedules import CURVATURES, SCHEDULES
from nup.training.sweep import sweep

NOTEBOOK = "07_depth_transfer_in_practice"

FAMILIES = ("nup", "residual", "ntk", "sp_sgd", "sp_adam")
LABELS = {"nup": "νP", "residual": "the residual depth-μP network", "ntk": "NTK with lr/depth",
          "sp_sgd": "SP (He init) with SGD and momentum", "sp_adam": "SP (He init) with Adam"}
SHORT = {"nup": "νP", "residual": "residual μP", "ntk": "NTK lr/depth", "sp_sgd": "SP SGD", "sp_adam": "SP Adam"}
N_CLASSES = 10
N_INPUTS = 784
CHANCE = 1 / N_CLASSES   # the accuracy a diverged run counts at
WIDEN_BY = 2             # grid points added beyond an edge that holds the optimum (a factor 2 in lr)
SCHEDULE_TOL = 1e-2      # relative tolerance of the schedule's eigen-solver (warm-started Lanczos)
SCHEDULE_MAX_ITER = 50
TIMING_WARMUP = 3        # untimed steps before each family's timing
TIMING_REPEATS = 5       # round-robin rounds of timing_steps steps of every family and depth (best of 5)
DATA_SEED = 0            # the draw of training and validation images
SCHEDULE_MOMENTUM = 0.0  # the schedule sets the step GD takes (with momentum 0.9 it diverged in a pilot)
SPIKE_RISE = 0.25        # a loss spike: the smoothed mini-batch loss rises 25% above its running minimum
SPIKE_WINDOW_STEPS = 50  # the moving average of the mini-batch loss spans this many steps

# Thresholds, fixed before the runs.
TRAINED_ACCURACY = 0.85  # the best family's test accuracy must reach this (~88% is what an MLP gets) to compare
MAX_REGRET = 0.01        # the transferred rate loses at most 1 point of test accuracy at the deepest depth
MAX_GAP = 0.01           # νP within 1 point of the best family at the deepest depth
MAX_TIME_RATIO = 3.0     # νP's time per epoch within 3x of the residual network's at the deepest depth
MIN_SCHEDULE_GAIN = 0.01  # the geometric schedule (either variant) beats the tuned warmup+cosine by at least 1 point
SCHEDULE_VARIANTS = {"geometric": "schedule", "geometric_annealed": "schedule_annealed"}  # method -> stage
N_BOOT = 1000


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
    if p.schedule_family not in p.families or p.schedule_family == "sp_adam":
        raise ValueError(f"schedule_family={p.schedule_family!r} is not allowed; schedule_family must be one of the "
                         "SGD families in families (the schedule sets an SGD step)")
    if p.schedule_probe > p.n_train:
        raise ValueError(f"schedule_probe={p.schedule_probe!r} is not allowed; schedule_probe must be <= n_train")


SCHEMA = Schema(
    List("families", item=Choice("family", choices=FAMILIES), distinct=True,
         help="nup, residual, ntk (lr/depth), sp_sgd (He init, SGD+momentum), sp_adam (He init, Adam)"),
    List("depths", item=Int("depth", minimum=3), min_length=2, increasing=True,
         help="number of layers l; the first is where the rates are tuned (the residual network needs l >= 3)"),
    Int("width", minimum=1, help="hidden width of the constant-width families"),
    Int("nup_width", minimum=1, help="νP's base width m (hidden widths k^2 m)"),
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
    List("seeds", item=Int("seed", minimum=0), min_length=3, distinct=True),
    Choice("schedule_family", choices=FAMILIES[:4]),
    Int("schedule_depth", minimum=3),
    Float("schedule_c", positive=True, help="eta_t * lambda_t of the geometric schedule"),
    Choice("schedule_curvature", choices=CURVATURES),
    Int("schedule_every", minimum=1, help="re-estimate lambda_t every this many steps"),
    Int("schedule_probe", minimum=1, help="probe batch of the curvature: the first training images"),
    Int("record_every", minimum=1, help="record the mini-batch loss every this many steps"),
    Int("timing_steps", minimum=1, help="steps per timed block (TIMING_REPEATS blocks)"),
    Int("n_jobs", minimum=1),
    checks=(_checks,),
)


# ---------------------------------------------------------------------------- configurations

def steps_per_epoch(p) -> int:
    return p.n_train // p.batch_size


def spike_window(p) -> int:
    """Records in the moving average of the mini-batch loss (``SPIKE_WINDOW_STEPS`` steps)."""
    return max(1, SPIKE_WINDOW_STEPS // p.record_every)


def family_options(p, family: str) -> dict:
    """The RunConfig fields that make a family."""
    if family == "nup":
        return dict(parameterization="nup", width=p.nup_width, momentum=p.momentum)
    if family in ("residual", "ntk"):
        return dict(parameterization=family, width=p.width, momentum=p.momentum)
    he = dict(parameterization="mup", width=p.width, base_width=p.width)  # SP with He (EOC) init
    return {**he, "momentum": p.momentum} if family == "sp_sgd" else {**he, "optimizer": "adam"}


def family_config(p, family: str, depth: int, lr: float, seed: int, **changes) -> RunConfig:
    """One run of the protocol: warmup + cosine at peak rate ``lr``, evaluated once at the end."""
    steps = p.epochs * steps_per_epoch(p)
    values = dict(activation="relu", depth=depth, lr=lr, seed=seed, data_seed=DATA_SEED, loss="ce",
                  n_train=p.n_train, n_val=p.n_val, n_test=p.n_test, batch_size=p.batch_size, steps=steps,
                  diagnostic_every=steps, full_loss=False, record_every=p.record_every, schedule="warmup_cosine",
                  **family_options(p, family))
    values.update(changes)
    return RunConfig(**values)


def depth_factor(family: str, depth: int, shallowest: int) -> float:
    """The family's depth rule for the learning rate: ``shallowest/depth`` for NTK, 1 for the others."""
    return shallowest / depth if family == "ntk" else 1.0


def grid_lr(anchor: float, j: int) -> float:
    """The ``j``-th point of the ``sqrt(2)`` grid around ``2**anchor`` (``anchor``: a log2 rate)."""
    return float(2.0 ** (anchor + j / 2))


def parameter_count(p, family: str, depth: int) -> int:
    config = family_config(p, family, depth, 1.0, 0)
    widths = config.build_parameterization().widths(N_INPUTS, N_CLASSES, depth, config.width)
    return int(sum(a * b for a, b in zip(widths[:-1], widths[1:])))


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
    test = accuracy_table(runs, family, depth, "test_accuracy")
    return np.stack([val.to_numpy().T, test.to_numpy().T], axis=1), list(val.index).index(0)


def regret(runs: pd.DataFrame, family: str, depth: int, n_boot: int = N_BOOT, seed: int = 0) -> Estimate:
    """Transfer regret with its bootstrap interval over seeds (the selection is redone on each resample)."""
    replicates, transferred = regret_replicates(runs, family, depth)
    return bootstrap(replicates, lambda r: regret_statistic(r, transferred), n_boot=n_boot, seed=seed)


def independent_bootstrap(samples: dict, statistic, n_boot: int = N_BOOT, seed: int = 0,
                          level: float = 0.95) -> Estimate:
    """``statistic({key: sample})`` with each sample resampled on its own (different networks per key)."""
    samples = {k: np.asarray(v, dtype=float) for k, v in samples.items()}
    rng = np.random.default_rng(seed)
    stats = [statistic({k: v[rng.integers(0, len(v), len(v))] for k, v in samples.items()}) for _ in range(n_boot)]
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(float(statistic(samples)), float(low), float(high), level)


def gap_statistic(samples: dict, family: str = "nup") -> float:
    """The best family's mean minus ``family``'s mean (0 when ``family`` is the best)."""
    means = {k: float(np.mean(v)) for k, v in samples.items()}
    return max(means.values()) - means[family]


def time_ratio(times: np.ndarray) -> float:
    """``times``: ``(rounds, 2)`` seconds of two configs timed round robin; the ratio of their best times."""
    return float(times[:, 0].min() / times[:, 1].min())


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
    the grid's edge, and the test accuracies at both (mean and std over seeds) with their difference, the
    regret."""
    rows = []
    for f in families:
        for d in depths:
            val = accuracy_table(runs, f, d, "val_accuracy")
            test = accuracy_table(runs, f, d, "test_accuracy")
            best = best_index(val)
            moved = 0 if d != depths[0] else best  # the grid index of the transferred rate
            lrs = runs[(runs.stage == "transfer") & (runs.family == f) & (runs.depth == d)].groupby("j").lr.first()
            rows.append(dict(family=f, depth=d, lr_transferred=lrs[moved], lr_tuned=lrs[best], tuned_step=best,
                             at_edge=edge(val.index, best) is not None,
                             test_transferred=test.loc[moved].mean(), test_transferred_std=test.loc[moved].std(),
                             test_tuned=test.loc[best].mean(), test_tuned_std=test.loc[best].std(),
                             val_transferred=val.loc[moved].mean(), val_tuned=val.loc[best].mean(),
                             regret=test.loc[best].mean() - test.loc[moved].mean()))
    return pd.DataFrame(rows)


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
    lr = float(chosen[(chosen.family == f) & (chosen.depth == d)].lr_tuned.iloc[0])
    keys = [dict(stage=stage, family=f, depth=d, j=0, lr=lr, seed=s) for stage in SCHEDULE_VARIANTS.values()
            for s in p.seeds]
    configs = [schedule_config(p, k["seed"], lr, annealed=k["stage"] == "schedule_annealed") for k in keys]
    return _summaries(_sweep(configs, p.n_jobs), keys)


# ---------------------------------------------------------------------------- timing

class _Stepper:
    """One training step of ``config`` as ``nup.training.loop.train`` takes it (forward, loss, backward,
    divergence check, optimizer and schedule step), on random mini-batches; model and optimizer built once."""

    def __init__(self, config: RunConfig):
        torch.manual_seed(config.seed)
        self.config = config
        self.model, self.x, self.y, _, _ = build_model_and_data(config)
        self.optimizer = build_optimizer(config, self.model)
        self.ctx = TrainContext(config, self.model, self.optimizer, self.x, self.y, LOSS_FUNCTIONS[config.loss])
        self.scheduler = SCHEDULES[config.schedule](self.ctx)
        self.params = [q for q in self.model.parameters() if q.requires_grad]
        self.generator = torch.Generator().manual_seed(config.seed)
        self.cuda = self.x.device.type == "cuda"

    def __call__(self, steps: int) -> tuple[float, float]:
        """Run ``steps`` steps; ``(thread CPU seconds, wall seconds)`` per step."""
        if self.cuda:
            torch.cuda.synchronize()
        c0, w0 = time.thread_time(), time.perf_counter()
        for _ in range(steps):
            idx = torch.randint(0, len(self.x), (self.config.batch_size,), generator=self.generator)
            idx = idx.to(self.x.device)
            out, _ = self.model(self.x[idx], return_preactivations=True)
            loss = self.ctx.loss_fn(out, self.y[idx])
            loss.item()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            gradients_finite(self.params)
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
        if self.cuda:
            torch.cuda.synchronize()
        return (time.thread_time() - c0) / steps, (time.perf_counter() - w0) / steps


def _time_round_robin(configs: list[dict], steps: int, repeats: int, version: str) -> list[dict]:
    """Seconds per step of every config, in ``repeats`` rounds that each time ``steps`` steps of every config
    in turn (round robin: a change in the machine's load hits every config alike).  ``version``
    (``nup.__version__``) is part of the cache key."""
    with torch_threads():
        steppers = [_Stepper(RunConfig(**c)) for c in configs]
        for stepper in steppers:
            stepper(TIMING_WARMUP)
        times = [[stepper(steps) for stepper in steppers] for _ in range(repeats)]
    return [dict(cpu=[t[i][0] for t in times], wall=[t[i][1] for t in times], device=s.x.device.type)
            for i, s in enumerate(steppers)]


def time_per_step(configs: list[RunConfig], steps: int, repeats: int) -> list[dict]:
    """``_time_round_robin`` of ``configs``, cached under ``results/timings`` (each config keyed like a run, with
    ``device`` resolved): ``{"cpu": [...], "wall": [...], "device": ...}`` per config, one entry per round."""
    from joblib import Memory

    keys = [nup_cache._key(config) for config in configs]
    memory = Memory(location=str(nup_cache.results_dir() / "timings"), verbose=0)
    return memory.cache(_time_round_robin)([k[0] for k in keys], steps, repeats, keys[0][1])


def costs(p, chosen: pd.DataFrame) -> pd.DataFrame:
    """Per family, depth and timing round: parameters and seconds per epoch (at the tuned rate)."""
    items = [(f, d) for f in p.families for d in p.depths] + [("geometric schedule", p.schedule_depth)]
    configs, params = [], []
    for f, d in items:
        if f == "geometric schedule":
            configs.append(schedule_config(p, 0))
            params.append(parameter_count(p, p.schedule_family, d))
        else:
            lr = float(chosen[(chosen.family == f) & (chosen.depth == d)].lr_tuned.iloc[0])
            configs.append(family_config(p, f, d, lr, 0))
            params.append(parameter_count(p, f, d))
    rows = []
    for (f, d), n, timing in zip(items, params, time_per_step(configs, p.timing_steps, TIMING_REPEATS)):
        clock = "wall" if timing["device"] == "cuda" else "cpu"
        for r, (cpu, wall) in enumerate(zip(timing["cpu"], timing["wall"])):
            rows.append(dict(family=f, depth=d, params=n, repeat=r, clock=clock,
                             seconds_per_epoch=(wall if clock == "wall" else cpu) * steps_per_epoch(p),
                             cpu_per_epoch=cpu * steps_per_epoch(p), wall_per_epoch=wall * steps_per_epoch(p)))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- the experiment

def run(p) -> dict:
    """Tune at the shallowest depth, transfer and re-tune at every deeper depth, run the geometric schedule,
    time every family.  Frames: ``runs`` (one row per run), ``curves`` (mini-batch loss, rate and the
    schedule's eta and lambda over steps), ``choices`` (per family and depth), ``costs`` and ``schedule``."""
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
    runs = pd.concat([runs, schedule_runs], ignore_index=True)
    curves = pd.concat([*curves, schedule_curves], ignore_index=True)
    return {"runs": runs, "curves": curves, "choices": chosen, "costs": costs(p, chosen),
            "schedule": schedule_table(runs, curves, chosen, p)}


def schedule_table(runs: pd.DataFrame, curves: pd.DataFrame, chosen: pd.DataFrame, p) -> pd.DataFrame:
    """Per seed: test accuracy and loss spikes of both variants of the geometric schedule and of the tuned
    warmup+cosine."""
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


# ---------------------------------------------------------------------------- tables for the notebook

def summary(frames: dict) -> pd.DataFrame:
    """Per family and depth: parameters, time per epoch, both rates, test accuracy at both, and the regret."""
    cost = frames["costs"]
    cost = cost[cost.family.isin(FAMILIES)].groupby(["family", "depth"]).agg(
        params=("params", "first"), seconds_per_epoch=("seconds_per_epoch", "min"))
    table = frames["choices"].merge(cost.reset_index(), on=["family", "depth"])
    table["family"] = table.family.map(SHORT)
    columns = ["family", "depth", "params", "seconds_per_epoch", "lr_transferred", "lr_tuned", "at_edge",
               "test_transferred", "test_tuned", "regret"]
    return table[columns]


def best_accuracy(frames: dict) -> tuple[str, int, np.ndarray]:
    """The family and depth with the highest mean test accuracy at its tuned rate, and that run's seeds."""
    chosen = frames["choices"]
    row = chosen.loc[chosen.test_tuned.idxmax()]
    runs = frames["runs"]
    sel = runs[(runs.stage == "transfer") & (runs.family == row.family) & (runs.depth == row.depth)
               & (runs.j == row.tuned_step)]
    return row.family, int(row.depth), sel.test_accuracy.fillna(CHANCE).to_numpy()


def training_note(frames: dict) -> str:
    family, depth, accuracy = best_accuracy(frames)
    mean = float(np.mean(accuracy))
    head = f"best family: {SHORT[family]} at depth {depth}, mean test accuracy {mean:.4f} at its tuned rate. "
    if mean >= TRAINED_ACCURACY:
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
                   f"{verdict.threshold} (not decided: undertrained)")


def _transferred_accuracies(runs: pd.DataFrame, family: str, depth: int) -> np.ndarray:
    return accuracy_table(runs, family, depth, "test_accuracy").loc[0].to_numpy()


def claims(frames: dict, p) -> list[Verdict]:
    runs, deepest = frames["runs"], p.depths[-1]
    boot = dict(n_boot=N_BOOT, seed=0)
    _, _, best = best_accuracy(frames)
    trained = compare(f"the best family reaches at least {TRAINED_ACCURACY:.0%} test accuracy (else the setup is "
                      "undertrained and accuracies are not compared)", float(np.mean(best)),
                      mean_bootstrap(best, **boot).interval, ">=", TRAINED_ACCURACY)
    verdicts = [trained]
    for f in p.families:
        r = regret(runs, f, deepest, **boot)
        verdicts.append(_gated(compare(f"for {LABELS[f]}, the rate tuned at the shallowest depth loses at most "
                                       f"{MAX_REGRET * 100:g} point of test accuracy at the deepest depth",
                                       r.value, r.interval, "<=", MAX_REGRET), trained.holds))
    accuracies = {f: _transferred_accuracies(runs, f, deepest) for f in p.families}
    gap = independent_bootstrap(accuracies, gap_statistic, **boot)
    verdicts.append(_gated(compare(f"νP's test accuracy at the deepest depth (each family at its transferred rate) "
                                   f"is within {MAX_GAP * 100:g} point of the best family's", gap.value,
                                   gap.interval, "<=", MAX_GAP), trained.holds))
    cost = frames["costs"]
    times = np.stack([cost[(cost.family == f) & (cost.depth == deepest)].sort_values("repeat").seconds_per_epoch
                      for f in ("nup", "residual")], axis=1)
    ratio = bootstrap(times, time_ratio, **boot)
    verdicts.append(compare(f"νP's time per epoch at the deepest depth is within {MAX_TIME_RATIO:g}x of the residual "
                            "network's", ratio.value, ratio.interval, "<=", MAX_TIME_RATIO))
    sched = frames["schedule"].pivot_table(index="seed", columns="method", values="test_accuracy")
    names = {"geometric": "the geometric schedule (mini-batches, curvature on a probe batch)",
             "geometric_annealed": "the geometric schedule annealed by a cosine (the mini-batch option)"}
    for method, name in names.items():
        paired = sched[[method, "warmup_cosine"]].to_numpy()
        gain = bootstrap(paired, lambda a: float(a[:, 0].mean() - a[:, 1].mean()), **boot)
        verdicts.append(_gated(compare(f"{name} beats a tuned warmup+cosine in test accuracy by at least "
                                       f"{MIN_SCHEDULE_GAIN * 100:g} point", gain.value, gain.interval, ">=",
                                       MIN_SCHEDULE_GAIN), trained.holds))
    return verdicts

"""Notebook 02, claims 2-4: the NTK of Edge-of-Chaos networks at depth (growth, the best learning rate,
concentration, conditioning).

**Claim 2** (ours, from the recursion; ``docs/definitions.md``).  At the EOC with constant width the NTK
``K_0 = J J^T/n`` grows about linearly with depth (``Theta^l(x, x) = l |x|^2/m_0`` on the diagonal), so a
learning rate must shrink like ``1/l``.  *Growth*, measured: ``lambda_max(K_0)`` (Lanczos) and
``trace(K_0)`` of ``n_networks`` networks per (activation, width, depth) at two constant widths, their
fitted exponents against depth next to the infinite-width exponent *over the same depths*
(``nup.theory.kernels`` on the same samples), and the infinite-width exponent deep in the recursion (over
the deepest quarter of the depths of claim 4, on ``cond_draws`` data draws).

*The learning rate*, measured by the best rate, not by the absence of spikes.  At ``train_width``, full-batch
GD with MSE for ``steps`` steps on ``n_train`` images, ``train_seeds`` seeds, seed ``s`` both the
initialization and the data draw (``data_seed``), so intervals include data variance and every depth sees
the same draw for a given seed.  At every depth of ``train_depths`` a ``sqrt(2)`` grid of rates is run
(``nup.analysis.best_lr.tune_along``: ``2*first_half_points + 1`` rates around ``lr_centers[activation]``
at ``reference_depth``, which is tuned first, then ``2*half_points + 1`` rates around the line through the
best rates so far, each grid widened by two rates while its minimum sits at an edge, at most ``max_widen``
times).  The objective is the **final training loss** (mean over seeds of its log): the claim is about
optimization (how large a step full-batch GD can take at a given depth), so the loss after a fixed budget
of steps on the training set is what a rate is tuned for; generalization is not part of the claim, so no
validation split is held out.  A run that diverges (non-finite, blown up, or ending no lower than it
started) is scored at its initial loss (``score``): it ended no lower than that, so the score is a lower bound
of where it ended.  (``nup.analysis.best_lr``'s own convention, the worst run of the table that trained, is too
mild on a grid near the edge of stability, where every run that trained is good: a rate at which most seeds
diverge could be chosen as the best.)

Two transfer rules start from ``log2 lr_ref``, the best rate at ``reference_depth`` rounded to the grid:
the **fixed rate** (``lr_ref`` at every depth) and the **scaled rate** ``lr_ref * l_ref/l``; both are run
at every depth (as extra points where the grid misses them).  Verdicts: (a) the slope of ``log2(best
lr)`` against ``log2(depth)`` (``nup.analysis.best_lr.depth_slope``, jackknife-t over whole seeds) lies
within ``INVERSE_DEPTH[1]`` of -1 ("shrinks like ``1/l``"), and separately below 0 ("shrinks"); (b) each
rule's regret (its loss over the depth's best, ``transfer_regret``, geometric mean over paired seeds) is
below ``REGRET_THRESHOLD`` at every depth deeper than the reference (shallower depths are in the table:
there the scaled rule raises the rate, and the best rate is capped by divergence); (c) at the deepest depth
the fixed rate ends above the scaled one (geometric-mean ratio over paired seeds), and the table
``rule_comparison`` reports the first depth from which it does.  As context (deciding nothing about the
rule): ``lr_ref lambda_max(K_0)`` at the deepest depth (geometric mean over networks) against the quadratic
model's stability bound 2, and each rule's fraction of spike-free runs.

**Claim 3** (stated by the companion paper).  With widths ``m_k = k^2 m`` the empirical NTK (float64, one
output, ``n_kernel`` samples) approaches the infinite-width NTK like ``m^(-1/2)`` uniformly in depth; at
constant width the error grows with depth; the absolute value is closer than ReLU.  Measured: the relative
Frobenius distance of ``kernel_networks`` networks per cell; statistics on the geometric mean over networks
(the mean of ``log`` distance: the distance of one network is heavy-tailed at small width, and a mean of
logs is a smooth statistic whose jackknife interval is Student's t).

**Claim 4** (stated by the companion paper).  ``Delta_phi`` sets how fast ``cond(K_inf)`` reaches its deep
limit, abs (``Delta = 1``) faster than ReLU (``Delta = 1/2``).  Measured on a sweep over ``Delta_phi``
(leaky ReLU with slope ``alpha(Delta)``, ``alpha in [-1, 1)``; ``-1`` is abs, ``0`` ReLU): the depth from
which ``cond`` stays within 5% of its limit, the limit *extrapolated* from the deep tail
(``cond(l) = c + (a + b log l)/l``, ``nup.analysis.depth_profiles``) rather than read off at the last depth
computed.

Frames (``run_experiment``): ``spectrum`` (one row per network), ``spectrum_inf`` (infinite width on the
training samples), ``runs`` (one row per training run of the learning-rate sweep; ``in_grid`` False for a
rule's rate run outside the grid), ``transferred`` (``log2 lr_ref`` per activation), ``distance`` (one row
per network), ``condition`` (cond and lambda_max of ``K_inf`` per draw, Delta and depth) and ``settle`` (per
draw and Delta: limit, settling depth).  ``claims`` decides every verdict by a 95% jackknife-t interval
(``nup.analysis.stats``) over networks, seeds or data draws, each line printing its n (the unit is
``seeds`` for networks and data draws too: each is one seed's draw), or by the point where the number is
deterministic; the thresholds are the constants below, fixed before the full-size run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pandas as pd
import torch

from nup.analysis.best_lr import best_log2_lr, depth_slope, log_loss_table, transfer_regret, tune_along
from nup.analysis.catapult import classify_phase, largest_rise
from nup.analysis.depth_profiles import geometric_depths, local_exponents, settle_depth, tail_model
from nup.analysis.fits import mean_curve_exponent, power_law
from nup.analysis.frames import metric
from nup.analysis.stats import Estimate, jackknife_t, mean_interval, nan_estimate, paired_log_ratio, ratio_of_means
from nup.analysis.verdicts import Verdict, all_of, compare, format_number, within
from nup.core.activations import ACTIVATIONS, leaky_relu
from nup.core.device import resolve_device
from nup.core.mlp import hidden_widths
from nup.core.param import NTK
from nup.experiments import RUN_THREADS
from nup.experiments.schema import MIN_SEEDS, Choice, Dict, Float, Int, List, Schema
from nup.linalg.tangent_kernel import empirical_ntk, ntk_output_block_top_eigenvalue, ntk_top_eigenvalue, ntk_trace
from nup.theory.kernels import iterate_kernels, ntk_kernel
from nup.training.config import RunConfig
from nup.training.data import load_fashion_mnist
from nup.training.loop import build_model_and_data
from nup.training.sweep import parallel_map, sweep

NOTEBOOK = "02_ntk_at_depth"


def _check_params(p) -> None:
    for act in ("relu", "abs"):
        if act not in p.activations:
            raise ValueError(f"activations={list(p.activations)!r} is not allowed; activations must include "
                             "'relu' and 'abs' (claim 3 compares them)")
    if p.reference_depth not in p.train_depths:
        raise ValueError(f"reference_depth={p.reference_depth!r} is not allowed; reference_depth must be one of "
                         f"train_depths={list(p.train_depths)}")
    if p.reference_depth == max(p.train_depths):
        raise ValueError(f"reference_depth={p.reference_depth!r} is not allowed; it must be shallower than the "
                         f"deepest of train_depths={list(p.train_depths)} (the rules are compared deeper)")
    if p.train_width not in p.widths:
        raise ValueError(f"train_width={p.train_width!r} is not allowed; train_width must be one of widths="
                         f"{list(p.widths)} (the trained networks' spectra are part of the growth fits)")
    missing = [a for a in p.activations if a not in p.lr_centers]
    if missing:
        raise ValueError(f"lr_centers={dict(p.lr_centers)!r} is not allowed; it needs a log2 rate for every "
                         f"activation (missing {missing})")
    for delta in (0.5, 1.0):
        if delta not in p.cond_deltas:
            raise ValueError(f"cond_deltas={list(p.cond_deltas)!r} is not allowed; cond_deltas must include 0.5 "
                             "(ReLU) and 1.0 (abs)")
    for depth in (min(p.kernel_depths), max(p.kernel_depths)):
        if len(kernel_widths(p, "quadratic", depth)) < 2:
            raise ValueError(f"max_hidden_width={p.max_hidden_width!r} is not allowed; it must leave at least two "
                             f"of quadratic_base_widths={list(p.quadratic_base_widths)} at depth {depth}")
    for profile in ("constant", "quadratic"):
        if not shared_widths(p, profile):
            raise ValueError(f"max_hidden_width={p.max_hidden_width!r} is not allowed; the {profile} profile "
                             "needs a width present at both the shallowest and the deepest kernel_depths")


SCHEMA = Schema(
    List("activations", item=Choice("activation", choices=tuple(ACTIVATIONS)), distinct=True, min_length=2,
         help="presets of the family a*s + b*abs(s); must include relu and abs"),
    # Claim 2: growth of K_0 and the best learning rate (constant width, one-hot MSE, full-batch GD)
    List("widths", item=Int("width", minimum=2), min_length=2, increasing=True,
         help="constant widths of the spectra; the verdicts compare the smallest and the largest"),
    List("depths", item=Int("depth", minimum=1), min_length=2, increasing=True,
         help="depths of the spectra and of the exponent fits"),
    Int("n_train", minimum=2, help="training samples (the spectra use the same number)"),
    Int("n_networks", minimum=MIN_SEEDS, help=f"random networks per (activation, width, depth); at least "
        f"{MIN_SEEDS} (interval coverage)"),
    Int("train_width", minimum=2, help="constant width of the trained networks"),
    List("train_depths", item=Int("depth", minimum=1), min_length=3, increasing=True,
         help="depths of the learning-rate sweep (at least 3: a slope and a deeper comparison)"),
    Int("train_seeds", minimum=MIN_SEEDS, help=f"seeds (initialization and data draw) per sweep point; at least "
        f"{MIN_SEEDS} (interval coverage)"),
    Int("reference_depth", minimum=1, help="the depth tuned first; its best rate is the one transferred"),
    Int("steps", minimum=1, help="full-batch GD steps"),
    Dict("lr_centers", keys=tuple(ACTIVATIONS), value=Float("log2_lr"), partial=True,
         help="log2 of the centre of each activation's first grid (at reference_depth)"),
    Int("first_half_points", minimum=1, help="grid points on each side of the centre at reference_depth"),
    Int("half_points", minimum=1, help="grid points on each side of the extrapolated optimum at other depths"),
    Int("max_widen", minimum=0, help="how many times a grid is widened by two points at its edge"),
    # Claim 3: distance of the empirical NTK to the infinite-width NTK (one output, float64)
    List("kernel_depths", item=Int("depth", minimum=1), min_length=2, increasing=True),
    List("constant_widths", item=Int("width", minimum=1), min_length=2, increasing=True),
    List("quadratic_base_widths", item=Int("width", minimum=1), min_length=2, increasing=True,
         help="base widths m of the profile k^2 m"),
    Int("max_hidden_width", minimum=2, help="cells whose widest hidden layer is wider are skipped"),
    Int("n_kernel", minimum=2, help="samples of the kernels of claims 3 and 4"),
    Int("kernel_networks", minimum=MIN_SEEDS, help=f"random networks per cell; at least {MIN_SEEDS}"),
    # Claim 4: condition number of the infinite-width NTK against depth, over Delta_phi
    List("cond_deltas", item=Float("delta", minimum=0.01, maximum=1.0), min_length=3, increasing=True,
         help="Delta_phi of the leaky ReLU sweep; must include 0.5 (relu) and 1.0 (abs)"),
    Int("cond_max_depth", minimum=64, help="deepest depth of the recursion"),
    Int("cond_draws", minimum=MIN_SEEDS, help=f"data draws of n_kernel samples; at least {MIN_SEEDS}"),
    Int("n_jobs", minimum=1, help="worker processes (the results do not depend on it)"),
    Int("seed", minimum=0),
    checks=(_check_params,),
)

# Thresholds, fixed before the full-size run.
LINEAR = (1.0, 0.2)               # "grows like depth": fitted exponent within 0.2 of 1
ASYMPTOTIC = (1.0, 0.1)           # deep in the recursion: exponent within 0.1 of 1
EXPONENT_GAP = 0.2                # finite- and infinite-width exponents of lambda_max within 0.2
INVERSE_DEPTH = (-1.0, 0.2)       # "shrinks like 1/l": slope of log2 best lr vs log2 depth within 0.2 of -1
                                  # (the tolerance of "grows like depth")
REGRET_THRESHOLD = 1.25           # a rule transfers: its loss < 1.25 x the depth's best (paired seeds), the
                                  # value notebook 03 uses
STABLE = 2.0                      # GD on the quadratic model is stable for eta lambda_max < 2
SPIKE = 0.01                      # a loss spike: the loss rises > 1% above its running minimum (context only)
CONCENTRATION_EXPONENT = (-0.5, 0.15)  # k^2 widths: the error ~ m^p with p within 0.15 of -1/2
FLAT = 1.5                        # k^2 widths: error(deepest)/error(shallowest) below 1.5
WORSENS = 1.5                     # constant width: error(deepest)/error(shallowest) above 1.5
SETTLE = 0.05                     # cond(K_inf) within 5% of its deep limit
SAME_LIMIT = 0.05                 # the deep limits of cond(K_inf) agree within 5% across Delta_phi
LANCZOS_TOL = 1e-4
LR_STEP = 0.5                     # the grid step in log2(lr): a sqrt(2) grid
KERNEL_DATA_SEED = 1              # data seeds of claims 3 (the first) and 4 (1, 2, ...)
RULES = ("fixed rate", "rate * l_ref/l")


# ---------------------------------------------------------------------------- running things

def run_experiment(p) -> dict:
    """Spectra and the learning-rate sweep (claim 2), kernel distances (claim 3), condition numbers (claim 4)."""
    frames = growth(p)
    frames.update(training(p))
    frames["distance"] = concentration(p)
    frames.update(conditioning(p))
    return frames


# ---------------------------------------------------------------------------- claim 2: growth

def run_config(p, activation: str, depth: int, width: int, seed: int, lr: float = 1.0) -> RunConfig:
    """The network and data of the spectra (data draw 0): NTK parameterization."""
    return RunConfig(parameterization="ntk", activation=activation, depth=depth, width=width, n_train=p.n_train,
                     lr=lr, steps=p.steps, seed=seed, threads=RUN_THREADS)


def _spectrum_task(config: RunConfig, per_output: bool) -> tuple[float, float, float]:
    model, x, *_ = build_model_and_data(config)
    block = ntk_output_block_top_eigenvalue(model, x, tol=LANCZOS_TOL) if per_output else math.nan
    return float(ntk_top_eigenvalue(model, x, tol=LANCZOS_TOL).value), float(ntk_trace(model, x)), block


def _spectrum_cells(p) -> list[tuple[str, int, int]]:
    cells = {(a, w, d) for a in p.activations for w in p.widths for d in p.depths}
    cells |= {(a, p.train_width, d) for a in p.activations for d in p.train_depths}
    return sorted(cells, key=lambda c: -c[1] ** 2 * c[2])  # the dearest first, for the workers' balance


def infinite_width_lambda(x, activation, depths) -> np.ndarray:
    """``lambda_max(Theta^l/n)`` of the infinite-width NTK at each of ``depths`` (one recursion)."""
    wanted, out = set(int(d) for d in depths), {}
    n = len(x)
    for depth, _, theta in iterate_kernels(x, activation):
        if depth in wanted:
            out[depth] = np.linalg.eigvalsh(theta / n)[-1]
        if depth >= max(wanted):
            break
    return np.array([out[int(d)] for d in depths])


def growth(p) -> dict:
    """``spectrum``: lambda_max and trace of K_0 per network (and, at ``train_width``, ``lambda_max_output``,
    that of one output's block); ``spectrum_inf``: the infinite-width lambda_max on the same samples, at the
    depths of the spectra and of the training runs."""
    cells = _spectrum_cells(p)
    tasks = [(run_config(p, a, d, w, p.seed + s), w == p.train_width) for a, w, d in cells
             for s in range(p.n_networks)]
    values = parallel_map(_spectrum_task, tasks, p.n_jobs, desc="spectra")
    rows = [(a, w, d, s, *v) for (a, w, d), s, v in
            zip([c for c in cells for _ in range(p.n_networks)], list(range(p.n_networks)) * len(cells), values)]
    spectrum = pd.DataFrame(rows, columns=["activation", "width", "depth", "seed", "lambda_max", "trace",
                                           "lambda_max_output"])
    spectrum = spectrum.sort_values(["activation", "width", "depth", "seed"], ignore_index=True)
    x = load_fashion_mnist(p.n_train, seed=0)[0].double()  # the training samples (RunConfig's data_seed=0)
    depths = sorted(set(p.depths) | set(p.train_depths))
    spectrum_inf = pd.concat([pd.DataFrame({"activation": a, "depth": depths,
                                            "lambda_max": infinite_width_lambda(x, a, depths)})
                              for a in p.activations], ignore_index=True)
    return {"spectrum": spectrum, "spectrum_inf": spectrum_inf}


def network_matrix(frame: pd.DataFrame, value: str, column: str = "depth", row: str = "seed"):
    """``(columns, matrix)``: ``frame`` pivoted to one row per ``row`` (network) and one column per
    ``column`` value, sorted; every cell must be present."""
    table = frame.pivot_table(index=row, columns=column, values=value, aggfunc="first").sort_index(axis=1)
    if table.isna().any().any():
        raise ValueError(f"every {row!r} needs a {value!r} value at every {column!r}")
    return table.columns.to_numpy(dtype=float), table.to_numpy(dtype=float)


def growth_exponents(frames: dict, p) -> pd.DataFrame:
    """Per activation, width and quantity (``lambda_max``, ``trace``, and at ``train_width``
    ``lambda_max_output``, one output's block): the exponent of the mean over networks against depth (over
    ``p.depths``) with its jackknife-t interval over networks (``mean_curve_exponent``), n, and the
    infinite-width exponent over the same depths."""
    spectrum = frames["spectrum"][frames["spectrum"].depth.isin(p.depths)]
    inf = frames["spectrum_inf"]
    rows = []
    for (act, width), d in spectrum.groupby(["activation", "width"], sort=False):
        d_inf = inf[(inf.activation == act) & inf.depth.isin(p.depths)].sort_values("depth")
        p_inf = power_law(d_inf.depth, d_inf.lambda_max).exponent
        quantities = ("lambda_max", "trace") + (("lambda_max_output",) if width == p.train_width else ())
        for quantity in quantities:
            e = mean_curve_exponent(*network_matrix(d, quantity))
            rows.append((act, width, quantity, e.value, e.low, e.high, e.n, 1.0 if quantity == "trace" else p_inf))
    return pd.DataFrame(rows, columns=["activation", "width", "quantity", "exponent", "low", "high", "n",
                                       "infinite_width"])


# ---------------------------------------------------------------------------- claim 2: the best learning rate

def sweep_config(p, activation: str, depth: int, log2_lr: float, seed: int) -> RunConfig:
    """One run of the learning-rate sweep: NTK parameterization at ``train_width``, seed ``s`` both the
    initialization and the data draw."""
    return RunConfig(parameterization="ntk", activation=activation, depth=depth, width=p.train_width,
                     n_train=p.n_train, lr=2.0**log2_lr, steps=p.steps, seed=p.seed + seed, data_seed=p.seed + seed,
                     threads=RUN_THREADS)


def tuning_order(train_depths: Sequence[int], reference_depth: int) -> list[int]:
    """The reference depth first (its best rate is the one transferred), then the deeper depths in
    increasing order, then the shallower ones in decreasing order (each grid starts from the line through
    the best rates of the depths tuned before it)."""
    depths = sorted(train_depths)
    return ([reference_depth] + [d for d in depths if d > reference_depth]
            + [d for d in reversed(depths) if d < reference_depth])


def scaled_log2_lr(transferred: float, depth: int, reference_depth: int) -> float:
    """``log2`` of the scaled rule's rate ``lr_ref * reference_depth/depth``."""
    return round(transferred + math.log2(reference_depth / depth), 9)


def rule_log2_lr(rule: str, transferred: float, depth: int, reference_depth: int) -> float:
    """``log2`` of the rate of ``rule`` at ``depth``: ``lr_ref`` (fixed) or ``lr_ref * l_ref/l``."""
    if rule not in RULES:
        raise ValueError(f"rule={rule!r} is not allowed; one of {', '.join(RULES)}")
    return transferred if rule == RULES[0] else scaled_log2_lr(transferred, depth, reference_depth)


def run_outcome(loss: Sequence[float], diverged: bool) -> dict:
    """One run's outcome from its loss curve (step order): ``first``, ``loss`` (the final loss, NaN when
    diverged), ``rise`` (the largest rise above the running minimum, ``nup.analysis.catapult.largest_rise``),
    ``diverged`` (non-finite, a blow-up, or a final loss not below the initial one: ``classify_phase`` with
    ``settle=1``) and ``smooth`` (not diverged, no rise above ``SPIKE``, ending lower than it started)."""
    loss = np.asarray(loss, dtype=float)
    divergent = classify_phase(loss, diverged, settle=1.0) == "divergent"
    rise = largest_rise(loss)
    smooth = bool(not divergent and rise <= SPIKE and loss[-1] < loss[0])
    return {"first": float(loss[0]), "loss": float(loss[-1]) if not divergent else math.nan, "rise": rise,
            "diverged": divergent, "smooth": smooth}


def _sweep_runs(p, depth: int, todo: list[tuple]) -> pd.DataFrame:
    """Run ``todo = [(activation, log2_lr, seed)]`` at ``depth``: one row per run with its outcome and its
    ``score``, the final loss or, for a diverged run, its initial loss (module docstring)."""
    configs = [sweep_config(p, a, depth, x, s) for a, x, s in todo]
    runs = sweep(configs, n_jobs=p.n_jobs, progress=False)
    loss = metric(runs, "loss").sort_values(["run", "step"])
    curves = {run: g.value.to_numpy() for run, g in loss.groupby("run")}
    diverged = runs.groupby("run").diverged.first()
    rows = []
    for i, (a, x, s) in enumerate(todo):
        outcome = run_outcome(curves.get(i, np.array([math.nan])), bool(diverged[i]))
        score = outcome["first"] if outcome["diverged"] else outcome["loss"]
        rows.append({"activation": a, "depth": depth, "log2_lr": x, "seed": s, "lr": configs[i].lr, **outcome,
                     "score": score})
    return pd.DataFrame(rows)


def training(p) -> dict:
    """The learning-rate sweep at ``train_width`` (module docstring): ``runs`` (one row per run) and
    ``transferred`` (the best ``log2 lr`` at ``reference_depth``, on the grid, per activation)."""
    parts: list[pd.DataFrame] = []
    current: dict[str, pd.DataFrame] = {}

    def execute(depth, todo, in_grid):
        parts.append(_sweep_runs(p, depth, todo).assign(in_grid=in_grid))
        current["runs"] = pd.concat(parts, ignore_index=True)

    seeds = list(range(p.train_seeds))
    transferred = tune_along(tuning_order(p.train_depths, p.reference_depth), list(p.activations), seeds,
                             p.lr_centers, p.first_half_points, p.half_points, p.max_widen, execute,
                             lambda act, depth: sweep_table(current["runs"], act, depth), LR_STEP,
                             desc="learning-rate sweep")
    for depth in sorted(p.train_depths):  # the scaled rule's rate where no grid holds it
        runs = current["runs"]
        todo = []
        for act in p.activations:
            if not math.isfinite(transferred[act]):
                continue
            x = scaled_log2_lr(transferred[act], depth, p.reference_depth)
            done = runs[(runs.activation == act) & (runs.depth == depth)].log2_lr
            if not np.isclose(done, x).any():
                todo += [(act, x, s) for s in seeds]
        if todo:
            execute(depth, todo, False)
    runs = pd.concat(parts, ignore_index=True).sort_values(["activation", "depth", "log2_lr", "seed"],
                                                           ignore_index=True)
    return {"runs": runs, "transferred": pd.Series(transferred, name="log2_lr").rename_axis("activation")}


def sweep_table(runs: pd.DataFrame, activation: str, depth: int, grid_only: bool = True
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(log2_lrs, scores)`` of one activation's sweep at one depth: seeds (rows, sorted) x rates, the final
    loss or, where a run diverged, its initial loss; ``grid_only``: without the rules' extra rates outside
    the grid."""
    d = runs[(runs.activation == activation) & (runs.depth == depth)]
    if grid_only and "in_grid" in d:
        d = d[d.in_grid.astype(bool)]
    t = d.pivot_table(index="seed", columns="log2_lr", values="score", aggfunc="first", dropna=False)
    return t.columns.to_numpy(dtype=float), t.to_numpy(dtype=float)


def best_rates(runs: pd.DataFrame, spectrum: pd.DataFrame | None = None, train_width: int | None = None
               ) -> pd.DataFrame:
    """Per activation and depth: the best ``log2 lr`` (the parabola vertex around the grid minimum of the
    mean log-score), where the grid minimum sits in its grid (``position`` of ``n_lrs``, 1-based; ``edge``
    when it stayed at an edge after widening), the grid's extent, the geometric mean over seeds of the score
    at the grid minimum, and, given the spectra, ``best lr * mean lambda_max(K_0)`` of the ``train_width``
    networks at that depth."""
    lam = None
    if spectrum is not None:
        lam = spectrum[spectrum.width == train_width].groupby(["activation", "depth"]).lambda_max.mean()
    rows = []
    for (act, depth), _ in runs.groupby(["activation", "depth"]):
        x, losses = sweep_table(runs, act, depth)
        best = best_log2_lr(x, losses)
        loss = float(np.exp(log_loss_table(losses)[:, best.index].mean())) if best.index >= 0 else math.nan
        eta_lambda = 2.0**best.value * lam[act, depth] if lam is not None and (act, depth) in lam else math.nan
        rows.append((act, int(depth), best.value, best.index + 1, len(x), best.edge or "", x[0], x[-1], loss,
                     eta_lambda))
    return pd.DataFrame(rows, columns=["activation", "depth", "log2_best_lr", "position", "n_lrs", "edge",
                                       "grid_low", "grid_high", "best_loss", "best_lr_x_lambda_max"])


def loss_by_rate(runs: pd.DataFrame) -> pd.DataFrame:
    """Per activation, depth and rate (every rate run, the rules' extra ones included): the geometric mean
    over seeds of the score (final loss, or initial loss if diverged) and the fraction of runs that diverged."""
    return (runs.assign(log_score=np.log(runs.score))
            .groupby(["activation", "depth", "log2_lr"], as_index=False)
            .agg(log_score=("log_score", "mean"), diverged=("diverged", "mean"))
            .assign(score=lambda d: np.exp(d.log_score)).drop(columns="log_score"))


def best_rate_slope(runs: pd.DataFrame, activation: str) -> Estimate:
    """Slope of ``log2(best lr)`` against ``log2(depth)`` with its jackknife-t interval over whole seeds
    (``nup.analysis.best_lr.depth_slope``)."""
    d = runs[runs.activation == activation]
    return depth_slope({int(depth): sweep_table(runs, activation, depth) for depth in sorted(d.depth.unique())})


def _rule_losses(runs: pd.DataFrame, activation: str, depth: int, log2_lr: float) -> np.ndarray:
    """Per seed (sorted) the score (final loss, or initial loss if diverged) at ``log2_lr`` among every rate
    run at ``depth``."""
    x, losses = sweep_table(runs, activation, depth, grid_only=False)
    hits = np.flatnonzero(np.isclose(x, log2_lr))
    if len(hits) != 1:
        raise ValueError(f"log2_lr={log2_lr!r} was not run for {activation} at depth {depth}")
    return np.exp(log_loss_table(losses)[:, hits[0]])


def rule_regrets(runs: pd.DataFrame, transferred: pd.Series, reference_depth: int) -> pd.DataFrame:
    """Per activation, rule and depth other than the reference: the rule's regret, its score over the score at
    the depth's grid minimum (every rate run there, paired seeds, ``transfer_regret``), with its interval."""
    rows = []
    for act in transferred.index:
        for depth in sorted(runs[runs.activation == act].depth.unique()):
            if depth == reference_depth:
                continue
            for rule in RULES:
                n = runs.seed.nunique()
                if math.isfinite(transferred[act]):
                    x = rule_log2_lr(rule, transferred[act], depth, reference_depth)
                    est = transfer_regret(*sweep_table(runs, act, depth, grid_only=False), x)
                else:
                    x, est = math.nan, nan_estimate(n, "paired seeds")
                rows.append((act, rule, int(depth), x, est.value, est.low, est.high, est.n))
    return pd.DataFrame(rows, columns=["activation", "rule", "depth", "log2_lr", "regret", "low", "high", "n"])


def rule_comparison(runs: pd.DataFrame, transferred: pd.Series, reference_depth: int) -> pd.DataFrame:
    """Per activation and depth deeper than the reference: the fixed rate's final loss over the scaled
    rate's, geometric mean over paired seeds with its interval, and ``fixed`` = ``"higher"`` / ``"lower"``
    when the interval lies wholly above / below 1 (``"undecided"`` otherwise)."""
    rows = []
    for act in transferred.index:
        for depth in sorted(runs[runs.activation == act].depth.unique()):
            if depth <= reference_depth:
                continue
            if math.isfinite(transferred[act]):
                fixed = _rule_losses(runs, act, depth, rule_log2_lr(RULES[0], transferred[act], depth, reference_depth))
                scaled = _rule_losses(runs, act, depth,
                                      rule_log2_lr(RULES[1], transferred[act], depth, reference_depth))
                est = paired_log_ratio(fixed, scaled)
            else:
                est = nan_estimate(runs.seed.nunique(), "paired seeds")
            side = "higher" if est.low > 1 else "lower" if est.high < 1 else "undecided"
            rows.append((act, int(depth), est.value, est.low, est.high, est.n, side))
    return pd.DataFrame(rows, columns=["activation", "depth", "fixed_over_scaled", "low", "high", "n", "fixed"])


def first_loss_depth(comparison: pd.DataFrame) -> pd.Series:
    """Per activation: the first depth from which the fixed rate ends decidedly higher than the scaled one at
    every deeper depth trained (``inf`` when it does not at the deepest)."""
    out = {}
    for act, d in comparison.groupby("activation", sort=False):
        d = d.sort_values("depth")
        higher = (d.fixed == "higher").to_numpy()
        if not len(higher) or not higher[-1]:
            out[act] = math.inf
            continue
        not_higher = np.flatnonzero(~higher)
        out[act] = float(d.depth.iloc[not_higher[-1] + 1] if len(not_higher) else d.depth.iloc[0])
    return pd.Series(out, name="first depth from which the fixed rate ends higher")


def rule_summary(runs: pd.DataFrame, transferred: pd.Series, reference_depth: int) -> pd.DataFrame:
    """Per activation, depth and rule (and the depth's best grid rate): the rate, the fraction of runs that
    diverged and that trained smoothly (no loss spike; context, deciding nothing), the largest loss rise, the
    mean final loss of the runs that did not diverge, and the geometric mean over seeds of the score (what the
    regrets compare)."""
    best = best_rates(runs).set_index(["activation", "depth"])
    rows = []
    for (act, depth), d in runs.groupby(["activation", "depth"]):
        x_grid, losses = sweep_table(runs, act, depth)
        index = best.loc[(act, depth)].position - 1
        picks = {"best grid rate": x_grid[index]} if index >= 0 else {}
        if math.isfinite(transferred[act]):
            picks.update({rule: rule_log2_lr(rule, transferred[act], depth, reference_depth) for rule in RULES})
        for name, x in picks.items():
            r = d[np.isclose(d.log2_lr, x)]
            rows.append((act, int(depth), name, 2.0**x, float(r.diverged.mean()), float(r.smooth.mean()),
                         float(r.rise.max()), float(r.loss.mean()), float(np.exp(np.log(r.score).mean())), len(r)))
    return pd.DataFrame(rows, columns=["activation", "depth", "rate", "lr", "diverged", "smooth", "largest_rise",
                                       "final_loss", "score", "runs"]).set_index(["activation", "depth", "rate"])


# ---------------------------------------------------------------------------- claim 3: concentration

def kernel_widths(p, profile: str, depth: int) -> list[int]:
    """The (base) widths of ``profile`` at ``depth`` whose widest hidden layer fits ``max_hidden_width``."""
    widths = p.constant_widths if profile == "constant" else p.quadratic_base_widths
    return [m for m in widths if max(hidden_widths(profile, m, depth), default=m) <= p.max_hidden_width]


def shared_widths(p, profile: str) -> list[int]:
    """Widths measured at both the shallowest and the deepest of ``kernel_depths``."""
    shallow, deep = min(p.kernel_depths), max(p.kernel_depths)
    return sorted(set(kernel_widths(p, profile, shallow)) & set(kernel_widths(p, profile, deep)))


@lru_cache(maxsize=8)
def _kernel_data(n: int, seed: int) -> torch.Tensor:
    return load_fashion_mnist(n, seed=seed)[0].double()


@lru_cache(maxsize=32)
def _kernel_inf(activation: str, depth: int, n: int, seed: int) -> np.ndarray:
    return ntk_kernel(_kernel_data(n, seed), depth, activation)


def _distance_task(activation: str, profile: str, depth: int, width: int, seed: int, n: int, data_seed: int) -> float:
    device = resolve_device("auto")
    x = _kernel_data(n, data_seed).to(device)
    model = NTK(width_profile=profile).build(x.shape[1], 1, depth, width, activation, seed=seed,
                                             dtype=torch.float64, device=device)
    k = empirical_ntk(model, x).cpu().numpy()
    k_inf = _kernel_inf(activation, depth, n, data_seed)
    return float(np.linalg.norm(k - k_inf) / np.linalg.norm(k_inf))


def concentration(p) -> pd.DataFrame:
    """``|K - K_inf|_F / |K_inf|_F`` per (activation, profile, depth, width, network)."""
    cells = [(a, profile, d, m) for a in p.activations for d in p.kernel_depths
             for profile in ("constant", "quadratic") for m in kernel_widths(p, profile, d)]
    keys = [(*c, s) for c in cells for s in range(p.kernel_networks)]
    cost = [sum(np.prod(w) for w in zip(ws, ws[1:])) for ws in
            ([784, *hidden_widths(k[1], k[3], k[2]), 1] for k in keys)]
    order = np.argsort(cost, kind="stable")[::-1]  # the dearest first, for the workers' balance
    tasks = [(*keys[i][:4], p.seed + keys[i][4], p.n_kernel, KERNEL_DATA_SEED) for i in order]
    values = dict(zip(order, parallel_map(_distance_task, tasks, p.n_jobs, desc="empirical NTKs")))
    frame = pd.DataFrame(keys, columns=["activation", "profile", "depth", "width", "seed"])
    frame["relative_distance"] = [values[i] for i in range(len(keys))]
    return frame


def distance_matrix(distance: pd.DataFrame) -> pd.DataFrame:
    """One row per network seed, one column per (activation, profile, depth, width) cell."""
    table = distance.pivot_table(index="seed", columns=["activation", "profile", "depth", "width"],
                                 values="relative_distance", aggfunc="first")
    if table.isna().any().any():
        raise ValueError("every network seed needs a distance in every cell")
    return table


def _log_cells(table: pd.DataFrame, cells) -> np.ndarray:
    """``log`` distance per network (rows) in each of ``cells`` (columns of ``table``)."""
    return np.log(table[list(cells)].to_numpy(dtype=float))


def concentration_exponent(table: pd.DataFrame, activation: str, profile: str, depth: int) -> Estimate:
    """Exponent of the geometric mean over networks of the distance against the (base) width, with its
    jackknife-t interval over networks (the exponent of the mean log curve is the mean of the networks'
    own exponents, so the interval is Student's t)."""
    cells = [c for c in table.columns if c[:3] == (activation, profile, depth)]
    widths = np.log(np.array([c[3] for c in cells], dtype=float))
    return jackknife_t(_log_cells(table, cells), lambda m: float(np.polyfit(widths, m.mean(axis=0), 1)[0]))


def _geometric_ratio(table: pd.DataFrame, num_cells, den_cells) -> Estimate:
    """Geometric mean over networks and cell pairs of ``distance(num)/distance(den)``, each network's mean
    log ratio one replicate (paired seeds: the same network seed in both cells)."""
    num = np.exp(_log_cells(table, num_cells).mean(axis=1))
    den = np.exp(_log_cells(table, den_cells).mean(axis=1))
    return paired_log_ratio(num, den)


def depth_growth(table: pd.DataFrame, activation: str, profile: str, shallow: int, deep: int, widths) -> Estimate:
    """Geometric mean over ``widths`` and networks of ``distance(deep)/distance(shallow)``, t interval over
    networks."""
    return _geometric_ratio(table, [(activation, profile, deep, w) for w in widths],
                            [(activation, profile, shallow, w) for w in widths])


def activation_ratio(table: pd.DataFrame, numerator: str, denominator: str) -> Estimate:
    """Geometric mean over every (profile, depth, width) cell and network of
    ``distance(numerator)/distance(denominator)``, t interval over networks."""
    cells = [c[1:] for c in table.columns if c[0] == numerator and (denominator, *c[1:]) in table.columns]
    return _geometric_ratio(table, [(numerator, *c) for c in cells], [(denominator, *c) for c in cells])


def concentration_table(frames: dict, p) -> pd.DataFrame:
    """Per activation, profile and depth: the exponent against width (geometric mean over networks), its
    interval and n."""
    table = distance_matrix(frames["distance"])
    rows = []
    for act in p.activations:
        for profile in ("constant", "quadratic"):
            for depth in p.kernel_depths:
                e = concentration_exponent(table, act, profile, depth)
                rows.append((act, profile, depth, e.value, e.low, e.high, e.n))
    return pd.DataFrame(rows, columns=["activation", "profile", "depth", "exponent", "low", "high", "n"])


# ---------------------------------------------------------------------------- claim 4: conditioning

def slope_for_delta(delta: float) -> float:
    """The leaky-ReLU slope ``alpha in [-1, 1)`` whose ``Delta_phi = (1-alpha)^2 / (2(1+alpha^2))`` is ``delta``
    (``delta = 1``: abs, ``1/2``: ReLU, towards 0: towards linear)."""
    if not 0 < delta <= 1:
        raise ValueError(f"delta={delta!r} is not allowed; delta must be in (0, 1]")
    if abs(1 - 2 * delta) < 1e-12:
        return 0.0
    return float((1 - 2 * math.sqrt(delta * (1 - delta))) / (1 - 2 * delta))


def condition_depths(max_depth: int, dense_up_to: int = 64, ratio: float = 1.02) -> set[int]:
    """Every depth up to ``dense_up_to``, then depths a factor ``ratio`` apart, up to ``max_depth``."""
    grid = set(range(1, min(dense_up_to, max_depth) + 1))
    d = float(dense_up_to)
    while d < max_depth:
        d *= ratio
        grid.add(min(int(round(d)), max_depth))
    grid.add(max_depth)
    return grid


def condition_curve(x, activation, max_depth: int, dense_up_to: int = 64, ratio: float = 1.02) -> pd.DataFrame:
    """``cond`` and ``lambda_max`` of ``Theta^l`` (the 1/n cancels in cond) at the ``condition_depths``."""
    grid = condition_depths(max_depth, dense_up_to, ratio)
    rows = []
    for depth, _, theta in iterate_kernels(x, activation):
        if depth in grid:
            ev = np.linalg.eigvalsh(theta)
            rows.append((depth, ev[-1] / ev[0] if ev[0] > 0 else math.inf, ev[-1] / len(x)))
        if depth >= max_depth:
            break
    return pd.DataFrame(rows, columns=["depth", "cond", "lambda_max"])


def _condition_task(delta: float, n: int, data_seed: int, max_depth: int) -> pd.DataFrame:
    curve = condition_curve(_kernel_data(n, data_seed), leaky_relu(slope_for_delta(delta)), max_depth)
    return curve.assign(delta=delta, draw=data_seed - KERNEL_DATA_SEED)


def conditioning(p) -> dict:
    """``condition``: cond and lambda_max of the infinite-width NTK per draw, Delta and depth; ``settle``:
    per draw and Delta the extrapolated limit and the settling depth."""
    tasks = [(delta, p.n_kernel, KERNEL_DATA_SEED + i, p.cond_max_depth) for i in range(p.cond_draws)
             for delta in p.cond_deltas]
    condition = pd.concat(parallel_map(_condition_task, tasks, p.n_jobs, desc="cond(K_inf)"), ignore_index=True)
    condition = condition[["draw", "delta", "depth", "cond", "lambda_max"]]
    rows = []
    for (draw, delta), d in condition.groupby(["draw", "delta"]):
        model = tail_model(d.depth, d.cond)
        depth, extrapolated = settle_depth(d.depth, d.cond, model[0], SETTLE, model)
        rows.append((draw, delta, slope_for_delta(delta), model[0], depth, extrapolated))
    settle = pd.DataFrame(rows, columns=["draw", "delta", "slope", "limit", "settle_depth", "extrapolated"])
    return {"condition": condition, "settle": settle}


def asymptotic_exponent(condition: pd.DataFrame, delta: float, tail: float = 4.0) -> np.ndarray:
    """Per draw: the exponent of the infinite-width ``lambda_max`` against depth over the deepest depths
    (``>= max/tail``) of the recursion."""
    d = condition[condition.delta == delta]
    out = []
    for _, g in d.groupby("draw"):
        g = g[g.depth >= g.depth.max() / tail]
        out.append(power_law(g.depth, g.lambda_max).exponent)
    return np.array(out)


def infinite_width_exponents(condition: pd.DataFrame, deltas=(0.5, 1.0), per_octave: int = 2) -> pd.DataFrame:
    """The local exponent ``d log lambda_max / d log l`` of the infinite-width NTK against depth, about
    ``per_octave`` points per doubling: mean, min and max over the data draws, per Delta."""
    rows = []
    for delta in deltas:
        d = condition[condition.delta == delta]
        # the computed depth nearest (in log) to each point of a geometric grid: the condition curve's own grid
        # is dense and 2% apart, and need not contain the geometric grid's depths
        computed = np.unique(d.depth.to_numpy())
        targets = geometric_depths(int(computed.max()), per_octave)
        grid = set(computed[np.abs(np.log(computed)[None, :] - np.log(targets)[:, None]).argmin(axis=1)])
        curves = [local_exponents(g.depth, g.lambda_max) for _, g in d[d.depth.isin(grid)].groupby("draw")]
        values = np.stack([c.exponent.to_numpy() for c in curves])
        rows.append(pd.DataFrame({"delta": delta, "depth": curves[0].depth, "exponent": values.mean(0),
                                  "low": values.min(0), "high": values.max(0)}))
    return pd.concat(rows, ignore_index=True)


# ---------------------------------------------------------------------------- verdicts

def claims(frames: dict, p) -> list[Verdict]:
    return [*growth_claims(frames, p), *training_claims(frames, p), *concentration_claims(frames, p),
            *conditioning_claims(frames, p)]


def _far_from(target: float):
    return lambda v: abs(v.estimate - target) if math.isfinite(v.estimate) else math.inf


def growth_claims(frames: dict, p) -> list[Verdict]:
    ex = growth_exponents(frames, p)
    far = _far_from(LINEAR[0])
    target, tol = format_number(LINEAR[0]), format_number(LINEAR[1])

    def estimate(r, shift=0.0) -> Estimate:
        return Estimate(r.exponent - shift, r.low - shift, r.high - shift, n=int(r.n), unit="seeds")

    linear = {q: [within(f"{q} cell", estimate(r), None, *LINEAR) for r in d.itertuples()]
              for q, d in ex.groupby("quantity")}
    lam = ex[ex.quantity == "lambda_max"]
    inf_same = [within(f"{a} cell", value, None, *LINEAR)
                for a, value in lam.groupby("activation").infinite_width.first().items()]
    gaps = {w: [within(f"{r.activation} cell", estimate(r, r.infinite_width), None, 0.0, EXPONENT_GAP)
                for r in lam[lam.width == w].itertuples()] for w in (min(p.widths), max(p.widths))}
    asymptotic = [within(f"{delta} cell", mean_interval(asymptotic_exponent(frames["condition"], delta)), None,
                         *ASYMPTOTIC) for delta in (0.5, 1.0)]
    block = [within(f"{r.activation} cell", estimate(r, r.infinite_width), None, 0.0, EXPONENT_GAP)
             for r in ex[ex.quantity == "lambda_max_output"].itertuples()]
    gap = _far_from(0.0)
    within_gap = format_number(EXPONENT_GAP)
    return [
        all_of(f"at the EOC with constant width trace(K_0) grows like depth (exponent {target} +- {tol}, both "
               "widths)", linear["trace"], far),
        all_of(f"at the EOC with constant width lambda_max(K_0) grows like depth (exponent {target} +- {tol}, "
               "both widths)", linear["lambda_max"], far),
        all_of(f"the infinite-width lambda_max grows like depth over the same depths (exponent {target} +- {tol})",
               inf_same, far),
        all_of(f"the infinite-width lambda_max grows like depth asymptotically (exponent "
               f"{format_number(ASYMPTOTIC[0])} +- {format_number(ASYMPTOTIC[1])} over the deepest quarter of the "
               "recursion, abs and relu)", asymptotic, _far_from(ASYMPTOTIC[0])),
        all_of(f"at the smaller width lambda_max(K_0) grows with depth like the infinite-width lambda_max "
               f"(exponents within {within_gap})", gaps[min(p.widths)], gap),
        all_of(f"at the larger width lambda_max(K_0) grows with depth like the infinite-width lambda_max "
               f"(exponents within {within_gap})", gaps[max(p.widths)], gap),
        all_of(f"at the training width one output's block of K_0 grows with depth like the infinite-width "
               f"lambda_max (exponents within {within_gap})", block, gap),
    ]


def stability_verdict(spectrum: pd.DataFrame, transferred: pd.Series, p) -> Verdict:
    """Context: ``lr_ref * lambda_max(K_0)`` of the ``train_width`` networks at the deepest depth (geometric
    mean over networks, t interval of the mean log: ``lambda_max`` of one network is heavy-tailed at depth)
    against the quadratic model's stability bound, every activation."""
    deepest = max(p.train_depths)
    cells = []
    for act in p.activations:
        lam = spectrum[(spectrum.activation == act) & (spectrum.width == p.train_width) & (spectrum.depth == deepest)]
        values = 2.0 ** transferred[act] * lam.lambda_max.to_numpy()
        cells.append(compare("cell", mean_interval(np.log(values)).map(math.exp), None, ">", STABLE))
    return all_of(f"the best rate at the reference depth leaves the stable range deeper (lr lambda_max(K_0) > "
                  f"{format_number(STABLE)} at the deepest depth, geometric mean)", cells, lambda v: -v.estimate)


def slope_verdicts(slopes: dict[str, Estimate]) -> list[Verdict]:
    """(a) ``1/l``: every activation's best-rate slope within ``INVERSE_DEPTH``; and, separately, below 0."""
    like = [within("cell", s, None, *INVERSE_DEPTH) for s in slopes.values()]
    below = [compare("cell", s, None, "<", 0.0) for s in slopes.values()]
    target, tol = (format_number(x) for x in INVERSE_DEPTH)
    return [
        all_of(f"at constant width the best learning rate shrinks like 1/l (slope of log2 best lr against log2 "
               f"depth within {target} +- {tol}, relu and abs)", like, _far_from(INVERSE_DEPTH[0])),
        all_of("at constant width the best learning rate shrinks with depth (slope of log2 best lr against "
               "log2 depth < 0, relu and abs)", below, lambda v: v.high if math.isfinite(v.high) else math.inf),
    ]


def regret_verdict(rule: str, regrets: pd.DataFrame, reference_depth: int) -> Verdict:
    """(b) ``rule`` transfers from the reference depth to every deeper depth: True when every depth's regret
    is decided below ``REGRET_THRESHOLD``, False when one is decided above it; the worst depth shown.  Deeper
    only: the claim is about deeper networks; at a shallower depth the scaled rule *raises* the rate, and the
    best rate there is capped by divergence rather than set by ``1/l`` (those regrets stay in the table)."""
    d = regrets[(regrets.rule == rule) & (regrets.depth > reference_depth)]
    cells = [compare("cell", Estimate(r.regret, r.low, r.high, n=int(r.n), unit="paired seeds"), None, "<",
                     REGRET_THRESHOLD) for r in d.itertuples()]
    what = {RULES[0]: "kept fixed", RULES[1]: "scaled as lr * l_ref/l"}[rule]
    return all_of(f"the best rate at the reference depth, {what}, transfers to every deeper depth trained "
                  f"(regret below {format_number(REGRET_THRESHOLD)} at each, relu and abs; the worst shown)", cells,
                  lambda v: v.high if math.isfinite(v.high) else math.inf)


def crossover_verdict(comparison: pd.DataFrame) -> Verdict:
    """(c) at the deepest depth the fixed rate ends at a higher training loss than the scaled one, every
    activation (geometric-mean ratio over paired seeds > 1)."""
    deepest = comparison[comparison.depth == comparison.groupby("activation").depth.transform("max")]
    cells = [compare("cell", Estimate(r.fixed_over_scaled, r.low, r.high, n=int(r.n), unit="paired seeds"), None,
                     ">", 1.0) for r in deepest.itertuples()]
    return all_of("at the deepest depth trained the fixed rate ends at a higher training loss than lr * l_ref/l "
                  "(relu and abs; the first depth from which it does is in the table)", cells,
                  lambda v: -v.low if math.isfinite(v.low) else math.inf)


def training_claims(frames: dict, p) -> list[Verdict]:
    runs, transferred = frames["runs"], frames["transferred"]
    slopes = {act: best_rate_slope(runs, act) for act in p.activations}
    regrets = rule_regrets(runs, transferred, p.reference_depth)
    comparison = rule_comparison(runs, transferred, p.reference_depth)
    return [stability_verdict(frames["spectrum"], transferred, p), *slope_verdicts(slopes),
            regret_verdict(RULES[0], regrets, p.reference_depth), regret_verdict(RULES[1], regrets, p.reference_depth),
            crossover_verdict(comparison)]


def concentration_claims(frames: dict, p) -> list[Verdict]:
    table = distance_matrix(frames["distance"])
    shallow, deep = min(p.kernel_depths), max(p.kernel_depths)
    exponents = [within("cell", concentration_exponent(table, a, "quadratic", d), None, *CONCENTRATION_EXPONENT)
                 for a in p.activations for d in p.kernel_depths]
    flat = [compare("cell", depth_growth(table, a, "quadratic", shallow, deep, shared_widths(p, "quadratic")), None,
                    "<", FLAT) for a in p.activations]
    worse = [compare("cell", depth_growth(table, a, "constant", shallow, deep, shared_widths(p, "constant")), None,
                     ">", WORSENS) for a in p.activations]
    return [
        all_of(f"with k^2 widths the NTK error shrinks like m^(-1/2) (fitted exponent within "
               f"{format_number(CONCENTRATION_EXPONENT[1])})", exponents, _far_from(CONCENTRATION_EXPONENT[0])),
        all_of(f"with k^2 widths the NTK error stays roughly flat in depth (grows < {format_number(FLAT)}x)", flat,
               lambda v: v.estimate),
        all_of(f"at constant width the NTK error worsens with depth (grows > {format_number(WORSENS)}x)", worse,
               lambda v: -v.estimate),
        compare("the absolute value is closer to the infinite-width NTK than ReLU at equal width and depth "
                "(geometric mean)", activation_ratio(table, "abs", "relu"), None, "<", 1.0),
    ]


def conditioning_claims(frames: dict, p) -> list[Verdict]:
    settle = frames["settle"]
    by = settle.pivot_table(index="draw", columns="delta", values="settle_depth")
    limits = settle.pivot_table(index="draw", columns="delta", values="limit")
    faster = ratio_of_means(by[1.0].to_numpy(), by[0.5].to_numpy(), paired=True)
    deltas = by.columns.to_numpy(dtype=float)
    slopes = np.array([power_law(deltas, row).exponent if np.all(np.isfinite(row)) else math.nan
                       for row in by.to_numpy()])
    spread = (limits.max(axis=1) / limits.min(axis=1) - 1).to_numpy()
    return [
        compare("cond(K_inf) reaches its deep limit at a smaller depth for abs than for relu", faster, None, "<", 1.0),
        compare("the depth at which cond(K_inf) settles shrinks as Delta_phi grows (leaky ReLU sweep, fitted "
                "exponent < 0)", mean_interval(slopes), None, "<", 0.0),
        compare(f"the deep limit of cond(K_inf) is the same for every Delta_phi (within {SAME_LIMIT:.0%})",
                mean_interval(spread), None, "<", SAME_LIMIT),
    ]

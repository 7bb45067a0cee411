"""Notebook 05, claim 7: the lazy / catapult / divergent phases of ``eta * lambda_0``, the upper edge of the
catapult window against depth and width (depth or depth/width?), and the Edge of Stability.

Full-batch GD with MSE ``|f - y|^2/(2n)``, ``K = J J^T/n``, ``lambda_0 = lambda_max(K_0)`` of every network
(measured on its own training set), ``eta = ratio/lambda_0``.  Literature (Lewkowycz et al. 2020): lazy
below 2, catapult from 2 to the window's upper edge (4 in the two-layer linear "uv" model, about 12
reported for ReLU networks), divergent above.

* **The scan** (``scan``): for every parameterization (``"ntk"``: NTK parameterization at the EOC,
  constant width, at two widths ``width`` and ``second_width``; ``"nup"``: νP's network, ``k^2 m`` widths
  at the EOC, trained by plain GD, since the normalized update has no ``eta * lambda_0``), activation,
  depth and seed, a coarse grid of ratios, then ``bisection_rounds`` geometric bisections of the bracket
  of the upper edge.  Each run's phase comes from its loss curve and ``lambda_t``
  (``nup.analysis.catapult.classify_phase``, the phase rule notebook 06 shares).
* **Depth or depth/width** (``edge_scaling``): the literature's edges at finite width grow with depth/width
  (the wide, shallow limit is the uv model's 4); a scan at one width cannot tell that from an edge that
  grows with depth.  Per activation, the NTK parameterization's edges at every depth ``l`` and both widths
  ``w`` are fitted by least squares on the mean over seeds of their logs::

      log edge = c + a log l + b log w,        share = -b/a.

  An edge that follows depth alone has ``b = 0`` (share 0); one that follows ``l/w`` has ``b = -a``
  (share 1).  With the same depths at both widths the design is balanced, so ``b`` is the mean over
  depths of the log ratio of the two widths' edges divided by ``log(w2/w1)``, and ``a`` the depth slope
  averaged over the widths.  The interval is jackknife-t over paired seeds (the same seed indexes every
  depth and width); a seed whose edge is censored in any of these cells is left out and counted.
* **Examples**: one lazy, one catapult and one divergent run per activation (shallowest depth, NTK
  parameterization at ``width``, first seed) with ``lambda_t`` and the sharpness.
* **Edge of Stability** (Cohen et al. 2021): at ``eta * lambda_0 = eos_ratio < 2``, NTK parameterization
  and PyTorch's default init (``"sp"``), several seeds, the sharpness every ``eos_every`` steps until
  training *stops* (``stop_point``: the loss reaches ``EOS_STOP_LOSS`` or the sharpness stops changing),
  at most ``eos_max_steps`` steps (the frame says where that bound binds).

Frames (``run_experiment``): ``lambda0`` (per network), ``runs`` (one row per scan run), ``edges`` (per
network: the bracket of the upper edge), ``examples`` and ``eos`` (long frames), ``eos_summary`` (per EOS run).

Every seed is one initialization; all of them train on the same ``n_train`` images (one data draw).

Verdicts: statements about *every* run are decided by the runs themselves (the estimate is the fraction
of runs that satisfy them, True only when all do).  Statements about the edge compare the geometric mean
over seeds of a cell's edges (or the paired ratio of two cells' edges, ``nup.analysis.stats.paired_log_ratio``)
with a threshold by its 95% jackknife-t interval over seeds (``nup.analysis.stats``); "every" such
statement holds when it holds in every cell (``nup.analysis.verdicts.all_of``; the table shows the deciding
cell).  The sharpness: the mean over seeds with its t interval.  The thresholds are the constants below,
fixed before the runs; each statement prints the one it is decided with.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from nup.analysis.catapult import (PHASES, classify_phase, config_for_ratio, constant_loss, initial_eigenvalues,
                                   largest_rise, window_edge)
from nup.analysis.stats import Estimate, fraction, jackknife_t, mean_interval, nan_estimate, paired_log_ratio
from nup.analysis.verdicts import Verdict, all_of, compare, format_number, within
from nup.core.activations import ACTIVATIONS
from nup.experiments import RUN_THREADS
from nup.experiments.schema import MIN_SEEDS, Choice, Float, Int, List, Schema
from nup.progress import progress
from nup.training.config import RunConfig
from nup.training.sweep import sweep

NOTEBOOK = "05_catapult"
COMPARED_PARAMETERIZATIONS = ("ntk", "nup")  # "nup": νP's widths and init, trained by plain GD (normalize="none")
CELL = ["parameterization", "activation", "width", "depth", "seed"]  # one network (width: νP's base width m)
EDGE_CELL = CELL[:-1]  # a cell of networks whose seeds are replicates


def _check(p) -> None:
    if not {"abs", "relu"} <= set(p.activations):
        raise ValueError(f"activations={list(p.activations)!r} is not allowed; activations must include 'abs' and "
                         "'relu' (the verdicts compare them with the uv model's 4 and the ~12 of ReLU networks)")
    if p.ratios[0] >= 2 or p.ratios[-1] <= 4:
        raise ValueError(f"ratios={list(p.ratios)!r} is not allowed; ratios must reach below 2 and above 4 "
                         "(the lazy phase and past the uv model's edge)")
    if p.second_width == p.width:
        raise ValueError(f"second_width={p.second_width!r} is not allowed; second_width must differ from width "
                         f"({p.width}): the two widths separate depth from depth/width")
    if p.eos_window % p.eos_every or 2 * p.eos_window > p.eos_max_steps:
        raise ValueError(f"eos_window={p.eos_window!r} is not allowed; eos_window must be a multiple of eos_every "
                         f"({p.eos_every}) and at most eos_max_steps/2 ({p.eos_max_steps // 2})")


SCHEMA = Schema(
    List("activations", item=Choice("activation", choices=tuple(ACTIVATIONS)), distinct=True,
         help="presets of the family a*s + b*abs(s); must include abs and relu"),
    List("depths", item=Int("depth", minimum=2), min_length=2, increasing=True,
         help="NTK parameterization: layers l of the scanned networks"),
    Int("width", minimum=2, help="NTK parameterization: constant hidden width"),
    Int("second_width", minimum=2, help="NTK parameterization: the scan again at this width, to tell an edge that "
                                        "follows depth from one that follows depth/width"),
    List("nup_depths", item=Int("depth", minimum=2), min_length=2, increasing=True,
         help="νP's network (k^2 m widths), trained by plain GD"),
    Int("nup_width", minimum=1, help="νP: base width m"),
    Int("n_train", minimum=16, help="Fashion-MNIST training samples, one-hot targets, MSE"),
    Int("steps", minimum=10, help="full-batch GD steps of every scan run"),
    List("seeds", item=Int("seed", minimum=0), min_length=MIN_SEEDS, distinct=True,
         help=f"networks per depth and width (the same seed indexes both widths); at least {MIN_SEEDS}"),
    List("ratios", item=Float("ratio", positive=True), min_length=3, increasing=True,
         help="coarse grid of eta * lambda_0"),
    Int("bisection_rounds", minimum=0, help="geometric bisections of the upper edge's bracket"),
    Int("diagnostic_every", minimum=1, help="lambda_t of the scan runs every this many steps"),
    Int("example_steps", minimum=10),
    Int("example_every", minimum=1, help="lambda_t and sharpness of the example runs"),
    Float("eos_ratio", positive=True, maximum=1.99, help="eta * lambda_0 of the Edge-of-Stability runs"),
    List("eos_seeds", item=Int("seed", minimum=0), min_length=MIN_SEEDS, distinct=True),
    Int("eos_max_steps", minimum=100, help="the bound on the Edge-of-Stability runs"),
    Int("eos_every", minimum=1, help="sharpness and loss every this many steps"),
    Int("eos_window", minimum=1, help="the sharpness has stopped changing when its median over this many steps "
                                      "moved by less than 1% from the window before"),
    Int("n_jobs", minimum=1),
    checks=(_check,),
)

# Thresholds, fixed before the runs.
STABILITY = 2.0                    # eta * lambda = 2: the linear stability threshold
UV_EDGE, UV_TOLERANCE = 4.0, 0.25  # abs: the upper edge within 25% of the uv model's 4
RELU_EDGE, RELU_TOLERANCE = 12.0, 0.50  # relu: within 50% of the ~12 reported for ReLU networks
DEPTH_TOLERANCE = 0.25             # "does not depend on depth": deepest edge within 25% of the shallowest
EOS_TOLERANCE = 0.10               # the sharpness within 10% of 2/eta
EOS_STOP_LOSS = 1e-4               # an Edge-of-Stability run stops when the loss reaches this ...
EOS_FLAT = 0.01                    # ... or the median of eta*sharpness moved by less than 1% over one window
# Depth or depth/width (NTK parameterization, two widths): fit log edge = c + a log l + b log w and take
# the share of the depth exponent that width cancels, -b/a: 0 if the edge follows depth alone, 1 if it
# follows depth/width.  Each hypothesis owns the half of the line nearest to it: a verdict holds when the
# whole interval lies within SHARE_TOLERANCE of its target.
DEPTH_ONLY_SHARE, DEPTH_PER_WIDTH_SHARE = 0.0, 1.0
SHARE_TOLERANCE = 0.5


# ---------------------------------------------------------------------------- phases of runs

def _finite_min(values) -> float:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.min()) if values.size else math.nan


def summarize_run(loss, lam, diverged: bool, lambda0: float, ratio: float, baseline: float) -> dict:
    """One run's phase and numbers from its loss (every step) and ``lambda_t`` (every diagnostic step,
    from step 0) at ``eta = ratio/lambda0``: ``eta_lambda_min`` after step 0 and ``eta_lambda_end``."""
    loss, lam = np.asarray(loss, dtype=float), np.asarray(lam, dtype=float)
    lambda_ratio = lam[-1] / lambda0 if len(lam) and not diverged else math.nan
    eta_lam = ratio * lam / lambda0
    return dict(phase=classify_phase(loss, diverged, lambda_ratio=lambda_ratio, baseline=baseline),
                rise=largest_rise(loss),
                final_loss=float(loss[-1]), eta_lambda_min=_finite_min(eta_lam[1:]),
                eta_lambda_end=float(eta_lam[-1]) if len(lam) and not diverged else math.nan)


def series_by_run(frame: pd.DataFrame, name: str) -> dict[int, np.ndarray]:
    """``{run: values of metric name (layer 0) in step order}`` of a sweep frame."""
    rows = frame[(frame.metric == name) & (frame.layer == 0)].sort_values(["run", "step"], kind="stable")
    return {run: g.to_numpy() for run, g in rows.groupby("run")["value"]}


def run_grid(p, points: list[tuple], networks: pd.DataFrame, desc: str = "runs") -> pd.DataFrame:
    """Run ``points`` = ``[(network key (parameterization, activation, width, depth, seed), ratio), ...]`` and return
    one summary row per run (the network key, ``ratio``, ``lr`` and ``summarize_run``'s numbers)."""
    if not points:
        return pd.DataFrame(columns=[*CELL, "ratio", "lr", "phase"])
    table = networks.set_index(CELL)
    configs = [config_for_ratio(network_config(p, *key), ratio, table.loc[key, "lambda0"]) for key, ratio in points]
    frame = sweep(configs, n_jobs=p.n_jobs)
    loss, lam = series_by_run(frame, "loss"), series_by_run(frame, "ntk_lambda")
    diverged = frame.drop_duplicates("run").set_index("run")["diverged"].astype(bool)
    rows = []
    for i, (key, ratio) in enumerate(points):
        summary = summarize_run(loss[i], lam.get(i, []), bool(diverged[i]), table.loc[key, "lambda0"], ratio,
                                table.loc[key, "baseline"])
        rows.append(dict(zip(CELL, key), ratio=ratio, lr=configs[i].lr, **summary))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- the scan

def scan_widths(p, parameterization: str) -> tuple[int, ...]:
    """The widths scanned: ``width`` and ``second_width`` (NTK parameterization), ``nup_width`` (νP's base width)."""
    return (p.width, p.second_width) if parameterization == "ntk" else (p.nup_width,)


def network_config(p, parameterization: str, activation: str, width: int, depth: int, seed: int) -> RunConfig:
    """The scan's network: NTK parameterization at constant ``width``, or νP's network (``k^2 m`` widths,
    base ``width``) trained by plain GD; ``lambda_t`` every ``diagnostic_every`` steps."""
    extra = {} if parameterization == "ntk" else dict(normalize="none")
    return RunConfig(parameterization=parameterization, activation=activation, depth=depth, width=width,
                     n_train=p.n_train, steps=p.steps, seed=seed, diagnostics=("ntk_lambda",),
                     diagnostic_every=p.diagnostic_every, **extra, threads=RUN_THREADS)


def networks(p) -> pd.DataFrame:
    """Every scanned network with its ``lambda0`` and ``baseline`` (the loss of the best constant output)."""
    keys = [(param, act, width, depth, seed) for param in COMPARED_PARAMETERIZATIONS for act in p.activations
            for width in scan_widths(p, param) for depth in (p.depths if param == "ntk" else p.nup_depths)
            for seed in p.seeds]
    configs = [network_config(p, *key) for key in keys]
    table = pd.DataFrame(keys, columns=CELL)
    table["lambda0"] = initial_eigenvalues(configs, p.n_jobs)
    table["baseline"] = constant_loss(configs[0])  # the same training targets for every network
    return table


def bisection_points(runs: pd.DataFrame) -> list[tuple]:
    """The geometric midpoint of every network's finite bracket of the upper edge."""
    points = []
    for key, g in runs.groupby(CELL, sort=False):
        lo, hi = window_edge(g.ratio, g.phase)
        if math.isfinite(lo) and math.isfinite(hi):
            points.append((key, math.sqrt(lo * hi)))
    return points


def scan(p) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(networks, runs)``: the coarse grid of ratios on every network, then the bisection rounds."""
    table = networks(p)
    keys = [(str(a), str(b), int(w), int(d), int(s)) for a, b, w, d, s in table[CELL].itertuples(index=False)]
    runs = run_grid(p, [(key, r) for key in keys for r in p.ratios], table)
    runs["stage"] = "grid"
    for k in progress(range(p.bisection_rounds), desc="bisection rounds"):
        more = run_grid(p, bisection_points(runs), table).assign(stage=f"bisection {k + 1}")
        runs = pd.concat([runs, more], ignore_index=True)
    return table, runs


def window_edges(runs: pd.DataFrame) -> pd.DataFrame:
    """Per network: the bracket ``[lo, hi)`` of the upper edge, ``edge = sqrt(lo * hi)``, ``censored``
    (``"above"``: no run diverged, edge set to ``lo``, a lower bound; ``"below"``: the smallest ratio already
    diverged, edge set to ``hi``, an upper bound) and ``first_spike`` (the smallest catapult ratio)."""
    rows = []
    for key, g in runs.groupby(CELL, sort=True):
        lo, hi = window_edge(g.ratio, g.phase)
        censored = "above" if not math.isfinite(hi) else "below" if not math.isfinite(lo) else ""
        edge = lo if censored == "above" else hi if censored == "below" else math.sqrt(lo * hi)
        spikes = g[g.phase == "catapult"].ratio
        rows.append(dict(zip(CELL, key), lo=lo, hi=hi, edge=edge, censored=censored,
                         first_spike=float(spikes.min()) if len(spikes) else math.nan))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- examples

def example_ratios(runs: pd.DataFrame) -> dict[str, float]:
    """One network's example ratio per phase: the largest lazy ratio below 2, the catapult ratio nearest
    (in log) to the middle of the window, the smallest divergent ratio (phases that never occur are left out)."""
    chosen = {}
    lazy = runs[(runs.phase == "lazy") & (runs.ratio < STABILITY)].ratio
    if len(lazy):
        chosen["lazy"] = float(lazy.max())
    catapult = runs[runs.phase == "catapult"].ratio.to_numpy()
    if len(catapult):
        middle = np.log(catapult).mean()
        chosen["catapult"] = float(catapult[np.argmin(np.abs(np.log(catapult) - middle))])
    divergent = runs[runs.phase == "divergent"].ratio
    if len(divergent):
        chosen["divergent"] = float(divergent.min())
    return chosen


def examples(p, table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The example runs (NTK parameterization, ``width``, shallowest depth, first seed) with ``lambda_t`` and the
    sharpness every ``example_every`` steps; long frame with ``activation``, ``phase``, ``ratio``, ``lr``."""
    points = []
    for act in p.activations:
        key = ("ntk", act, p.width, p.depths[0], p.seeds[0])
        mine = runs[(runs[CELL] == pd.Series(key, index=CELL)).all(axis=1)]
        points += [(key, phase, ratio) for phase, ratio in example_ratios(mine).items()]
    lam = table.set_index(CELL)["lambda0"]
    configs = [config_for_ratio(network_config(p, *key).replace(steps=p.example_steps, diagnostic_every=p.example_every,
                                                                 diagnostics=("ntk_lambda", "sharpness")),
                                ratio, lam[key]) for key, _, ratio in points]
    frame = sweep(configs, n_jobs=p.n_jobs)
    info = pd.DataFrame([dict(run=i, activation=key[1], phase=phase, ratio=ratio, lr=c.lr)
                         for i, ((key, phase, ratio), c) in enumerate(zip(points, configs))])
    return frame.drop(columns=[c for c in ("activation", "lr") if c in frame.columns]).merge(info, on="run")


# ---------------------------------------------------------------------------- Edge of Stability

def eos_config(p, parameterization: str, activation: str, seed: int) -> RunConfig:
    return RunConfig(parameterization=parameterization, activation=activation, depth=p.depths[0], width=p.width,
                     n_train=p.n_train, steps=p.eos_max_steps, seed=seed, diagnostics=("sharpness",),
                     diagnostic_every=p.eos_every, record_every=p.eos_every, threads=RUN_THREADS)


def stop_point(steps, eta_sharpness, loss, window: int, flat: float = EOS_FLAT,
               stop_loss: float = EOS_STOP_LOSS) -> tuple[int, str]:
    """Where training *stops*: the first recorded step at which the loss is at most ``stop_loss``
    (``"loss"``), or at which the median of ``eta * sharpness`` over the last ``window`` steps moved by at
    most ``flat`` (relative) from the median over the ``window`` steps before (``"flat"``); else the last
    step (``"max_steps"``: the bound binds).  ``steps``, ``eta_sharpness`` and ``loss`` are aligned."""
    steps = np.asarray(steps, dtype=float)
    s, loss = np.asarray(eta_sharpness, dtype=float), np.asarray(loss, dtype=float)
    for i, t in enumerate(steps):
        if loss[i] <= stop_loss:
            return int(t), "loss"
        if t - steps[0] >= 2 * window:
            recent = np.median(s[(steps > t - window) & (steps <= t)])
            before = np.median(s[(steps > t - 2 * window) & (steps <= t - window)])
            if abs(recent - before) <= flat * abs(recent):
                return int(t), "flat"
    return int(steps[-1]), "max_steps"


def summarize_eos(steps, eta_sharpness, loss, window: int, diverged: bool = False) -> dict:
    """``start`` (eta*sharpness at step 0), ``peak`` (up to the stop), ``final`` (its median over the last
    ``window`` steps before the stop), ``stop_step``, ``stop_reason`` and the loss there."""
    steps, s, loss = (np.asarray(a, dtype=float) for a in (steps, eta_sharpness, loss))
    stop, reason = stop_point(steps, s, loss, window)
    if diverged:
        reason = "diverged"
    upto = steps <= stop
    last = upto & (steps > stop - window)
    return dict(start=float(s[0]), peak=float(s[upto].max()), final=float(np.median(s[last])), stop_step=stop,
                stop_reason=reason, stop_loss=float(loss[upto][-1]))


def edge_of_stability(p) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The EOS runs (NTK parameterization and SP, every activation, ``eos_seeds``) at ``eta * lambda_0 =
    eos_ratio``: the long frame (with ``eta_sharpness``) and one summary row per run."""
    keys = [(param, act, seed) for param in ("ntk", "sp") for act in p.activations for seed in p.eos_seeds]
    bases = [eos_config(p, *key) for key in keys]
    configs = [config_for_ratio(c, p.eos_ratio, lam) for c, lam in zip(bases, initial_eigenvalues(bases, p.n_jobs))]
    frame = sweep(configs, n_jobs=p.n_jobs)
    info = pd.DataFrame([dict(run=i, parameterization=k[0], activation=k[1], seed=k[2], lr=c.lr)
                         for i, (k, c) in enumerate(zip(keys, configs))])
    frame = frame.drop(columns=[c for c in ("parameterization", "activation", "seed", "lr") if c in frame.columns])
    frame = frame.merge(info, on="run")
    rows = []
    for i, key in enumerate(keys):
        d = frame[(frame.run == i) & (frame.layer == 0)]
        s = d[d.metric == "sharpness"].set_index("step")["value"] * configs[i].lr
        loss = d[d.metric == "loss"].set_index("step")["value"].reindex(s.index)
        rows.append(dict(parameterization=key[0], activation=key[1], seed=key[2], lr=configs[i].lr,
                         **summarize_eos(s.index, s.to_numpy(), loss.to_numpy(), p.eos_window,
                                         bool(d["diverged"].iloc[0]))))
    return frame, pd.DataFrame(rows)


# ---------------------------------------------------------------------------- run

def run_experiment(p) -> dict:
    """The scan (coarse grid and bisection on every network), the examples and the Edge-of-Stability runs."""
    table, runs = scan(p)
    eos, eos_summary = edge_of_stability(p)
    return {"lambda0": table, "runs": runs, "edges": window_edges(runs), "examples": examples(p, table, runs),
            "eos": eos, "eos_summary": eos_summary}


# ---------------------------------------------------------------------------- statistics and verdicts

def phases_in_order(ratios, phases) -> bool:
    """Whether the phases, sorted by ratio, never step back (lazy, then catapult, then divergent)."""
    order = [PHASES.index(ph) for _, ph in sorted(zip(ratios, phases))]
    return bool(np.all(np.diff(order) >= 0))


def edge_matrix(edges: pd.DataFrame) -> tuple[np.ndarray, list[tuple]]:
    """``(log E, cells)``: the log edges as a (seeds x cells) matrix, cells ``(parameterization, activation,
    width, depth)`` in sorted order; the rows (seeds) are the replicates the intervals resample."""
    table = edges.pivot_table(index="seed", columns=EDGE_CELL, values="edge")
    if table.isna().any().any():
        raise ValueError("every network needs an edge: each cell must have the same seeds")
    return np.log(table.to_numpy(dtype=float)), list(table.columns)


def _select(cells: list[tuple], **fixed) -> list[int]:
    return [i for i, cell in enumerate(cells) if all(cell[EDGE_CELL.index(k)] == v for k, v in fixed.items())]


def edge_summary(edges: pd.DataFrame) -> pd.DataFrame:
    """Per ``(parameterization, activation, width, depth)``: the geometric mean of the edge over seeds with the
    95% t interval of its log (``low``, ``high``; unit: seeds), the seeds' range and how many seeds' edges are
    censored (bounds, not brackets)."""
    rows = []
    for key, g in edges.groupby(EDGE_CELL):
        e = mean_interval(np.log(g.edge.to_numpy(dtype=float))).map(math.exp)
        rows.append(dict(zip(EDGE_CELL, key), edge=e.value, low=e.low, high=e.high, seed_min=float(g.edge.min()),
                         seed_max=float(g.edge.max()), censored=int((g.censored != "").sum()), seeds=len(g)))
    return pd.DataFrame(rows)


def edge_fit(log_edges: np.ndarray, depths, widths) -> tuple[float, float]:
    """``(a, b)`` of the least-squares fit ``log edge = c + a log l + b log w`` to the mean over seeds (rows)
    of the log edges of the cells (columns) at ``depths`` and ``widths``."""
    design = np.column_stack([np.ones(len(depths)), np.log(np.asarray(depths, float)),
                              np.log(np.asarray(widths, float))])
    coef = np.linalg.lstsq(design, np.mean(log_edges, axis=0), rcond=None)[0]
    return float(coef[1]), float(coef[2])


def width_share(log_edges: np.ndarray, depths, widths) -> float:
    """``-b/a``: the share of the edge's depth exponent that its width exponent cancels (0: the edge
    follows depth alone; 1: it follows depth/width)."""
    a, b = edge_fit(log_edges, depths, widths)
    return -b / a if a != 0 else math.nan


def edge_scaling(edges: pd.DataFrame, activation: str) -> dict:
    """The NTK parameterization's edges of one activation at every depth and width: the depth exponent ``a``,
    the width exponent ``b`` and ``share = -b/a`` (``edge_fit``, ``width_share``), each with its jackknife-t
    interval over paired seeds (the same seed indexes every depth and width).  A seed with a censored edge
    in any of these cells (a bound, not a bracket) is left out of all of them (``excluded``)."""
    d = edges[(edges.parameterization == "ntk") & (edges.activation == activation)]
    censored = set(d.seed[d.censored != ""])
    kept = d[~d.seed.isin(censored)]
    out = dict(activation=activation, seeds=int(kept.seed.nunique()), excluded=len(censored))
    if out["seeds"] < 2 or kept.width.nunique() < 2 or kept.depth.nunique() < 2:
        nan = nan_estimate(out["seeds"], "paired seeds")
        return {**out, "a": nan, "b": nan, "share": nan}
    log_e, cells = edge_matrix(kept)
    widths, depths = [c[2] for c in cells], [c[3] for c in cells]
    fit = dict(a=lambda m: edge_fit(m, depths, widths)[0], b=lambda m: edge_fit(m, depths, widths)[1],
               share=lambda m: width_share(m, depths, widths))
    return {**out, **{name: jackknife_t(log_e, f, unit="paired seeds") for name, f in fit.items()}}


def scaling_table(edges: pd.DataFrame, activations) -> pd.DataFrame:
    """``edge_scaling`` of every activation as one row each: estimate and interval of ``a``, ``b`` and the share."""
    rows = []
    for act in activations:
        s = edge_scaling(edges, act)
        row = dict(activation=act)
        for name in ("a", "b", "share"):
            row |= {name: s[name].value, f"{name}_low": s[name].low, f"{name}_high": s[name].high}
        rows.append(row | dict(n=s["seeds"], unit="paired seeds", excluded_censored=s["excluded"]))
    return pd.DataFrame(rows)


def _every(statement: str, cells: list[Verdict], badness, **numbers: float) -> Verdict:
    """``all_of`` the cells, the statement's ``{name}`` placeholders filled with ``numbers`` (the thresholds
    the cells decide with) as ``format_number`` prints them."""
    for name, value in numbers.items():
        statement = statement.replace("{" + name + "}", format_number(value))
    return all_of(statement, cells, badness=badness)


def _log_mean(log_edges: np.ndarray, column: int) -> Estimate:
    """The geometric mean of one cell's edges over seeds with the t interval of its log."""
    return mean_interval(log_edges[:, column]).map(math.exp)


def claims(frames: dict, p) -> list[Verdict]:
    runs, edges, eos = frames["runs"], frames["edges"], frames["eos_summary"]
    verdicts = []
    # Every run: decided by the runs (the estimate is the fraction that satisfy the statement).
    lazy_below = fraction(runs[runs.ratio < STABILITY].phase == "lazy")
    ordered = fraction([phases_in_order(g.ratio, g.phase) for _, g in runs.groupby(CELL)])
    spiked = fraction([(g.phase == "catapult").any() for _, g in runs.groupby(CELL)])
    catapults = runs[runs.phase == "catapult"]
    drops = fraction(catapults.eta_lambda_min < STABILITY)
    verdicts += [
        compare(f"below eta*lambda_0 = {STABILITY:g} every run is lazy (the loss decreases monotonically; every "
                "network)",
                lazy_below, None, ">=", 1.0),
        compare("in every network the phases appear in order as eta*lambda_0 grows (lazy, catapult, divergent; "
                "never back)", ordered, None, ">=", 1.0),
        compare("every network has a catapult phase (a run that spikes and converges between the lazy and the "
                "divergent runs)", spiked, None, ">=", 1.0),
        compare(f"in every catapult run eta*lambda_t drops below {STABILITY:g} after the spike", drops, None, ">=",
                1.0),
    ]
    for act in p.activations:
        ends = fraction(catapults[catapults.activation == act].eta_lambda_end < STABILITY)
        verdicts.append(compare(f"in the catapult phase eta*lambda_t ends below {STABILITY:g} (every {act} run)", ends,
                                None,
                                ">=", 1.0))
    # The upper edge: geometric means over seeds, jackknife-t intervals over seeds (paired where cells are compared).
    log_e, cells = edge_matrix(edges)
    every = [compare("edge above {threshold}", _log_mean(log_e, i), None, ">", STABILITY) for i in range(len(cells))]
    verdicts.append(_every("the upper edge of the catapult window lies above {threshold} in every network (every "
                           "depth, width, activation and parameterization)", every, lambda v: -v.high,
                           threshold=STABILITY))
    main = {"ntk": p.width, "nup": p.nup_width}
    for act, target, tol, source in (("abs", UV_EDGE, UV_TOLERANCE, "the uv model's value"),
                                     ("relu", RELU_EDGE, RELU_TOLERANCE, "the value reported for ReLU nets")):
        shallow = _select(cells, parameterization="ntk", activation=act, width=p.width, depth=p.depths[0])[0]
        statement = f"the upper edge for {act} lies within {{tolerance}} of {{target}} ({source}) {{where}} ({{name}})"
        verdicts.append(within(statement.replace("{where}", "at the shallowest depth")
                               .replace("{name}", "NTK parameterization"), _log_mean(log_e, shallow), None, target,
                               tol * target))
        for param, name in (("ntk", "NTK parameterization"), ("nup", "νP")):
            cols = _select(cells, parameterization=param, activation=act, width=main[param])
            per_depth = [within("edge", _log_mean(log_e, i), None, target, tol * target) for i in cols]
            verdicts.append(_every(statement.replace("{where}", "at every depth").replace("{name}", name), per_depth,
                                   lambda v, t=target: abs(v.estimate - t), target=target, tolerance=tol * target))
    pairs = [(_select(cells, parameterization=c[0], activation="relu", width=c[2], depth=c[3])[0], i)
             for i, c in enumerate(cells) if c[1] == "abs"]
    above = [compare("ratio", paired_log_ratio(np.exp(log_e[:, r]), np.exp(log_e[:, a])), None, ">", 1.0)
             for r, a in pairs]
    verdicts.append(_every("the upper edge for relu lies above that for abs at every depth and width (both "
                           "parameterizations; their paired ratio above {threshold})", above, lambda v: -v.low,
                           threshold=1.0))
    ends = []
    for param in COMPARED_PARAMETERIZATIONS:
        depths = p.depths if param == "ntk" else p.nup_depths
        for act in p.activations:
            for width in scan_widths(p, param):
                first, last = (_select(cells, parameterization=param, activation=act, width=width, depth=d)[0]
                               for d in (depths[0], depths[-1]))
                ends.append(within("ratio", paired_log_ratio(np.exp(log_e[:, last]), np.exp(log_e[:, first])), None,
                                   1.0, DEPTH_TOLERANCE))
    verdicts.append(_every("the upper edge does not depend on depth (the deepest network's over the shallowest's "
                           "lies within {tolerance} of {target}; every activation, width and parameterization)", ends,
                           lambda v: abs(v.estimate - 1), target=1.0, tolerance=DEPTH_TOLERANCE))
    # Depth or depth/width: the share of the depth exponent that width cancels (NTK parameterization, two widths).
    for act in p.activations:
        share = edge_scaling(edges, act)["share"]
        for name, target in (("depth, not depth/width", DEPTH_ONLY_SHARE),
                             ("depth/width, not depth alone", DEPTH_PER_WIDTH_SHARE)):
            verdicts.append(within(f"the upper edge for {act} follows {name} (NTK parameterization at two widths; "
                                   "the share -b/a of its depth exponent a that its width exponent b cancels lies "
                                   "within {tolerance} of {target})", share, None, target, SHARE_TOLERANCE))
    # Edge of Stability: the mean over seeds of eta*sharpness when training stops, per activation (an interval
    # on a maximum over activations would not have its coverage).
    finals = eos.pivot_table(index="seed", columns=["parameterization", "activation"], values="final")
    for act in p.activations:
        verdicts.append(compare(f"at the EOC (NTK parameterization) progressive sharpening brings the {act} net's "
                                "eta*sharpness to {threshold} or above (within "f"{EOS_TOLERANCE:.0%} of "
                                f"{STABILITY:g}) before training stops", mean_interval(finals["ntk"][act].to_numpy()),
                                None, ">=", STABILITY * (1 - EOS_TOLERANCE)))
    for act in p.activations:
        verdicts.append(within(f"with PyTorch's default init (SP) the {act} net's eta*sharpness rises to "
                               f"{STABILITY:g} and "
                               "hovers within {tolerance} of {target} when training stops",
                               mean_interval(finals["sp"][act].to_numpy()), None, STABILITY,
                               STABILITY * EOS_TOLERANCE))
    return verdicts

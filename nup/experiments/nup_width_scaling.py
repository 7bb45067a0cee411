"""Notebook 08: νP across width: does the rate tuned at the smallest base width transfer to larger ones,
does νP stay rich (features learned) as the width grows, and, for the update that keeps width transfer,
does the rate also transfer across depth?

The question (issue 17).  The abstract says widthwise scaling is "mostly settled" (μP) and that νP solves
depthwise scaling "during training", in the rich regime.  Our reading of νP's update, ``per_layer``
(each layer takes a Frobenius step of length η under NTK multipliers), moves each coordinate of ``h_k``
by about ``η/(k sqrt m)`` (``docs/definitions.md``): at a fixed rate the network goes lazy as ``m`` grows
and the best rate must grow with ``m``.  The width-aware ``spectral`` update (``nup.core.optim``, ours,
after Yang, Simon & Bernstein 2023) makes each step ``sqrt(m_k)/sigma_k`` times longer so that each
coordinate moves by O(η) at any width (the readout excepted, see its docstring).

Families (``FAMILIES``): νP (``k^2 m`` hidden widths, EOC init, NTK multipliers) with ``per_layer`` and
with ``spectral``; μP (constant width ``m``, plain GD, ``base_width`` = the smallest width, so its
multipliers change with the width) as the reference known to transfer across width.

Protocol.  Full-batch GD with MSE on ``n_train`` class-balanced Fashion-MNIST images, ``steps`` steps, at
depth ``depth``, over the base widths ``widths`` in increasing order; seed ``s`` is both the
initialization seed and the data draw (``data_seed = s``), so every interval includes data variance and
comparisons are paired by seed.  At the smallest width each family starts from ``2*first_half_points + 1``
rates ``sqrt(2)`` apart around ``lr_centers[family]``; at a larger width from ``2*half_points + 1`` rates
around the extrapolation (in log width) of its best rates so far.  A grid whose minimum (of the mean
log-loss over seeds) sits at its edge is widened by two rates, at most ``max_widen`` times.  The rate
tuned at the smallest width (rounded to the grid) is run at every width where the grid does not hold it
(``in_grid = False``).  Then the νP update that keeps width transfer (``depth_family``, decided from the
width regrets) is swept the same way over ``depths`` at base width ``depth_width``.

Verdicts (thresholds fixed before the runs, below; 95% jackknife-t intervals over seeds,
``nup.analysis.stats``, each line printing its n): per family (a) *width transfer*: at every larger
width the regret of the rate tuned at the smallest width (loss there over the width's grid minimum,
paired seeds, ``nup.analysis.best_lr.transfer_regret``) is below ``REGRET_THRESHOLD`` (True when all are
decided below, False when one is decided above; the deciding regret is shown, every regret is in
``regrets``); (b) *stays rich*: at that rate the exponent of the mean hidden ``|h_k(T) - h_k(0)|/|h_k(0)|``
against ``m`` lies within ``0 ± PREACT_TOLERANCE`` (``-1/2``: goes lazy); (c) for ``depth_family`` only,
*depth transfer*: the regret at the deepest depth of the rate tuned at the shallowest is below
``REGRET_THRESHOLD``.  The statements name no width or depth, so the reduced run prints the same ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nup.analysis.best_lr import best_log2_lr, log_loss_table, transfer_regret, tune_along
from nup.analysis.fits import mean_curve_exponent
from nup.analysis.frames import seed_curves
from nup.analysis.stats import Estimate, nan_estimate
from nup.analysis.verdicts import Verdict, all_of, compare, within
from nup.core.activations import ACTIVATIONS
from nup.core.cost import parameter_count
from nup.experiments import RUN_THREADS
from nup.experiments.schema import Int, List, Schema, full_batch_fields, lr_grid_fields
from nup.progress import progress

NOTEBOOK = "08_nup_width_scaling"

# Thresholds, fixed before the runs.
REGRET_THRESHOLD = 1.25  # transfer: loss at the transferred rate < 1.25 x the width's (depth's) best, paired seeds
PREACT_TOLERANCE = 0.25  # stays rich: |d log(hidden preactivation change) / d log(m)| <= 0.25 (lazy: -1/2)
LR_STEP = 0.5            # the grid step in log2(lr): a sqrt(2) grid
D_IN, D_OUT = 784, 10    # Fashion-MNIST, one-hot MSE targets
ZERO_LOSS = 0.5          # the zero predictor's loss |y|^2/(2n) with one-hot targets


@dataclass(frozen=True)
class Family:
    """One curve: ``fields`` of ``RunConfig`` (μP's ``base_width`` is set to the smallest width)."""

    label: str
    fields: tuple


FAMILIES = {
    "nup_per_layer": Family("νP per-layer", (("parameterization", "nup"), ("normalize", "per_layer"))),
    "nup_spectral": Family("νP spectral", (("parameterization", "nup"), ("normalize", "spectral"))),
    "mup": Family("μP (plain GD)", (("parameterization", "mup"),)),
}
FAMILY_KEYS = tuple(FAMILIES)
NUP_KEYS = ("nup_per_layer", "nup_spectral")  # the candidates for the depth sweep


SCHEMA = Schema(
    Int("depth", minimum=3, help="number of layers l of the width sweep"),
    List("widths", item=Int("width", minimum=2), min_length=3, increasing=True,
         help="base widths m (νP: hidden widths k^2 m; μP: constant width m); the first is 'the smallest width', "
              "μP's base width"),
    List("depths", item=Int("depth", minimum=3), min_length=2, increasing=True,
         help="depths of the depth-transfer sweep of the νP update that keeps width transfer"),
    Int("depth_width", minimum=2, help="base width m of the depth-transfer sweep"),
    *full_batch_fields(ACTIVATIONS),
    *lr_grid_fields(FAMILY_KEYS, "the smallest width, shallowest depth", "further on"),
    Int("coord_steps", minimum=1, help="steps of the coordinate check"),
    Int("n_jobs", minimum=1),
)


# ---------------------------------------------------------------------------- configurations

def spec(p, key: str) -> dict:
    """The family's ``RunConfig`` fields (μP at base width ``widths[0]``)."""
    fields = dict(FAMILIES[key].fields)
    if fields["parameterization"] == "mup":
        fields["base_width"] = p.widths[0]
    return fields


def config_for(p, key: str, depth: int, width: int, log2_lr: float, seed: int):
    from nup.training.config import RunConfig

    return RunConfig(**spec(p, key), activation=p.activation, depth=depth, width=width, lr=2.0**log2_lr,
                     steps=p.steps, n_train=p.n_train, probe_size=p.n_train, seed=seed, data_seed=seed,
                     diagnostics=("preactivations",), diagnostic_every=p.steps, record_every=p.steps,
                     threads=RUN_THREADS)


def parameter_counts(p) -> pd.DataFrame:
    """One row per family and width of the width sweep: the hidden widths and the parameter count."""
    rows = []
    for key in FAMILIES:
        for width in p.widths:
            w = config_for(p, key, p.depth, width, 0.0, 0).build_parameterization().widths(D_IN, D_OUT, p.depth, width)
            rows.append((key, FAMILIES[key].label, width, w[1], w[-2], parameter_count(w)))
    return pd.DataFrame(rows, columns=["family", "label", "width", "first_hidden", "last_hidden", "n_params"])


# ---------------------------------------------------------------------------- runs

COLUMNS = ["family", "axis", "depth", "width", "log2_lr", "seed", "loss", "diverged", "hidden_change",
           "output_change"]


def _summarize(df: pd.DataFrame, todo: list[tuple]) -> pd.DataFrame:
    """Per run: final loss (NaN if diverged) and the mean hidden / output preactivation change at the last
    step (inf if diverged)."""
    from nup.analysis.frames import per_run

    loss = per_run(df, "loss", how="last").set_index("run")
    diverged = loss["diverged"].astype(bool) if "diverged" in loss else pd.Series(False, index=loss.index)
    pc = df[df.metric == "preact_change"]
    pc = pc[pc.step == pc.groupby("run").step.transform("max")][["run", "layer", "value"]]
    rows = []
    for run, (key, axis, depth, width, log2_lr, seed) in enumerate(todo):
        d = pc[pc.run == run]
        bad = bool(diverged.get(run, True)) or not math.isfinite(loss["value"].get(run, math.nan))
        hidden = math.inf if bad else float(d[d.layer < depth].value.mean())
        output = math.inf if bad else float(d[d.layer == depth].value.mean())
        rows.append((key, axis, depth, width, log2_lr, seed, math.nan if bad else float(loss["value"][run]), bad,
                     hidden, output))
    return pd.DataFrame(rows, columns=COLUMNS)


def _sweep(p, todo: list[tuple]) -> pd.DataFrame:
    from nup.training.sweep import sweep

    configs = [config_for(p, key, depth, width, x, seed) for key, _, depth, width, x, seed in todo]
    return _summarize(sweep(configs, n_jobs=p.n_jobs, progress=False), todo)


def table(runs: pd.DataFrame, key: str, axis: str, point: int, grid_only: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(log2_lrs, losses)`` of one family at one ``point`` (a width when ``axis == "width"``, a depth when
    ``axis == "depth"``): seeds x rates, NaN where diverged; ``grid_only=False`` adds the transferred rate."""
    d = runs[(runs.family == key) & (runs.axis == axis) & (runs[axis] == point)]
    if grid_only and "in_grid" in d:
        d = d[d.in_grid.astype(bool)]
    t = d.pivot_table(index="seed", columns="log2_lr", values="loss", aggfunc="first", dropna=False)
    return t.columns.to_numpy(dtype=float), t.to_numpy(dtype=float)


def scan(p, keys: list[str], axis: str, points: list[int], fixed: int) -> tuple[pd.DataFrame, dict]:
    """Each family in ``keys`` swept along ``axis`` (``"width"``: the widths at depth ``fixed``; ``"depth"``:
    the depths at base width ``fixed``), grids widened at their edges, plus the runs at the rate tuned at the
    first point.  Returns the runs (``in_grid``, ``transferred`` columns) and ``{family: transferred log2 lr}``."""
    parts: list[pd.DataFrame] = []
    current: dict[str, pd.DataFrame] = {}  # the runs so far, concatenated once per executed batch

    def where(point):
        return (fixed, point) if axis == "width" else (point, fixed)

    def execute(point, todo, in_grid):
        parts.append(_sweep(p, [(key, axis, *where(point), x, s) for key, x, s in todo]).assign(in_grid=in_grid))
        current["runs"] = pd.concat(parts, ignore_index=True)

    transferred = tune_along(points, keys, p.seeds, p.lr_centers, p.first_half_points, p.half_points, p.max_widen,
                             execute, lambda key, point: table(current["runs"], key, axis, point), LR_STEP,
                             desc=f"{axis}s")
    runs = pd.concat(parts, ignore_index=True)
    runs["transferred"] = [math.isclose(x, transferred[k]) for k, x in zip(runs.family, runs.log2_lr)]
    return runs, transferred


def run_experiment(p) -> dict:
    """The width sweep of every family, the depth sweep of the νP update that keeps width transfer, and the
    coordinate check over width at each family's transferred rate."""
    width_runs, transferred = scan(p, list(FAMILIES), "width", list(p.widths), p.depth)
    key, _ = depth_family(width_runs, pd.Series(transferred))
    depth_runs, depth_transferred = scan(p, [key], "depth", list(p.depths), p.depth_width)
    runs = pd.concat([width_runs, depth_runs], ignore_index=True)
    runs["label"] = runs.family.map({k: f.label for k, f in FAMILIES.items()})
    return {"runs": runs, "transferred": pd.Series(transferred, name="log2_lr"),
            "depth_transferred": pd.Series(depth_transferred, name="log2_lr"), "params": parameter_counts(p),
            "coord": coord_frame(p, transferred)}


def coord_frame(p, transferred: dict) -> pd.DataFrame:
    """``nup.analysis.coord_check`` over the widths at depth ``depth`` for every family at its transferred rate."""
    from nup.analysis.coord_check import coord_check

    parts = []
    for key, f in progress(list(FAMILIES.items()), desc="coordinate check"):
        if math.isfinite(transferred[key]):
            parts.append(coord_check({f.label: dict(spec(p, key), lr=2.0 ** transferred[key])}, [p.depth],
                                     list(p.widths), steps=p.coord_steps, seeds=p.seeds, n_jobs=p.n_jobs,
                                     activation=p.activation, n_train=p.n_train, probe_size=p.n_train,
                                     threads=RUN_THREADS))
    frame = pd.concat(parts, ignore_index=True)
    return frame.assign(family=frame.label.map({f.label: k for k, f in FAMILIES.items()}))


# ---------------------------------------------------------------------------- statistics

def best_lrs(runs: pd.DataFrame, axis: str = "width") -> pd.DataFrame:
    """Per family and point of ``axis``: the best ``log2(lr)`` (parabola vertex), the grid's extent, whether
    the minimum stayed at an edge, and the mean loss over seeds at the grid minimum."""
    rows = []
    d = runs[runs.axis == axis]
    for (key, point), _ in d.groupby(["family", axis], sort=False):
        x, losses = table(runs, key, axis, point)
        best = best_log2_lr(x, losses)
        loss = float(np.exp(log_loss_table(losses)[:, best.index]).mean()) if best.index >= 0 else math.nan
        rows.append((key, FAMILIES[key].label, int(point), best.value, x[0], x[-1], len(x), best.edge, loss))
    return pd.DataFrame(rows, columns=["family", "label", axis, "log2_best_lr", "grid_low", "grid_high", "n_lrs",
                                       "edge", "best_loss"])


def regrets(runs: pd.DataFrame, transferred: pd.Series, axis: str = "width") -> pd.DataFrame:
    """Per family and point of ``axis`` after the first: the regret of the rate tuned at the first point (loss
    there over the point's grid minimum, paired seeds) with its 95% interval and n."""
    rows = []
    d = runs[runs.axis == axis]
    for key in [k for k in FAMILIES if k in set(d.family)]:
        points = sorted(d[d.family == key][axis].unique())
        for point in points[1:]:
            if math.isfinite(transferred.get(key, math.nan)):
                est = transfer_regret(*table(runs, key, axis, point, grid_only=False), transferred[key])
            else:
                est = nan_estimate(d.seed.nunique(), "paired seeds")
            rows.append((key, FAMILIES[key].label, int(point), est.value, est.low, est.high, est.n))
    return pd.DataFrame(rows, columns=["family", "label", axis, "regret", "low", "high", "n"])


def keeps_width_transfer(reg: pd.DataFrame, key: str) -> bool:
    """Every width-transfer verdict of ``key`` is True (the whole interval of every regret below the threshold)."""
    r = reg[reg.family == key]
    return bool(len(r)) and bool((r.high < REGRET_THRESHOLD).all())


def depth_family(runs: pd.DataFrame, transferred: pd.Series) -> tuple[str, bool]:
    """The νP update swept over depth, and whether it keeps width transfer: the one of ``NUP_KEYS`` whose
    width-transfer verdicts all hold (both: the smaller largest upper end); if neither, the one with the
    smaller largest upper end (reported as not keeping width transfer)."""
    reg = regrets(runs[runs.axis == "width"], transferred)
    keeps = {key: keeps_width_transfer(reg, key) for key in NUP_KEYS}
    worst = {key: float(reg[reg.family == key].high.max()) for key in NUP_KEYS}
    worst = {key: w if math.isfinite(w) else math.inf for key, w in worst.items()}
    candidates = [k for k in NUP_KEYS if keeps[k]] or list(NUP_KEYS)
    key = min(candidates, key=lambda k: (worst[k], NUP_KEYS.index(k)))
    return key, keeps[key]


def transferred_changes(runs: pd.DataFrame, key: str) -> pd.DataFrame:
    """The hidden preactivation change per seed (rows) and width (columns) of the width sweep at the family's
    transferred rate; inf where a run diverged, NaN where a run is missing."""
    w = runs[runs.axis == "width"]
    return seed_curves(w[(w.family == key) & w.transferred], "width", "hidden_change", sorted(w.width.unique()))


def width_exponent(changes: pd.DataFrame) -> Estimate:
    """Exponent ``p`` of ``mean over seeds of the hidden change ~ m^p`` (``changes``: seeds x widths),
    jackknife-t over whole seeds (a seed is the same data draw at every width); NaN (never True) when a
    run diverged or a width is missing."""
    return mean_curve_exponent(changes.columns.to_numpy(dtype=float), changes.to_numpy(dtype=float))


# ---------------------------------------------------------------------------- verdicts

def width_regret_verdict(label: str, estimates: list[Estimate]) -> Verdict:
    """Transfer to every larger width: True when every regret's interval lies below ``REGRET_THRESHOLD``, False
    when some regret's interval lies wholly above it, else undecided; the numbers shown are the deciding regret's
    (the first decided above, else the largest upper end).  Scale-free: the same statement at any widths."""
    statement = (f"{label}, the rate tuned at the smallest width, transfers to every larger width (regret below "
                 "{threshold} at each; the worst shown)")
    if not estimates:
        raise ValueError("width_regret_verdict needs the regret of at least one larger width")
    each = [compare(statement, r, None, "<", REGRET_THRESHOLD) for r in estimates]
    return all_of(each[0].statement, each, badness=lambda v: v.high if math.isfinite(v.high) else math.inf)


def rich_verdict(label: str, exponent: Estimate) -> Verdict:
    return within(f"{label} stays rich at the transferred rate (exponent of the hidden preactivation change "
                  "against m within {target} +- {tolerance}; -1/2 is lazy)", exponent, None, 0.0, PREACT_TOLERANCE)


def depth_regret_verdict(regret: Estimate) -> Verdict:
    """Depth transfer of the νP update chosen by ``depth_family`` (which one is printed by the notebook): the
    statement names neither it nor the depths, so it reads the same at any size."""
    return compare("The νP update that keeps width transfer (if neither does, the closer one), the rate tuned at "
                   "the shallowest depth, transfers to the deepest depth (regret below {threshold})", regret, None,
                   "<", REGRET_THRESHOLD)


def _estimate(row) -> Estimate:
    return Estimate(float(row.regret), float(row.low), float(row.high), n=int(row.n), unit="paired seeds")


def claims(frames: dict, p) -> list[Verdict]:
    runs, transferred = frames["runs"], frames["transferred"]
    reg = regrets(runs, transferred, "width")
    transfers, rich = [], []
    for key, f in FAMILIES.items():
        transfers.append(width_regret_verdict(f.label, [_estimate(r) for r in reg[reg.family == key].itertuples()]))
        rich.append(rich_verdict(f.label, width_exponent(transferred_changes(runs, key))))
    key, _ = depth_family(runs, transferred)
    dreg = regrets(runs, frames["depth_transferred"], "depth")
    deepest = dreg[(dreg.family == key) & (dreg.depth == p.depths[-1])]
    est = _estimate(next(deepest.itertuples())) if len(deepest) else \
        nan_estimate(len(p.seeds), "paired seeds")
    return transfers + rich + [depth_regret_verdict(est)]

"""Notebook 03, claim 5: νP's preactivation dynamics and its best learning rate across depth, against the
controls that tell which ingredient does the work.

The claim (abstract): νP (EOC init, NTK multipliers, hidden widths ``m_k = k^2 m``, a normalized update)
"solves depthwise scaling during training"; our testable reading: its best learning rate transfers
across depth and, at that rate, the hidden preactivations move by a depth-independent amount.  The
abstract names the alternatives, "inversely scaling the learning rate or adding residual connections".

Families (``FAMILIES``), each swept over the same kind of ``sqrt(2)`` learning-rate grid at every depth:
νP with the per-layer and the global normalized update; ``k^2 m`` widths with plain GD (width growth
alone); constant width with the per-layer normalized update (normalization alone), once at the
baselines' width and once at νP's parameter count at the deepest depth; the constant-width EOC network
in the NTK parameterization with plain GD at a fixed rate and at ``lr/depth``; the residual depth-μP
network (``nup.core.param.Residual``) with plain GD and the per-layer normalized update; SP with He
(EOC) init, i.e. μP at its own base width (so μP itself, whose width never differs from its base
width here, is not run separately).  Every rival runs at a width where it trains (``const_width``, at
least 64; at width 16 the plain-GD rivals barely beat the zero predictor, so their best rates were
noise), and νP keeps its own first hidden layer ``m`` (no handicap either way: the parameter counts and
first hidden widths are printed side by side).

Protocol. Full-batch GD with MSE on ``n_train`` class-balanced Fashion-MNIST images, ``steps`` steps,
``len(seeds)`` seeds; seed ``s`` is both the initialization seed and the data draw (``data_seed = s``), so the
intervals include data variance, and every family and depth sees the same draw for a given seed (the unit of
every interval is the seed; comparisons are paired by seed). Depths run in increasing order. At the shallowest
depth each family starts from a grid of ``2*first_half_points + 1`` rates (``sqrt(2)`` apart) around
``lr_centers[family]``; at a deeper depth from ``2*half_points + 1`` rates around the extrapolation (in log
depth) of its best rates so far. Whenever a family's grid minimum (of the mean log-loss over seeds) sits at
the grid's edge, two more rates are added beyond it and run (at most ``max_widen`` times). The best rate is
the vertex of a parabola through the minimum and its neighbours (``nup.analysis.best_lr``), its interval a
bootstrap over seeds. The rate transferred from the shallowest depth is run at every depth as an extra point
where the grid does not hold it (``in_grid = False``: not part of the fit).

Verdicts (thresholds fixed before the runs, below; 95% jackknife-t intervals over seeds,
``nup.analysis.stats``, each line printing its n): per family (1) *it trains*: its best loss at the shallowest
depth is within ``TRAINS_FACTOR`` of the best family's (geometric mean over paired seeds); a family whose
ratio is decided above it is reported as not comparable, and its transfer verdicts are left undecided; (2)
*transfer* to every deeper depth: the regret of the rate transferred from the shallowest depth (the loss there
over that depth's grid minimum, paired by seed, ``nup.analysis.best_lr.transfer_regret``) is below
``REGRET_THRESHOLD`` at each (False when one depth's is decided above; the worst depth shown); (3) *depth-
independent preactivation change*: at the transferred rate the exponent of the mean hidden
``|h_k(T)-h_k(0)|/|h_k(0)|`` against depth lies within ``±PREACT_TOLERANCE``; (4) *it trains deep*: its best
training loss at the deepest depth is below ``LOSS_FACTOR`` times the best family's. The slope of ``log best
lr`` against ``log depth`` is reported (``slope_estimate``), not decided: on the flat loss curves of the
normalized updates its argmin wanders by more than a grid step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nup.analysis.best_lr import (best_log2_lr, best_lr_bootstrap, depth_slope, log_loss_table,
                                  transfer_regret, tune_along)
from nup.analysis.fits import mean_curve_exponent
from nup.analysis.frames import seed_curves
from nup.analysis.stats import Estimate, nan_estimate, paired_log_ratio
from nup.analysis.verdicts import Verdict, all_of, compare, within
from nup.core.activations import ACTIVATIONS
from nup.core.cost import matched_width, parameter_count, training_flops
from nup.experiments import RUN_THREADS
from nup.experiments.schema import Int, List, Schema, full_batch_fields, lr_grid_fields
from nup.progress import progress

NOTEBOOK = "03_nup_depth_scaling"

# Thresholds, fixed before the runs.
TRAINS_FACTOR = 2.0      # comparable: best loss at the shallowest depth < 2 x the best family's
REGRET_THRESHOLD = 1.25  # transfer: loss at the transferred rate < 1.25 x the depth's best (paired seeds)
PREACT_TOLERANCE = 0.25  # depth-independent: |d log(hidden preactivation change) / d log(depth)| <= 0.25
LOSS_FACTOR = 2.0        # trains deep: best loss at the deepest depth < 2 x the best family's
MIN_RIVAL_WIDTH = 64     # the constant-width and residual families' width: where they train
LR_STEP = 0.5            # the grid step in log2(lr): a sqrt(2) grid
D_IN, D_OUT = 784, 10    # Fashion-MNIST, one-hot MSE targets
ZERO_LOSS = 0.5          # the zero predictor's loss |y|^2/(2n) with one-hot targets


@dataclass(frozen=True)
class Family:
    """One curve: ``fields`` of ``RunConfig``; ``width``: ``"base"`` (νP's ``m``), ``"const"`` or
    ``"matched"`` (constant width with νP's parameter count at the deepest depth); ``lr_rule``:
    ``"fixed"`` (the same rate at every depth) or ``"inverse_depth"`` (``lr * l_min / l``)."""

    label: str
    fields: tuple
    width: str
    lr_rule: str = "fixed"
    group: str = ""


FAMILIES = {
    "nup_per_layer": Family("νP per-layer", (("parameterization", "nup"), ("normalize", "per_layer")), "base",
                            group="k^2 m widths"),
    "nup_global": Family("νP global", (("parameterization", "nup"), ("normalize", "global")), "base",
                         group="k^2 m widths"),
    "k2_gd": Family("k^2 m widths, plain GD", (("parameterization", "nup"), ("normalize", "none")), "base",
                    group="k^2 m widths"),
    "const_per_layer": Family("constant width, per-layer", (("parameterization", "ntk"), ("normalize", "per_layer")),
                              "const", group="constant width"),
    "matched_per_layer": Family("constant width at νP's parameter count, per-layer",
                                (("parameterization", "ntk"), ("normalize", "per_layer")), "matched",
                                group="constant width"),
    "ntk": Family("NTK, fixed lr", (("parameterization", "ntk"),), "const", group="constant width"),
    "ntk_lr_depth": Family("NTK, lr/depth", (("parameterization", "ntk"),), "const", "inverse_depth",
                           group="constant width"),
    "residual_gd": Family("residual depth-μP, plain GD", (("parameterization", "residual"), ("normalize", "none")),
                          "const", group="residual"),
    "residual_per_layer": Family("residual depth-μP, per-layer",
                                 (("parameterization", "residual"), ("normalize", "per_layer")), "const",
                                 group="residual"),
    "sp_he": Family("SP (He init)", (("parameterization", "mup"),), "const", group="constant width"),
}
FAMILY_KEYS = tuple(FAMILIES)


SCHEMA = Schema(
    List("depths", item=Int("depth", minimum=3), min_length=2, increasing=True,
         help="numbers of layers l; the first is 'the shallowest depth', the last 'the deepest'"),
    Int("base_width", minimum=16, help="νP's base width m (hidden widths k^2 m); its first hidden layer"),
    Int("const_width", minimum=MIN_RIVAL_WIDTH, help="width of the constant-width and residual families: one "
        "where they train"),
    *full_batch_fields(ACTIVATIONS),
    *lr_grid_fields(FAMILY_KEYS, "the shallowest depth", "deeper"),
    Int("coord_steps", minimum=1, help="steps of the coordinate check"),
    Int("n_boot", minimum=100, help="bootstrap resamples of the seeds (the best-rate bars of the figure)"),
    Int("n_jobs", minimum=1),
)


# ---------------------------------------------------------------------------- sizes and configurations

def layer_widths(family: Family, depth: int, width: int) -> list[int]:
    """``[m_0, m_1, ..., m_l]`` of ``family`` at ``depth`` with width argument ``width``."""
    from nup.training.config import RunConfig

    config = RunConfig(**dict(family.fields), depth=depth, width=width,
                       **({"base_width": width} if dict(family.fields)["parameterization"] == "mup" else {}))
    return config.build_parameterization().widths(D_IN, D_OUT, depth, width)


def family_widths(p) -> dict[str, int]:
    """The width argument of every family: ``m``, ``const_width`` or the matched width."""
    nup_params = parameter_count(layer_widths(FAMILIES["nup_per_layer"], p.depths[-1], p.base_width))
    matched = matched_width(nup_params, p.depths[-1], D_IN, D_OUT)
    return {key: {"base": p.base_width, "const": p.const_width, "matched": matched}[f.width]
            for key, f in FAMILIES.items()}


def parameter_counts(p) -> pd.DataFrame:
    """One row per family and depth: width argument, first hidden width, parameter count, and the FLOPs of one
    full-batch step (``nup.core.cost``)."""
    widths = family_widths(p)
    rows = []
    for key, f in FAMILIES.items():
        for depth in p.depths:
            w = layer_widths(f, depth, widths[key])
            rows.append((key, f.label, depth, widths[key], w[1], parameter_count(w), training_flops(w, p.n_train)))
    return pd.DataFrame(rows, columns=["family", "label", "depth", "width", "first_hidden", "n_params",
                                       "flops_per_step"])


def lr_factor(family: Family, depth: int, shallowest: int) -> float:
    """The family's rule: the rate actually used is ``2^log2_lr * lr_factor``."""
    return shallowest / depth if family.lr_rule == "inverse_depth" else 1.0


def config_for(p, key: str, depth: int, log2_lr: float, seed: int, width: int):
    from nup.training.config import RunConfig

    family = FAMILIES[key]
    fields = dict(family.fields)
    if fields["parameterization"] == "mup":
        fields["base_width"] = width  # μP at its own base width: SP with He (EOC) init
    return RunConfig(**fields, activation=p.activation, depth=depth, width=width,
                     lr=2.0**log2_lr * lr_factor(family, depth, p.depths[0]), steps=p.steps, n_train=p.n_train,
                     probe_size=p.n_train, seed=seed, data_seed=seed, diagnostics=("preactivations",),
                     diagnostic_every=p.steps, record_every=p.steps, threads=RUN_THREADS)


# ---------------------------------------------------------------------------- runs

def _summarize(df: pd.DataFrame, keys: list[tuple]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per run: final loss (NaN if diverged) and the mean hidden / output preactivation change at the
    last step (inf if diverged); and the per-layer changes."""
    from nup.analysis.frames import per_run

    loss = per_run(df, "loss", how="last").set_index("run")
    diverged = loss["diverged"].astype(bool) if "diverged" in loss else pd.Series(False, index=loss.index)
    pc = df[df.metric == "preact_change"]
    pc = pc[pc.step == pc.groupby("run").step.transform("max")][["run", "layer", "value"]]
    runs, layers = [], []
    for run, (key, depth, log2_lr, seed) in enumerate(keys):
        d = pc[pc.run == run]
        bad = bool(diverged.get(run, True)) or not math.isfinite(loss["value"].get(run, math.nan))
        hidden = math.inf if bad else float(d[d.layer < depth].value.mean())
        output = math.inf if bad else float(d[d.layer == depth].value.mean())
        runs.append((key, depth, log2_lr, seed, math.nan if bad else float(loss["value"][run]), bad, hidden, output))
        if not bad:
            layers += [(key, depth, log2_lr, seed, int(k), float(v)) for k, v in zip(d.layer, d.value)]
    return (pd.DataFrame(runs, columns=["family", "depth", "log2_lr", "seed", "loss", "diverged", "hidden_change",
                                        "output_change"]),
            pd.DataFrame(layers, columns=["family", "depth", "log2_lr", "seed", "layer", "change"]))


def _sweep(p, todo: list[tuple], widths: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    from nup.training.sweep import sweep

    configs = [config_for(p, key, depth, x, seed, widths[key]) for key, depth, x, seed in todo]
    return _summarize(sweep(configs, n_jobs=p.n_jobs, progress=False), todo)


def table(runs: pd.DataFrame, key: str, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """``(log2_lrs, losses)`` of one family's grid at one depth: seeds x rates, NaN where diverged."""
    d = runs[(runs.family == key) & (runs.depth == depth)]
    if "in_grid" in d:
        d = d[d.in_grid.astype(bool)]
    t = d.pivot_table(index="seed", columns="log2_lr", values="loss", aggfunc="first", dropna=False)
    return t.columns.to_numpy(dtype=float), t.to_numpy(dtype=float)


def run_experiment(p) -> dict:
    """Every family's learning-rate sweep over the depths (grids widened at their edges), the runs at the
    rate transferred from the shallowest depth, and the coordinate check."""
    widths = family_widths(p)
    parts: list[pd.DataFrame] = []
    layer_parts: list[pd.DataFrame] = []
    current: dict[str, pd.DataFrame] = {}  # the runs so far, concatenated once per executed batch

    def execute(depth, todo, in_grid):
        r, lay = _sweep(p, [(key, depth, x, s) for key, x, s in todo], widths)
        parts.append(r.assign(in_grid=in_grid))
        layer_parts.append(lay)
        current["runs"] = pd.concat(parts, ignore_index=True)

    transferred = tune_along(p.depths, list(FAMILIES), p.seeds, p.lr_centers, p.first_half_points, p.half_points,
                             p.max_widen, execute, lambda key, depth: table(current["runs"], key, depth), LR_STEP,
                             desc="depths")
    runs = pd.concat(parts, ignore_index=True)
    runs["label"] = runs.family.map({k: f.label for k, f in FAMILIES.items()})
    runs["lr"] = [2.0**x * lr_factor(FAMILIES[k], d, p.depths[0])
                  for k, d, x in zip(runs.family, runs.depth, runs.log2_lr)]
    runs["transferred"] = [math.isclose(x, transferred[k]) for k, x in zip(runs.family, runs.log2_lr)]
    return {"runs": runs, "layers": pd.concat(layer_parts, ignore_index=True), "params": parameter_counts(p),
            "coord": coord_frame(p, widths, transferred), "transferred": pd.Series(transferred, name="log2_lr")}


def coord_frame(p, widths: dict, transferred: dict) -> pd.DataFrame:
    """``nup.analysis.coord_check`` over the depths for every family at its transferred rate."""
    from nup.analysis.coord_check import coord_check

    parts = []
    for key, f in progress(list(FAMILIES.items()), desc="coordinate check"):
        if not math.isfinite(transferred[key]):
            continue
        # One call per rate: all depths at once for a fixed rate, one depth at a time for lr/depth.
        per_depth = [[d] for d in p.depths] if f.lr_rule != "fixed" else [list(p.depths)]
        for depths in per_depth:
            spec = dict(f.fields, lr=2.0 ** transferred[key] * lr_factor(f, depths[0], p.depths[0]))
            if spec["parameterization"] == "mup":
                spec["base_width"] = widths[key]
            parts.append(coord_check({f.label: spec}, depths, [widths[key]], steps=p.coord_steps, seeds=p.seeds,
                                     n_jobs=p.n_jobs, activation=p.activation, n_train=p.n_train,
                                     probe_size=p.n_train, threads=RUN_THREADS))
    frame = pd.concat(parts, ignore_index=True)
    return frame.assign(family=frame.label.map({f.label: k for k, f in FAMILIES.items()}))


# ---------------------------------------------------------------------------- statistics

def best_lrs(runs: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per family and depth: the best ``log2(lr)`` with its percentile bootstrap interval (descriptive, for
    the figure; the argmin is not a smooth statistic, and no verdict uses it), the grid's extent, whether
    the minimum stayed at an edge, and the mean loss over seeds at the grid minimum."""
    rows = []
    for (key, depth), _ in runs.groupby(["family", "depth"], sort=False):
        x, losses = table(runs, key, depth)
        best = best_log2_lr(x, losses)
        est = best_lr_bootstrap(x, losses, n_boot=n_boot, seed=seed)
        at_min = losses[:, best.index] if best.index >= 0 else np.full(len(losses), np.nan)
        loss = float(np.exp(log_loss_table(losses)[:, best.index]).mean()) if best.index >= 0 else math.nan
        rows.append((key, FAMILIES[key].label, depth, est.value, est.low, est.high, x[0], x[-1], len(x), best.edge,
                     loss, int(np.sum(~np.isfinite(at_min)))))
    return pd.DataFrame(rows, columns=["family", "label", "depth", "log2_best_lr", "low", "high", "grid_low",
                                       "grid_high", "n_lrs", "edge", "best_loss", "diverged_at_best"])


def slope_estimate(runs: pd.DataFrame, key: str) -> Estimate:
    """Slope of ``log best lr`` against ``log depth`` (base rates: a rule such as ``lr/depth`` is part of
    the family), jackknife-t over whole seeds (reported, not decided)."""
    depths = sorted(runs[runs.family == key].depth.unique())
    return depth_slope({int(d): table(runs, key, d) for d in depths})


def full_table(runs: pd.DataFrame, key: str, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Like ``table`` but with the extra run at the transferred rate: every rate the family ran at ``depth``."""
    d = runs[(runs.family == key) & (runs.depth == depth)]
    t = d.pivot_table(index="seed", columns="log2_lr", values="loss", aggfunc="first", dropna=False)
    return t.columns.to_numpy(dtype=float), t.to_numpy(dtype=float)


def regrets(runs: pd.DataFrame, transferred: pd.Series) -> pd.DataFrame:
    """Per family and deeper depth: the regret of the rate transferred from the shallowest depth (loss there
    over the depth's grid minimum, paired seeds) with its 95% interval and n."""
    rows = []
    depths = sorted(runs.depth.unique())
    for key in FAMILIES:
        for depth in depths[1:]:
            if math.isfinite(transferred[key]):
                est = transfer_regret(*full_table(runs, key, depth), transferred[key])
            else:
                est = nan_estimate(runs.seed.nunique(), "paired seeds")
            rows.append((key, FAMILIES[key].label, int(depth), est.value, est.low, est.high, est.n))
    return pd.DataFrame(rows, columns=["family", "label", "depth", "regret", "low", "high", "n"])


def transferred_changes(runs: pd.DataFrame, key: str) -> pd.DataFrame:
    """The hidden preactivation change per seed (rows) and depth (columns, every depth of the sweep) at the
    family's transferred rate; inf where a run diverged, NaN where a run is missing."""
    return seed_curves(runs[(runs.family == key) & runs.transferred], "depth", "hidden_change",
                       sorted(runs.depth.unique()))


def preact_exponent(changes: pd.DataFrame) -> Estimate:
    """Exponent ``p`` of ``mean over seeds of the hidden change ~ depth^p`` (``changes``: seeds x depths),
    jackknife-t over whole seeds (a seed is the same data draw at every depth); NaN (never True) when a
    run diverged or a depth is missing."""
    return mean_curve_exponent(changes.columns.to_numpy(dtype=float), changes.to_numpy(dtype=float))


def losses_at_best(runs: pd.DataFrame, depth: int) -> dict[str, np.ndarray]:
    """Per family, the per-seed losses at ``depth`` at its grid minimum (a diverged seed counts as the worst
    run of its table that trained, as in the best-rate fit), seeds in sorted order."""
    out = {}
    for key in runs.family.unique():
        x, losses = table(runs, key, depth)
        best = best_log2_lr(x, losses)
        out[key] = np.exp(log_loss_table(losses)[:, best.index]) if best.index >= 0 else np.full(len(losses), np.nan)
    return out


def loss_ratios(runs: pd.DataFrame, depth: int) -> dict[str, Estimate]:
    """Each family's best loss at ``depth`` over the best family's (lowest geometric mean over seeds), as a
    geometric-mean ratio over paired seeds (same data draw) with its interval."""
    losses = losses_at_best(runs, depth)
    means = {k: float(np.exp(np.mean(np.log(v)))) for k, v in losses.items() if np.all(np.isfinite(v))}
    n = runs.seed.nunique()
    if not means:
        return {k: nan_estimate(n, "paired seeds") for k in losses}
    best = min(means, key=means.get)
    return {k: paired_log_ratio(v, losses[best]) for k, v in losses.items()}


def trains_verdict(label: str, ratio: Estimate) -> Verdict:
    return compare(f"{label} trains at the shallowest depth (best loss within a factor {{threshold}} of the best "
                   "family's)", ratio, None, "<", TRAINS_FACTOR)


def regret_verdict(label: str, regrets: list[Estimate], comparable: bool) -> Verdict:
    """Transfer to every deeper depth: True when every deeper depth's regret is decided below
    ``REGRET_THRESHOLD``, False when one is decided above it; the numbers shown are the worst depth's.
    Scale-free: the same statement at any depths."""
    each = [compare(f"{label}, the rate tuned at the shallowest depth, transfers to every deeper depth (regret "
                    "below {threshold} at each; the worst shown)", r, None, "<", REGRET_THRESHOLD) for r in regrets]
    v = all_of(each[0].statement, each, badness=lambda c: c.high if math.isfinite(c.high) else math.inf)
    return v if comparable else _not_comparable(v)


def preact_verdict(label: str, exponent: Estimate, comparable: bool) -> Verdict:
    v = within(f"{label} at the transferred rate moves the hidden preactivations by a depth-independent amount "
               "(exponent vs depth within {target} +- {tolerance})", exponent, None, 0.0, PREACT_TOLERANCE)
    return v if comparable else _not_comparable(v)


def deep_loss_verdict(label: str, ratio: Estimate) -> Verdict:
    return compare(f"{label} at the deepest depth reaches a training loss within a factor {{threshold}} of the "
                   "best family's", ratio, None, "<", LOSS_FACTOR)


def _not_comparable(v: Verdict) -> Verdict:
    """A family that does not train at the shallowest depth: its transfer is not judged (undecided; the
    reason is in the verdict table's threshold column, so the statement reads the same at every size)."""
    return Verdict(v.statement, None, v.estimate, v.low, v.high, f"{v.threshold} (not comparable: does not train)",
                   v.n, v.unit)


def claims(frames: dict, p) -> list[Verdict]:
    runs, transferred = frames["runs"], frames["transferred"]
    shallow = loss_ratios(runs, p.depths[0])
    deep = loss_ratios(runs, p.depths[-1])
    reg = regrets(runs, transferred).set_index(["family", "depth"])
    trains, transfers, exponents, losses = [], [], [], []
    for key, f in FAMILIES.items():
        t = trains_verdict(f.label, shallow[key])
        trains.append(t)
        ests = [Estimate(r.regret, r.low, r.high, n=int(r.n), unit="paired seeds")
                for r in (reg.loc[(key, depth)] for depth in p.depths[1:])]
        transfers.append(regret_verdict(f.label, ests, t.holds is not False))
        exponents.append(preact_verdict(f.label, preact_exponent(transferred_changes(runs, key)), t.holds is not False))
        losses.append(deep_loss_verdict(f.label, deep[key]))
    return trains + transfers + exponents + losses

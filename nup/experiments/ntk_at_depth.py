"""Notebook 02, claims 2-4: the NTK of Edge-of-Chaos networks at depth (growth, concentration, conditioning).

**Claim 2** (ours, from the recursion; ``docs/definitions.md``).  At the EOC with constant width the NTK
``K_0 = J J^T/n`` grows about linearly with depth (``Theta^l(x, x) = l |x|^2/m_0`` on the diagonal), so a
learning rate must shrink like ``1/l``.  Measured: ``lambda_max(K_0)`` (Lanczos) and ``trace(K_0)`` of
``n_networks`` networks per (activation, width, depth) at two constant widths, their fitted exponents
against depth next to the infinite-width exponent *over the same depths* (``nup.theory.kernels`` on the
same samples), and the infinite-width exponent deep in the recursion (over the deepest quarter of the
depths of claim 4, on ``cond_draws`` data draws).  Then full-batch GD at ``train_width``: a rate ``eta``
with ``eta lambda_max = 1.5`` at ``reference_depth`` (``ETA_LAMBDA_REFERENCE``), transferred unchanged
("fixed eta") and as ``eta * reference_depth/l``, over ``train_seeds`` seeds per depth.

**Claim 3** (stated by the companion paper).  With widths ``m_k = k^2 m`` the empirical NTK (float64, one
output, ``n_kernel`` samples) approaches the infinite-width NTK like ``m^(-1/2)`` uniformly in depth; at
constant width the error grows with depth; the absolute value is closer than ReLU.  Measured: the relative
Frobenius distance of ``kernel_networks`` networks per cell; statistics on the median over networks.

**Claim 4** (stated by the companion paper).  ``Delta_phi`` sets how fast ``cond(K_inf)`` reaches its deep
limit, abs (``Delta = 1``) faster than ReLU (``Delta = 1/2``).  Measured on a sweep over ``Delta_phi``
(leaky ReLU with slope ``alpha(Delta)``, ``alpha in [-1, 1)``; ``-1`` is abs, ``0`` ReLU): the depth from
which ``cond`` stays within 5% of its limit, the limit *extrapolated* from the deep tail
(``cond(l) = c + (a + b log l)/l``) rather than read off at the last depth computed.

Frames (``run``): ``spectrum`` (one row per network), ``spectrum_inf`` (infinite width on the training
samples), ``eta``, ``loss_curves`` and ``outcomes`` (one row per training run and rule), ``distance`` (one
row per network), ``condition`` (cond and lambda_max of ``K_inf`` per draw, Delta and depth) and ``settle``
(per draw and Delta: limit, settling depth).  ``claims`` decides every verdict by a 95% bootstrap interval
over networks, seeds or data draws (``nup.analysis.verdicts``), or by the point where the number is an exact
count or a deterministic function of the data; the thresholds are the constants below, fixed before the
full-size run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pandas as pd
import torch

from nup.analysis.catapult import classify_phase, largest_rise
from nup.analysis.fits import Estimate, bootstrap, mean_bootstrap, power_law, ratio_bootstrap
from nup.analysis.frames import metric
from nup.analysis.verdicts import Verdict, all_of, compare, within
from nup.core.activations import ACTIVATIONS, leaky_relu
from nup.core.device import resolve_device
from nup.core.mlp import hidden_widths
from nup.core.param import NTK
from nup.experiments import RUN_THREADS
from nup.experiments.schema import Choice, Float, Int, List, Schema
from nup.linalg.lanczos import lanczos
from nup.linalg.tangent_kernel import NTKOperator, empirical_ntk, ntk_top_eigenvalue, ntk_trace
from nup.progress import progress
from nup.theory.kernels import iterate_kernels, ntk_kernel
from nup.training.config import RunConfig
from nup.training.data import load_fashion_mnist
from nup.training.loop import build_model_and_data, torch_threads
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
    if p.train_width not in p.widths:
        raise ValueError(f"train_width={p.train_width!r} is not allowed; train_width must be one of widths="
                         f"{list(p.widths)} (the trained networks' spectra are part of the growth fits)")
    if p.train_seeds > p.n_networks:
        raise ValueError(f"train_seeds={p.train_seeds!r} is not allowed; train_seeds must be <= n_networks="
                         f"{p.n_networks} (the trained networks are the first spectra's networks)")
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
    # Claim 2: growth of K_0 and the learning rate (constant width, one-hot MSE, full-batch GD)
    List("widths", item=Int("width", minimum=2), min_length=2, increasing=True,
         help="constant widths of the spectra; the verdicts compare the smallest and the largest"),
    List("depths", item=Int("depth", minimum=1), min_length=2, increasing=True,
         help="depths of the spectra and of the exponent fits"),
    Int("n_train", minimum=2, help="training samples (the spectra use the same ones)"),
    Int("n_networks", minimum=2, help="random networks per (activation, width, depth)"),
    Int("train_width", minimum=2, help="constant width of the trained networks"),
    List("train_depths", item=Int("depth", minimum=1), min_length=2, increasing=True),
    Int("train_seeds", minimum=2, help="training runs per (activation, depth, rule)"),
    Int("reference_depth", minimum=1, help="eta has eta lambda_max 1.5 at this depth"),
    Int("steps", minimum=1, help="full-batch GD steps"),
    # Claim 3: distance of the empirical NTK to the infinite-width NTK (one output, float64)
    List("kernel_depths", item=Int("depth", minimum=1), min_length=2, increasing=True),
    List("constant_widths", item=Int("width", minimum=1), min_length=2, increasing=True),
    List("quadratic_base_widths", item=Int("width", minimum=1), min_length=2, increasing=True,
         help="base widths m of the profile k^2 m"),
    Int("max_hidden_width", minimum=2, help="cells whose widest hidden layer is wider are skipped"),
    Int("n_kernel", minimum=2, help="samples of the kernels of claims 3 and 4"),
    Int("kernel_networks", minimum=2, help="random networks per cell"),
    # Claim 4: condition number of the infinite-width NTK against depth, over Delta_phi
    List("cond_deltas", item=Float("delta", minimum=0.01, maximum=1.0), min_length=3, increasing=True,
         help="Delta_phi of the leaky ReLU sweep; must include 0.5 (relu) and 1.0 (abs)"),
    Int("cond_max_depth", minimum=64, help="deepest depth of the recursion"),
    Int("cond_draws", minimum=2, help="data draws of n_kernel samples"),
    Int("n_jobs", minimum=1, help="worker processes (the results do not depend on it)"),
    Int("seed", minimum=0),
    checks=(_check_params,),
)

# Thresholds, fixed before the full-size run.
LINEAR = (1.0, 0.2)               # "grows like depth": fitted exponent within 0.2 of 1
ASYMPTOTIC = (1.0, 0.1)           # deep in the recursion: exponent within 0.1 of 1
EXPONENT_GAP = 0.2                # finite- and infinite-width exponents of lambda_max within 0.2
ETA_LAMBDA_REFERENCE = 1.5        # eta lambda_max at the reference depth (mean over networks)
STABLE = 2.0                      # GD on the quadratic model is stable for eta lambda_max < 2
SPIKE = 0.01                      # a loss spike: the loss rises > 1% above its running minimum
CONCENTRATION_EXPONENT = (-0.5, 0.15)  # k^2 widths: the error ~ m^p with p within 0.15 of -1/2
FLAT = 1.5                        # k^2 widths: error(deepest)/error(shallowest) below 1.5
WORSENS = 1.5                     # constant width: error(deepest)/error(shallowest) above 1.5
SETTLE = 0.05                     # cond(K_inf) within 5% of its deep limit
SAME_LIMIT = 0.05                 # the deep limits of cond(K_inf) agree within 5% across Delta_phi
LANCZOS_TOL = 1e-4
N_BOOT = 1000
ETA_DIGITS = 4                    # eta is rounded, so its runs stay cached when Lanczos' last digits move
KERNEL_DATA_SEED = 1              # data seeds of claims 3 (the first) and 4 (1, 2, ...)
RULES = ("fixed eta", "eta * l_ref/l")


# ---------------------------------------------------------------------------- running things

def run(p) -> dict:
    """Spectra and training (claim 2), kernel distances (claim 3), condition numbers (claim 4)."""
    frames = growth(p)
    frames.update(training(p, frames["spectrum"]))
    frames["distance"] = concentration(p)
    frames.update(conditioning(p))
    return frames


# ---------------------------------------------------------------------------- claim 2: growth

def run_config(p, activation: str, depth: int, width: int, seed: int, lr: float = 1.0) -> RunConfig:
    """The training run (and, with any ``lr``, the network and data of the spectra): NTK parameterization."""
    return RunConfig(parameterization="ntk", activation=activation, depth=depth, width=width, n_train=p.n_train,
                     lr=lr, steps=p.steps, seed=seed, threads=RUN_THREADS)


def output_block_top_eigenvalue(model, x, output: int = 0, tol: float = LANCZOS_TOL) -> float:
    """``lambda_max`` of one output's diagonal block ``K_oo`` (``n x n``) of the empirical NTK, by Lanczos.

    At infinite width ``K_inf = Theta/n (x) I_{d_out}``: its top eigenvalue has one copy per output.  At
    finite width the copies couple through the random cross-output blocks and ``lambda_max(K)`` takes the
    largest of the split copies; a single block has one copy, so it isolates that effect."""
    op = NTKOperator(model, x)
    if not 0 <= output < op.d_out:
        raise ValueError(f"output={output!r} is not allowed; output must be in [0, {op.d_out})")

    def matvec(v):
        full = torch.zeros(op.n, op.d_out, dtype=op.dtype, device=op.device)
        full[:, output] = v
        return op.matvec(full.reshape(-1)).reshape(op.n, op.d_out)[:, output]

    return float(lanczos(matvec, op.n, 1, tol=tol, dtype=op.dtype, device=op.device).values[0])


def _spectrum_task(config: RunConfig, per_output: bool) -> tuple[float, float, float]:
    model, x, *_ = build_model_and_data(config)
    block = output_block_top_eigenvalue(model, x) if per_output else math.nan
    return float(ntk_top_eigenvalue(model, x, tol=LANCZOS_TOL).value), float(ntk_trace(model, x)), block


def _spectrum_cells(p) -> list[tuple[str, int, int]]:
    cells = {(a, w, d) for a in p.activations for w in p.widths for d in p.depths}
    cells |= {(a, p.train_width, d) for a in p.activations for d in p.train_depths}
    return sorted(cells, key=lambda c: -c[1] ** 2 * c[2])  # the dearest first, for the workers' balance


def geometric_depths(max_depth: int, per_octave: int = 8, dense_up_to: int = 1) -> np.ndarray:
    """Every depth up to ``dense_up_to``, then about ``per_octave`` depths per doubling, up to ``max_depth``."""
    grid = np.round(2.0 ** np.arange(0, math.log2(max_depth), 1 / per_octave)).astype(int)
    return np.unique(np.concatenate([np.arange(1, dense_up_to + 1), grid, [max_depth]]))


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


def mean_exponent(xs, matrix) -> float:
    """Exponent of ``mean over rows ~ xs^p`` (rows: networks)."""
    return power_law(xs, np.mean(matrix, axis=0)).exponent


def median_exponent(xs, matrix) -> float:
    """Exponent of ``median over rows ~ xs^p`` (robust to the heavy tail of small widths)."""
    return power_law(xs, np.median(matrix, axis=0)).exponent


def growth_exponents(frames: dict, p) -> pd.DataFrame:
    """Per activation, width and quantity (``lambda_max``, ``trace``, and at ``train_width``
    ``lambda_max_output``, one output's block): the fitted exponent against depth (over ``p.depths``) with
    its bootstrap interval over networks, and the infinite-width exponent over the same depths."""
    spectrum = frames["spectrum"][frames["spectrum"].depth.isin(p.depths)]
    inf = frames["spectrum_inf"]
    rows = []
    for (act, width), d in spectrum.groupby(["activation", "width"], sort=False):
        d_inf = inf[(inf.activation == act) & inf.depth.isin(p.depths)].sort_values("depth")
        p_inf = power_law(d_inf.depth, d_inf.lambda_max).exponent
        quantities = ("lambda_max", "trace") + (("lambda_max_output",) if width == p.train_width else ())
        for quantity in quantities:
            xs, matrix = network_matrix(d, quantity)
            e = bootstrap(matrix, lambda m, xs=xs: mean_exponent(xs, m), n_boot=N_BOOT, seed=p.seed)
            rows.append((act, width, quantity, e.value, e.low, e.high, 1.0 if quantity == "trace" else p_inf))
    return pd.DataFrame(rows, columns=["activation", "width", "quantity", "exponent", "low", "high",
                                       "infinite_width"])


def local_exponents(depths, values) -> pd.DataFrame:
    """``d log values / d log depth`` between consecutive depths, at their geometric midpoints."""
    depths, values = np.asarray(depths, dtype=float), np.asarray(values, dtype=float)
    slope = np.diff(np.log(values)) / np.diff(np.log(depths))
    return pd.DataFrame({"depth": np.sqrt(depths[1:] * depths[:-1]), "exponent": slope})


# ---------------------------------------------------------------------------- claim 2: training

def reference_eta(spectrum: pd.DataFrame, p) -> dict[str, float]:
    """``eta = 1.5 / mean lambda_max`` of the ``train_width`` networks at ``reference_depth``, rounded."""
    at = spectrum[(spectrum.width == p.train_width) & (spectrum.depth == p.reference_depth)]
    lam = at.groupby("activation").lambda_max.mean()
    return {a: float(f"{ETA_LAMBDA_REFERENCE / lam[a]:.{ETA_DIGITS}g}") for a in p.activations}


def rule_lr(eta: float, rule: str, depth: int, reference_depth: int) -> float:
    """The learning rate of ``rule`` at ``depth``: ``eta``, or ``eta * reference_depth/depth``."""
    if rule not in RULES:
        raise ValueError(f"rule={rule!r} is not allowed; one of {', '.join(RULES)}")
    return eta if rule == RULES[0] else eta * (reference_depth / depth)


def run_outcome(loss: Sequence[float], diverged: bool) -> dict:
    """One run's outcome from its loss curve (step order): ``first``, ``last``, ``rise`` (the largest
    rise above the running minimum, ``nup.analysis.catapult.largest_rise``), ``diverged`` (non-finite,
    a blow-up, or a final loss not below the initial one: ``classify_phase`` with ``settle=1``) and
    ``smooth`` (not diverged, no rise above ``SPIKE``, ending lower than it started)."""
    loss = np.asarray(loss, dtype=float)
    divergent = classify_phase(loss, diverged, settle=1.0) == "divergent"
    rise = largest_rise(loss)
    last = float(loss[-1]) if not divergent else math.nan
    smooth = bool(not divergent and rise <= SPIKE and loss[-1] < loss[0])
    return {"first": float(loss[0]), "last": last, "rise": rise, "diverged": divergent, "smooth": smooth}


def training(p, spectrum: pd.DataFrame) -> dict:
    """Full-batch GD at ``train_width`` with the fixed and the scaled rate; ``outcomes`` has one row per
    (activation, rule, depth, seed) with ``eta_lambda = lr * lambda_max(K_0)`` of that very network."""
    eta = reference_eta(spectrum, p)
    keys = [(a, rule, d, s) for a in p.activations for rule in RULES for d in p.train_depths
            for s in range(p.train_seeds)]
    configs = {k: run_config(p, k[0], k[2], p.train_width, p.seed + k[3], rule_lr(eta[k[0]], k[1], k[2],
                                                                                  p.reference_depth)) for k in keys}
    unique = list(dict.fromkeys(configs.values()))  # at the reference depth both rules are the same runs
    runs = sweep(unique, n_jobs=p.n_jobs, columns=["activation", "depth", "seed", "lr"])
    index = {c: i for i, c in enumerate(unique)}
    loss = metric(runs, "loss").sort_values(["run", "step"])
    curves = {run: g.value.to_numpy() for run, g in loss.groupby("run")}
    diverged = runs.groupby("run").diverged.first()
    lam = spectrum[spectrum.width == p.train_width].set_index(["activation", "depth", "seed"]).lambda_max
    rows, curve_rows = [], []
    for k, config in configs.items():
        run = index[config]
        outcome = run_outcome(curves[run], bool(diverged[run]))
        rows.append({"activation": k[0], "rule": k[1], "depth": k[2], "seed": k[3], "lr": config.lr, **outcome,
                     "eta_lambda": config.lr * lam[k[0], k[2], k[3]]})
        steps = loss[loss.run == run].step.to_numpy()
        curve_rows.append(pd.DataFrame({"activation": k[0], "rule": k[1], "depth": k[2], "seed": k[3],
                                        "step": steps, "loss": curves[run]}))
    return {"eta": pd.Series(eta, name="eta").rename_axis("activation").reset_index(),
            "outcomes": pd.DataFrame(rows), "loss_curves": pd.concat(curve_rows, ignore_index=True)}


def first_divergence(outcomes: pd.DataFrame, rule: str = RULES[0]) -> pd.Series:
    """Per activation: the smallest depth at which a run of ``rule`` diverged (``inf`` if none did)."""
    d = outcomes[outcomes.rule == rule]
    first = d[d.diverged].groupby("activation").depth.min()
    return first.reindex(d.activation.unique()).astype(float).fillna(math.inf)


def deepest_stable_depth(outcomes: pd.DataFrame, activation: str, rule: str = RULES[0]) -> float:
    """The deepest depth at which no run of ``rule`` diverged, below the first divergence (``nan`` if none)."""
    d = outcomes[(outcomes.rule == rule) & (outcomes.activation == activation)]
    first = first_divergence(d, rule)[activation]
    ok = d[d.depth < first].depth
    return float(ok.max()) if len(ok) else math.nan


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


def _median(matrix: np.ndarray, columns: list[int]) -> np.ndarray:
    return np.median(matrix[:, columns], axis=0)


def concentration_exponent(table: pd.DataFrame, activation: str, profile: str, depth: int, **boot) -> Estimate:
    """Exponent of the median distance against the (base) width, bootstrapped over networks."""
    cols = [i for i, c in enumerate(table.columns) if c[:3] == (activation, profile, depth)]
    widths = np.array([table.columns[i][3] for i in cols], dtype=float)
    return bootstrap(table.to_numpy(), lambda m: power_law(widths, _median(m, cols)).exponent, **boot)


def depth_growth(table: pd.DataFrame, activation: str, profile: str, shallow: int, deep: int, widths, **boot
                 ) -> Estimate:
    """Geometric mean over ``widths`` of ``median(deep)/median(shallow)``, bootstrapped over networks."""
    pos = {c: i for i, c in enumerate(table.columns)}
    num = [pos[activation, profile, deep, w] for w in widths]
    den = [pos[activation, profile, shallow, w] for w in widths]
    return bootstrap(table.to_numpy(), lambda m: float(np.exp(np.mean(np.log(_median(m, num) / _median(m, den))))),
                     **boot)


def activation_ratio(table: pd.DataFrame, numerator: str, denominator: str, **boot) -> Estimate:
    """Geometric mean over every (profile, depth, width) cell of ``median(numerator)/median(denominator)``."""
    pos = {c: i for i, c in enumerate(table.columns)}
    cells = [c[1:] for c in table.columns if c[0] == numerator and (denominator, *c[1:]) in pos]
    num = [pos[numerator, *c] for c in cells]
    den = [pos[denominator, *c] for c in cells]
    return bootstrap(table.to_numpy(), lambda m: float(np.exp(np.mean(np.log(_median(m, num) / _median(m, den))))),
                     **boot)


def concentration_table(frames: dict, p) -> pd.DataFrame:
    """Per activation, profile and depth: the exponent against width (median over networks) and its interval."""
    table = distance_matrix(frames["distance"])
    rows = []
    for act in p.activations:
        for profile in ("constant", "quadratic"):
            for depth in p.kernel_depths:
                e = concentration_exponent(table, act, profile, depth, n_boot=N_BOOT, seed=p.seed)
                rows.append((act, profile, depth, e.value, e.low, e.high))
    return pd.DataFrame(rows, columns=["activation", "profile", "depth", "exponent", "low", "high"])


# ---------------------------------------------------------------------------- claim 4: conditioning

def slope_for_delta(delta: float) -> float:
    """The leaky-ReLU slope ``alpha in [-1, 1)`` whose ``Delta_phi = (1-alpha)^2 / (2(1+alpha^2))`` is ``delta``
    (``delta = 1``: abs, ``1/2``: ReLU, towards 0: towards linear)."""
    if not 0 < delta <= 1:
        raise ValueError(f"delta={delta!r} is not allowed; delta must be in (0, 1]")
    if abs(1 - 2 * delta) < 1e-12:
        return 0.0
    return float((1 - 2 * math.sqrt(delta * (1 - delta))) / (1 - 2 * delta))


def condition_curve(x, activation, max_depth: int, dense_up_to: int = 64, ratio: float = 1.02) -> pd.DataFrame:
    """``cond`` and ``lambda_max`` of ``Theta^l`` (the 1/n cancels in cond) at every depth up to
    ``dense_up_to``, then at depths a factor ``ratio`` apart, up to ``max_depth``."""
    grid = set(range(1, min(dense_up_to, max_depth) + 1))
    d = float(dense_up_to)
    while d < max_depth:
        d *= ratio
        grid.add(min(int(round(d)), max_depth))
    grid.add(max_depth)
    rows = []
    for depth, _, theta in iterate_kernels(x, activation):
        if depth in grid:
            ev = np.linalg.eigvalsh(theta)
            rows.append((depth, ev[-1] / ev[0] if ev[0] > 0 else math.inf, ev[-1] / len(x)))
        if depth >= max_depth:
            break
    return pd.DataFrame(rows, columns=["depth", "cond", "lambda_max"])


def tail_model(depths, cond, tail: float = 4.0) -> np.ndarray:
    """``(c, a, b)`` of the least-squares fit ``cond(l) = c + (a + b log l)/l`` over depths ``>= max/tail``:
    ``c`` is the extrapolated deep limit."""
    depths, cond = np.asarray(depths, dtype=float), np.asarray(cond, dtype=float)
    keep = depths >= depths.max() / tail
    if keep.sum() < 3:
        raise ValueError("tail_model needs at least 3 depths in the deep tail")
    d = depths[keep]
    design = np.stack([np.ones_like(d), 1 / d, np.log(d) / d], axis=1)
    return np.linalg.lstsq(design, cond[keep], rcond=None)[0]


def settle_depth(depths, cond, limit: float, tolerance: float = SETTLE, model=None) -> tuple[float, bool]:
    """``(depth, extrapolated)``: the first depth from which ``|cond/limit - 1| < tolerance`` at every
    deeper depth computed.  When even the deepest is outside, the crossing is extrapolated with ``model``
    (``tail_model``'s coefficients; ``inf`` without one or when it never crosses)."""
    depths, cond = np.asarray(depths, dtype=float), np.asarray(cond, dtype=float)
    inside = np.abs(cond / limit - 1) < tolerance
    if inside[-1]:
        outside = np.flatnonzero(~inside)
        return float(depths[outside[-1] + 1] if len(outside) else depths[0]), False
    if model is None:
        return math.inf, True
    c, a, b = model
    later = depths[-1] * 1.01 ** np.arange(1, 2000)  # up to about 4e8 times deeper
    gap = np.abs((c + (a + b * np.log(later)) / later) / limit - 1)
    ok = np.flatnonzero(gap >= tolerance)
    if len(ok) == len(later):
        return math.inf, True
    return float(np.ceil(later[ok[-1] + 1] if len(ok) else later[0])), True


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
        grid = set(geometric_depths(int(d.depth.max()), per_octave))
        curves = [local_exponents(g.depth, g.lambda_max) for _, g in d[d.depth.isin(grid)].groupby("draw")]
        values = np.stack([c.exponent.to_numpy() for c in curves])
        rows.append(pd.DataFrame({"delta": delta, "depth": curves[0].depth, "exponent": values.mean(0),
                                  "low": values.min(0), "high": values.max(0)}))
    return pd.concat(rows, ignore_index=True)


def training_summary(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Per activation, rule and depth: mean ``eta lambda_max``, the fractions of diverged and smooth runs,
    the largest loss rise, and the mean final loss of the runs that did not diverge with its standard error."""
    return outcomes.groupby(["activation", "rule", "depth"]).agg(
        eta_lambda=("eta_lambda", "mean"), diverged=("diverged", "mean"), smooth=("smooth", "mean"),
        largest_rise=("rise", "max"), final_loss=("last", "mean"), final_sem=("last", "sem"), runs=("seed", "size"))


# ---------------------------------------------------------------------------- verdicts

def claims(frames: dict, p) -> list[Verdict]:
    boot = dict(n_boot=N_BOOT, seed=p.seed)
    return [*growth_claims(frames, p, boot), *training_claims(frames, p, boot),
            *concentration_claims(frames, p, boot), *conditioning_claims(frames, p, boot)]


def growth_claims(frames: dict, p, boot: dict) -> list[Verdict]:
    ex = growth_exponents(frames, p)
    far = lambda v: abs(v.estimate - LINEAR[0])  # noqa: E731
    linear = {q: [within(f"{q} cell", r.exponent, (r.low, r.high), *LINEAR) for r in d.itertuples()]
              for q, d in ex.groupby("quantity")}
    lam = ex[ex.quantity == "lambda_max"]
    inf_same = [within(f"{a} cell", value, None, *LINEAR)
                for a, value in lam.groupby("activation").infinite_width.first().items()]
    gaps = {w: [within(f"{r.activation} cell", r.exponent - r.infinite_width,
                       (r.low - r.infinite_width, r.high - r.infinite_width), 0.0, EXPONENT_GAP)
                for r in lam[lam.width == w].itertuples()] for w in (min(p.widths), max(p.widths))}
    asymptotic = [within(f"{delta} cell", *_mean_interval(asymptotic_exponent(frames["condition"], delta), boot),
                         *ASYMPTOTIC) for delta in (0.5, 1.0)]
    block = [within(f"{r.activation} cell", r.exponent - r.infinite_width,
                    (r.low - r.infinite_width, r.high - r.infinite_width), 0.0, EXPONENT_GAP)
             for r in ex[ex.quantity == "lambda_max_output"].itertuples()]
    gap = lambda v: abs(v.estimate)  # noqa: E731
    return [
        all_of(f"at the EOC with constant width trace(K_0) grows like depth (exponent {LINEAR[0]:g} +- "
               f"{LINEAR[1]:g}, both widths)", linear["trace"], far),
        all_of(f"at the EOC with constant width lambda_max(K_0) grows like depth (exponent {LINEAR[0]:g} +- "
               f"{LINEAR[1]:g}, both widths)", linear["lambda_max"], far),
        all_of(f"the infinite-width lambda_max grows like depth over the same depths (exponent {LINEAR[0]:g} +- "
               f"{LINEAR[1]:g})", inf_same, far),
        all_of(f"the infinite-width lambda_max grows like depth asymptotically (exponent {ASYMPTOTIC[0]:g} +- "
               f"{ASYMPTOTIC[1]:g} over the deepest quarter of the recursion, abs and relu)", asymptotic, far),
        all_of(f"at the smaller width lambda_max(K_0) grows with depth like the infinite-width lambda_max "
               f"(exponents within {EXPONENT_GAP:g})", gaps[min(p.widths)], gap),
        all_of(f"at the larger width lambda_max(K_0) grows with depth like the infinite-width lambda_max "
               f"(exponents within {EXPONENT_GAP:g})", gaps[max(p.widths)], gap),
        all_of(f"at the training width one output's block of K_0 grows with depth like the infinite-width "
               f"lambda_max (exponents within {EXPONENT_GAP:g})", block, gap),
    ]


def _mean_interval(values, boot) -> tuple[float, tuple[float, float]]:
    e = mean_bootstrap(values, **boot)
    return e.value, e.interval


def training_claims(frames: dict, p, boot: dict) -> list[Verdict]:
    spectrum, eta = frames["spectrum"], frames["eta"].set_index("activation").eta
    outcomes = frames["outcomes"]
    deepest = max(p.train_depths)
    leaves = []
    for act in p.activations:
        lam = spectrum[(spectrum.activation == act) & (spectrum.width == p.train_width) & (spectrum.depth == deepest)]
        leaves.append(compare("cell", *_mean_interval(eta[act] * lam.lambda_max.to_numpy(), boot), ">", STABLE))
    scaled = outcomes[outcomes.rule == RULES[1]]
    first = first_divergence(outcomes)
    lower = []
    for act in p.activations:
        depth = deepest_stable_depth(outcomes, act)
        d = outcomes[(outcomes.activation == act) & (outcomes.depth == depth)]
        fixed = d[d.rule == RULES[0]].sort_values("seed")["last"].to_numpy()
        other = d[d.rule == RULES[1]].sort_values("seed")["last"].to_numpy()
        if len(fixed) < 2 or not np.all(np.isfinite(other)):
            lower.append(Verdict("cell", False, math.nan, math.nan, math.nan, "< 1"))
            continue
        ratio = ratio_bootstrap(fixed, other, paired=True, **boot)
        lower.append(compare("cell", ratio.value, ratio.interval, "<", 1.0))
    return [
        all_of(f"the fixed eta (eta lambda_max {ETA_LAMBDA_REFERENCE:g} at the reference depth) leaves the stable "
               f"range deeper (eta lambda_max > {STABLE:g} at the deepest depth)", leaves,
               lambda v: -v.estimate),
        compare("eta * l_ref/l trains smoothly at every depth (no divergence, no loss spike)",
                float(scaled.smooth.mean()), None, ">=", 1.0),
        compare("the fixed eta diverges within the depths trained (the first such depth is in the table)",
                float(first.max()), None, "<=", deepest),
        all_of("before it diverges the fixed eta's spikes do not hurt (at the deepest depth where no run "
               "diverges it ends at a lower training loss than eta * l_ref/l)", lower, lambda v: v.estimate),
    ]


def concentration_claims(frames: dict, p, boot: dict) -> list[Verdict]:
    table = distance_matrix(frames["distance"])
    shallow, deep = min(p.kernel_depths), max(p.kernel_depths)
    exponents = [within("cell", *_estimate(concentration_exponent(table, a, "quadratic", d, **boot)),
                        *CONCENTRATION_EXPONENT) for a in p.activations for d in p.kernel_depths]
    flat = [compare("cell", *_estimate(depth_growth(table, a, "quadratic", shallow, deep,
                                                     shared_widths(p, "quadratic"), **boot)), "<", FLAT)
            for a in p.activations]
    worse = [compare("cell", *_estimate(depth_growth(table, a, "constant", shallow, deep,
                                                      shared_widths(p, "constant"), **boot)), ">", WORSENS)
             for a in p.activations]
    closer = activation_ratio(table, "abs", "relu", **boot)
    return [
        all_of(f"with k^2 widths the NTK error shrinks like m^(-1/2) (fitted exponent within "
               f"{CONCENTRATION_EXPONENT[1]:g})", exponents, lambda v: abs(v.estimate - CONCENTRATION_EXPONENT[0])),
        all_of(f"with k^2 widths the NTK error stays roughly flat in depth (grows < {FLAT:g}x)", flat,
               lambda v: v.estimate),
        all_of(f"at constant width the NTK error worsens with depth (grows > {WORSENS:g}x)", worse,
               lambda v: -v.estimate),
        compare("the absolute value is closer to the infinite-width NTK than ReLU at equal width and depth "
                "(geometric mean)", closer.value, closer.interval, "<", 1.0),
    ]


def _estimate(e: Estimate) -> tuple[float, tuple[float, float]]:
    return e.value, e.interval


def conditioning_claims(frames: dict, p, boot: dict) -> list[Verdict]:
    settle = frames["settle"]
    by = settle.pivot_table(index="draw", columns="delta", values="settle_depth")
    limits = settle.pivot_table(index="draw", columns="delta", values="limit")
    faster = ratio_bootstrap(by[1.0].to_numpy(), by[0.5].to_numpy(), paired=True, **boot)
    deltas = by.columns.to_numpy(dtype=float)
    slopes = np.array([power_law(deltas, row).exponent if np.all(np.isfinite(row)) else math.nan
                       for row in by.to_numpy()])
    spread = (limits.max(axis=1) / limits.min(axis=1) - 1).to_numpy()
    return [
        compare("cond(K_inf) reaches its deep limit at a smaller depth for abs than for relu",
                faster.value, faster.interval, "<", 1.0),
        compare("the depth at which cond(K_inf) settles shrinks as Delta_phi grows (leaky ReLU sweep, fitted "
                "exponent < 0)", *_mean_interval(slopes, boot), "<", 0.0),
        compare(f"the deep limit of cond(K_inf) is the same for every Delta_phi (within {SAME_LIMIT:.0%})",
                *_mean_interval(spread, boot), "<", SAME_LIMIT),
    ]

"""Notebook 01, claim 1: the Edge of Chaos preserves the preactivation norm at initialization.

In the NTK parameterization at the EOC, ``sigma^2 = 1/(a^2+b^2)``, the mean over random networks of
``q_k = |h_k|^2/m_k`` stays at ``q_0 = |x|^2/m_0`` at every depth; with ``sigma^2`` scaled by ``s`` it
moves like ``s^(k-1)``.  Also measured: the seed-to-seed spread of ``q_k`` (grows like ``sqrt(k/m)`` at
constant width, stays bounded with ``k^2 m`` widths), the correlation of two inputs through real
``nup.MLP``s against the infinite-width map ``rho``, and the exact sampler against real networks.

Frames (``run_experiment``): ``norms`` (activation, scale, seed-block statistics per depth), ``spread``,
``correlation`` (per network seed) and ``sampler_check``.  The raw per-network samples are kept as
arrays in ``frames["samples"]`` so that ``claims`` can resample networks.

Every verdict is decided by 95% jackknife-t intervals over independent networks (``nup.analysis.stats``;
the unit is one random network, and each verdict prints how many): the mean of ``q_k/q_0`` at a depth has
Student's t interval; a smooth function of means over networks (the slope of ``log mean q_k`` per layer
over ``log(scale)``, the exponent ``p`` of ``std_k ~ k^p``, the growth ``std_l/std_{l/8}``) has the
jackknife-t interval of ``jackknife_of_means`` (``std_k`` from the means of ``q_k`` and ``q_k^2``); the
sampler's mean and spread against the real networks' are ratios of two independent samples
(``independent_ratio``).  A statement about every activation, depth or input correlation is decided in
each cell by that cell's interval and combined by ``all_of`` (True when every cell is, False when one
is): a maximum over cells is not smooth, and its jackknife would be unreliable.  The table shows the
cell that decides (the one whose interval reaches furthest from the target).  The thresholds are the
constants below, fixed before the runs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from nup.analysis.stats import Estimate, independent_ratio, jackknife_of_means
from nup.analysis.verdicts import Verdict, all_of, compare, format_number, within
from nup.core.activations import ACTIVATIONS
from nup.core.param import NTK
from nup.experiments.schema import Choice, Float, Int, List, Schema
from nup.progress import progress
from nup.theory.eoc import iterate_correlation_map, sample_norm_ratios
from nup.training.loop import torch_threads

NOTEBOOK = "01_edge_of_chaos"

SCHEMA = Schema(
    List("activations", item=Choice("activation", choices=tuple(ACTIVATIONS)), distinct=True,
         help="presets of the family a*s + b*abs(s)"),
    Int("max_depth", minimum=16, help="deepest network (number of layers l)"),
    Int("width", minimum=2, help="constant width m, and the base width of the k^2 m profile"),
    Int("n_seeds", minimum=100, help="independent random networks per curve"),
    List("off_eoc_scales", item=Float("scale", positive=True), distinct=True,
         help="sigma^2 in units of the EOC value"),
    Int("corr_width", minimum=2, help="width of the real nup.MLPs in the correlation experiment"),
    Int("corr_seeds", minimum=4, help="real networks per activation"),
    List("input_correlations", item=Float("c0", minimum=-1.0, maximum=1.0), distinct=True),
    Int("check_depth", minimum=2, help="cross-check of the sampler against real nup.MLPs"),
    Int("check_width", minimum=2),
    Int("check_seeds", minimum=20),
    Int("seed", minimum=0),
)

# Thresholds, fixed before the runs.
EOC_TOLERANCE = 0.10          # the EOC mean of q_k/q_0 stays within 10% of 1 at every depth
SLOPE_TOLERANCE = 0.10        # off the EOC, log(mean) per layer within 10% of log(scale)
SPREAD_EXPONENT = (0.5, 0.15)  # constant width: std ~ k^p with p within 0.15 of 1/2 (fitted for k >= 4)
SPREAD_GROWTH = 1.25          # k^2 widths: std(l)/std(l/8) below 1.25
CORRELATION_TOLERANCE = 0.05  # measured correlations within 0.05 of the iterated rho
SAMPLER_TOLERANCE = 0.10      # real/sampled mean and std of q_l/q_0 within 10% of 1


def run_experiment(p) -> dict:
    """Sample the norms (on and off the EOC), the spreads (two width profiles), the correlations
    (real networks) and the sampler check (real networks against the sampler), under the fixed torch
    thread count of every run (``nup.training.loop.THREADS``), so the numbers do not depend on the machine."""
    with torch_threads():
        return _run(p)


def _run(p) -> dict:
    depths = np.arange(1, p.max_depth + 1)
    samples, norm_rows, spread_rows = {}, [], []
    for i, act in enumerate(progress(p.activations, desc="norms and spreads")):
        for scale in (1.0, *p.off_eoc_scales):
            q = sample_norm_ratios(act, [p.width] * p.max_depth, p.n_seeds, sigma2_scale=scale, seed=p.seed + 100 * i)
            samples["norm", act, scale] = q
            norm_rows.append(pd.DataFrame({"activation": act, "scale": scale, "depth": depths, "mean": q.mean(0),
                                           "sem": q.std(0) / np.sqrt(p.n_seeds)}))
        for profile, widths in width_profiles(p.width, p.max_depth).items():
            q = sample_norm_ratios(act, widths, p.n_seeds, seed=p.seed + 1000 + 100 * i)
            samples["spread", act, profile] = q
            spread_rows.append(pd.DataFrame({"activation": act, "profile": profile, "depth": depths,
                                             "std": q.std(0)}))
    return {"norms": pd.concat(norm_rows, ignore_index=True), "spread": pd.concat(spread_rows, ignore_index=True),
            "correlation": correlations(p), "sampler_check": sampler_check(p), "samples": samples}


def width_profiles(width: int, depth: int) -> dict[str, list[int]]:
    return {"constant": [width] * depth, "quadratic": [k**2 * width for k in range(1, depth + 1)]}


def correlated_pair(c: float, m0: int = 64, generator: torch.Generator | None = None) -> torch.Tensor:
    """Two float64 inputs of norm ``sqrt(m0)`` whose cosine is exactly ``c``."""
    u, v = torch.randn(2, m0, generator=generator, dtype=torch.float64)
    v = v - (v @ u) / (u @ u) * u
    u, v = u / u.norm() * m0**0.5, v / v.norm() * m0**0.5
    return torch.stack([u, c * u + (1 - c**2) ** 0.5 * v])


def correlations(p) -> pd.DataFrame:
    """Per activation, input correlation, network seed and layer: the measured correlation of
    ``h_k(x), h_k(x')`` in a real ``nup.MLP`` (float64) and the iterated map ``rho``."""
    generator = torch.Generator().manual_seed(p.seed)
    x = torch.cat([correlated_pair(c, generator=generator) for c in p.input_correlations])
    rows = []
    for act in progress(p.activations, desc="correlations"):
        rho = {c0: iterate_correlation_map(act, c0, p.max_depth) for c0 in p.input_correlations}
        for s in range(p.corr_seeds):
            model = NTK().build(x.shape[1], p.corr_width, p.max_depth, p.corr_width, act, seed=p.seed + s,
                                dtype=torch.float64)
            with torch.no_grad():
                _, hs = model(x, return_preactivations=True)
            for k, h in enumerate(hs, start=1):
                h = h.reshape(len(p.input_correlations), 2, -1)
                cos = torch.nn.functional.cosine_similarity(h[:, 0], h[:, 1], dim=-1)
                rows += [(act, c0, s, k, c.item(), rho[c0][k - 1]) for c0, c in zip(p.input_correlations, cos)]
    return pd.DataFrame(rows, columns=["activation", "c0", "seed", "depth", "correlation", "rho"])


def sampler_check(p) -> pd.DataFrame:
    """``q_l/q_0`` at depth ``check_depth`` of ReLU networks: real ``nup.MLP``s (one per seed) and the sampler."""
    x = torch.randn(1, 64, generator=torch.Generator().manual_seed(p.seed), dtype=torch.float64)
    q0 = (x**2).sum().item() / x.shape[1]
    real = []
    for s in progress(range(p.check_seeds), desc="sampler check"):
        model = NTK().build(64, p.check_width, p.check_depth, p.check_width, "relu", seed=10_000 + s,
                            dtype=torch.float64)
        with torch.no_grad():
            real.append((model(x) ** 2).sum().item() / p.check_width / q0)
    sampled = sample_norm_ratios("relu", [p.check_width] * p.check_depth, 20 * p.check_seeds, seed=p.seed)[:, -1]
    return pd.concat([pd.DataFrame({"source": "real nup.MLP", "q_ratio": real}),
                      pd.DataFrame({"source": "exact sampler", "q_ratio": sampled})], ignore_index=True)


# ---------------------------------------------------------------------------- statistics and verdicts
# Each statistic below is a smooth function of means over networks, vectorized over the rows of ``means``
# (one row per mean vector: the jackknife's leave-one-network-out means, ``jackknife_of_means``).

def _slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The least-squares slope of each row of ``y`` against ``x`` (``np.polyfit``'s, in closed form: fast for
    thousands of rows)."""
    centred = x - x.mean()
    return (y - y.mean(axis=1, keepdims=True)) @ centred / (centred @ centred)


def moments(q: np.ndarray) -> np.ndarray:
    """Per network, ``q_k`` and ``q_k^2`` side by side: their means give the mean and spread at every depth."""
    return np.concatenate([q, q**2], axis=1)


def spread_from_moments(means: np.ndarray) -> np.ndarray:
    """The standard deviation over networks at every depth from the means of ``moments`` (rows: mean vectors)."""
    depth = means.shape[1] // 2
    return np.sqrt(np.maximum(means[:, depth:] - means[:, :depth] ** 2, 0.0))


def slope_ratio(means: np.ndarray, scale: float) -> np.ndarray:
    """The fitted slope of ``log mean(q_k)`` per layer (k >= 2) over ``log(scale)``: 1 when the mean moves
    like ``scale^(k-1)``."""
    depths = np.arange(1, means.shape[1] + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(means[:, 1:])
    return _slopes(depths[1:].astype(float), logs) / np.log(scale)


def spread_exponent(means: np.ndarray, min_depth: int = 4) -> np.ndarray:
    """Exponent ``p`` of ``std_k ~ k^p`` over networks (least squares in log-log, ``k >= min_depth``), from
    the means of ``moments``."""
    std = spread_from_moments(means)
    depths = np.arange(1, std.shape[1] + 1)
    keep = depths >= min_depth
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(std[:, keep])
    return _slopes(np.log(depths[keep]), logs)


def spread_growth(means: np.ndarray) -> np.ndarray:
    """``std_l / std_{l/8}``, from the means of ``moments``: the growth of the spread over the last seven
    eighths of the depth."""
    std = spread_from_moments(means)
    depth = std.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return std[:, depth - 1] / std[:, depth // 8 - 1]


def _mean(means: np.ndarray) -> np.ndarray:
    return means[:, 0]


def _spread(means: np.ndarray) -> np.ndarray:
    return spread_from_moments(means)[:, 0]


def eoc_cells(q: np.ndarray) -> list[Estimate]:
    """The mean over networks of ``q_k/q_0`` at every depth, each with its t interval."""
    return [jackknife_of_means(q[:, k], _mean) for k in range(q.shape[1])]


def correlation_cells(corr: pd.DataFrame) -> dict[tuple, Estimate]:
    """Per (activation, c0, depth): the mean over networks of the measured correlation minus the iterated
    ``rho``, with its t interval."""
    corr = corr.assign(error=corr.correlation - corr.rho)
    return {key: jackknife_of_means(d.error.to_numpy(float), _mean)
            for key, d in corr.groupby(["activation", "c0", "depth"], sort=False)}


def sampler_ratios(check: pd.DataFrame) -> tuple[Estimate, Estimate]:
    """The mean and the spread of ``q_l/q_0`` over real ``nup.MLP``s divided by the sampler's, each with its
    interval over the two independent samples of networks (``independent_ratio``)."""
    real = check[check.source == "real nup.MLP"].q_ratio.to_numpy(float)[:, None]
    sampled = check[check.source == "exact sampler"].q_ratio.to_numpy(float)[:, None]
    return (independent_ratio(real, sampled, _mean),
            independent_ratio(moments(real), moments(sampled), _spread))


def _off_target(target: float):
    """The badness of a cell for ``all_of``: how far its interval reaches from ``target``."""
    return lambda v: max(abs(v.low - target), abs(v.high - target))


def claims(frames: dict, p) -> list[Verdict]:
    s = frames["samples"]
    acts = ", ".join(p.activations)
    eoc = [within("cell", est, None, 1.0, EOC_TOLERANCE) for a in p.activations for est in eoc_cells(s["norm", a, 1.0])]
    off = [within("cell", jackknife_of_means(s["norm", a, scale], lambda m, scale=scale: slope_ratio(m, scale)), None,
                  1.0, SLOPE_TOLERANCE) for a in p.activations for scale in p.off_eoc_scales]
    exponents = [within("cell", jackknife_of_means(moments(s["spread", a, "constant"]), spread_exponent), None,
                        *SPREAD_EXPONENT) for a in p.activations]
    growth = [compare("cell", jackknife_of_means(moments(s["spread", a, "quadratic"]), spread_growth), None, "<",
                      SPREAD_GROWTH) for a in p.activations]
    corr = [within("cell", est, None, 0.0, CORRELATION_TOLERANCE)
            for est in correlation_cells(frames["correlation"]).values()]
    mean_ratio, std_ratio = sampler_ratios(frames["sampler_check"])
    return [
        all_of(f"EOC keeps the mean of |h_k|^2/m_k within {EOC_TOLERANCE:.0%} of |x|^2/m_0 at every depth ({acts})",
               eoc, _off_target(1.0)),
        all_of(f"off the EOC the mean vanishes or explodes like scale^(k-1), slope within {SLOPE_TOLERANCE:.0%}", off,
               _off_target(1.0)),
        all_of("seed-to-seed spread at constant width grows like sqrt(depth) (fitted exponent "
               f"{format_number(SPREAD_EXPONENT[0])} +- {format_number(SPREAD_EXPONENT[1])})", exponents,
               _off_target(SPREAD_EXPONENT[0])),
        all_of(f"seed-to-seed spread with k^2 widths stays bounded (grows < {SPREAD_GROWTH - 1:.0%} from depth "
               "l/8 to l)", growth, lambda v: v.high),
        all_of(f"measured correlations follow the infinite-width map rho within {format_number(CORRELATION_TOLERANCE)}",
               corr, _off_target(0.0)),
        within("the exact sampler's mean of q_l/q_0 matches real nup.MLPs within " f"{SAMPLER_TOLERANCE:.0%}",
               mean_ratio, None, 1.0, SAMPLER_TOLERANCE),
        within("the exact sampler's seed-to-seed spread of q_l/q_0 matches real nup.MLPs within "
               f"{SAMPLER_TOLERANCE:.0%}", std_ratio, None, 1.0, SAMPLER_TOLERANCE),
    ]

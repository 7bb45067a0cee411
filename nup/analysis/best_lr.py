"""The best learning rate of a sweep: a fit around the grid minimum, a bootstrap over seeds, and the
widening of a grid whose minimum sits at its edge.

The unit of data is a *loss table*: one row per seed, one column per learning rate (``log2_lrs``,
increasing, typically a ``sqrt(2)`` grid, i.e. steps of 0.5 in ``log2``), the final training loss in
each cell, ``NaN`` or ``inf`` for a run that diverged.

* ``log_loss_table(losses)``: a diverged run counts as the worst run of the table that trained (its
  largest finite loss): no better than that, and finite, so that means and fits stay defined; then
  the natural log.
* ``best_log2_lr(log2_lrs, losses)``: the mean over seeds of the log-loss, its argmin on the grid, and
  the vertex of the parabola through the argmin and its two neighbours.  For a convex parabola whose
  middle point is the lowest the vertex lies between the two neighbours (within half a step of the
  argmin on an even grid), so the fit refines the grid minimum and never extrapolates.  When the argmin
  is the first or the last grid point there is nothing to fit: the estimate is that point and ``edge``
  says ``"low"`` or ``"high"``, the direction in which to widen the grid (``widen``).
* ``best_lr_bootstrap``: the estimate with its percentile interval over resampled seeds (rows).
* ``depth_slope(tables, depths)``: the slope of ``log best lr`` against ``log depth`` (a least-squares
  line through the per-depth estimates), with a jackknife-t interval over whole seeds: seed ``s`` is
  left out at every depth at once (row ``s`` of every table is the same seed: its data draw and its
  initialization stream), so what a seed shares across depths stays paired.  A reported measure, not
  a decision: on flat loss curves the argmin wanders, and the slope with it.
* ``transfer_regret(log2_lrs, losses, transferred)``: what using the rate transferred from another depth
  costs at this depth: the loss at ``transferred`` over the loss at this depth's grid minimum, per seed,
  as a geometric mean over paired seeds with its t interval (``nup.analysis.stats.paired_log_ratio``).
  The statistic that decides transfer: it is 1 when the transferred rate is this depth's best, and it
  stays near 1 on a flat curve, where the argmin (and the slope) is noise.
* ``grid_around``, ``widen``: grid construction on multiples of ``step``; ``extrapolate_log2_lr`` and
  ``next_grid``: the first grid at the next point of a sweep along depth or width, centred on the line
  through the best rates so far in ``log2(point)`` (a rate that moves like a power of depth or width is
  followed, and a rate that transfers stays put).
* ``tune_along(points, keys, ...)``: the whole protocol of notebooks 03 and 08 along one axis (depth or
  width): at each point, each family's grid from ``next_grid``, run over the seeds, widened by two rates
  while its minimum sits at an edge, its best rate recorded; the rate tuned at the first point is run at
  every later point where the grid does not hold it.  The caller runs the configurations (``execute``)
  and reads the tables back (``table``), so nothing here trains.

Everything is deterministic given ``seed``.  ``nup.experiments.nup_depth_scaling`` uses it; other
notebooks may.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nup.analysis.fits import percentile_estimate
from nup.analysis.stats import Estimate, jackknife_t, paired_log_ratio
from nup.validation import check_int

__all__ = ["BestLR", "log_loss_table", "best_log2_lr", "best_lr_bootstrap", "depth_slope", "transfer_regret",
           "grid_around", "widen", "loss_table", "parabola_vertex", "extrapolate_log2_lr", "next_grid",
           "tune_along"]


@dataclass(frozen=True)
class BestLR:
    """``value``: the estimated best ``log2(lr)``; ``index``: the grid argmin; ``edge``: ``"low"``,
    ``"high"`` or ``None``; ``mean_log_loss``: the mean over seeds of the log-loss at each grid point."""

    value: float
    index: int
    edge: str | None
    mean_log_loss: np.ndarray

    @property
    def best_mean_log_loss(self) -> float:
        return float(self.mean_log_loss[self.index]) if self.index >= 0 else math.nan


def _check_grid(log2_lrs) -> np.ndarray:
    x = np.asarray(log2_lrs, dtype=float)
    if x.ndim != 1 or len(x) < 1 or not np.all(np.isfinite(x)) or np.any(np.diff(x) <= 0):
        raise ValueError(f"log2_lrs={list(log2_lrs)!r} is not allowed; give finite, strictly increasing log2 rates")
    return x


def _check_table(losses, n_lrs: int) -> np.ndarray:
    table = np.asarray(losses, dtype=float)
    if table.ndim == 1:
        table = table[None, :]
    if table.ndim != 2 or table.shape[1] != n_lrs:
        raise ValueError(f"losses has shape {table.shape}; it needs one row per seed and one column per "
                         f"learning rate ({n_lrs})")
    if np.any(table[np.isfinite(table)] <= 0):
        raise ValueError("losses must be > 0 (or NaN/inf for a diverged run): the fit is on log(loss)")
    return table


def log_loss_table(losses) -> np.ndarray:
    """``log(loss)`` with every non-finite entry (a diverged run) replaced by the table's largest finite
    loss; all ``NaN`` if no run of the table trained."""
    table = np.asarray(losses, dtype=float)
    finite = np.isfinite(table)
    if not finite.any():
        return np.full(table.shape, np.nan)
    return np.log(np.where(finite, table, table[finite].max()))


def parabola_vertex(x: Sequence[float], y: Sequence[float]) -> float:
    """The abscissa of the vertex of the parabola through three points ``(x_i, y_i)``, ``x`` increasing,
    when the middle one is (weakly) the lowest: then it lies in ``[x_0, x_2]``.  A flat triple gives ``x_1``."""
    (x0, x1, x2), (y0, y1, y2) = x, y
    d0, d2 = (y0 - y1) / (x1 - x0), (y2 - y1) / (x2 - x1)  # slopes away from the middle, both >= 0
    if d0 + d2 <= 0:
        return float(x1)
    # Newton's form of the interpolating parabola around x1 (valid on uneven grids): leading coefficient
    # a, slope at x1, and the vertex x1 - slope/(2a); on an even grid of step h this is
    # x1 - h (y2 - y0) / (2 (y0 - 2 y1 + y2)).
    a = (d0 + d2) / (x2 - x0)
    slope_at_x1 = (d2 * (x1 - x0) - d0 * (x2 - x1)) / (x2 - x0)
    return float(np.clip(x1 - slope_at_x1 / (2 * a), x0, x2))


def _best_from_log_table(x: np.ndarray, log_table: np.ndarray) -> BestLR:
    mean = log_table.mean(axis=0)
    if not np.isfinite(mean).any():
        return BestLR(math.nan, -1, None, mean)
    i = int(np.nanargmin(mean))
    if i == 0 and len(x) > 1:
        return BestLR(float(x[0]), i, "low", mean)
    if i == len(x) - 1 and len(x) > 1:
        return BestLR(float(x[-1]), i, "high", mean)
    if len(x) == 1:
        return BestLR(float(x[0]), 0, "low", mean)
    return BestLR(parabola_vertex(x[i - 1:i + 2], mean[i - 1:i + 2]), i, None, mean)


def best_log2_lr(log2_lrs, losses) -> BestLR:
    """The best ``log2(lr)`` of one loss table (see the module docstring)."""
    x = _check_grid(log2_lrs)
    return _best_from_log_table(x, log_loss_table(_check_table(losses, len(x))))


def best_lr_bootstrap(log2_lrs, losses, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Estimate:
    """``best_log2_lr`` with a percentile interval over ``n_boot`` resamples of the seeds (rows)."""
    x = _check_grid(log2_lrs)
    log_table = log_loss_table(_check_table(losses, len(x)))
    check_int("n_boot", n_boot, minimum=10)
    if len(log_table) < 2:
        raise ValueError(f"a bootstrap needs at least 2 seeds, got {len(log_table)}")
    value = _best_from_log_table(x, log_table).value
    rng = np.random.default_rng(seed)
    stats = [_best_from_log_table(x, log_table[rng.integers(0, len(log_table), len(log_table))]).value
             for _ in range(n_boot)]
    return percentile_estimate(value, stats, level)


def depth_slope(tables: Mapping[int, tuple], level: float = 0.95) -> Estimate:
    """Slope of ``log2(best lr)`` against ``log2(depth)`` (the same in any log base) with its jackknife-t
    interval over whole seeds.  ``tables``: ``{depth: (log2_lrs, losses)}`` for at least two depths, every
    table with the same seeds in the same row order.  ``NaN`` when some depth has no estimate."""
    if not isinstance(tables, Mapping) or len(tables) < 2:
        raise ValueError("tables must map at least two depths to (log2_lrs, losses)")
    depths = sorted(tables)
    if any(not isinstance(d, (int, np.integer)) or d < 1 for d in depths):
        raise ValueError(f"depths {depths!r} must be integers >= 1")
    grids, logs = [], []
    for d in depths:
        x, losses = tables[d]
        x = _check_grid(x)
        grids.append(x)
        logs.append(log_loss_table(_check_table(losses, len(x))))
    n_seeds = {len(t) for t in logs}
    if len(n_seeds) != 1:
        raise ValueError(f"every depth needs the same seeds (rows), got {sorted(len(t) for t in logs)} rows")
    log_depth = np.log2(np.asarray(depths, dtype=float))

    def slope(seeds: list[int]) -> float:
        best = np.array([_best_from_log_table(x, t[seeds]).value for x, t in zip(grids, logs)])
        if not np.all(np.isfinite(best)):
            return math.nan
        return float(np.polyfit(log_depth, best, 1)[0])

    return jackknife_t(list(range(n_seeds.pop())), slope, level, "seeds")


def transfer_regret(log2_lrs, losses, transferred: float, level: float = 0.95) -> Estimate:
    """The loss at the ``transferred`` rate (a grid point of ``log2_lrs``) over the loss at the grid minimum
    (of the mean log-loss over seeds), per seed, as ``exp(mean_s log ratio)`` with its t interval over
    paired seeds.  A diverged run counts as the table's worst run that trained (``log_loss_table``).
    The grid minimum is chosen on the same seeds, which biases the regret up (against transfer)."""
    x = _check_grid(log2_lrs)
    log_table = log_loss_table(_check_table(losses, len(x)))
    hits = np.flatnonzero(np.isclose(x, transferred))
    if len(hits) != 1:
        raise ValueError(f"transferred={transferred!r} is not allowed; it must be one of the grid's log2 rates "
                         f"{x.tolist()}")
    best = _best_from_log_table(x, log_table)
    if best.index < 0:
        return Estimate(math.nan, math.nan, math.nan, level, len(log_table), "paired seeds")
    return paired_log_ratio(np.exp(log_table[:, hits[0]]), np.exp(log_table[:, best.index]), level)


def loss_table(frame: pd.DataFrame, lr: str = "log2_lr", loss: str = "loss", seed: str = "seed") -> tuple:
    """``(log2_lrs, losses)`` from a long frame with one row per run (one table: filter it to a single
    family and depth first); a missing (seed, lr) cell is an error, a diverged run has a NaN loss."""
    table = frame.pivot_table(index=seed, columns=lr, values=loss, aggfunc="first", dropna=False)
    counts = frame.groupby([seed, lr]).size()
    if len(counts) != table.shape[0] * table.shape[1]:
        raise ValueError(f"every {seed!r} needs a run at every {lr!r}")
    return table.columns.to_numpy(dtype=float), table.to_numpy(dtype=float)


def grid_around(center: float, half_points: int, step: float = 0.5) -> list[float]:
    """``2 * half_points + 1`` grid points ``step`` apart around ``center`` rounded to a multiple of ``step``."""
    check_int("half_points", half_points, minimum=0)
    if not step > 0:
        raise ValueError(f"step={step!r} is not allowed; step must be > 0")
    if not math.isfinite(center):
        raise ValueError(f"center={center!r} is not allowed; center must be finite")
    c = round(center / step)
    return [float((c + i) * step) for i in range(-half_points, half_points + 1)]


def widen(log2_lrs, edge: str | None, points: int = 2, step: float = 0.5) -> list[float]:
    """The ``points`` new grid points beyond ``edge`` (``"low"``/``"high"``) of a grid on multiples of
    ``step``; ``[]`` when ``edge`` is ``None``."""
    x = _check_grid(log2_lrs)
    check_int("points", points, minimum=1)
    if edge is None:
        return []
    if edge == "low":
        return [float(x[0] - i * step) for i in range(points, 0, -1)]
    if edge == "high":
        return [float(x[-1] + i * step) for i in range(1, points + 1)]
    raise ValueError(f"edge={edge!r} is not allowed; 'low', 'high' or None")


def extrapolate_log2_lr(points, best, point: float) -> float:
    """The best ``log2(lr)`` expected at ``point`` (a depth or a width): the last finite best rate, or the
    least-squares line through the finite ones against ``log2(points)``; NaN when none is finite."""
    good = [(x, b) for x, b in zip(points, best) if math.isfinite(b)]
    if not good:
        return math.nan
    if len(good) == 1:
        return good[0][1]
    slope, intercept = np.polyfit(np.log2([x for x, _ in good]), [b for _, b in good], 1)
    return float(slope * math.log2(point) + intercept)


def next_grid(history, point: float, start: float, first_half_points: int, half_points: int,
              step: float = 0.5) -> list[float]:
    """The first grid of a family at ``point``: ``2*first_half_points + 1`` rates around ``start`` when
    ``history`` (``[(point, best log2 lr)]`` so far) is empty, else ``2*half_points + 1`` rates around
    ``extrapolate_log2_lr`` of the history (``start`` if that is not finite)."""
    if not history:
        return grid_around(start, first_half_points, step)
    center = extrapolate_log2_lr([x for x, _ in history], [b for _, b in history], point)
    return grid_around(center if math.isfinite(center) else start, half_points, step)


def tune_along(points, keys, seeds, start: Mapping[str, float], first_half_points: int, half_points: int,
               max_widen: int, execute, table, step: float = 0.5, desc: str | None = None) -> dict[str, float]:
    """Tune each family of ``keys`` at every point of ``points`` (see the module docstring) and return
    ``{key: log2 lr tuned at points[0], rounded to the grid}`` (NaN where no run trained).

    ``execute(point, todo, in_grid)`` runs ``todo = [(key, log2_lr, seed)]`` at ``point`` (``in_grid``: False
    for the transferred rate outside the grid); ``table(key, point)`` returns that family's
    ``(log2_lrs, losses)`` over its grid runs so far.  ``start[key]`` centres the first grid."""
    from nup.progress import progress

    points = list(points)
    missing = [key for key in keys if key not in start]
    if missing:
        raise ValueError(f"start={dict(start)!r} is not allowed; it needs a log2 rate for every key (missing {missing})")
    history: dict[str, list] = {key: [] for key in keys}
    transferred: dict[str, float] = {}
    for point in progress(points, desc=desc):
        grids = {key: next_grid(history[key], point, start[key], first_half_points, half_points, step) for key in keys}
        pending = dict(grids)
        for round_ in range(max_widen + 1):
            execute(point, [(key, x, s) for key, g in pending.items() for x in g for s in seeds], True)
            pending = {}
            for key in keys:
                best = best_log2_lr(*table(key, point))
                if best.edge is not None and round_ < max_widen:
                    pending[key] = widen(grids[key], best.edge, 2, step)
                    grids[key] = sorted(grids[key] + pending[key])
            if not pending:
                break
        for key in keys:
            best = best_log2_lr(*table(key, point)).value
            history[key].append((point, best))
            if point == points[0]:
                transferred[key] = round(best / step) * step if math.isfinite(best) else math.nan
        extra = [(key, transferred[key], s) for key in keys for s in seeds
                 if math.isfinite(transferred[key]) and not any(math.isclose(transferred[key], x) for x in grids[key])]
        if extra:
            execute(point, extra, False)
    return transferred

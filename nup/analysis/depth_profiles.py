"""Quantities measured along depth: depth grids, local power-law exponents, and the deep limit of a curve
that approaches a constant, with the depth from which it stays near that limit.

* ``geometric_depths(max_depth, per_octave, dense_up_to)``: every depth ``1..dense_up_to``, then the
  depths ``round(2^(j/per_octave))`` (about ``per_octave`` per doubling), and ``max_depth`` itself; sorted,
  distinct integers.  A curve sampled on it has evenly spaced points in ``log l``.
* ``local_exponents(depths, values)``: the local power-law exponent between consecutive depths,

      p_i = (log v_{i+1} - log v_i) / (log l_{i+1} - log l_i),

  placed at the geometric midpoint ``sqrt(l_i l_{i+1})``.  For ``v = c l^p`` every ``p_i = p`` exactly; a
  curve that grows like ``l^p`` only asymptotically shows its exponent drifting towards ``p``.
* ``tail_model(depths, values, tail)``: the least-squares fit, over the deep tail ``l >= max(l)/tail``, of

      v(l) = c + (a + b log l) / l,

  the approach of a quantity to its deep limit ``c`` with the ``1/l`` and ``log(l)/l`` corrections that an
  iterated map near a fixed point with a marginal direction produces (e.g. the condition number of the
  infinite-width NTK, ``nup.theory.kernels``).  Returns ``(c, a, b)``; ``c`` is the limit *extrapolated*
  beyond the deepest depth computed, not the last value.  Three unknowns: at least three tail depths.
* ``settle_depth(depths, values, limit, tolerance, model)``: the first depth ``l*`` from which
  ``|v(l)/limit - 1| < tolerance`` at *every* deeper depth computed (a curve that dips inside and leaves
  again has not settled).  When even the deepest depth is outside, the crossing is extrapolated along the
  tail model (steps of 1% in depth, up to about ``4e8`` times the deepest depth) and flagged; without a
  model, or when the model never crosses, it is ``inf``.  Returns ``(depth, extrapolated)``.

Everything is deterministic.  ``nup.experiments.ntk_at_depth`` uses it; other notebooks may.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from nup.validation import check_int

__all__ = ["geometric_depths", "local_exponents", "tail_model", "settle_depth"]


def geometric_depths(max_depth: int, per_octave: int = 8, dense_up_to: int = 1) -> np.ndarray:
    """Every depth up to ``dense_up_to``, then about ``per_octave`` depths per doubling, up to ``max_depth``."""
    check_int("max_depth", max_depth, minimum=1)
    check_int("per_octave", per_octave, minimum=1)
    check_int("dense_up_to", dense_up_to, minimum=1)
    grid = np.round(2.0 ** np.arange(0, math.log2(max_depth), 1 / per_octave)).astype(int)
    return np.unique(np.concatenate([np.arange(1, min(dense_up_to, max_depth) + 1), grid, [max_depth]]))


def _curve(depths, values, name: str) -> tuple[np.ndarray, np.ndarray]:
    depths, values = np.asarray(depths, dtype=float), np.asarray(values, dtype=float)
    if depths.ndim != 1 or depths.shape != values.shape:
        raise ValueError(f"depths and {name} must be 1-d of equal length, got shapes {depths.shape} and "
                         f"{values.shape}")
    if len(depths) and (np.any(depths <= 0) or np.any(np.diff(depths) <= 0)):
        raise ValueError("depths must be positive and strictly increasing")
    return depths, values


def local_exponents(depths, values) -> pd.DataFrame:
    """``d log values / d log depth`` between consecutive depths, at their geometric midpoints (columns
    ``depth``, ``exponent``); ``values`` must be positive."""
    depths, values = _curve(depths, values, "values")
    if len(depths) < 2:
        raise ValueError("local_exponents needs at least 2 depths")
    if np.any(values <= 0):
        raise ValueError("values must be > 0 (the exponent is a slope in log-log)")
    slope = np.diff(np.log(values)) / np.diff(np.log(depths))
    return pd.DataFrame({"depth": np.sqrt(depths[1:] * depths[:-1]), "exponent": slope})


def tail_model(depths, values, tail: float = 4.0) -> np.ndarray:
    """``(c, a, b)`` of the least-squares fit ``values(l) = c + (a + b log l)/l`` over depths ``>= max/tail``:
    ``c`` is the extrapolated deep limit."""
    depths, values = _curve(depths, values, "values")
    if not tail >= 1:
        raise ValueError(f"tail={tail!r} is not allowed; tail must be >= 1 (the deepest 1/tail of the depths)")
    keep = depths >= depths.max() / tail if len(depths) else np.zeros(0, dtype=bool)
    if keep.sum() < 3:
        raise ValueError("tail_model needs at least 3 depths in the deep tail")
    d = depths[keep]
    design = np.stack([np.ones_like(d), 1 / d, np.log(d) / d], axis=1)
    return np.linalg.lstsq(design, values[keep], rcond=None)[0]


def settle_depth(depths, values, limit: float, tolerance: float = 0.05, model=None) -> tuple[float, bool]:
    """``(depth, extrapolated)``: the first depth from which ``|values/limit - 1| < tolerance`` at every
    deeper depth computed.  When even the deepest is outside, the crossing is extrapolated with ``model``
    (``tail_model``'s coefficients; ``inf`` without one, or when the model does not stay inside from some
    depth on, e.g. a model whose limit ``c`` lies outside the band, which it may pass through)."""
    depths, values = _curve(depths, values, "values")
    if len(depths) < 1:
        raise ValueError("settle_depth needs at least 1 depth")
    if isinstance(limit, bool) or not isinstance(limit, (int, float, np.floating)) or not (math.isfinite(limit) and limit != 0):
        raise ValueError(f"limit={limit!r} is not allowed; limit must be finite and non-zero")
    if not tolerance > 0:
        raise ValueError(f"tolerance={tolerance!r} is not allowed; tolerance must be > 0")
    inside = np.abs(values / limit - 1) < tolerance
    if inside[-1]:
        outside = np.flatnonzero(~inside)
        return float(depths[outside[-1] + 1] if len(outside) else depths[0]), False
    if model is None:
        return math.inf, True
    if len(model) != 3 or not all(isinstance(v, (int, float, np.floating)) and math.isfinite(v) for v in model):
        raise ValueError(f"model={model!r} is not allowed; pass tail_model's three finite coefficients (c, a, b)")
    c, a, b = model
    later = depths[-1] * 1.01 ** np.arange(1, 2000)  # up to about 4e8 times deeper
    gap = np.abs((c + (a + b * np.log(later)) / later) / limit - 1)
    ok = np.flatnonzero(gap >= tolerance)
    if len(ok) == len(later) or (len(ok) and ok[-1] == len(later) - 1):
        return math.inf, True  # never inside, or inside for a while and out again by the end: never settles
    return float(np.ceil(later[ok[-1] + 1] if len(ok) else later[0])), True

"""Per-step training diagnostics, registered by name for ``RunConfig.diagnostics``.

* ``"updates"``: with ``Delta_t = theta_{t+1} - theta_t`` and ``D_t = theta_t - theta_0``, per
  layer and globally (layer 0), every step and without extra forward passes:
  ``update_norm = |Delta_t|``, ``distance_from_init = |D_t|``,
  ``cos_cumulative = cos(Delta_t, D_t)`` and ``cos_consecutive = cos(Delta_t, Delta_{t-1})``.
  All rows of step ``t`` describe the update taken at step ``t``, so
  ``|D_{t+1}|^2 = |D_t|^2 + |Delta_t|^2 + 2 |Delta_t| |D_t| cos_t`` holds row by row.
* ``"preactivations"``: the relative change ``|h_k(t) - h_k(0)|_F / |h_k(0)|_F`` of each layer's
  preactivations on a fixed probe batch (the first ``probe_size`` training samples), every
  ``diagnostic_every`` steps; in full-batch runs it reuses the training forward pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import math

import torch


if TYPE_CHECKING:  # annotations only: diagnostics and schedules never import the training loop
    from nup.training.config import TrainContext

__all__ = ["UpdateTracker", "cosine"]


def cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    """``<u, v>/(|u||v|)``; NaN when either is zero (the cosine is undefined there)."""
    nu, nv = torch.linalg.vector_norm(u).item(), torch.linalg.vector_norm(v).item()
    if nu == 0 or nv == 0:
        return math.nan
    return (torch.sum(u * v).item()) / (nu * nv)


class UpdateTracker:
    def __init__(self, ctx: TrainContext):
        self.weights = [layer.weight for layer in ctx.model.layers]
        self.initial = [w.detach().clone() for w in self.weights]
        self.before = [w.detach().clone() for w in self.weights]
        self.previous_update = None

    def __call__(self, step, ctx, preactivations):
        return []  # everything is measured after the optimizer step

    @torch.no_grad()
    def after_step(self, step, ctx):
        updates = [w.detach() - b for w, b in zip(self.weights, self.before)]
        cumulative = [b - w0 for b, w0 in zip(self.before, self.initial)]
        rows = []
        sums = dict(uu=0.0, dd=0.0, ud=0.0, up=0.0, pp=0.0)
        for k, (u, d) in enumerate(zip(updates, cumulative), start=1):
            uu, dd, ud = (u * u).sum().item(), (d * d).sum().item(), (u * d).sum().item()
            sums["uu"] += uu
            sums["dd"] += dd
            sums["ud"] += ud
            rows += [("update_norm", k, math.sqrt(uu)), ("distance_from_init", k, math.sqrt(dd)),
                     ("cos_cumulative", k, _safe_cos(ud, uu, dd))]
            if self.previous_update is not None:
                p = self.previous_update[k - 1]
                up, pp = (u * p).sum().item(), (p * p).sum().item()
                sums["up"] += up
                sums["pp"] += pp
                rows.append(("cos_consecutive", k, _safe_cos(up, uu, pp)))
        rows += [("update_norm", 0, math.sqrt(sums["uu"])), ("distance_from_init", 0, math.sqrt(sums["dd"])),
                 ("cos_cumulative", 0, _safe_cos(sums["ud"], sums["uu"], sums["dd"]))]
        if self.previous_update is not None:
            rows.append(("cos_consecutive", 0, _safe_cos(sums["up"], sums["uu"], sums["pp"])))
        self.previous_update = updates
        self.before = [w.detach().clone() for w in self.weights]
        return rows


def _safe_cos(dot: float, sq_u: float, sq_v: float) -> float:
    return dot / math.sqrt(sq_u * sq_v) if sq_u > 0 and sq_v > 0 else math.nan

"""The ``"updates"`` diagnostic: how far and in which direction each update moves the weights.

With ``Delta_t = theta_{t+1} - theta_t`` (the update taken at step ``t``) and ``D_t = theta_t - theta_0``,
per layer and globally (layer 0), at every diagnostic step ``t`` (``t % diagnostic_every == 0``, and
``t`` before the last step, since the last step takes no update), without extra forward passes:
``update_norm = |Delta_t|``, ``distance_from_init = |D_t|``, ``cos_cumulative = cos(Delta_t, D_t)``
(NaN at ``t = 0``, where ``D_0 = 0``) and ``cos_consecutive = cos(Delta_t, Delta_{t-1})`` (from ``t = 1``).
All rows of step ``t`` describe the update taken at step ``t``, so
``|D_{t+1}|^2 = |D_t|^2 + |Delta_t|^2 + 2 |Delta_t| |D_t| cos_t`` holds row by row (with
``diagnostic_every = 1`` every ``D_{t+1}`` is itself a row; otherwise ``|D_{t+1}|`` is not recorded).
The values at a step do not depend on ``diagnostic_every``: they equal, bit for bit, the rows of the
same step in a run with ``diagnostic_every = 1``.

What is computed when (all in ``after_step(s)``, which sees ``theta_{s+1}`` after the update of step ``s``):

* at construction: a copy of ``theta_0``;
* at a diagnostic step ``s``: the rows, from the copy of ``theta_s``, the live ``theta_{s+1}``,
  ``theta_0`` and ``Delta_{s-1}`` (kept from step ``s - 1``);
* before a diagnostic step ``t = s + 1``: a copy of ``theta_t``, and ``Delta_{t-1} = theta_t - theta_{t-1}``
  from a copy of ``theta_{t-1}`` taken at ``s - 1`` (or from the rows of step ``t - 1`` if that was a
  diagnostic step itself);
* at every other step: nothing but integer arithmetic.

So a run costs two weight copies and one row computation per ``diagnostic_every`` steps, and holds
at most three copies of the weights.  ``EveryStepUpdateTracker`` (registered as
``"updates_every_step"``) records every step whatever ``diagnostic_every`` says.

``LaggedUpdateCosine`` (``"update_lags"``) measures multi-step updates at every step: the row
``cos_cumulative_k{k}`` of step ``s`` is ``cos(theta_{s+1} - theta_{s+1-k}, theta_{s+1-k} - theta_0)``,
the cosine of the ``k``-step update that ends with the update of step ``s`` and the cumulative
update before it (per layer and globally; from ``s = k`` on, where ``theta_{s+1-k} != theta_0``).
For ``k = 1`` it is ``cos_cumulative``.  A ``k``-step update averages over ``k`` steps, so with
``k = 2`` it filters the period-2 oscillation of the Edge of Stability.  It holds ``max(lags) + 1``
copies of the weights and takes one copy per step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import math
from collections import deque

import torch

from nup.validation import check_int

if TYPE_CHECKING:  # annotations only: diagnostics and schedules never import the training loop
    from nup.diagnostics.context import TrainContext

__all__ = ["UpdateTracker", "EveryStepUpdateTracker", "LaggedUpdateCosine", "cosine"]


def cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    """``<u, v>/(|u||v|)``; NaN when either is zero (the cosine is undefined there)."""
    nu, nv = torch.linalg.vector_norm(u).item(), torch.linalg.vector_norm(v).item()
    if nu == 0 or nv == 0:
        return math.nan
    return (torch.sum(u * v).item()) / (nu * nv)


class UpdateTracker:
    """See the module docstring; ``every`` defaults to ``ctx.config.diagnostic_every``."""

    def __init__(self, ctx: TrainContext, every: int | None = None):
        self.every = ctx.config.diagnostic_every if every is None else check_int("every", every, minimum=1)
        self.steps = ctx.config.steps  # the last step takes no update
        self.weights = [layer.weight for layer in ctx.model.layers]
        self.initial = [w.detach().clone() for w in self.weights]
        self.before = self.initial if self._records(0) else None  # theta_t for the next diagnostic step t
        self.earlier: list[torch.Tensor] | None = None  # theta_{t-1}, when t-1 is not a diagnostic step
        self.update: tuple[int, list[torch.Tensor]] | None = None  # (s, Delta_s) of the latest known update

    def _records(self, step: int) -> bool:
        return step % self.every == 0 and step < self.steps

    def __call__(self, step, ctx, preactivations):
        return []  # everything is measured after the optimizer step

    @torch.no_grad()
    def after_step(self, step, ctx):
        """Called after the update of ``step``: rows at diagnostic steps, copies before them."""
        rows = []
        if self._records(step):
            rows = self._rows(step)
        upcoming = step + 1
        if self._records(upcoming):
            if self.earlier is not None:  # theta_{upcoming-1}, copied one step ago
                self.update = (step, [w.detach() - e for w, e in zip(self.weights, self.earlier)])
                self.earlier = None
            self.before = [w.detach().clone() for w in self.weights]
        elif self._records(step + 2):
            self.earlier = [w.detach().clone() for w in self.weights]  # theta_{t-1} for t = step + 2
        return rows

    def _rows(self, step: int) -> list[tuple[str, int, float]]:
        updates = [w.detach() - b for w, b in zip(self.weights, self.before)]
        cumulative = [b - w0 for b, w0 in zip(self.before, self.initial)]
        previous = self.update[1] if self.update is not None and self.update[0] == step - 1 else None
        # All dot products as tensors, then one transfer to Python floats (one host sync per call).
        dots = []
        for k, (u, d) in enumerate(zip(updates, cumulative)):
            dots += [(u * u).sum(), (d * d).sum(), (u * d).sum()]
            if previous is not None:
                p = previous[k]
                dots += [(u * p).sum(), (p * p).sum()]
        values = iter(torch.stack(dots).tolist())
        rows = []
        sums = dict(uu=0.0, dd=0.0, ud=0.0, up=0.0, pp=0.0)
        for k in range(1, len(updates) + 1):
            uu, dd, ud = next(values), next(values), next(values)
            sums["uu"] += uu
            sums["dd"] += dd
            sums["ud"] += ud
            rows += [("update_norm", k, math.sqrt(uu)), ("distance_from_init", k, math.sqrt(dd)),
                     ("cos_cumulative", k, _safe_cos(ud, uu, dd))]
            if previous is not None:
                up, pp = next(values), next(values)
                sums["up"] += up
                sums["pp"] += pp
                rows.append(("cos_consecutive", k, _safe_cos(up, uu, pp)))
        rows += [("update_norm", 0, math.sqrt(sums["uu"])), ("distance_from_init", 0, math.sqrt(sums["dd"])),
                 ("cos_cumulative", 0, _safe_cos(sums["ud"], sums["uu"], sums["dd"]))]
        if previous is not None:
            rows.append(("cos_consecutive", 0, _safe_cos(sums["up"], sums["uu"], sums["pp"])))
        self.update = (step, updates) if self._records(step + 1) else None  # Delta_s, if step s+1 needs it
        self.before = None
        return rows


class EveryStepUpdateTracker(UpdateTracker):
    """``UpdateTracker`` at every step, whatever ``diagnostic_every`` says (for runs that need each
    step's cosine while their other diagnostics run every ``diagnostic_every`` steps)."""

    def __init__(self, ctx: TrainContext):
        super().__init__(ctx, every=1)


class LaggedUpdateCosine:
    """Every step ``s``: ``cos_cumulative_k{k}`` for each ``k`` in ``lags`` (module docstring)."""

    LAGS = (2, 10)

    def __init__(self, ctx: TrainContext, lags: tuple[int, ...] | None = None):
        lags = self.LAGS if lags is None else tuple(lags)
        if not lags or len(set(lags)) != len(lags):
            raise ValueError(f"lags={lags!r} is not allowed; lags must be distinct integers >= 1")
        self.lags = tuple(check_int("lags", k, minimum=1) for k in lags)
        self.weights = [layer.weight for layer in ctx.model.layers]
        self.initial = [w.detach().clone() for w in self.weights]
        self.history: deque[list[torch.Tensor]] = deque([self.initial], maxlen=max(self.lags))  # theta_{s+1-K..s}

    def __call__(self, step, ctx, preactivations):
        return []  # everything is measured after the optimizer step

    @torch.no_grad()
    def after_step(self, step, ctx):
        """Called after the update of ``step``, with ``theta_{step+1}`` live; ``history[-k]`` is
        ``theta_{step+1-k}``."""
        rows = []
        lags = [k for k in self.lags if step + 1 - k >= 1]
        if lags:
            dots = []
            for k in lags:
                start = self.history[-k]
                for w, b, w0 in zip(self.weights, start, self.initial):
                    u, d = w.detach() - b, b - w0
                    dots += [(u * u).sum(), (d * d).sum(), (u * d).sum()]
            values = iter(torch.stack(dots).tolist())
            for k in lags:
                name = f"cos_cumulative_k{k}"
                total = [0.0, 0.0, 0.0]
                for layer in range(1, len(self.weights) + 1):
                    uu, dd, ud = next(values), next(values), next(values)
                    total = [total[0] + uu, total[1] + dd, total[2] + ud]
                    rows.append((name, layer, _safe_cos(ud, uu, dd)))
                rows.append((name, 0, _safe_cos(total[2], total[0], total[1])))
        self.history.append([w.detach().clone() for w in self.weights])
        return rows


def _safe_cos(dot: float, sq_u: float, sq_v: float) -> float:
    return dot / math.sqrt(sq_u * sq_v) if sq_u > 0 and sq_v > 0 else math.nan

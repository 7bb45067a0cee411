"""The ``"sharpness"`` diagnostic: the top Hessian eigenvalue of the training loss on the full batch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import math

import torch

from nup.linalg.hessian import sharpness

if TYPE_CHECKING:  # annotations only: diagnostics and schedules never import the training loop
    from nup.diagnostics.context import TrainContext

__all__ = ["SharpnessTracker"]


class SharpnessTracker:
    """Sharpness on the full training batch every ``diagnostic_every`` steps, warm-started from
    the previous eigenvector (``self.vector``); rows ``sharpness`` and ``sharpness_hvps``."""

    def __init__(self, ctx: TrainContext):
        self.vector: torch.Tensor | None = None

    def __call__(self, step, ctx: TrainContext, preactivations):
        result = sharpness(ctx.model, ctx.loss_fn, ctx.x, ctx.y, v0=self.vector)
        finite = math.isfinite(result.value)
        self.vector = result.vector if finite else None  # a NaN vector would poison the next start
        return [("sharpness", 0, result.value), ("sharpness_hvps", 0, float(result.n_products))]

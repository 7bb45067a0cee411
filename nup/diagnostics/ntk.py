"""NTK diagnostics (``RunConfig.diagnostics``).

* ``"ntk"``: on the probe batch, every ``diagnostic_every`` steps: the top eigenvalue, the trace (whole
  network and per layer), ``ntk_change = |K_t - K_0|_F/|K_0|_F`` and the kernel-target alignment.
* ``"ntk_lambda"``: ``lambda_max`` of the NTK on the **full training batch** every
  ``diagnostic_every`` steps, matrix-free and warm-started (the ``"ntk"`` diagnostic forms the
  probe kernel and its per-layer parts, which is far dearer on the full batch); row ``ntk_lambda``.
* ``"ntk_motion"``: the *shape* of the probe kernel, ``K_hat = K/|K|_F``, which does not see a
  change of scale: ``ntk_shape_change = |K_hat_t - K_hat_0|_F`` (in [0, 2]) and
  ``ntk_shape_step = |K_hat_t - K_hat_s|_F`` since the previous diagnostic step ``s``; the running
  sum of the steps is the kernel's path length.  (``ntk_change`` saturates at 1 when the kernel
  shrinks, as it does under repeated catapults.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import math

import torch

from nup.linalg.tangent_kernel import empirical_ntk, kernel_alignment, ntk_top_eigenvalue, output_trace_kernel
from nup.validation import check_positive

if TYPE_CHECKING:  # annotations only: diagnostics and schedules never import the training loop
    from nup.diagnostics.context import TrainContext

__all__ = ["NTKTracker", "NTKLambda", "NTKMotion"]


class NTKTracker:
    """On the probe batch (the first ``probe_size`` training samples), every ``diagnostic_every`` steps:
    ``ntk_top_eigenvalue`` (Lanczos warm-started from ``self.vector``), ``ntk_trace`` (layer 0: the
    whole network, layer k: layer k's contribution), ``ntk_change = |K_t - K_0|_F / |K_0|_F`` and
    ``kernel_alignment`` of the output-traced ``n x n`` kernel with the one-hot targets."""

    def __init__(self, ctx: TrainContext):
        self.probe = ctx.x[: ctx.config.probe_size]
        targets = ctx.y[: ctx.config.probe_size]
        with torch.no_grad():
            self.d_out = ctx.model(self.probe[:1]).shape[1]
        if targets.dim() == 1:  # class labels (cross-entropy runs): align with their one-hot code
            targets = torch.nn.functional.one_hot(targets.long(), self.d_out)
        self.targets = targets
        self.initial = empirical_ntk(ctx.model, self.probe)
        self.initial_norm = torch.linalg.matrix_norm(self.initial)
        self.vector: torch.Tensor | None = None

    def __call__(self, step, ctx: TrainContext, preactivations):
        kernel, layers = empirical_ntk(ctx.model, self.probe, return_layers=True)
        top = ntk_top_eigenvalue(ctx.model, self.probe, v0=self.vector)
        self.vector = top.vector if math.isfinite(top.value) else None
        rows = [("ntk_top_eigenvalue", 0, top.value), ("ntk_trace", 0, float(torch.trace(kernel)))]
        rows += [("ntk_trace", k, float(torch.trace(layer))) for k, layer in enumerate(layers, start=1)]
        change = torch.linalg.matrix_norm(kernel - self.initial) / self.initial_norm
        rows.append(("ntk_change", 0, float(change)))
        rows.append(("kernel_alignment", 0, kernel_alignment(output_trace_kernel(kernel, self.d_out), self.targets)))
        return rows


class NTKLambda:
    """``lambda_max`` of the full-batch NTK every ``diagnostic_every`` steps (matrix-free Lanczos,
    warm-started from the previous eigenvector); row ``ntk_lambda``."""

    def __init__(self, ctx: TrainContext, tol: float = 1e-4):
        self.vector: torch.Tensor | None = None
        self.tol = check_positive("tol", tol)

    def __call__(self, step, ctx: TrainContext, preactivations):
        result = ntk_top_eigenvalue(ctx.model, ctx.x, v0=self.vector, tol=self.tol)
        self.vector = result.vector if math.isfinite(result.value) else None
        return [("ntk_lambda", 0, float(result.value))]


class NTKMotion:
    """How the *shape* of the probe NTK moves: ``ntk_shape_change = |K_hat_t - K_hat_0|_F`` and
    ``ntk_shape_step = |K_hat_t - K_hat_s|_F`` (``s`` the previous diagnostic step), ``K_hat = K/|K|_F``."""

    def __init__(self, ctx: TrainContext):
        self.probe = ctx.x[: ctx.config.probe_size]
        self.initial = self._shape(ctx.model)
        self.previous = self.initial

    def _shape(self, model):
        kernel = empirical_ntk(model, self.probe).double()
        norm = torch.linalg.matrix_norm(kernel)
        return kernel / norm if norm > 0 else torch.full_like(kernel, math.nan)

    def __call__(self, step, ctx: TrainContext, preactivations):
        shape = self._shape(ctx.model)
        rows = [("ntk_shape_change", 0, float(torch.linalg.matrix_norm(shape - self.initial))),
                ("ntk_shape_step", 0, float(torch.linalg.matrix_norm(shape - self.previous)))]
        self.previous = shape
        return rows



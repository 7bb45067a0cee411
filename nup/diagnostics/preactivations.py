"""The ``"preactivations"`` diagnostic: the relative change ``|h_k(t) - h_k(0)|_F / |h_k(0)|_F`` of each
layer's preactivations on a fixed probe batch (the first ``probe_size`` training samples), every
``diagnostic_every`` steps, and their mean squared norm per unit ``preact_norm2``; in full-batch runs
it reuses the training forward pass."""

from __future__ import annotations

import torch

__all__ = ["PreactivationChange"]


class PreactivationChange:
    def __init__(self, ctx):
        self.probe = ctx.x[: ctx.config.probe_size]
        with torch.no_grad():
            _, h0 = ctx.model(self.probe, return_preactivations=True)
        self.initial = [h.detach().clone() for h in h0]

    @torch.no_grad()
    def __call__(self, step, ctx, preactivations):
        if preactivations is None:
            _, preactivations = ctx.model(self.probe, return_preactivations=True)
        n = self.probe.shape[0]
        rows = []
        for k, (h, h0) in enumerate(zip(preactivations, self.initial), start=1):
            change = torch.linalg.vector_norm(h.detach()[:n] - h0) / torch.linalg.vector_norm(h0)
            rows.append(("preact_change", k, change.item()))
            rows.append(("preact_norm2", k, (h.detach()[:n] ** 2).sum(dim=1).mean().item() / h.shape[1]))
        return rows

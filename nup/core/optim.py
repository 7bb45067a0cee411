"""Gradient descent with an optional normalized update (our reading of νP's "normalized update").

The abstract names a normalized update without defining it, so three modes are offered:

* ``"none"``: plain (S)GD, ``W_k -= lr_k * G_k``;
* ``"global"``: ``theta -= lr_k * g/|g|`` with ``|g|`` the norm of the whole gradient;
* ``"per_layer"``: ``W_k -= lr_k * G_k/|G_k|_F``, each layer moves by exactly ``lr_k``.

With momentum the normalization is applied to the gradient before the momentum buffer, so
the step length stays bounded by ``lr_k/(1 - momentum)``.
"""

from __future__ import annotations

import torch

from nup.validation import check_choice, check_nonnegative, check_positive

__all__ = ["NormalizedSGD", "NORMALIZE_MODES"]

NORMALIZE_MODES = ("none", "global", "per_layer")


class NormalizedSGD(torch.optim.Optimizer):
    """SGD whose step is optionally normalized globally or per parameter tensor (layer)."""

    def __init__(self, params, lr: float, normalize: str = "none", momentum: float = 0.0, eps: float = 1e-30):
        check_positive("lr", lr)
        check_choice("normalize", normalize, NORMALIZE_MODES)
        check_nonnegative("momentum", momentum)
        if momentum >= 1:
            raise ValueError(f"momentum={momentum!r} is not allowed; momentum must be in [0, 1)")
        super().__init__(params, dict(lr=lr, momentum=momentum, eps=eps))
        for group in self.param_groups:
            check_positive("lr (of a parameter group)", group["lr"])
        self.normalize = normalize

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        global_norm = None
        if self.normalize == "global" and params:
            global_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if self.normalize == "global":
                    d = d / global_norm.clamp_min(group["eps"])
                elif self.normalize == "per_layer":
                    d = d / torch.linalg.vector_norm(d).clamp_min(group["eps"])
                if group["momentum"]:
                    buf = self.state[p].get("momentum_buffer")
                    buf = d.clone() if buf is None else buf.mul_(group["momentum"]).add_(d)
                    self.state[p]["momentum_buffer"] = buf
                    d = buf
                p.add_(d, alpha=-group["lr"])
        return loss

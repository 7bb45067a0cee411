"""Gradient descent with an optional normalized update (our reading of νP's "normalized update").

The abstract names a normalized update without defining it, so four modes are offered:

* ``"none"``: plain (S)GD, ``W_k -= lr_k * G_k``;
* ``"global"``: ``theta -= lr_k * g/|g|`` with ``|g|`` the norm of the whole gradient;
* ``"per_layer"``: ``W_k -= lr_k * G_k/|G_k|_F``, each layer moves by exactly ``lr_k``;
* ``"spectral"``: the width-aware step of the spectral condition (Yang, Simon & Bernstein 2023,
  "A spectral condition for feature learning", arXiv 2310.17813), in our transposition::

      W_k -= lr_k * s_k * G_k/|G_k|_F,    s_k = sqrt(fan_out_k / fan_in_k) / c_k

  with ``c_k`` the layer's forward multiplier (``h_k = c_k W_k a_{k-1}``).  The *effective* weights
  ``c_k W_k`` then move by ``|c_k Delta W_k|_F = lr_k sqrt(fan_out/fan_in)``, which bounds their
  spectral norm and equals it when the gradient is rank one (one sample; see ``docs/definitions.md``),
  so each coordinate of ``h_k`` moves by ``O(lr_k)`` at any width.  Under the NTK multipliers
  ``c_k = sigma_k/sqrt(fan_in)``: ``s_k = sqrt(fan_out)/sigma_k``.  The Frobenius norm stands in for the
  spectral norm on purpose: it costs one pass over ``G_k``, where an SVD of a 10^4 x 10^4 layer (νP's
  ``k^2 m`` widths) would dominate a full-batch GD step.

  The mode reads ``fan_in``, ``fan_out`` and ``multiplier`` from each parameter group (plain torch
  group keys; ``nup.core.param.Parameterization.param_groups`` sets them) and raises ``ValueError``
  naming the group if one is missing or bad.

With momentum the normalization is applied to the gradient before the momentum buffer, so
the step length stays bounded by ``lr_k/(1 - momentum)`` (times ``s_k`` for ``"spectral"``).
"""

from __future__ import annotations

import math

import torch

from nup.validation import check_choice, check_nonnegative, check_positive

__all__ = ["NormalizedSGD", "NORMALIZE_MODES", "SPECTRAL_KEYS", "spectral_scale"]

NORMALIZE_MODES = ("none", "global", "per_layer", "spectral")
SPECTRAL_KEYS = ("fan_in", "fan_out", "multiplier")  # the parameter-group keys ``"spectral"`` reads


def spectral_scale(fan_in: float, fan_out: float, multiplier: float) -> float:
    """``s = sqrt(fan_out/fan_in)/multiplier``: the factor on ``G/|G|_F`` of the ``"spectral"`` step."""
    return math.sqrt(fan_out / fan_in) / multiplier


def _group_label(index: int, group: dict) -> str:
    name = group.get("name")
    return f"param_groups[{index}]" + (f" ({name!r})" if name is not None else "")


class NormalizedSGD(torch.optim.Optimizer):
    """SGD whose step is optionally normalized globally, per parameter tensor (layer), or per layer
    with the width-aware ``"spectral"`` scale (module docstring)."""

    def __init__(self, params, lr: float, normalize: str = "none", momentum: float = 0.0, eps: float = 1e-30):
        check_positive("lr", lr)
        check_choice("normalize", normalize, NORMALIZE_MODES)
        check_nonnegative("momentum", momentum)
        if momentum >= 1:
            raise ValueError(f"momentum={momentum!r} is not allowed; momentum must be in [0, 1)")
        self.normalize = normalize  # before super().__init__, which calls add_param_group
        super().__init__(params, dict(lr=lr, momentum=momentum, eps=eps))
        for group in self.param_groups:
            check_positive("lr (of a parameter group)", group["lr"])

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        if self.normalize == "spectral":
            self._check_spectral_group(len(self.param_groups) - 1, self.param_groups[-1])

    @staticmethod
    def _check_spectral_group(index: int, group: dict) -> None:
        label = _group_label(index, group)
        for key in SPECTRAL_KEYS:
            if key not in group:
                raise ValueError(f"normalize='spectral' needs {key!r} in every parameter group, but {label} has no "
                                 f"{key!r}; give {', '.join(SPECTRAL_KEYS)} per group (Parameterization.param_groups "
                                 "sets them)")
            try:
                check_positive(key, group[key])
            except ValueError as error:
                raise ValueError(f"{error} (in {label})") from None
        for i, p in enumerate(group["params"]):
            if p.dim() == 2 and tuple(p.shape) != (group["fan_out"], group["fan_in"]):
                raise ValueError(f"params[{i}] of {label} has shape {tuple(p.shape)}, but the group says "
                                 f"fan_out={group['fan_out']!r}, fan_in={group['fan_in']!r}; a weight of shape "
                                 "(fan_out, fan_in) is expected")

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
                elif self.normalize == "spectral":
                    scale = spectral_scale(group["fan_in"], group["fan_out"], group["multiplier"])
                    d = d * (scale / torch.linalg.vector_norm(d).clamp_min(group["eps"]))
                if group["momentum"]:
                    buf = self.state[p].get("momentum_buffer")
                    buf = d.clone() if buf is None else buf.mul_(group["momentum"]).add_(d)
                    self.state[p]["momentum_buffer"] = buf
                    d = buf
                p.add_(d, alpha=-group["lr"])
        return loss

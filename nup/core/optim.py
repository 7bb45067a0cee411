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

**Steering** (``steer_beta != 0``; ours, for the interventional test of claim 6 in notebook 04).  The
optimizer keeps each layer's weights at construction, ``W_k(0)`` (``state[p]["init"]``), and with
``g = G_k/|G_k|_F`` and ``d = D_k/|D_k|_F``, ``D_k = W_k - W_k(0)``, takes a step of unchanged length but
turned direction (``lr_k``; ``lr_k s_k`` under ``"spectral"``)::

    W_k += lr_k * u/|u|_F

* ``steer_mode="cumulative"``: ``u = -g + beta d``.  ``beta > 0`` raises the cosine of the step with the
  cumulative update ``D_k``, ``beta < 0`` lowers it: ``cos(u, D_k) = (c + beta)/sqrt(1 + 2 beta c + beta^2)``
  with ``c = cos(-G_k, D_k)``, the unsteered step's cosine.
* ``steer_mode="orthogonal_random"`` (the control): the same turn of the direction, with the cosine left
  alone.  Write ``-g = c d + s e`` (``e`` the unit part of ``-g`` orthogonal to ``D_k``, ``s = sqrt(1-c^2)``)
  and draw a random unit ``r`` orthogonal to both ``D_k`` and ``G_k`` (a Gaussian projected, from the
  optimizer's own ``torch.Generator`` seeded by ``steer_seed``); then
  ``u = c d + s (cos(phi) e + sin(phi) r)``.  Exactly preserved, per layer and step: the length of the
  step and its cosine with ``D_k``, ``cos(u, D_k) = c``, i.e. ``<Delta_k, D_k>`` equals the unsteered
  step's.  ``phi`` is chosen so that the angle between ``u`` and ``-g`` equals that of the
  ``"cumulative"`` step at the same ``beta`` (``cos(phi) = (cos(theta_beta) - c^2)/s^2`` with
  ``cos(theta_beta) = (1 + beta c)/sqrt(1 + 2 beta c + beta^2)``, clipped to ``[-1, 1]``).

**Finite check** (``check_finite=True``; ``nup.train`` sets it).  Before moving any parameter, ``step``
checks that every gradient is finite and, if one is not, moves nothing and sets ``last_step_finite = False``
(a diverged run stops there).  The check is one host sync on the sum of the per-tensor gradient norms,
which the ``"global"``, ``"per_layer"`` and ``"spectral"`` steps compute anyway (``"none"`` and steering:
one fused ``torch._foreach_norm``); only when that sum is not finite is each tensor checked entry by entry
(the squares of huge finite entries overflow), so the answer is exact (``gradients_finite``).

No steering where it is undefined: at the first step (``D_k = 0``), for a zero gradient, for
``-g`` parallel to ``D_k`` (control only) or a layer with fewer than 3 entries (control only); the
step is then the plain normalized one.  Steering needs ``normalize`` ``"per_layer"`` or
``"spectral"`` and ``momentum = 0``.
"""

from __future__ import annotations

import math

import torch

from nup.validation import check_choice, check_finite_float, check_int, check_nonnegative, check_positive

__all__ = ["NormalizedSGD", "NORMALIZE_MODES", "SPECTRAL_KEYS", "STEER_MODES", "spectral_scale", "steered_direction",
           "gradients_finite"]

NORMALIZE_MODES = ("none", "global", "per_layer", "spectral")
STEER_MODES = ("cumulative", "orthogonal_random")  # see "Steering" in the module docstring
SPECTRAL_KEYS = ("fan_in", "fan_out", "multiplier")  # the parameter-group keys ``"spectral"`` reads


def spectral_scale(fan_in: float, fan_out: float, multiplier: float) -> float:
    """``s = sqrt(fan_out/fan_in)/multiplier``: the factor on ``G/|G|_F`` of the ``"spectral"`` step."""
    return math.sqrt(fan_out / fan_in) / multiplier


def steered_direction(grad: torch.Tensor, cumulative: torch.Tensor, beta: float, mode: str = "cumulative",
                      generator: torch.Generator | None = None, eps: float = 1e-30) -> torch.Tensor:
    """The unit direction ``u/|u|_F`` of a steered step (module docstring, "Steering") for a layer with
    gradient ``grad`` and cumulative update ``cumulative = W_k - W_k(0)``; the unsteered ``-grad/|grad|``
    where steering is undefined.  ``generator`` draws the control's random direction."""
    g_norm = torch.linalg.vector_norm(grad)
    g = grad / g_norm.clamp_min(eps)
    d_norm = torch.linalg.vector_norm(cumulative)
    if beta == 0 or d_norm <= eps or g_norm <= eps:
        return -g
    d = cumulative / d_norm
    if mode == "cumulative":
        u = -g + beta * d
        u_norm = torch.linalg.vector_norm(u)
        return -g if u_norm <= eps else u / u_norm  # u = 0 only for beta = 1 with G_k parallel to D_k
    c = -float(torch.sum(g * d))
    e = -g - c * d
    s = float(torch.linalg.vector_norm(e))
    if s <= 1e-12 or grad.numel() < 3:
        return -g
    e = e / s
    r = torch.randn(grad.shape, generator=generator, dtype=grad.dtype, device="cpu").to(grad.device)
    r = r - torch.sum(r * d) * d
    r = r - torch.sum(r * e) * e
    r = r / torch.linalg.vector_norm(r).clamp_min(eps)
    cos_theta = (1 + beta * c) / math.sqrt(max(1 + 2 * beta * c + beta * beta, 1e-300))
    cos_phi = min(1.0, max(-1.0, (cos_theta - c * c) / (s * s)))
    return c * d + s * (cos_phi * e + math.sqrt(1 - cos_phi * cos_phi) * r)


def gradients_finite(grads, norms=None) -> bool:
    """Whether every tensor in ``grads`` is finite, with one host sync: the sum of their 2-norms (``norms``
    if given, else one fused ``torch._foreach_norm``) is finite exactly when every entry is, except that
    the squares of huge finite entries (above ~1e19 in float32) overflow to inf; only then, rarely, is
    every tensor checked entry by entry, so the answer is exact."""
    grads = list(grads)
    if not grads:
        return True
    norms = torch._foreach_norm(grads) if norms is None else norms
    if math.isfinite(torch.stack(list(norms)).sum().item()):
        return True
    return all(bool(torch.isfinite(g).all()) for g in grads)


def _group_label(index: int, group: dict) -> str:
    name = group.get("name")
    return f"param_groups[{index}]" + (f" ({name!r})" if name is not None else "")


def check_steering(steer_beta: float, steer_mode: str, normalize: str | None = None, momentum: float = 0.0) -> None:
    """Raise ``ValueError`` naming the bad steering option (``normalize=None``: not checked)."""
    check_finite_float("steer_beta", steer_beta)
    check_choice("steer_mode", steer_mode, STEER_MODES)
    if steer_beta and normalize is not None and normalize not in ("per_layer", "spectral"):
        raise ValueError(f"steer_beta={steer_beta!r} needs a per-layer step length, but normalize={normalize!r}; "
                         "use normalize='per_layer' or 'spectral' (or steer_beta=0)")
    if steer_beta and momentum:
        raise ValueError(f"steer_beta={steer_beta!r} is not allowed with momentum={momentum!r}; leave momentum 0")


class NormalizedSGD(torch.optim.Optimizer):
    """SGD whose step is optionally normalized globally, per parameter tensor (layer), or per layer
    with the width-aware ``"spectral"`` scale (module docstring)."""

    def __init__(self, params, lr: float, normalize: str = "none", momentum: float = 0.0, eps: float = 1e-30,
                 steer_beta: float = 0.0, steer_mode: str = "cumulative", steer_seed: int = 0,
                 check_finite: bool = False):
        check_positive("lr", lr)
        check_choice("normalize", normalize, NORMALIZE_MODES)
        check_nonnegative("momentum", momentum)
        if momentum >= 1:
            raise ValueError(f"momentum={momentum!r} is not allowed; momentum must be in [0, 1)")
        check_steering(steer_beta, steer_mode, normalize, momentum)
        check_int("steer_seed", steer_seed, minimum=0)
        self.normalize = normalize  # before super().__init__, which calls add_param_group
        self.steer_beta, self.steer_mode = float(steer_beta), steer_mode
        self.steer_generator = torch.Generator().manual_seed(steer_seed) if steer_beta else None
        if not isinstance(check_finite, bool):
            raise ValueError(f"check_finite={check_finite!r} is not allowed; pass True or False")
        self.check_finite = check_finite
        self.last_step_finite: bool | None = None  # with check_finite: whether the last step() moved the weights
        super().__init__(params, dict(lr=lr, momentum=momentum, eps=eps))
        for group in self.param_groups:
            check_positive("lr (of a parameter group)", group["lr"])

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        if self.normalize == "spectral":
            self._check_spectral_group(len(self.param_groups) - 1, self.param_groups[-1])
        if self.steer_beta:  # W_k(0): the weights the optimizer starts from
            for p in self.param_groups[-1]["params"]:
                self.state[p]["init"] = p.detach().clone()

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
        # The per-tensor norms the normalized steps divide by, computed once before any weight moves, so the
        # finite check can read them.
        norms = {}
        if self.normalize != "none" and not self.steer_beta:
            norms = {p: torch.linalg.vector_norm(p.grad) for p in params}
        if self.check_finite:
            self.last_step_finite = gradients_finite([p.grad for p in params], list(norms.values()) or None)
            if not self.last_step_finite:
                return loss
        global_norm = None
        if self.normalize == "global" and params:
            global_norm = torch.linalg.vector_norm(torch.stack([norms[p] for p in params]))
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if self.steer_beta:
                    d = -steered_direction(d, p.detach() - self.state[p]["init"], self.steer_beta, self.steer_mode,
                                           self.steer_generator, group["eps"])
                    if self.normalize == "spectral":
                        d = d * spectral_scale(group["fan_in"], group["fan_out"], group["multiplier"])
                elif self.normalize == "global":
                    d = d / global_norm.clamp_min(group["eps"])
                elif self.normalize == "per_layer":
                    d = d / norms[p].clamp_min(group["eps"])
                elif self.normalize == "spectral":
                    scale = spectral_scale(group["fan_in"], group["fan_out"], group["multiplier"])
                    d = d * (scale / norms[p].clamp_min(group["eps"]))
                if group["momentum"]:
                    buf = self.state[p].get("momentum_buffer")
                    buf = d.clone() if buf is None else buf.mul_(group["momentum"]).add_(d)
                    self.state[p]["momentum_buffer"] = buf
                    d = buf
                p.add_(d, alpha=-group["lr"])
        return loss

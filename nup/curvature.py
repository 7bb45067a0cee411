"""Curvature of the training loss: Hessian-vector products, the sharpness and a warm-startable Lanczos.

* ``HessianOperator(model, loss_fn, x, y)``: ``v -> H v`` for the Hessian ``H`` of
  ``loss_fn(model(x), y)`` over the flattened parameters (``model.parameters()`` order, each
  ``p.reshape(-1)``), without forming ``H``.  Three interchangeable methods, all exact:

  - ``"rop"`` (nup MLPs, the default there): Pearlmutter's R-operator written out with
    matrix products.  It reuses one stored forward/backward pass and uses ``phi'' = 0``
    (``phi = a*s + b*|s|`` is piecewise linear), so one product costs 6 matrix products per
    layer.  Measured (best of 7, float32, torch 2.13 CPU), in gradient evaluations per HVP:
    784-512x8-10 MLP on 2048 samples: rop 1.5, autograd double backward 1.8, torch.func 3.7-5;
    784-256x8-10 on 512 samples: 1.2-1.3, 1.8, 4.3-4.9.
  - ``"autograd"`` (any model, the default there): double backward through a gradient graph built once.
  - ``"func"``: ``torch.func.jvp`` over ``torch.func.grad`` (forward-over-reverse), rebuilt per product.
    Write MSE as a plain sum (``nup.training.mse_loss``): ``F.mse_loss`` fails under ``jvp(grad)``
    in torch 2.13.

* ``lanczos(matvec, dim, ...)``: the top-``k`` (largest algebraic) eigenpairs of a symmetric
  operator by Lanczos with full (DGKS) reorthogonalization and thick restart, warm-startable.
  Stopping rule with relative tolerance ``tol``: every one of the top-``k`` Ritz values moved by
  at most ``tol * |value|`` in the last product, or its Ritz residual ``|A y - theta y|`` is at
  most ``tol * |value|``.  A warm start from the previous eigenvector therefore costs 2
  products when the operator moved little (1 when it did not move at all).  ``tol`` bounds the
  eigenvalue; the vector is accurate to about ``sqrt(tol)``.  Caveat of any warm start: a start
  vector that is nearly an eigenvector of a *lower* eigenvalue (after two eigenvalues cross) can
  stop there, so restart cold (``v0=None``) now and then when crossings matter.
* ``sharpness``: the top Hessian eigenvalue, ``hessian_top_eigenvalues``: the top ``k``.
* Diagnostic ``"sharpness"`` (``RunConfig.diagnostics``): the sharpness on the full training
  batch, warm-started from the previous call; rows ``sharpness`` and ``sharpness_hvps``.

Shared contract (``nup.ntk.ntk_top_eigenvalue`` returns the same type): ``EigenResult`` with
``value``, ``vector`` (flat; pass it back as ``v0``), ``n_products`` and ``converged``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nup.mlp import MLP
from nup.training import TrainContext, register_diagnostic
from nup.validation import check_choice, check_int

__all__ = ["EigenResult", "TopKResult", "lanczos", "HessianOperator", "hvp", "sharpness",
           "hessian_top_eigenvalues", "SharpnessTracker", "HVP_METHODS", "check_eigen_args"]

HVP_METHODS = ("auto", "rop", "autograd", "func")


@dataclass
class EigenResult:
    """One eigenpair: ``value``, the flat unit ``vector`` (a warm start for the next call),
    ``n_products`` (operator-vector products this call used) and ``converged`` (tolerance met)."""

    value: float
    vector: torch.Tensor
    n_products: int
    converged: bool


@dataclass
class TopKResult:
    """The top ``k`` eigenpairs, ``values`` descending (float64, shape ``(k,)``), ``vectors`` of shape ``(k, dim)``."""

    values: torch.Tensor
    vectors: torch.Tensor
    n_products: int
    converged: bool

    def __getitem__(self, i: int) -> EigenResult:
        return EigenResult(float(self.values[i]), self.vectors[i], self.n_products, self.converged)


# ---------------------------------------------------------------------------- argument checks

def check_eigen_args(dim: int, v0, tol, max_iter, k: int = 1, max_basis=None) -> None:
    """``ValueError`` naming the first bad argument of an eigen-solver call (before any work)."""
    check_int("k", k, minimum=1, maximum=dim)
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not math.isfinite(tol) or not 0 < tol < 1:
        raise ValueError(f"tol={tol!r} is not allowed; tol must be a relative tolerance in (0, 1)")
    check_int("max_iter", max_iter, minimum=1)
    if max_basis is not None:
        check_int("max_basis", max_basis, minimum=k + 2)
    if v0 is None:
        return
    if not isinstance(v0, torch.Tensor):
        raise ValueError(f"v0 of type {type(v0).__name__} is not allowed; v0 must be None or a torch.Tensor")
    is_flat = v0.numel() == dim
    is_block = v0.dim() == 2 and v0.shape[1] == dim and 1 <= v0.shape[0] <= k
    if not (is_flat or is_block):
        raise ValueError(f"v0 has shape {tuple(v0.shape)}; v0 must be a flat vector of length {dim}"
                         + (f" or a (j, {dim}) block with j <= {k}" if k > 1 else ""))
    if not torch.isfinite(v0).all() or not v0.abs().sum() > 0:
        raise ValueError("v0 is zero or has non-finite entries; v0 must be a finite non-zero vector")


def _check_data(model, x, y=None) -> None:
    if not isinstance(model, nn.Module) or not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"model of type {type(model).__name__} is not allowed; model must be a torch.nn.Module "
                         "with trainable parameters")
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x={shape} is not allowed; x must be a non-empty (n, d_in) torch.Tensor")
    if y is not None and (not isinstance(y, torch.Tensor) or y.shape[0] != x.shape[0]):
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"y={shape} is not allowed; y must be a torch.Tensor with one row per sample of x "
                         f"({x.shape[0]})")


# ---------------------------------------------------------------------------- Lanczos

class _Basis:
    """Orthonormal rows in a buffer that grows by doubling, so projections are one matrix-vector product."""

    def __init__(self, dim: int, capacity: int, dtype, device):
        self.dim, self.capacity, self.size = dim, capacity, 0
        self.buffer = torch.empty(min(capacity, 4), dim, dtype=dtype, device=device)

    def append(self, v: torch.Tensor) -> None:
        if self.size == self.buffer.shape[0]:
            bigger = torch.empty(min(self.capacity, 2 * self.size), self.dim, dtype=v.dtype, device=v.device)
            bigger[: self.size] = self.buffer[: self.size]
            self.buffer = bigger
        self.buffer[self.size] = v
        self.size += 1

    @property
    def rows(self) -> torch.Tensor:
        return self.buffer[: self.size]

    def orthogonalize(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``w`` minus its projection on the basis (classical Gram-Schmidt, repeated once when the norm
        drops by more than ``1/sqrt 2``, the DGKS test); returns ``(w, coefficients)``."""
        rows = self.rows
        norm_before = torch.linalg.vector_norm(w)
        h = torch.mv(rows, w)
        w = torch.addmv(w, rows.T, h, alpha=-1)
        if torch.linalg.vector_norm(w) < 0.7071 * norm_before:
            h2 = torch.mv(rows, w)
            w = torch.addmv(w, rows.T, h2, alpha=-1)
            h = h + h2
        return w, h


def _random_unit(dim: int, generator: torch.Generator, dtype, device) -> torch.Tensor:
    v = torch.randn(dim, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)
    return v / torch.linalg.vector_norm(v)


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], dim: int, k: int = 1, v0: torch.Tensor | None = None,
            tol: float = 1e-3, max_iter: int = 200, max_basis: int | None = None, seed: int = 0,
            dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> TopKResult:
    """Top-``k`` largest-algebraic eigenpairs of the symmetric operator ``matvec`` on ``R^dim``.

    ``v0``: a flat start vector, or a ``(j, dim)`` block (``j <= k``) whose rows are summed (the
    Krylov space of a sum of eigenvectors contains each of them); ``None`` draws a seeded random
    start.  ``max_iter`` caps the products.  ``max_basis`` (default ``max(30, 3k)``) caps the stored
    basis, i.e. the memory, ``max_basis * dim`` numbers; at the cap the Lanczos run restarts from
    its best Ritz vectors (thick restart), keeping what it learned.
    """
    check_eigen_args(dim, v0, tol, max_iter, k, max_basis)
    max_basis = max(30, 3 * k) if max_basis is None else max_basis
    max_basis = min(max_basis, dim)
    generator = torch.Generator().manual_seed(seed)
    if v0 is None:
        start = _random_unit(dim, generator, dtype, device)
    else:
        start = v0.detach().reshape(-1, dim).sum(dim=0).to(dtype=dtype, device=device)
        norm = torch.linalg.vector_norm(start)
        start = start / norm if norm > 0 else _random_unit(dim, generator, dtype, device)  # rows that cancel

    basis = _Basis(dim, max_basis + 1, dtype, device)
    basis.append(start)
    t = np.zeros((max_basis + 1, max_basis + 1))  # projected matrix V^T A V, float64
    previous = None
    n_products, converged = 0, False
    theta = s = None
    beta = 0.0
    while n_products < max_iter:
        j = basis.size - 1  # index of the newest basis vector, the one multiplied now
        w = matvec(basis.rows[j]).reshape(-1).to(dtype)
        n_products += 1
        w, h = basis.orthogonalize(w)
        h = h.double().cpu().numpy()
        beta = float(torch.linalg.vector_norm(w))
        if not (math.isfinite(beta) and np.all(np.isfinite(h))):  # NaN/inf in A v reach these; a diverged model
            theta = None  # report NaN, never a half-finished estimate
            break
        t[: j + 1, j] = h
        t[j, : j + 1] = h
        p = j + 1
        theta, s = np.linalg.eigh(t[:p, :p])
        theta, s = theta[::-1], s[:, ::-1]  # descending
        if p >= k:
            top = theta[:k]
            scale = np.maximum(np.abs(top), 1e-12 * max(abs(theta[0]), 1e-300))
            residuals = beta * np.abs(s[p - 1, :k])
            moved_little = previous is not None and bool(np.all(np.abs(top - previous) <= tol * scale))
            if moved_little or bool(np.all(residuals <= tol * scale)) or p == dim:
                converged = True
                break
            previous = top.copy()
        if n_products == max_iter:
            break
        if beta <= 1e-12 * max(abs(theta[0]), 1e-300):
            # Invariant subspace found before k eigenpairs: continue in a fresh random direction.
            w, _ = basis.orthogonalize(_random_unit(dim, generator, dtype, device))
            beta, coupling = float(torch.linalg.vector_norm(w)), 0.0
        else:
            coupling = beta
        if p == max_basis:  # thick restart: keep the best Ritz vectors and the residual direction
            keep = min(max(k, max_basis // 2), max_basis - 1)
            ritz = torch.as_tensor(s[:, :keep].copy(), dtype=dtype, device=basis.rows.device).T @ basis.rows
            couplings = coupling * s[p - 1, :keep]
            basis = _Basis(dim, max_basis + 1, dtype, device)
            for row in ritz:
                basis.append(row)
            t[:] = 0
            t[np.arange(keep), np.arange(keep)] = theta[:keep]
            t[keep, :keep] = t[:keep, keep] = couplings
        else:
            t[p, j] = t[j, p] = coupling
        basis.append(w / beta)
    if theta is None or not np.all(np.isfinite(theta)):
        nan = torch.full((k,), float("nan"), dtype=torch.float64)
        return TopKResult(nan, torch.full((k, dim), float("nan"), dtype=dtype, device=device), n_products, False)
    p = min(len(theta), basis.size)
    kk = min(k, p)
    vectors = torch.as_tensor(s[:p, :kk].copy(), dtype=dtype, device=basis.rows.device).T @ basis.rows[:p]
    vectors = vectors / torch.linalg.vector_norm(vectors, dim=1, keepdim=True)
    return TopKResult(torch.as_tensor(theta[:kk].copy()), vectors, n_products, converged)


# ---------------------------------------------------------------------------- Hessian-vector products

class HessianOperator:
    """``v -> H v`` for the Hessian of ``loss_fn(model(x), y)`` over the flat parameter vector.

    Build it once per model state: it stores one forward/backward pass (``"rop"``) or one
    gradient graph (``"autograd"``), which every product then reuses.  ``n_products`` counts the
    products.  ``loss_fn(output, target)`` must depend on the parameters only through the output.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
                 method: str = "auto"):
        check_choice("method", method, HVP_METHODS)
        _check_data(model, x, y)
        if not callable(loss_fn):
            raise ValueError(f"loss_fn={loss_fn!r} is not callable; loss_fn must be a function (output, target) -> loss")
        if method == "auto":
            method = "rop" if isinstance(model, MLP) else "autograd"
        if method == "rop" and not isinstance(model, MLP):
            raise ValueError(f"method='rop' needs a nup.mlp.MLP, got {type(model).__name__}; use 'autograd' or 'func'")
        self.model, self.loss_fn, self.x, self.y, self.method = model, loss_fn, x, y, method
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.dim = sum(self.sizes)
        self.dtype, self.device = self.params[0].dtype, self.params[0].device
        self.n_products = 0
        getattr(self, f"_setup_{method}")()

    def _split(self, v: torch.Tensor) -> list[torch.Tensor]:
        return [c.view(shape) for c, shape in zip(torch.split(v, self.sizes), self.shapes)]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for a flat ``v`` of length ``dim``; returns a flat tensor."""
        if v.numel() != self.dim:
            raise ValueError(f"v has {v.numel()} entries; it must have one per parameter ({self.dim})")
        self.n_products += 1
        parts = getattr(self, f"_matvec_{self.method}")(self._split(v.reshape(-1).to(self.dtype)))
        return torch.cat([part.reshape(-1) for part in parts])

    __call__ = matvec

    # -- autograd double backward: the gradient graph is built once and kept (retain_graph)
    def _setup_autograd(self):
        with torch.enable_grad():
            loss = self.loss_fn(self.model(self.x), self.y)
            self._grads = torch.autograd.grad(loss, self.params, create_graph=True)

    def _matvec_autograd(self, vs):
        with torch.enable_grad():
            out = torch.autograd.grad(self._grads, self.params, vs, retain_graph=True, allow_unused=True)
        return [torch.zeros_like(p) if o is None else o for o, p in zip(out, self.params)]

    # -- torch.func forward-over-reverse: rebuilt per product
    def _setup_func(self):
        names = [name for name, p in self.model.named_parameters() if p.requires_grad]
        self._names = names
        self._detached = {name: p.detach() for name, p in zip(names, self.params)}

        def loss_of(params):
            return self.loss_fn(torch.func.functional_call(self.model, params, (self.x,)), self.y)
        self._grad_fn = torch.func.grad(loss_of)

    def _matvec_func(self, vs):
        tangents = dict(zip(self._names, vs))
        _, hv = torch.func.jvp(self._grad_fn, (self._detached,), (tangents,))
        return [hv[name] for name in self._names]

    # -- R-operator for nup MLPs: h_k = c_k a_{k-1} W_k^T, a_k = phi(h_k), D_k = phi'(h_k), phi'' = 0
    def _setup_rop(self):
        model: MLP = self.model
        weights = [layer.weight for layer in model.layers]
        if len(self.params) != len(weights) or any(p is not w for p, w in zip(self.params, weights)):
            raise ValueError("method='rop' needs every MLP weight trainable; use method='autograd'")
        act, c = model.activation, model.multipliers
        self._w = [layer.weight.detach() for layer in model.layers]
        with torch.no_grad():
            a, d = [self.x.to(self.dtype)], []
            h = a[0]
            for k, w in enumerate(self._w):
                h = c[k] * (a[-1] @ w.T)
                if k < len(self._w) - 1:
                    d.append(act.derivative(h))
                    a.append(act(h))
        self._a, self._d = a, d
        # Output gradient g = dl/df and, through its graph, the output-space Hessian-vector product.
        self._out = h.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = self.loss_fn(self._out, self.y)
            (g,) = torch.autograd.grad(loss, self._out, create_graph=True)
        self._g = g
        with torch.no_grad():
            deltas = [g.detach()]  # deltas[k] = dl/dh_{k+1}, built top-down
            for k in range(len(self._w) - 1, 0, -1):
                deltas.insert(0, (c[k] * (deltas[0] @ self._w[k])) * d[k - 1])
        self._deltas = deltas

    def _output_hvp(self, r_out: torch.Tensor) -> torch.Tensor:
        if not self._g.requires_grad:  # loss linear in the output
            return torch.zeros_like(r_out)
        with torch.enable_grad():
            (out,) = torch.autograd.grad(self._g, self._out, r_out, retain_graph=True, allow_unused=True)
        return torch.zeros_like(r_out) if out is None else out

    @torch.no_grad()
    def _matvec_rop(self, vs):
        c, w, a, d, deltas = self.model.multipliers, self._w, self._a, self._d, self._deltas
        depth = len(w)
        r_acts = []  # R{a_k} for k = 1..depth-1
        r_h = None
        for k in range(depth):  # forward: R{h_k} = c_k (a_{k-1} V_k^T + R{a_{k-1}} W_k^T)
            r_h = a[k] @ vs[k].T
            if k > 0:
                r_h.addmm_(r_acts[-1], w[k].T)
            r_h.mul_(c[k])
            if k < depth - 1:
                r_acts.append(d[k] * r_h)
        r_delta = self._output_hvp(r_h)
        out = [None] * depth
        for k in range(depth - 1, -1, -1):  # backward: R{G_k} = c_k (R{delta_k}^T a_{k-1} + delta_k^T R{a_{k-1}})
            grad_k = r_delta.T @ a[k]
            if k > 0:
                grad_k.addmm_(deltas[k].T, r_acts[k - 1])
                # R{delta_{k-1}} = c_k (R{delta_k} W_k + delta_k V_k) * D_{k-1}
                r_delta = (r_delta @ w[k]).addmm_(deltas[k], vs[k]).mul_(c[k]).mul_(d[k - 1])
            out[k] = grad_k.mul_(c[k])
        return out


def hvp(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor,
        method: str = "auto") -> torch.Tensor:
    """One Hessian-vector product ``H v`` (flat in, flat out); build a ``HessianOperator`` to do many."""
    return HessianOperator(model, loss_fn, x, y, method).matvec(v)


def hessian_top_eigenvalues(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, k: int = 1,
                            v0: torch.Tensor | None = None, tol: float = 1e-3, max_iter: int = 200,
                            method: str = "auto", max_basis: int | None = None, seed: int = 0) -> TopKResult:
    """The ``k`` largest Hessian eigenvalues of ``loss_fn(model(x), y)`` by Lanczos on HVPs (see ``lanczos``)."""
    _check_data(model, x, y)
    dim = sum(p.numel() for p in model.parameters() if p.requires_grad)
    check_eigen_args(dim, v0, tol, max_iter, k, max_basis)
    op = HessianOperator(model, loss_fn, x, y, method)
    return lanczos(op.matvec, op.dim, k, v0, tol, max_iter, max_basis, seed, op.dtype, op.device)


def sharpness(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
              v0: torch.Tensor | None = None, tol: float = 1e-3, max_iter: int = 200,
              method: str = "auto", max_basis: int | None = None, seed: int = 0) -> EigenResult:
    """The sharpness (largest Hessian eigenvalue) of ``loss_fn(model(x), y)``; pass the previous
    ``EigenResult.vector`` as ``v0`` to warm-start.  ``n_products`` counts HVPs (the operator's
    one-off forward/backward pass, about one gradient evaluation, is not counted)."""
    return hessian_top_eigenvalues(model, loss_fn, x, y, 1, v0, tol, max_iter, method, max_basis, seed)[0]


# ---------------------------------------------------------------------------- diagnostic

@register_diagnostic("sharpness")
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

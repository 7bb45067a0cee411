"""Curvature of the training loss: Hessian-vector products, the sharpness and a warm-startable Lanczos.

* ``HessianOperator(model, loss_fn, x, y)``: ``v -> H v`` for the Hessian ``H`` of
  ``loss_fn(model(x), y)`` over the flattened parameters (``model.parameters()`` order, each
  ``p.reshape(-1)``), without forming ``H``.  Three interchangeable methods, all exact:

  - ``"rop"`` (nup MLPs, the default there): Pearlmutter's R-operator written out with
    matrix products (the formulas, with indices: ``nup.core.mlp``'s docstring).  It reuses one
    stored forward/backward pass (``MLP.linearize``) and uses ``phi'' = 0`` (``phi = a*s + b*|s|``
    is piecewise linear), so one product costs 6 matrix products per layer.  Measured (best of 7,
    float32, torch 2.13 CPU), in gradient evaluations per HVP:
    784-512x8-10 MLP on 2048 samples: rop 1.5, autograd double backward 1.8, torch.func 3.7-5;
    784-256x8-10 on 512 samples: 1.2-1.3, 1.8, 4.3-4.9.
  - ``"autograd"`` (any model, the default there): double backward through a gradient graph built once.
  - ``"func"``: ``torch.func.jvp`` over ``torch.func.grad`` (forward-over-reverse), rebuilt per product.
    Write MSE as a plain sum (``nup.training.config.mse_loss``): ``F.mse_loss`` fails under ``jvp(grad)``
    in torch 2.13.

* ``lanczos`` (``nup.linalg.lanczos``): the top-``k`` (largest algebraic) eigenpairs of a symmetric
  operator by Lanczos with full (DGKS) reorthogonalization and thick restart, warm-startable.
  Stopping rule with relative tolerance ``tol``: the Ritz residual ``|A y - theta y|`` of every one
  of the top-``k`` Ritz pairs is at most ``tol * |theta|`` (never a Ritz value that merely stopped
  moving: that stops early on near-degenerate spectra).  ``tol`` bounds the eigenvalue error when
  the top eigenvalues are more than about ``2 tol`` apart; the vector's angle is about
  ``tol * theta / gap``.  A warm start from the previous eigenvector costs 1 product when the
  operator did not move, a few when it moved little.  Caveat of any warm start: a start
  vector that is nearly an eigenvector of a *lower* eigenvalue (after two eigenvalues cross) can
  stop there, so restart cold (``v0=None``) now and then when crossings matter.
* ``sharpness``: the top Hessian eigenvalue, ``hessian_top_eigenvalues``: the top ``k``.
* Diagnostic ``"sharpness"`` (``RunConfig.diagnostics``): the sharpness on the full training
  batch, warm-started from the previous call; rows ``sharpness`` and ``sharpness_hvps``.

Shared contract (``nup.linalg.tangent_kernel.ntk_top_eigenvalue`` returns the same type): ``EigenResult`` with
``value``, ``vector`` (flat; pass it back as ``v0``), ``n_products`` and ``converged``.
"""


from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from nup.core.mlp import MLP
from nup.linalg.lanczos import EigenResult, TopKResult, check_eigen_args, check_model_data, lanczos
from nup.validation import check_choice

__all__ = ["HessianOperator", "hvp", "sharpness", "hessian_top_eigenvalues", "HVP_METHODS", "EigenResult",
           "TopKResult", "lanczos"]

HVP_METHODS = ("auto", "rop", "autograd", "func")


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
        check_model_data(model, x, y)
        if not callable(loss_fn):
            raise ValueError(f"loss_fn={loss_fn!r} is not callable; loss_fn must be a function (output, target) -> loss")
        if method == "auto":
            method = "rop" if isinstance(model, MLP) else "autograd"
        if method == "rop" and not isinstance(model, MLP):
            raise ValueError(f"method='rop' needs a nup.core.mlp.MLP, got {type(model).__name__}; use 'autograd' or 'func'")
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

    # -- R-operator for nup MLPs (``nup.core.mlp``'s docstring: "Second order")
    def _setup_rop(self):
        model: MLP = self.model
        weights = [layer.weight for layer in model.layers]
        if len(self.params) != len(weights) or any(p is not w for p, w in zip(self.params, weights)):
            raise ValueError("method='rop' needs every MLP weight trainable; use method='autograd'")
        self._lin = model.linearize(self.x)
        # Output gradient g = dl/df and, through its graph, the output-space Hessian-vector product.
        self._out = self._lin.output.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = self.loss_fn(self._out, self.y)
            (g,) = torch.autograd.grad(loss, self._out, create_graph=True)
        self._g = g
        self._deltas = [None] * model.depth  # deltas[k] = dl/dh_{k+1}
        for k, delta in self._lin.backpropagate(g.detach()):
            self._deltas[k] = delta

    def _output_hvp(self, r_out: torch.Tensor) -> torch.Tensor:
        if not self._g.requires_grad:  # loss linear in the output
            return torch.zeros_like(r_out)
        with torch.enable_grad():
            (out,) = torch.autograd.grad(self._g, self._out, r_out, retain_graph=True, allow_unused=True)
        return torch.zeros_like(r_out) if out is None else out

    @torch.no_grad()
    def _matvec_rop(self, vs):
        lin, deltas = self._lin, self._deltas
        c, w, a, d = lin.multipliers, lin.weights, lin.inputs, lin.derivatives
        r_h, r_a = lin.jvp(vs, return_inputs=True)  # R{h_l} and R{a_k}
        r_delta = self._output_hvp(r_h)
        out = [None] * lin.depth
        for k in range(lin.depth - 1, -1, -1):  # R{dl/dW_k} = c_k (R{delta_k}^T a_{k-1} + delta_k^T R{a_{k-1}})
            grad_k = r_delta.T @ a[k]
            if k > 0:
                grad_k.addmm_(deltas[k].T, r_a[k])
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
    check_model_data(model, x, y)
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



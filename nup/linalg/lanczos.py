"""A warm-startable Lanczos eigensolver for symmetric operators given as ``matvec`` callables.

``lanczos(matvec, dim, ...)``: the top-``k`` (largest algebraic) eigenpairs by Lanczos with full
(DGKS) reorthogonalization and thick restart.  Stopping rule with relative tolerance ``tol``: the
Ritz residual of every one of the top-``k`` Ritz pairs is small, ``|A y - theta y| <= tol * |theta|``
(read off the projected matrix as ``beta * |s_last|``, no extra product).  Then an eigenvalue of
``A`` lies within ``tol * |theta|`` of ``theta`` (for the symmetric ``A``, ``min |lambda - theta|
<= |A y - theta y|``), and within ``r**2 / gap`` when the rest of the spectrum is ``gap`` away, so
``tol`` bounds the eigenvalue error, usually with a wide margin, and the vector's angle to its
eigenvector is at most about ``tol * |theta| / gap``.  The run never stops because a Ritz value
*stagnated*: on a near-degenerate spectrum (top two eigenvalues 1-3% apart) the top Ritz value can
move by less than ``tol`` per product long before it has converged (the former "moved by at most
``tol``" rule returned the top Hessian eigenvalue of a generic ReLU net 2.7% low at ``tol=1e-3``).
Two limits of any residual test: eigenvalues closer than about ``2 tol`` (relative) are not told
apart (every mix of their eigenvectors has a residual at most half their gap, so the value returned
then lies between them: within the gap, not within ``tol``, of the top one); and the blind spot of
any Krylov method remains: an eigenvector that the start vector (almost) misses is found late or
not at all.  Warm starts: from the previous call's vector the first product already gives a small
residual, so a warm start costs 1 product when the operator did not move and a few when it moved
little.  Caveat of any warm start: a start vector that is nearly an eigenvector
of a *lower* eigenvalue (after two eigenvalues cross) can stop there, so restart cold (``v0=None``)
now and then when crossings matter.

Shared contract of every eigen-solver in ``nup.linalg``: ``EigenResult`` with ``value``, ``vector``
(flat; pass it back as ``v0``), ``n_products`` and ``converged``.  Nothing here imports the
training loop.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nup.validation import check_int

__all__ = ["EigenResult", "TopKResult", "lanczos", "check_eigen_args", "check_model_data"]


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


def check_model_data(model, x, y=None) -> None:
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
            residuals = beta * np.abs(s[p - 1, :k])  # |A y_i - theta_i y_i| of the top-k Ritz pairs
            if bool(np.all(residuals <= tol * scale)) or p == dim:
                converged = True
                break
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



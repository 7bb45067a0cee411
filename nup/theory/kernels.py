"""Infinite-width NNGP and NTK of the bias-free ``a*s + b*|s|`` MLP, in float64.

Convention (NTK parameterization, ``nup.core.param.NTK``; see ``docs/definitions.md``): with
``s = sigma2_scale`` (``s = 1`` is the Edge of Chaos) and ``c_k = Sigma^k_xx' / sqrt(Sigma^k_xx Sigma^k_x'x')``,

    Sigma^1 = Theta^1 = x.x' / m_0,
    Sigma^{k+1} = s * sqrt(Sigma^k_xx Sigma^k_x'x') * rho(c_k),
    Theta^{k+1} = Sigma^{k+1} + s * Theta^k * rho_dot(c_k),

where ``rho`` and ``rho_dot`` are the normalized correlation maps of ``nup.core.activations.Activation``
(independent of ``s``, since the weight variance only rescales).  ``Sigma^l`` is the covariance of
one output of a depth-``l`` network and ``Theta^l`` its NTK; different outputs are independent,
so the full kernels are ``Sigma^l (x) I_{d_out}`` and ``Theta^l (x) I_{d_out}``: the functions below
return the per-output ``n x n2`` factor.  On the diagonal ``rho(1) = rho_dot(1) = 1``, hence
``Sigma^l(x, x) = s^(l-1) |x|^2/m_0`` and ``Theta^l(x, x) = l s^(l-1) |x|^2/m_0``.

The paper's NTK matrix carries a ``1/n`` (``K = Theta/n`` over ``n`` samples): ``ntk_kernel``
applies it unless ``divide_by_n=False``.
"""

from __future__ import annotations

import numpy as np
import torch

from nup.core.activations import Activation, get_activation
from nup.validation import check_int, check_positive

__all__ = ["nngp_kernel", "ntk_kernel", "kernels", "iterate_kernels", "condition_number"]

ArrayLike = np.ndarray | torch.Tensor


def _as_matrix(name: str, x: ArrayLike | None) -> np.ndarray | None:
    """A float64 ``(n, m_0)`` numpy copy of ``x``; ``ValueError`` for other shapes or non-finite entries."""
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} of type {type(x).__name__} is not numeric; {name} must be an (n, m_0) array") from err
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} has shape {x.shape}; {name} must be a non-empty 2-D array (n, m_0)")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} has non-finite entries; {name} must be finite")
    return x


def iterate_kernels(x: ArrayLike, activation: str | Activation = "relu", x2: ArrayLike | None = None,
                    sigma2_scale: float = 1.0):
    """The recursion as an endless generator of ``(depth, Sigma, Theta)`` for ``depth = 1, 2, ...``
    (float64 ``(n, n2)`` per-output kernels without the ``1/n``), so that a sweep over depth keeps only
    what it needs (e.g. a condition number per depth) instead of the whole ``(depth, n, n2)`` stack.
    ``kernels`` is this generator stopped at ``depth``; the arrays yielded are fresh at every step."""
    check_positive("sigma2_scale", sigma2_scale)
    act = get_activation(activation)
    x = _as_matrix("x", x)
    x2_ = _as_matrix("x2", x2)
    same_points = x2_ is None
    if x2_ is None:
        x2_ = x
    elif x2_.shape[1] != x.shape[1]:
        raise ValueError(f"x2 has {x2_.shape[1]} features but x has {x.shape[1]}; they must have the same m_0")
    return _recursion(x, x2_, act, sigma2_scale, same_points)


def _recursion(x: np.ndarray, x2: np.ndarray, act: Activation, sigma2_scale: float, same_points: bool):
    m0 = x.shape[1]
    sigma = x @ x2.T / m0
    q1 = np.einsum("ij,ij->i", x, x) / m0  # diagonals Sigma^k(x, x), tracked separately for a cross kernel
    q2 = np.einsum("ij,ij->i", x2, x2) / m0
    theta = sigma.copy()
    depth = 1
    while True:
        yield depth, sigma, theta
        scale = np.sqrt(np.outer(q1, q2))
        # A zero input has no direction: its correlation is irrelevant (scale = 0), so use c = 0.
        with np.errstate(invalid="ignore", divide="ignore"):
            c = np.where(scale > 0, sigma / np.where(scale > 0, scale, 1.0), 0.0)
        c = np.clip(c, -1.0, 1.0)  # rounding can push |c| a hair above 1 on the diagonal
        if same_points:
            # c = 1 exactly on the diagonal: rho and rho_dot have a square-root singularity at 1, so a
            # rounding error of 1e-16 in c would otherwise cost 1e-8 in the kernel.
            np.fill_diagonal(c, 1.0)
        sigma_next = sigma2_scale * scale * act.rho(c)
        theta = sigma_next + sigma2_scale * theta * act.rho_dot(c)
        sigma = sigma_next
        q1, q2 = sigma2_scale * q1, sigma2_scale * q2  # rho(1) = 1
        depth += 1


def kernels(x: ArrayLike, depth: int, activation: str | Activation = "relu", x2: ArrayLike | None = None,
            sigma2_scale: float = 1.0, all_depths: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(Sigma, Theta)`` of a depth-``depth`` network between the rows of ``x`` and of ``x2`` (default ``x``).

    Both are float64 ``(n, n2)`` per-output kernels, *without* the ``1/n``; with ``all_depths`` they
    are ``(depth, n, n2)`` stacks whose entry ``k - 1`` belongs to a depth-``k`` network (one
    recursion gives all depths, which is what a plot against depth needs).  ``iterate_kernels`` yields
    them one depth at a time.
    """
    check_int("depth", depth, minimum=1)
    sigmas, thetas = [], []
    for k, sigma, theta in iterate_kernels(x, activation, x2, sigma2_scale):
        if all_depths:
            sigmas.append(sigma)
            thetas.append(theta)
        if k == depth:
            break
    if all_depths:
        return np.stack(sigmas), np.stack(thetas)
    return sigma, theta


def nngp_kernel(x: ArrayLike, depth: int, activation: str | Activation = "relu", x2: ArrayLike | None = None,
                sigma2_scale: float = 1.0, all_depths: bool = False) -> np.ndarray:
    """Infinite-width NNGP ``Sigma^depth``: the covariance of one output over random inits, float64 ``(n, n2)``."""
    return kernels(x, depth, activation, x2, sigma2_scale, all_depths)[0]


def ntk_kernel(x: ArrayLike, depth: int, activation: str | Activation = "relu", x2: ArrayLike | None = None,
               divide_by_n: bool = True, sigma2_scale: float = 1.0, all_depths: bool = False) -> np.ndarray:
    """Infinite-width NTK per output, ``Theta^depth / n`` (``n = len(x)``), or ``Theta^depth`` with
    ``divide_by_n=False``; float64 ``(n, n2)`` (``(depth, n, n2)`` with ``all_depths``)."""
    theta = kernels(x, depth, activation, x2, sigma2_scale, all_depths)[1]
    return theta / theta.shape[-2] if divide_by_n else theta


def condition_number(kernel: ArrayLike) -> float:
    """``lambda_max / lambda_min`` of a symmetric positive semi-definite matrix (float64 ``eigh``);
    ``inf`` when ``lambda_min <= 0`` (singular up to rounding)."""
    k = _as_matrix("kernel", kernel)
    if k.shape[0] != k.shape[1]:
        raise ValueError(f"kernel has shape {k.shape}; condition_number needs a square matrix")
    eigenvalues = np.linalg.eigvalsh((k + k.T) / 2)  # symmetrize away rounding asymmetry
    lam_min, lam_max = eigenvalues[0], eigenvalues[-1]
    if lam_max <= 0:
        raise ValueError("kernel has no positive eigenvalue; condition_number needs a positive semi-definite matrix")
    return float(lam_max / lam_min) if lam_min > 0 else float("inf")

"""Signal propagation at initialization: exact samplers for random nup MLPs.

In the NTK parameterization ``h_k = sigma W_k phi(h_{k-1}) / sqrt(m_{k-1})`` with a fresh
Gaussian ``W_k``, so *given* ``h_{k-1}`` the entries of ``h_k`` are i.i.d.
``N(0, sigma^2 |phi(h_{k-1})|^2 / m_{k-1})``.  Two consequences make wide and deep
networks cheap to sample exactly (in distribution), without ever forming a weight matrix:

* one input: for ``phi(s) = a s + b |s|``, ``|phi(h)|^2 = (a+b)^2 P + (a-b)^2 N`` where ``P``
  and ``N`` are the squared norms of the positive and negative entries; with ``B ~ Bin(m, 1/2)``
  positive entries, ``P = v chi2_B`` and ``N = v chi2_{m-B}`` independently.  So
  ``q_k = |h_k|^2/m_k`` costs O(1) per layer (``sample_norm_ratios``);
* several inputs: the rows of ``h_k`` are i.i.d. ``N(0, sigma^2 G)`` with ``G`` the Gram matrix of
  ``phi(h_{k-1})`` over ``m_{k-1}``, a K x K matrix (``sample_preactivations``).

``tests/test_eoc.py`` checks both against Monte Carlo of the real ``nup.MLP``.
"""

from __future__ import annotations

import math

import numpy as np

from nup.core.activations import Activation, get_activation
from nup.validation import check_int, check_nonempty_list, check_positive

__all__ = ["sample_norm_ratios", "sample_preactivations", "iterate_correlation_map"]


def _check_widths(widths) -> list[int]:
    return check_nonempty_list("widths", widths, lambda name, w: check_int(name, w, minimum=1))


def sample_norm_ratios(activation: str | Activation, widths, n_seeds: int, sigma2_scale: float = 1.0,
                       seed: int = 0) -> np.ndarray:
    """``q_k/q_0`` with ``q_k = |h_k|^2/m_k`` and ``q_0 = |x|^2/m_0``, for one input.

    Args:
        widths: ``[m_1, ..., m_l]``, the sizes of the preactivations ``h_1..h_l``.
        sigma2_scale: the weight variance of layers 2..l in units of the EOC's ``1/(a^2+b^2)``.

    Returns:
        an ``(n_seeds, l)`` float64 array; column ``k-1`` is ``q_k/q_0`` over independent networks.
    """
    phi = get_activation(activation)
    widths = _check_widths(widths)
    n_seeds = check_int("n_seeds", n_seeds, minimum=1)
    check_positive("sigma2_scale", sigma2_scale)
    rng = np.random.default_rng(check_int("seed", seed, minimum=0))
    sigma2 = sigma2_scale * phi.eoc_sigma2
    out = np.empty((n_seeds, len(widths)))
    variance = np.ones(n_seeds)  # the entry variance of h_1 is |x|^2/m_0 = q_0, normalised to 1
    for k, m in enumerate(widths):
        positive = rng.binomial(m, 0.5, size=n_seeds)
        # chi2 with 0 degrees of freedom is 0; numpy's chisquare needs df > 0, so use gamma(df/2, 2).
        p = variance * rng.gamma(positive / 2, 2.0) * (positive > 0)
        n = variance * rng.gamma((m - positive) / 2, 2.0) * (positive < m)
        out[:, k] = (p + n) / m
        phi_norm2 = (phi.a + phi.b) ** 2 * p + (phi.a - phi.b) ** 2 * n
        variance = sigma2 * phi_norm2 / m
    return out


def sample_preactivations(activation: str | Activation, x: np.ndarray, widths, n_seeds: int,
                          sigma2_scale: float = 1.0, seed: int = 0):
    """Per-layer Gram matrices ``h_k h_k^T / m_k`` of K inputs through independent random networks.

    Args:
        x: ``(K, m_0)`` inputs.
        widths: ``[m_1, ..., m_l]``.

    Returns:
        an ``(n_seeds, l, K, K)`` float64 array.
    """
    phi = get_activation(activation)
    widths = _check_widths(widths)
    n_seeds = check_int("n_seeds", n_seeds, minimum=1)
    check_positive("sigma2_scale", sigma2_scale)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x has shape {x.shape}; it must be a (K, m_0) array of K inputs")
    rng = np.random.default_rng(check_int("seed", seed, minimum=0))
    sigma2 = sigma2_scale * phi.eoc_sigma2
    k_inputs = x.shape[0]
    gram = np.broadcast_to(x @ x.T / x.shape[1], (n_seeds, k_inputs, k_inputs))
    out = np.empty((n_seeds, len(widths), k_inputs, k_inputs))
    for k, m in enumerate(widths):
        root = _psd_sqrt(gram)  # (S, K, K); rows of h_k are N(0, gram)
        h = root @ rng.standard_normal((n_seeds, k_inputs, m))
        out[:, k] = h @ h.transpose(0, 2, 1) / m
        a = phi.a * h + phi.b * np.abs(h)
        gram = sigma2 * (a @ a.transpose(0, 2, 1)) / m
    return out


def _psd_sqrt(gram: np.ndarray) -> np.ndarray:
    """A symmetric square root that tolerates singular Gram matrices (identical inputs)."""
    values, vectors = np.linalg.eigh(gram)
    return vectors * np.sqrt(np.clip(values, 0, None))[..., None, :] @ vectors.transpose(0, 2, 1)


def iterate_correlation_map(activation: str | Activation, c0: float, depth: int) -> np.ndarray:
    """The infinite-width correlations ``c_1..c_depth`` of two inputs: ``c_1 = c0``, ``c_{k+1} = rho(c_k)``."""
    phi = get_activation(activation)
    check_int("depth", depth, minimum=1)
    if not (isinstance(c0, (int, float)) and math.isfinite(c0) and -1 <= c0 <= 1):
        raise ValueError(f"c0={c0!r} is not allowed; the input correlation must be in [-1, 1]")
    c = [float(c0)]
    for _ in range(depth - 1):
        c.append(float(phi.rho(c[-1])))
    return np.array(c)

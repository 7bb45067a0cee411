"""nup.linalg.lanczos on near-degenerate spectra: the top two eigenvalues 1%, 2% and 3% apart.

A stopping rule on stagnating Ritz values ("moved by at most tol in the last product") stops early
there (10-100x the tolerance at tol=1e-3 and 1e-4 on these operators); the Ritz residual bound does
not.  Operators: ``Q diag(spectrum) Q^T`` in float64, dimension 500, ``Q`` random orthogonal.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nup.linalg.lanczos import lanczos

DIM = 500
GAPS = (0.01, 0.02, 0.03)
TOLS = (1e-3, 1e-4, 1e-5)  # below half the gap: a residual test cannot separate eigenvalues closer than ~2 tol


def near_degenerate(gap: float, rest: str, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """``(A, spectrum descending)``: top eigenvalue 1, the second ``1 - gap``; the rest a bulk
    (uniform on [-0.2, 0.9 (1 - gap)]) or a decaying tail (like a trained net's Hessian)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    if rest == "bulk":
        others = rng.uniform(-0.2, 0.9 * (1 - gap), DIM - 2)
    else:
        others = 0.95 * (1 - gap) * np.exp(-np.arange(DIM - 2) / 20.0)
    spectrum = np.sort(np.concatenate([[1.0, 1.0 - gap], others]))[::-1]
    return torch.from_numpy((q * spectrum) @ q.T), spectrum


@pytest.mark.parametrize("rest", ["bulk", "decay"])
@pytest.mark.parametrize("gap", GAPS)
def test_top_eigenvalue_within_tol_on_near_degenerate_spectra(gap, rest):
    a, spectrum = near_degenerate(gap, rest)
    for tol in TOLS:
        for seed in range(3):  # three random start vectors
            result = lanczos(lambda v: a @ v, DIM, tol=tol, max_iter=500, seed=seed)
            assert result.converged
            value = result.values[0].item()
            assert abs(value - spectrum[0]) <= tol * spectrum[0], (gap, rest, tol, seed, value)
            y = result.vectors[0]
            residual = torch.linalg.vector_norm(a @ y - value * y).item()
            assert residual <= 1.001 * tol * abs(value)  # the bound it stopped on is the true residual


@pytest.mark.parametrize("gap", GAPS)
def test_top_two_within_tol(gap):
    a, spectrum = near_degenerate(gap, "decay", seed=1)
    for tol in TOLS:
        result = lanczos(lambda v: a @ v, DIM, k=2, tol=tol, max_iter=500)
        assert result.converged
        np.testing.assert_allclose(result.values.numpy(), spectrum[:2], rtol=tol)


def test_warm_start_on_a_near_degenerate_spectrum():
    """A slightly moved operator (as between two GD steps): the warm start is as accurate as a cold
    start and costs fewer products; an unmoved operator costs 1 product."""
    a, _ = near_degenerate(0.02, "decay")
    rng = np.random.default_rng(3)
    noise = rng.standard_normal((DIM, DIM))
    b = a + torch.from_numpy(1e-3 * (noise + noise.T) / np.sqrt(2 * DIM))  # spectral norm ~ 2e-3
    top_b = np.linalg.eigvalsh(b.numpy())[-1]
    tol = 1e-4
    first = lanczos(lambda v: a @ v, DIM, tol=tol)
    cold = lanczos(lambda v: b @ v, DIM, tol=tol)
    warm = lanczos(lambda v: b @ v, DIM, v0=first.vectors[0], tol=tol)
    assert cold.converged and warm.converged
    assert abs(warm.values[0].item() - top_b) <= tol * top_b
    assert abs(cold.values[0].item() - top_b) <= tol * top_b
    assert warm.n_products < cold.n_products
    again = lanczos(lambda v: b @ v, DIM, v0=warm.vectors[0], tol=tol)
    assert again.n_products == 1 and again.values[0].item() == pytest.approx(warm.values[0].item(), rel=tol)

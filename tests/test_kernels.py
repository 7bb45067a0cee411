"""nup.theory.kernels against closed forms and Monte Carlo estimates from very wide random networks (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nup
from nup.theory import kernels
from nup.linalg.tangent_kernel import empirical_ntk

ACTIVATIONS = ["relu", "abs", "leaky_relu"]


def inputs(n: int = 5, m0: int = 16, seed: int = 0) -> torch.Tensor:
    """Samples with a spread of correlations (one near-parallel pair, one anti-correlated pair)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, m0, generator=g, dtype=torch.float64)
    x[1] = 0.9 * x[0] + 0.3 * x[1]
    x[2] = -0.6 * x[0] + 0.8 * x[2]
    return x


# ---------------------------------------------------------------------------- closed forms

@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("sigma2_scale", [1.0, 1.3])
def test_diagonal_closed_form(activation, sigma2_scale):
    """Sigma^l(x, x) = s^(l-1) |x|^2/m_0 and Theta^l(x, x) = l s^(l-1) |x|^2/m_0, per sample, before the 1/n."""
    x = inputs()
    norms = (x**2).sum(1).numpy() / x.shape[1]
    for depth in (1, 2, 5, 12):
        nngp = kernels.nngp_kernel(x, depth, activation, sigma2_scale=sigma2_scale)
        theta = kernels.ntk_kernel(x, depth, activation, divide_by_n=False, sigma2_scale=sigma2_scale)
        np.testing.assert_allclose(np.diag(nngp), sigma2_scale ** (depth - 1) * norms, rtol=1e-12)
        np.testing.assert_allclose(np.diag(theta), depth * sigma2_scale ** (depth - 1) * norms, rtol=1e-12)
        k = kernels.ntk_kernel(x, depth, activation, sigma2_scale=sigma2_scale)
        np.testing.assert_allclose(k, theta / x.shape[0], rtol=1e-14)


def test_depth_one_and_linear_network():
    """Depth 1 is the input Gram matrix; a linear network (Delta = 0) keeps Sigma and adds it per layer."""
    x = inputs()
    gram = (x @ x.T).numpy() / x.shape[1]
    for activation in ACTIVATIONS:
        sigma, theta = kernels.kernels(x, 1, activation)
        np.testing.assert_allclose(sigma, gram, rtol=1e-13)
        np.testing.assert_allclose(theta, gram, rtol=1e-13)
    sigma, theta = kernels.kernels(x, 4, "linear")
    np.testing.assert_allclose(sigma, gram, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(theta, 4 * gram, rtol=1e-12, atol=1e-14)


def test_cross_kernel_all_depths_and_symmetry():
    x, x2 = inputs(5), inputs(3, seed=1)
    both = torch.cat([x, x2])
    for activation in ACTIVATIONS:
        s_full, t_full = kernels.kernels(both, 4, activation)
        s_cross, t_cross = kernels.kernels(x, 4, activation, x2=x2)
        np.testing.assert_allclose(s_cross, s_full[:5, 5:], rtol=1e-12)
        np.testing.assert_allclose(t_cross, t_full[:5, 5:], rtol=1e-12)
        np.testing.assert_allclose(t_full, t_full.T, rtol=1e-13)
        assert np.linalg.eigvalsh(t_full).min() > 0
        stack = kernels.ntk_kernel(x, 6, activation, all_depths=True)
        assert stack.shape == (6, 5, 5)
        for depth in range(1, 7):
            np.testing.assert_allclose(stack[depth - 1], kernels.ntk_kernel(x, depth, activation), rtol=1e-13)
    # numpy input gives the same as torch input
    np.testing.assert_array_equal(kernels.ntk_kernel(x.numpy(), 3), kernels.ntk_kernel(x, 3))


def test_iterate_kernels_yields_every_depth_of_the_stack():
    """The generator gives, depth by depth, exactly the stack of ``kernels(..., all_depths=True)``, with
    fresh arrays (keeping one does not see later steps), and validates its arguments before the first step."""
    x, x2 = inputs(5), inputs(3, seed=1)
    for activation, scale in (("relu", 1.0), ("abs", 1.3)):
        sigmas, thetas = kernels.kernels(x, 7, activation, x2=x2, sigma2_scale=scale, all_depths=True)
        kept = []
        for depth, sigma, theta in kernels.iterate_kernels(x, activation, x2=x2, sigma2_scale=scale):
            kept.append((sigma, theta))
            if depth == 7:
                break
        assert [d for d, *_ in zip(range(1, 8), kept)] == list(range(1, 8))
        np.testing.assert_array_equal(np.stack([s for s, _ in kept]), sigmas)
        np.testing.assert_array_equal(np.stack([t for _, t in kept]), thetas)
    with pytest.raises(ValueError, match="sigma2_scale"):
        kernels.iterate_kernels(x, "relu", sigma2_scale=0.0)
    with pytest.raises(ValueError, match="x2"):
        kernels.iterate_kernels(x, "relu", x2=torch.ones(2, 3, dtype=torch.float64))


# ---------------------------------------------------------------------------- Monte Carlo

def _check_mc(estimates: np.ndarray, reference: np.ndarray, sigmas: float = 4.0, bias: float = 0.01):
    """Mean of per-network estimates within ``sigmas`` standard errors (plus a small finite-width bias
    allowance, relative to the kernel's scale) of the infinite-width kernel."""
    mean = estimates.mean(0)
    se = estimates.std(0, ddof=1) / np.sqrt(len(estimates))
    allowed = sigmas * se + bias * np.abs(reference).max()
    assert np.all(np.abs(mean - reference) <= allowed), (np.abs(mean - reference) / se).max()


@pytest.mark.parametrize("activation,sigma2_scale", [("relu", 1.0), ("abs", 1.0), ("leaky_relu", 1.0),
                                                     ("relu", 1.2)])
def test_nngp_against_wide_networks(activation, sigma2_scale):
    """Output covariance of width-512 depth-3 networks (256 outputs each, 24 seeds) against Sigma^3."""
    x = inputs()
    depth, width, d_out = 3, 512, 256
    estimates = []
    for seed in range(24):
        model = nup.NTK(sigma2_scale=sigma2_scale).build(x.shape[1], d_out, depth, width, activation, seed=seed,
                                                         dtype=torch.float64)
        with torch.no_grad():
            f = model(x)
        estimates.append((f @ f.T).numpy() / d_out)
    _check_mc(np.array(estimates), kernels.nngp_kernel(x, depth, activation, sigma2_scale=sigma2_scale))


@pytest.mark.parametrize("activation,sigma2_scale", [("relu", 1.0), ("abs", 1.0), ("leaky_relu", 1.0),
                                                     ("abs", 0.8)])
def test_ntk_against_wide_networks(activation, sigma2_scale):
    """Empirical NTK of width-512 depth-3 networks, averaged over 24 seeds, against Theta^3/n; the
    blocks between different outputs average to zero (the output factor is the identity)."""
    x = inputs()
    n, depth, width, d_out = x.shape[0], 3, 512, 2
    same, cross = [], []
    for seed in range(24):
        model = nup.NTK(sigma2_scale=sigma2_scale).build(x.shape[1], d_out, depth, width, activation, seed=seed,
                                                         dtype=torch.float64)
        k = empirical_ntk(model, x).reshape(n, d_out, n, d_out)
        same.append(k.diagonal(dim1=1, dim2=3).mean(-1).numpy())
        cross.append(k[:, 0, :, 1].numpy())
    reference = kernels.ntk_kernel(x, depth, activation, sigma2_scale=sigma2_scale)
    _check_mc(np.array(same), reference)
    _check_mc(np.array(cross), np.zeros_like(reference), bias=1e-3)


# ---------------------------------------------------------------------------- condition number, arguments

def test_condition_number_against_numpy():
    x = inputs()
    for activation in ACTIVATIONS:
        k = kernels.ntk_kernel(x, 5, activation)
        eigenvalues = np.linalg.eigvals(k).real
        assert kernels.condition_number(k) == pytest.approx(eigenvalues.max() / eigenvalues.min(), rel=1e-10)
        assert kernels.condition_number(torch.from_numpy(k)) == pytest.approx(kernels.condition_number(k))
    assert kernels.condition_number(np.ones((3, 3))) == float("inf")


@pytest.mark.parametrize("call,name", [
    (lambda x: kernels.ntk_kernel(x, 0), "depth"),
    (lambda x: kernels.ntk_kernel(x, 2.5), "depth"),
    (lambda x: kernels.nngp_kernel(x, 3, sigma2_scale=-1.0), "sigma2_scale"),
    (lambda x: kernels.nngp_kernel(x, 3, activation="tanh"), "activation"),
    (lambda x: kernels.ntk_kernel(x[0], 3), "x"),
    (lambda x: kernels.ntk_kernel(x * float("nan"), 3), "x"),
    (lambda x: kernels.ntk_kernel(x, 3, x2=x[:, :4]), "x2"),
    (lambda x: kernels.condition_number(x), "kernel"),
    (lambda x: kernels.condition_number(-np.eye(3)), "kernel"),
])
def test_bad_arguments(call, name):
    with pytest.raises(ValueError, match=name):
        call(inputs())

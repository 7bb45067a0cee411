"""rho, rho_dot and the infinite-width kernels against the arc-cosine kernels of Cho & Saul (2009), written
here independently in numpy, at tight tolerances; the 1/n of ``ntk_kernel`` on non-square (cross) kernels.

Write ``phi(s) = a s + b|s| = alpha s + beta relu(s)`` with ``alpha = a - b``, ``beta = 2b``.  For centred
Gaussians ``u, v`` with variances ``q, q'`` and angle ``theta = acos c``, Cho & Saul give
``E relu(u) relu(v) = sqrt(q q') J_1(theta)/(2 pi)`` and ``E step(u) step(v) = J_0(theta)/(2 pi)`` with
``J_0 = pi - theta``, ``J_1 = sin theta + (pi - theta) cos theta``; with ``E u relu(v) = E[uv]/2`` and
``E step(v) = 1/2`` this gives ``E phi(u) phi(v)`` and ``E phi'(u) phi'(v)`` below.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nup.core.activations import Activation, get_activation
from nup.theory import kernels

ACTIVATIONS = {"relu": get_activation("relu"), "abs": get_activation("abs"),
               "leaky_relu": get_activation("leaky_relu"), "custom": Activation(0.3, -0.8)}


def arccos_moments(act: Activation, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(E phi(u) phi(v), E phi'(u) phi'(v))`` for unit-variance ``u, v`` with correlation ``c``."""
    alpha, beta = act.a - act.b, 2 * act.b
    theta = np.arccos(np.clip(c, -1.0, 1.0))
    j0, j1 = np.pi - theta, np.sin(theta) + (np.pi - theta) * np.cos(theta)
    e_phi = (alpha**2 + alpha * beta) * c + beta**2 * j1 / (2 * np.pi)
    e_dphi = alpha**2 + alpha * beta + beta**2 * j0 / (2 * np.pi)
    return e_phi, e_dphi


def reference_kernels(x: np.ndarray, x2: np.ndarray, depth: int, act: Activation, s: float = 1.0):
    """NNGP and NTK (per output, no 1/n) of the NTK-parameterized bias-free MLP with weight variance
    ``sigma^2 = s/(a^2 + b^2)`` on the hidden layers and 1 on the input layer, by the arc-cosine recursion."""
    m0 = x.shape[1]
    cov = x @ x2.T / m0
    q, q2 = (x * x).sum(1) / m0, (x2 * x2).sum(1) / m0
    ntk = cov.copy()
    sigma2 = s / (act.a**2 + act.b**2)
    for _ in range(depth - 1):
        scale = np.sqrt(np.outer(q, q2))
        c = cov / scale
        if x is x2:
            np.fill_diagonal(c, 1.0)  # a point is exactly correlated with itself
        e_phi, e_dphi = arccos_moments(act, c)
        cov, ntk = sigma2 * scale * e_phi, sigma2 * scale * e_phi + sigma2 * ntk * e_dphi
        q, q2 = sigma2 * (act.a**2 + act.b**2) * q, sigma2 * (act.a**2 + act.b**2) * q2
    return cov, ntk


def points(n=6, m0=7, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, m0))
    x[1] = 0.95 * x[0] + 0.2 * x[1]  # strongly correlated
    x[2] = -0.7 * x[0] + 0.5 * x[2]  # anti-correlated
    x[-1] *= 3.0  # a different norm
    return x


C = np.array([-1.0, -0.999, -0.8, -0.3, 0.0, 0.2, 0.5, 0.9, 0.999, 1.0])


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_rho_and_rho_dot_against_arccos_kernels(name):
    act = ACTIVATIONS[name]
    e_phi, e_dphi = arccos_moments(act, C)
    m2 = act.a**2 + act.b**2
    np.testing.assert_allclose(act.rho(C), e_phi / m2, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(act.rho_dot(C), e_dphi / m2, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_rho_dot_is_the_derivative_of_rho(name):
    """Price's theorem: d/dc E phi(u) phi(v) = E phi'(u) phi'(v); central differences of rho, error O(h^2)."""
    act = ACTIVATIONS[name]
    c = np.linspace(-0.95, 0.95, 39)
    h = 1e-5
    numerical = (act.rho(c + h) - act.rho(c - h)) / (2 * h)
    np.testing.assert_allclose(act.rho_dot(c), numerical, rtol=1e-7, atol=1e-9)


def test_rho_dot_against_monte_carlo():
    """A 1% tolerance: 4M relu pairs, standard error of E step(u) step(v) about 2.5e-4."""
    act = ACTIVATIONS["relu"]
    g = torch.Generator().manual_seed(3)
    u, w = torch.randn(2, 4_000_000, generator=g, dtype=torch.float64)
    for c in (-0.5, 0.4):
        v = c * u + math.sqrt(1 - c * c) * w
        mc = (act.derivative(u) * act.derivative(v)).mean().item() / act.second_moment
        assert float(act.rho_dot(c)) == pytest.approx(mc, rel=0.01)


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("sigma2_scale", [1.0, 1.3])
def test_kernels_against_arccos_recursion(name, sigma2_scale):
    act = ACTIVATIONS[name]
    x = points()
    for depth in (1, 2, 3, 5):
        sigma, theta = kernels.kernels(x, depth, act, sigma2_scale=sigma2_scale)
        ref_sigma, ref_theta = reference_kernels(x, x, depth, act, sigma2_scale)
        scale = np.abs(ref_theta).max()
        np.testing.assert_allclose(sigma, ref_sigma, rtol=1e-10, atol=1e-12 * scale)
        np.testing.assert_allclose(theta, ref_theta, rtol=1e-10, atol=1e-12 * scale)


def test_depth_two_relu_closed_form():
    """Depth 2, ReLU at the EOC (sigma^2 = 2): Sigma = sqrt(q q') J_1/pi, Theta = Sigma + (x.x'/m0) J_0/pi."""
    x = points()
    m0 = x.shape[1]
    q = (x * x).sum(1) / m0
    gram = x @ x.T / m0
    norm = np.sqrt(np.outer(q, q))
    theta_angle = np.arccos(np.clip(gram / norm, -1, 1))
    np.fill_diagonal(theta_angle, 0.0)
    sigma_ref = norm * (np.sin(theta_angle) + (np.pi - theta_angle) * np.cos(theta_angle)) / np.pi
    ntk_ref = sigma_ref + gram * (np.pi - theta_angle) / np.pi
    sigma, theta = kernels.kernels(x, 2, "relu")
    np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(theta, ntk_ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["relu", "abs", "custom"])
def test_cross_kernels_against_arccos_recursion(name):
    act = ACTIVATIONS[name]
    x, x2 = points(5), points(3, seed=1)
    for depth in (2, 4):
        sigma, theta = kernels.kernels(x, depth, act, x2=x2)
        ref_sigma, ref_theta = reference_kernels(x, x2, depth, act)
        assert sigma.shape == theta.shape == (5, 3)
        np.testing.assert_allclose(sigma, ref_sigma, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(theta, ref_theta, rtol=1e-10, atol=1e-13)


def test_ntk_kernel_divides_by_the_number_of_rows_of_x():
    """``K = Theta/n`` with ``n = len(x)``, also for a non-square cross kernel and for all_depths stacks."""
    x, x2 = points(5), points(3, seed=1)
    _, ref_theta = reference_kernels(x, x2, 3, ACTIVATIONS["relu"])
    np.testing.assert_allclose(kernels.ntk_kernel(x, 3, x2=x2), ref_theta / 5, rtol=1e-10)
    np.testing.assert_allclose(kernels.ntk_kernel(x2, 3, x2=x), ref_theta.T / 3, rtol=1e-10)
    np.testing.assert_allclose(kernels.ntk_kernel(x, 3, x2=x2, divide_by_n=False), ref_theta, rtol=1e-10)
    stack = kernels.ntk_kernel(x, 4, x2=x2, all_depths=True)
    assert stack.shape == (4, 5, 3)
    for depth in range(1, 5):
        np.testing.assert_allclose(stack[depth - 1], reference_kernels(x, x2, depth, ACTIVATIONS["relu"])[1] / 5,
                                   rtol=1e-10)
    square = kernels.ntk_kernel(x, 4, all_depths=True)  # (depth, n, n) with depth != n
    np.testing.assert_allclose(square[-1], reference_kernels(x, x, 4, ACTIVATIONS["relu"])[1] / 5, rtol=1e-10)

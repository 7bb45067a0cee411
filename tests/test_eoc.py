"""The exact samplers of nup.theory.eoc against Monte Carlo of real nup.MLPs, and the iterated map."""

import numpy as np
import pytest
import torch

from nup import NTK
from nup.theory.eoc import iterate_correlation_map, sample_norm_ratios, sample_preactivations


def _real_norm_ratios(activation, depth, width, n_seeds, sigma2_scale=1.0):
    x = torch.randn(1, 12, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    q0 = (x**2).mean().item()
    out = np.empty((n_seeds, depth))
    for s in range(n_seeds):
        model = NTK(sigma2_scale=sigma2_scale).build(12, width, depth, width, activation, seed=s, dtype=torch.float64)
        with torch.no_grad():
            _, hs = model(x, return_preactivations=True)
        out[s] = [(h**2).mean().item() / q0 for h in hs]
    return out


@pytest.mark.parametrize("activation,scale", [("relu", 1.0), ("abs", 1.0), ("leaky_relu", 1.2)])
def test_norm_sampler_matches_real_networks(activation, scale):
    depth, width, n = 5, 16, 1500
    real = _real_norm_ratios(activation, depth, width, n, scale)
    sampled = sample_norm_ratios(activation, [width] * depth, 200_000, sigma2_scale=scale, seed=0)
    se = real.std(0) / np.sqrt(n)
    assert np.all(np.abs(real.mean(0) - sampled.mean(0)) < 4 * se)
    # Closed form of the mean: sigma2_scale^(k-1).
    assert sampled.mean(0) == pytest.approx(scale ** np.arange(depth), rel=0.02)
    # The input layer alone is q_0 chi2_m / m, whose std is sqrt(2/m).
    assert sampled.std(0)[0] == pytest.approx(np.sqrt(2 / width), rel=0.02)
    assert real.std(0) == pytest.approx(sampled.std(0), rel=0.15)


def test_gram_sampler_matches_real_networks():
    x = np.random.default_rng(0).standard_normal((3, 10))
    depth, width, n = 4, 12, 800
    sampled = sample_preactivations("relu", x, [width] * depth, 20_000, seed=1).mean(0)
    real = np.zeros_like(sampled)
    xt = torch.tensor(x)
    for s in range(n):
        model = NTK().build(10, width, depth, width, "relu", seed=s, dtype=torch.float64)
        with torch.no_grad():
            _, hs = model(xt, return_preactivations=True)
        real += np.stack([(h @ h.T / width).numpy() for h in hs]) / n
    assert np.abs(real - sampled).max() < 0.1 * np.abs(sampled).max()


def test_wide_network_correlation_follows_rho():
    x = np.random.default_rng(1).standard_normal((2, 50))
    c0 = x[0] @ x[1] / np.linalg.norm(x[0]) / np.linalg.norm(x[1])
    grams = sample_preactivations("abs", x, [4096] * 6, 40, seed=2).mean(0)
    measured = grams[:, 0, 1] / np.sqrt(grams[:, 0, 0] * grams[:, 1, 1])
    assert measured == pytest.approx(iterate_correlation_map("abs", c0, 6), abs=0.01)


def test_bad_arguments():
    with pytest.raises(ValueError, match="widths"):
        sample_norm_ratios("relu", [], 10)
    with pytest.raises(ValueError, match="n_seeds=0"):
        sample_norm_ratios("relu", [4], 0)
    with pytest.raises(ValueError, match="c0=1.5"):
        iterate_correlation_map("relu", 1.5, 3)

"""nup.experiments.edge_of_chaos: its statistics and claims on synthetic samples with known answers."""

import numpy as np
import pandas as pd
import pytest
import torch

from nup.experiments import edge_of_chaos as e

DEPTH = 16
P = e.SCHEMA.validate(dict(activations=["relu"], max_depth=DEPTH, width=8, n_seeds=100, off_eoc_scales=[0.8],
                           corr_width=8, corr_seeds=4, input_correlations=[0.5], check_depth=4, check_width=8,
                           check_seeds=20, seed=0))
K = np.arange(1, DEPTH + 1)
Z = np.tile([-1.0, 1.0], 50)[:, None]  # 100 "networks" with mean 0 and std 1 (ddof 0)


def _frames(eoc_offset=0.0, real_scale=1.0):
    samples = {("norm", "relu", 1.0): np.ones((100, DEPTH)) + eoc_offset + 0.01 * Z,
               ("norm", "relu", 0.8): np.tile(0.8 ** (K - 1.0), (100, 1)) * (1 + 0.01 * Z),
               ("spread", "relu", "constant"): 1 + np.sqrt(K) * 0.1 * Z,
               ("spread", "relu", "quadratic"): 1 + 0.1 * Z * np.ones(DEPTH)}
    rho = np.linspace(0.5, 0.9, DEPTH)
    corr = pd.DataFrame([("relu", 0.5, s, k, rho[k - 1], rho[k - 1]) for s in range(4) for k in K],
                        columns=["activation", "c0", "seed", "depth", "correlation", "rho"])
    values = 1 + 0.5 * np.tile([-1.0, 1.0], 500)
    check = pd.concat([pd.DataFrame({"source": "real nup.MLP", "q_ratio": 1 + real_scale * (values - 1)}),
                       pd.DataFrame({"source": "exact sampler", "q_ratio": values})], ignore_index=True)
    return {"samples": samples, "correlation": corr, "sampler_check": check}


def test_statistics_on_exact_curves():
    assert e.eoc_deviation(np.full((3, 5), 1.05)) == pytest.approx(0.05)
    assert e.slope_error(np.tile(1.2 ** (K - 1.0), (2, 1)), 1.2) == pytest.approx(0, abs=1e-12)
    assert e.spread_exponent(1 + np.sqrt(K) * Z) == pytest.approx(0.5)
    assert e.spread_exponent(1 + K * Z) == pytest.approx(1.0)
    assert e.spread_growth(1 + np.where(K >= DEPTH, 2.0, 1.0) * Z) == pytest.approx(2.0)


def test_claims_hold_on_ideal_samples():
    verdicts = e.claims(_frames(), P)
    assert [v.holds for v in verdicts] == [True] * 7, [(v.statement, v.estimate, v.low, v.high) for v in verdicts]


def test_claims_fail_when_the_eoc_mean_drifts_and_the_sampler_is_off():
    verdicts = e.claims(_frames(eoc_offset=0.3, real_scale=1.5), P)
    assert verdicts[0].holds is False and verdicts[0].estimate == pytest.approx(0.3, abs=0.02)
    assert verdicts[-1].holds is False and verdicts[-1].estimate == pytest.approx(1.5, rel=0.01)


def test_a_drift_near_the_threshold_is_undecided():
    frames = _frames()
    noisy = np.random.default_rng(0).normal(1.09, 0.05, size=(100, DEPTH))
    frames["samples"]["norm", "relu", 1.0] = noisy
    assert e.claims(frames, P)[0].holds is None


def test_correlated_pair_has_the_requested_cosine_and_norm():
    x = e.correlated_pair(0.3, m0=16, generator=torch.Generator().manual_seed(1))
    assert torch.nn.functional.cosine_similarity(x[0], x[1], dim=0).item() == pytest.approx(0.3, abs=1e-12)
    assert x.norm(dim=1).tolist() == pytest.approx([4.0, 4.0])


def test_schema_refuses_a_too_shallow_network():
    with pytest.raises(ValueError, match="max_depth"):
        e.SCHEMA.validate({**P, "max_depth": 8})

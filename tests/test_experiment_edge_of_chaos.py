"""nup.experiments.edge_of_chaos: its statistics and claims on synthetic samples with known answers, each verdict
just inside and just outside its threshold."""

import numpy as np
import pandas as pd
import pytest
import torch

from nup.experiments import edge_of_chaos as e

DEPTH = 16
P = e.SCHEMA.validate(dict(activations=["relu", "abs"], max_depth=DEPTH, width=8, n_seeds=100, off_eoc_scales=[0.8],
                           corr_width=8, corr_seeds=4, input_correlations=[0.5], check_depth=4, check_width=8,
                           check_seeds=20, seed=0))
K = np.arange(1, DEPTH + 1)
Z = np.tile([-1.0, 1.0], 50)[:, None]  # 100 "networks" with mean 0 and std 1 (ddof 0)
TINY = 1e-3 * np.sin(np.arange(100.0))[:, None]  # a little noise, so that every interval has a width


def _frames(eoc_offset=0.0, slope=1.0, exponent=0.5, growth=1.0, corr_offset=0.0, real_mean=1.0, real_spread=1.0,
            worse="relu"):
    """Ideal samples of two activations; the ``worse`` one carries the given offsets, the other is ideal."""
    samples = {}
    for act in P.activations:
        bad = act == worse
        samples["norm", act, 1.0] = 1 + (eoc_offset if bad else 0.0) + 0.01 * Z + TINY
        rate = (slope if bad else 1.0) * np.log(0.8)
        samples["norm", act, 0.8] = np.exp(rate * (K - 1.0)) * (1 + 0.01 * Z + TINY)
        samples["spread", act, "constant"] = 1 + K ** (exponent if bad else 0.5) * 0.1 * (Z + TINY)
        last = np.where(K == DEPTH, growth if bad else 1.0, 1.0)
        samples["spread", act, "quadratic"] = 1 + 0.1 * (Z + TINY) * last
    rho = np.linspace(0.5, 0.9, DEPTH)
    corr = pd.DataFrame([(act, 0.5, s, k, rho[k - 1] + (corr_offset if act == worse else 0.0) + 1e-4 * (-1) ** s,
                          rho[k - 1]) for act in P.activations for s in range(4) for k in K],
                        columns=["activation", "c0", "seed", "depth", "correlation", "rho"])
    values = 1 + 0.05 * np.tile([-1.0, 1.0], 500) + 1e-4 * np.sin(np.arange(1000.0))
    real = real_mean + real_spread * (values - 1)
    check = pd.concat([pd.DataFrame({"source": "real nup.MLP", "q_ratio": real}),
                       pd.DataFrame({"source": "exact sampler", "q_ratio": values})], ignore_index=True)
    return {"samples": samples, "correlation": corr, "sampler_check": check}


def _describe(verdicts):
    return [(v.statement, v.estimate, v.low, v.high, v.holds) for v in verdicts]


def test_statistics_on_exact_curves():
    means = lambda q: q.mean(0)[None]  # noqa: E731  (one row of means)
    assert e.slope_ratio(means(np.tile(1.2 ** (K - 1.0), (2, 1))), 1.2) == pytest.approx([1.0])
    assert e.spread_exponent(means(e.moments(1 + np.sqrt(K) * Z))) == pytest.approx([0.5])
    assert e.spread_exponent(means(e.moments(1 + K * Z))) == pytest.approx([1.0])
    assert e.spread_growth(means(e.moments(1 + np.where(K >= DEPTH, 2.0, 1.0) * Z))) == pytest.approx([2.0])
    np.testing.assert_allclose(e.spread_from_moments(means(e.moments(1 + K * Z))), K[None] * 1.0)


def test_claims_hold_on_ideal_samples_and_print_the_networks():
    verdicts = e.claims(_frames(), P)
    assert [v.holds for v in verdicts] == [True] * 7, _describe(verdicts)
    assert [v.n for v in verdicts] == [100] * 4 + [4] + [1000] * 2 and {v.unit for v in verdicts} == {"networks"}
    assert not any("{" in v.statement for v in verdicts)


CASES = {  # verdict index, frames keyword, a value just inside, just outside the threshold
    "eoc mean": (0, "eoc_offset", e.EOC_TOLERANCE - 0.01, e.EOC_TOLERANCE + 0.01),
    "eoc mean below": (0, "eoc_offset", -(e.EOC_TOLERANCE - 0.01), -(e.EOC_TOLERANCE + 0.01)),
    "off-EOC slope": (1, "slope", 1 + e.SLOPE_TOLERANCE - 0.01, 1 + e.SLOPE_TOLERANCE + 0.01),
    "spread exponent": (2, "exponent", sum(e.SPREAD_EXPONENT) - 0.01, sum(e.SPREAD_EXPONENT) + 0.01),
    "spread exponent below": (2, "exponent", e.SPREAD_EXPONENT[0] - e.SPREAD_EXPONENT[1] + 0.01,
                              e.SPREAD_EXPONENT[0] - e.SPREAD_EXPONENT[1] - 0.01),
    "spread growth": (3, "growth", e.SPREAD_GROWTH - 0.01, e.SPREAD_GROWTH + 0.01),
    "correlation": (4, "corr_offset", e.CORRELATION_TOLERANCE - 0.005, e.CORRELATION_TOLERANCE + 0.005),
    "sampler mean": (5, "real_mean", 1 + e.SAMPLER_TOLERANCE - 0.01, 1 - e.SAMPLER_TOLERANCE - 0.01),
    "sampler spread": (6, "real_spread", 1 - e.SAMPLER_TOLERANCE + 0.01, 1 + e.SAMPLER_TOLERANCE + 0.01),
}


# The sampler check (verdicts 5 and 6) is of one activation, relu; every other verdict is tried with each
# activation as the worse one.
CASE_ACTIVATIONS = [(case, worse) for case, (index, *_) in CASES.items()
                    for worse in (("relu",) if index >= 5 else ("relu", "abs"))]


@pytest.mark.parametrize("case, worse", CASE_ACTIVATIONS)
@pytest.mark.parametrize("side", ["inside", "outside"])
def test_each_verdict_is_decided_at_its_threshold_in_every_activation(case, side, worse):
    """One activation just inside or just outside a threshold, the other ideal: the verdict follows the
    worse activation (all_of over cells), whichever it is."""
    index, keyword, inside, outside = CASES[case]
    verdicts = e.claims(_frames(**{keyword: inside if side == "inside" else outside}, worse=worse), P)
    assert verdicts[index].holds is (side == "inside"), _describe(verdicts)[index]
    assert all(v.holds for i, v in enumerate(verdicts) if i != index), _describe(verdicts)


def test_a_drift_near_the_threshold_is_undecided():
    frames = _frames()
    noisy = np.random.default_rng(0).normal(1.09, 0.05, size=(100, DEPTH))
    frames["samples"]["norm", "relu", 1.0] = noisy
    assert e.claims(frames, P)[0].holds is None


def test_the_deciding_cell_is_shown():
    verdict = e.claims(_frames(eoc_offset=0.3), P)[0]
    assert verdict.holds is False and verdict.estimate == pytest.approx(1.3, abs=0.01)
    assert verdict.threshold == "1 +- 0.1" and verdict.n == 100


def test_intervals_are_the_jackknife_of_the_means():
    """jackknife_of_means on the moments equals the plain jackknife-t of the same statistic on the networks."""
    from nup.analysis.stats import jackknife_of_means, jackknife_t
    q = 1 + np.sqrt(K) * 0.1 * np.random.default_rng(1).normal(size=(30, DEPTH))
    fast = jackknife_of_means(e.moments(q), e.spread_exponent)
    slow = jackknife_t(q, lambda a: float(e.spread_exponent(e.moments(a).mean(0)[None])[0]), unit="networks")
    assert (fast.value, fast.low, fast.high) == pytest.approx((slow.value, slow.low, slow.high))


def test_correlated_pair_has_the_requested_cosine_and_norm():
    x = e.correlated_pair(0.3, m0=16, generator=torch.Generator().manual_seed(1))
    assert torch.nn.functional.cosine_similarity(x[0], x[1], dim=0).item() == pytest.approx(0.3, abs=1e-12)
    assert x.norm(dim=1).tolist() == pytest.approx([4.0, 4.0])


def test_schema_refuses_a_too_shallow_network():
    with pytest.raises(ValueError, match="max_depth"):
        e.SCHEMA.validate({**P, "max_depth": 8})

"""The width-aware normalized update ``normalize="spectral"`` (``nup.core.optim``) against float64 brute force.

One step of ``W_k -= lr s_k G_k/|G_k|_F`` with ``s_k = sqrt(fan_out/fan_in)/c_k`` moves the effective weights
``c_k W_k`` by ``|c_k Delta W_k|_F = lr sqrt(fan_out/fan_in)``.  For one sample the gradient
``G_k = c_k delta_k a_{k-1}^T`` is rank one along ``a_{k-1}``, so the direct change of the preactivation,
``c_k Delta W_k a_{k-1}``, has per-coordinate RMS exactly

* ``"spectral"``:  ``lr * rms(a_{k-1})``                        (independent of the width),
* ``"per_layer"``: ``lr * c_k |a_{k-1}| / sqrt(m_k) = lr sigma_k rms(a_{k-1}) / sqrt(m_k)``  (NTK multipliers),

and for a batch of samples these are upper bounds (spectral norm <= Frobenius norm).  On layer 1 the
direct change is the whole change (``h_1`` is linear in ``W_1``).  Deeper hidden layers also collect the
moves of the layers below; ``docs/definitions.md`` bounds them by ``O(lr)`` per coordinate for
``"spectral"`` and ``O(lr/sqrt(m))`` for ``"per_layer"``, which the width exponents below check.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import nup
from nup.core.optim import NORMALIZE_MODES, NormalizedSGD, spectral_scale
from nup.core.param import NTK, NuP
from nup.training.config import RunConfig, mse_loss
from nup.training.loop import train

WIDTHS = (8, 32, 128, 512)
D_IN, D_OUT = 16, 2


def rms(t: torch.Tensor) -> float:
    return t.pow(2).mean().sqrt().item()


def one_step(param, mode: str, width: int, depth: int, seed: int, n: int, lr: float):
    """One full-batch step on MSE; returns the model before the step, the step's weight changes,
    and the preactivations ``[h_1..h_l]`` before and after it (float64)."""
    model = param.build(D_IN, D_OUT, depth, width, "relu", seed=seed, dtype=torch.float64)
    g = torch.Generator().manual_seed(10_000 + seed)
    x = torch.randn(n, D_IN, generator=g, dtype=torch.float64)
    y = torch.randn(n, D_OUT, generator=g, dtype=torch.float64)
    optimizer = NormalizedSGD(param.param_groups(model, lr), lr=lr, normalize=mode)
    before = [layer.weight.detach().clone() for layer in model.layers]
    with torch.no_grad():
        _, h0 = model(x, return_preactivations=True)
    mse_loss(model(x), y).backward()
    optimizer.step()
    with torch.no_grad():
        _, h1 = model(x, return_preactivations=True)
    steps = [layer.weight.detach() - b for layer, b in zip(model.layers, before)]
    inputs = [x] + [model.activation(h) for h in h0[:-1]]  # a_0..a_{l-1} before the step
    return model, steps, inputs, h0, h1


def predicted_rms(mode: str, c: float, a: torch.Tensor, m_out: int, lr: float) -> float:
    """The per-coordinate RMS of the direct change ``c Delta W a`` of one sample (module docstring), from
    ``a`` (``1 x m_in``); for ``n`` samples (``n x m_in``) the same expression is an upper bound."""
    if mode == "spectral":
        return lr * rms(a)
    return lr * c * math.sqrt(a.shape[1]) * rms(a) / math.sqrt(m_out)


def test_mode_is_registered_and_the_default_is_unchanged():
    assert "spectral" in NORMALIZE_MODES and NuP().normalize == "per_layer"
    assert nup.NORMALIZE_MODES == NORMALIZE_MODES
    assert RunConfig(normalize="spectral").build_parameterization().normalize == "spectral"
    assert NuP(normalize="spectral").optimizer(NuP().build(4, 2, 3, 4), 0.1).normalize == "spectral"


def test_param_groups_carry_fans_and_multipliers():
    model = NuP().build(10, 3, 4, 8, "relu")
    groups = model.parameterization.param_groups(model, 0.1)
    assert [(g["fan_in"], g["fan_out"]) for g in groups] == [(10, 8), (8, 32), (32, 72), (72, 3)]
    assert [g["multiplier"] for g in groups] == list(model.multipliers)
    # NTK multipliers c_k = sigma_k/sqrt(fan_in): s_k = sqrt(fan_out)/sigma_k.
    sigma = math.sqrt(2.0)
    scales = [spectral_scale(g["fan_in"], g["fan_out"], g["multiplier"]) for g in groups]
    assert scales == pytest.approx([math.sqrt(8), math.sqrt(32) / sigma, math.sqrt(72) / sigma, math.sqrt(3) / sigma],
                                   rel=1e-12)


@pytest.mark.parametrize("mode", ["spectral", "per_layer"])
@pytest.mark.parametrize("param", [NTK(), NuP()], ids=["ntk_constant", "nup_quadratic"])
def test_direct_change_of_one_sample_matches_the_formula(mode, param):
    """Exact (rtol 1e-9) for every layer at every width, with equal (NTK) and unequal (νP's k^2 m) fans;
    on layer 1 the direct change is the realized change."""
    lr = 1e-3
    for width in WIDTHS[:3] if isinstance(param, NuP) else WIDTHS:
        model, steps, inputs, h0, h1 = one_step(param, mode, width, depth=3, seed=0, n=1, lr=lr)
        for k, (c, dw, a) in enumerate(zip(model.multipliers, steps, inputs)):
            direct = c * a @ dw.T
            assert rms(direct) == pytest.approx(predicted_rms(mode, c, a, dw.shape[0], lr), rel=1e-9), (width, k)
        assert rms(h1[0] - h0[0]) == pytest.approx(predicted_rms(mode, model.multipliers[0], inputs[0],
                                                                 width, lr), rel=1e-9)


@pytest.mark.parametrize("mode", ["spectral", "per_layer"])
def test_direct_change_of_a_batch_is_bounded_by_the_formula(mode):
    lr = 1e-3
    for width in WIDTHS:
        model, steps, inputs, _, _ = one_step(NTK(), mode, width, depth=3, seed=1, n=8, lr=lr)
        for c, dw, a in zip(model.multipliers, steps, inputs):
            # |c dW A^T|_F <= |c dW|_op |A|_F <= |c dW|_F |A|_F: the RMS over the n x m_k matrix is at most the
            # one-sample formula with rms(a) taken over all n x m_{k-1} entries; equality needs a rank-one step.
            assert rms(c * a @ dw.T) <= predicted_rms(mode, c, a, dw.shape[0], lr) * (1 + 1e-12)


def hidden_changes(mode: str, lr: float = 1e-3, depth: int = 4, seeds=range(4), n: int = 8) -> np.ndarray:
    """Mean over seeds of ``rms(h_k(after) - h_k(before))/lr`` for the hidden layers: widths x (depth - 1)."""
    out = []
    for width in WIDTHS:
        per_seed = []
        for seed in seeds:
            _, _, _, h0, h1 = one_step(NTK(), mode, width, depth, seed, n, lr)
            per_seed.append([rms(b - a) / lr for a, b in zip(h0[:-1], h1[:-1])])
        out.append(np.mean(per_seed, axis=0))
    return np.array(out)


def width_exponents(changes: np.ndarray) -> np.ndarray:
    """Least-squares slope of ``log(change)`` against ``log(width)``, one per hidden layer."""
    return np.polyfit(np.log(WIDTHS), np.log(changes), 1)[0]


def test_realized_hidden_change_is_order_lr_for_spectral_and_shrinks_for_per_layer():
    """Whole realized change of every hidden h_k (depth 4, 8 samples, 4 seeds, lr = 1e-3) over widths
    8..512: width exponent 0 +- 0.1 for "spectral", -1/2 +- 0.1 for "per_layer"."""
    spectral, per_layer = hidden_changes("spectral"), hidden_changes("per_layer")
    assert np.all(np.abs(width_exponents(spectral)) < 0.1), width_exponents(spectral)
    assert np.all(np.abs(width_exponents(per_layer) + 0.5) < 0.1), width_exponents(per_layer)
    # O(lr): between 0.2 lr and 5 lr per coordinate at every width (rms(x) = 1 in expectation).
    assert np.all((spectral > 0.2) & (spectral < 5)), spectral
    # The ratio of the two is sqrt(m)/sigma on layer 1 up to the batch's alignment; at least it grows.
    assert np.all(np.diff(spectral[:, 0] / per_layer[:, 0]) > 0)


def test_hand_computed_two_layer_step():
    """f = c2 W2 relu(c1 W1 x), L = |f - y|^2/(2n); gradients and the spectral step written out by hand."""
    torch.manual_seed(0)
    d_in, m, d_out, n, lr = 3, 4, 2, 5, 0.07
    model = NTK().build(d_in, d_out, 2, m, "relu", seed=3, dtype=torch.float64)
    c1, c2 = model.multipliers
    assert c1 == pytest.approx(1 / math.sqrt(d_in)) and c2 == pytest.approx(math.sqrt(2) / math.sqrt(m))
    w1, w2 = (layer.weight.detach().clone() for layer in model.layers)
    x, y = torch.randn(n, d_in, dtype=torch.float64), torch.randn(n, d_out, dtype=torch.float64)
    # Forward and backward by hand.
    h1 = c1 * x @ w1.T
    a1 = h1.clamp_min(0)
    f = c2 * a1 @ w2.T
    df = (f - y) / n  # dL/df
    g2 = c2 * df.T @ a1
    g1 = c1 * ((c2 * df @ w2) * (h1 > 0)).T @ x
    # The spectral step: W_k -= lr sqrt(fan_out/fan_in)/c_k G_k/|G_k|_F.
    new1 = w1 - lr * math.sqrt(m / d_in) / c1 * g1 / g1.norm()
    new2 = w2 - lr * math.sqrt(d_out / m) / c2 * g2 / g2.norm()
    optimizer = NTK(normalize="spectral").optimizer(model, lr)
    mse_loss(model(x), y).backward()
    assert torch.allclose(model.layers[0].weight.grad, g1, rtol=1e-12, atol=1e-15)
    assert torch.allclose(model.layers[1].weight.grad, g2, rtol=1e-12, atol=1e-15)
    optimizer.step()
    assert torch.allclose(model.layers[0].weight, new1, rtol=1e-12, atol=1e-15)
    assert torch.allclose(model.layers[1].weight, new2, rtol=1e-12, atol=1e-15)
    # The effective step c_k Delta W_k has Frobenius norm lr sqrt(fan_out/fan_in).
    assert (c1 * (new1 - w1)).norm().item() == pytest.approx(lr * math.sqrt(m / d_in), rel=1e-12)
    assert (c2 * (new2 - w2)).norm().item() == pytest.approx(lr * math.sqrt(d_out / m), rel=1e-12)


def test_spectral_is_per_layer_times_the_scale_with_momentum():
    model = NuP().build(6, 3, 3, 4, "abs", seed=2, dtype=torch.float64)
    twin = NuP().build(6, 3, 3, 4, "abs", seed=2, dtype=torch.float64)
    x, y = torch.randn(7, 6, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    groups = NuP().param_groups(model, 0.01)
    scales = [spectral_scale(g["fan_in"], g["fan_out"], g["multiplier"]) for g in groups]
    spectral = NormalizedSGD(groups, lr=0.01, normalize="spectral", momentum=0.9)
    # per_layer with each group's rate multiplied by s_k takes the same steps
    twin_groups = NuP().param_groups(twin, 0.01)
    for g, s in zip(twin_groups, scales):
        g["lr"] *= s
    per_layer = NormalizedSGD(twin_groups, lr=0.01, normalize="per_layer", momentum=0.9)
    for _ in range(3):
        for net, opt in ((model, spectral), (twin, per_layer)):
            opt.zero_grad()
            mse_loss(net(x), y).backward()
            opt.step()
    assert all(torch.allclose(p, q, rtol=1e-12, atol=1e-14) for p, q in zip(model.parameters(), twin.parameters()))


def _groups():
    model = NTK().build(5, 2, 3, 4, "relu")
    return model, NTK().param_groups(model, 0.1)


@pytest.mark.parametrize("key", ["fan_in", "fan_out", "multiplier"])
def test_missing_key_names_the_group_and_the_key(key):
    _, groups = _groups()
    del groups[1][key]
    with pytest.raises(ValueError, match=rf"param_groups\[1\] \('layer2'\) has no '{key}'"):
        NormalizedSGD(groups, lr=0.1, normalize="spectral")
    NormalizedSGD(groups, lr=0.1, normalize="per_layer")  # other modes ignore the keys


@pytest.mark.parametrize("key, value", [("fan_in", 0), ("fan_out", -3), ("multiplier", math.nan),
                                        ("multiplier", "1")])
def test_bad_value_names_the_key_and_the_group(key, value):
    _, groups = _groups()
    groups[2][key] = value
    with pytest.raises(ValueError, match=rf"{key}={value!r} is not allowed.*\(in param_groups\[2\] \('layer3'\)\)"):
        NormalizedSGD(groups, lr=0.1, normalize="spectral")


def test_shape_mismatch_names_the_parameter():
    _, groups = _groups()
    groups[0]["fan_in"], groups[0]["fan_out"] = 4, 5  # layer1's weight is (4, 5)
    with pytest.raises(ValueError, match=r"params\[0\] of param_groups\[0\] \('layer1'\) has shape \(4, 5\)"):
        NormalizedSGD(groups, lr=0.1, normalize="spectral")


def test_add_param_group_is_checked_and_unnamed_groups_are_numbered():
    model, groups = _groups()
    optimizer = NormalizedSGD(groups[:2], lr=0.1, normalize="spectral")
    bad = {"params": [model.layers[2].weight], "fan_in": 4, "fan_out": 2}
    with pytest.raises(ValueError, match=r"param_groups\[2\] has no 'multiplier'"):
        optimizer.add_param_group(bad)


def test_a_run_with_spectral_trains():
    config = RunConfig(parameterization="nup", normalize="spectral", dataset="teacher", depth=3, width=8,
                       n_train=32, steps=5, lr=0.05, dtype="float64", device="cpu")
    result = train(config)
    loss = result.metric("loss")
    assert not result.diverged and len(loss) == 6 and np.all(np.isfinite(loss.to_numpy()))

"""NormalizedSGD's momentum, ``step(closure)`` and ``Parameterization.with_options`` against independent
computations: ``torch.optim.SGD`` for ``normalize="none"`` and a hand-written float64 recursion for the
normalized modes (``d_t = g_t/|g_t|``, ``buf_t = mu buf_{t-1} + d_t``, ``buf_0 = d_0``, ``W -= lr buf_t``)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import nup
from nup import NTK, MuP, NuP, NormalizedSGD, get_parameterization

F64 = torch.float64


def problem(param=None, seed=0):
    """A tiny float64 MLP (3 layers, so 3 groups) and data whose gradient changes every step."""
    param = param or MuP(base_width=2)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 4, generator=g, dtype=F64)
    y = torch.randn(6, 2, generator=g, dtype=F64)
    return param.build(4, 2, 3, 5, "abs", seed=seed, dtype=F64), x, y


def gradients(model, x, y):
    return torch.autograd.grad(nup.mse_loss(model(x), y), list(model.parameters()))


def descend(model, optimizer, x, y):
    optimizer.zero_grad()
    nup.mse_loss(model(x), y).backward()
    optimizer.step()


@pytest.mark.parametrize("momentum", [0.5, 0.9])
def test_momentum_without_normalization_is_torch_sgd(momentum):
    """Same per-group rates (μP: all three differ), same momentum: the same trajectory as torch.optim.SGD."""
    model, x, y = problem()
    twin = copy.deepcopy(model)
    param = model.parameterization
    ours = NormalizedSGD(param.param_groups(model, 0.05), lr=0.05, momentum=momentum, normalize="none")
    reference = torch.optim.SGD(param.param_groups(twin, 0.05), lr=0.05, momentum=momentum)
    assert len({g["lr"] for g in ours.param_groups}) == 3
    for _ in range(6):
        descend(model, ours, x, y)
        descend(twin, reference, x, y)
        for a, b in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    # The momentum really matters here: plain GD from the same start ends elsewhere.
    plain, _, _ = problem()
    gd = torch.optim.SGD(param.param_groups(plain, 0.05), lr=0.05)
    for _ in range(6):
        descend(plain, gd, x, y)
    assert any(not torch.allclose(a, b, rtol=1e-6) for a, b in zip(model.parameters(), plain.parameters()))


def test_per_group_momentum_is_torch_sgd():
    """A group may override the momentum (torch's param-group convention), including 0 for no buffer."""
    model, x, y = problem()
    twin = copy.deepcopy(model)

    def groups(m):
        gs = m.parameterization.param_groups(m, 0.05)
        gs[0]["momentum"], gs[2]["momentum"] = 0.8, 0.0
        return gs
    ours = NormalizedSGD(groups(model), lr=0.05, momentum=0.3)
    reference = torch.optim.SGD(groups(twin), lr=0.05, momentum=0.3)
    for _ in range(5):
        descend(model, ours, x, y)
        descend(twin, reference, x, y)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("normalize", ["none", "global", "per_layer"])
@pytest.mark.parametrize("momentum", [0.0, 0.7])
def test_normalized_momentum_against_hand_recursion(normalize, momentum):
    model, x, y = problem()
    lrs = [g["lr"] for g in model.parameterization.param_groups(model, 0.03)]
    optimizer = model.parameterization.optimizer(model, 0.03, momentum=momentum, normalize=normalize)
    weights = [p.detach().clone() for p in model.parameters()]  # the hand-made trajectory
    hand = copy.deepcopy(model)
    buffers = None
    for step in range(6):
        with torch.no_grad():
            for p, w in zip(hand.parameters(), weights):
                p.copy_(w)
        grads = [g.double() for g in gradients(hand, x, y)]
        global_norm = math.sqrt(sum(float((g * g).sum()) for g in grads))
        if normalize == "none":
            directions = grads
        elif normalize == "global":
            directions = [g / global_norm for g in grads]
        else:
            directions = [g / math.sqrt(float((g * g).sum())) for g in grads]
        if buffers is None:
            buffers = [d.clone() for d in directions]
        else:
            buffers = [momentum * b + d for b, d in zip(buffers, directions)]
        weights = [w - lr * b for w, lr, b in zip(weights, lrs, buffers)]
        descend(model, optimizer, x, y)
        for p, w in zip(model.parameters(), weights):
            torch.testing.assert_close(p.detach(), w, rtol=1e-12, atol=1e-14, msg=f"step {step}")
    if normalize == "per_layer" and momentum == 0.0:  # each layer moved exactly lr per step
        assert [float(b.norm()) for b in buffers] == pytest.approx([1.0] * 3)


def test_momentum_step_length_bound_is_reached_for_a_constant_direction():
    """With a constant gradient direction the per_layer step tends to lr/(1 - mu): sum_t mu^t = (1 - mu^T)/(1 - mu)."""
    w = torch.nn.Parameter(torch.tensor([3.0, -4.0], dtype=F64))
    opt = NormalizedSGD([w], lr=0.1, normalize="per_layer", momentum=0.5)
    for t in range(1, 8):
        before = w.detach().clone()
        w.grad = torch.tensor([6.0, 8.0], dtype=F64)  # |g| = 10, direction (0.6, 0.8)
        opt.step()
        step = before - w.detach()
        expected = 0.1 * (1 - 0.5**t) / (1 - 0.5)
        torch.testing.assert_close(step, expected * torch.tensor([0.6, 0.8], dtype=F64), rtol=1e-13, atol=0)


def test_step_with_closure_returns_its_loss_and_steps():
    model, x, y = problem(NTK())
    twin = copy.deepcopy(model)
    opt = NormalizedSGD(model.parameters(), lr=0.1, normalize="global")
    calls = []

    def closure():
        opt.zero_grad()
        loss = nup.mse_loss(model(x), y)
        loss.backward()
        calls.append(loss.item())
        return loss

    with torch.no_grad():  # the closure's graph is built even when step() is called under no_grad
        returned = opt.step(closure)
    assert calls == [pytest.approx(nup.mse_loss(twin(x), y).item(), rel=1e-15)]
    assert isinstance(returned, torch.Tensor) and returned.item() == calls[0]
    grads = gradients(twin, x, y)
    norm = math.sqrt(sum(float((g * g).sum()) for g in grads))
    for p, q, g in zip(model.parameters(), twin.parameters(), grads):
        torch.testing.assert_close(p.detach(), q.detach() - 0.1 * g / norm, rtol=1e-12, atol=1e-14)
    assert opt.step() is None  # no closure: None, as torch optimizers do


def test_with_options_replaces_fields_and_keeps_the_rest():
    nu = NuP(sigma2_scale=1.2)
    glob = nu.with_options(normalize="global")
    assert type(glob) is NuP and glob.normalize == "global"
    assert (glob.width_profile, glob.sigma2_scale) == ("quadratic", 1.2)
    assert nu.normalize == "per_layer"  # frozen: the original is unchanged
    mup = MuP(base_width=8).with_options(sigma2_scale=0.5, width_profile="linear")
    assert (type(mup), mup.base_width, mup.sigma2_scale, mup.width_profile, mup.normalize) == \
        (MuP, 8, 0.5, "linear", "none")
    # The replaced options take effect: the optimizer normalizes globally, the widths are linear.
    model = glob.build(3, 2, 3, 4, "relu", dtype=F64)
    assert glob.optimizer(model, 0.1).normalize == "global"
    assert mup.build(3, 2, 3, 4, "relu").widths == (3, 4, 8, 2)
    # get_parameterization on an instance goes through with_options; None keeps the field.
    assert get_parameterization(nu, normalize="none", sigma2_scale=None) == NuP(sigma2_scale=1.2, normalize="none")
    assert get_parameterization(nu) is nu
    with pytest.raises(ValueError, match="normalize"):
        nu.with_options(normalize="l2")
    with pytest.raises(ValueError, match="sigma2_scale"):
        nu.with_options(sigma2_scale=-1.0)

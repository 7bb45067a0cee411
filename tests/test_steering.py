"""Steering of the update direction (``NormalizedSGD(steer_beta=...)``, ``nup.core.optim`` "Steering")
against a hand computation in float64.

With ``g = G/|G|_F`` and ``d = D/|D|_F``, ``D = W - W(0)``:

* ``"cumulative"``: the step is ``lr * u/|u|_F`` with ``u = -g + beta d``; its cosine with ``D`` is
  ``(c + beta)/sqrt(1 + 2 beta c + beta^2)``, ``c = cos(-G, D)``, which rises with ``beta``;
* ``"orthogonal_random"``: ``u = c d + s (cos(phi) e + sin(phi) r)`` with ``-g = c d + s e``, ``r`` a random
  unit direction orthogonal to ``D`` and ``G``.  Preserved exactly: the step length ``lr`` and the step's
  inner product with ``D`` (so its cosine with ``D``) equal the unsteered step's; the angle between
  the step and ``-G`` equals the ``"cumulative"`` step's at the same ``beta``.
"""

from __future__ import annotations

import math

import pytest
import torch

from nup.core.optim import NormalizedSGD, steered_direction
from nup.core.param import NuP
from nup.training.config import RunConfig
from nup.training.loop import build_model_and_data, build_optimizer

DT = torch.float64


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.sum(a * b) / (torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)))


def setup(beta: float, mode: str = "cumulative", lr: float = 0.1, seed: int = 0):
    """A 3x4 weight at W(0), moved by hand to W(0) + D, with a fixed gradient G (float64)."""
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.randn(3, 4, generator=gen, dtype=DT)
    w = torch.nn.Parameter(w0.clone())
    opt = NormalizedSGD([w], lr=lr, normalize="per_layer", steer_beta=beta, steer_mode=mode, steer_seed=seed)
    D = torch.randn(3, 4, generator=gen, dtype=DT)
    G = torch.randn(3, 4, generator=gen, dtype=DT)
    with torch.no_grad():
        w.add_(D)
    w.grad = G.clone()
    return w, w0, D, G, opt


def take_step(w, opt):
    before = w.detach().clone()
    opt.step()
    return w.detach() - before


@pytest.mark.parametrize("beta", [-0.5, 0.5, 1.0, 2.0])
def test_cumulative_step_equals_the_hand_computation(beta):
    w, w0, D, G, opt = setup(beta)
    assert torch.equal(opt.state[w]["init"], w0)  # W(0) kept in the optimizer's state
    step = take_step(w, opt)
    u = -G / G.norm() + beta * D / D.norm()
    torch.testing.assert_close(step, 0.1 * u / u.norm(), rtol=1e-12, atol=1e-14)
    assert math.isclose(float(step.norm()), 0.1, rel_tol=1e-12)
    c = cos(-G, D)
    assert math.isclose(cos(step, D), (c + beta) / math.sqrt(1 + 2 * beta * c + beta**2), rel_tol=1e-10)


def test_the_cosine_with_the_cumulative_update_rises_with_beta():
    cosines = [cos(take_step(*setup(beta)[::4]), setup(beta)[2]) for beta in (-1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 5.0)]
    assert all(a < b for a, b in zip(cosines, cosines[1:]))
    assert cosines[-1] > 0.9 and cosines[0] < 0


def test_beta_zero_is_the_per_layer_normalized_step():
    w, _, D, G, _ = setup(1.0)
    plain = NormalizedSGD([w], lr=0.1, normalize="per_layer")
    step = take_step(w, plain)
    torch.testing.assert_close(step, -0.1 * G / G.norm(), rtol=1e-12, atol=1e-14)
    assert "init" not in plain.state[w]  # nothing kept when steering is off


def test_no_steering_at_the_first_step():
    w = torch.nn.Parameter(torch.randn(3, 4, dtype=DT))
    opt = NormalizedSGD([w], lr=0.1, normalize="per_layer", steer_beta=2.0)
    w.grad = torch.randn(3, 4, dtype=DT)
    step = take_step(w, opt)
    torch.testing.assert_close(step, -0.1 * w.grad / w.grad.norm(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("beta", [-1.0, 0.5, 2.0])
def test_orthogonal_control_keeps_the_length_and_the_cosine_and_turns_like_the_steered_step(beta):
    w, _, D, G, opt = setup(beta, mode="orthogonal_random")
    step = take_step(w, opt)
    plain = -0.1 * G / G.norm()
    assert math.isclose(float(step.norm()), 0.1, rel_tol=1e-12)
    # <Delta, D> (hence the cosine with D) equals the unsteered step's
    assert math.isclose(float(torch.sum(step * D)), float(torch.sum(plain * D)), rel_tol=1e-10)
    # the angle to -G equals the cumulative step's at the same beta
    steered = take_step(*setup(beta)[::4])
    assert math.isclose(cos(step, -G), cos(steered, -G), rel_tol=1e-10, abs_tol=1e-12)
    assert cos(step, plain) < 1 - 1e-6  # the direction did turn


def test_orthogonal_control_is_seeded():
    a = take_step(*setup(1.0, mode="orthogonal_random", seed=3)[::4])
    b = take_step(*setup(1.0, mode="orthogonal_random", seed=3)[::4])
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_steered_direction_falls_back_to_the_gradient_when_undefined():
    G = torch.randn(3, 4, dtype=DT)
    for D in (torch.zeros(3, 4, dtype=DT), G.clone()):  # no cumulative update; D parallel to G (control)
        torch.testing.assert_close(steered_direction(G, D, 1.0, "orthogonal_random", torch.Generator()),
                                   -G / G.norm())
    torch.testing.assert_close(steered_direction(G, G.clone(), 1.0), -G / G.norm())  # u = 0 at beta = 1


def test_spectral_steps_keep_their_width_aware_length():
    model = NuP().build(6, 2, 3, 8, seed=0, dtype=DT)
    opt = NuP().optimizer(model, 0.1, normalize="spectral", steer_beta=1.0)
    x, y = torch.randn(5, 6, dtype=DT), torch.randn(5, 2, dtype=DT)
    for _ in range(2):
        opt.zero_grad()
        ((model(x) - y) ** 2).sum().backward()
        before = [layer.weight.detach().clone() for layer in model.layers]
        opt.step()
    for group, layer, w in zip(opt.param_groups, model.layers, before):
        expected = group["lr"] * math.sqrt(group["fan_out"] / group["fan_in"]) / group["multiplier"]
        assert math.isclose(float((layer.weight.detach() - w).norm()), expected, rel_tol=1e-10)


def test_run_config_builds_the_steered_optimizer():
    config = RunConfig(parameterization="nup", normalize="per_layer", depth=2, width=2, n_train=16, steps=1,
                       steer_beta=0.5, steer_mode="orthogonal_random", seed=3)
    model = build_model_and_data(config)[0]
    opt = build_optimizer(config, model)
    assert (opt.steer_beta, opt.steer_mode) == (0.5, "orthogonal_random")
    assert "steer_beta" not in RunConfig().as_dict()  # off: the cache key is the one from before the option
    assert config.as_dict()["steer_beta"] == 0.5


@pytest.mark.parametrize("kwargs, name", [
    (dict(steer_beta=math.nan), "steer_beta"), (dict(steer_beta="1"), "steer_beta"),
    (dict(steer_beta=1.0, steer_mode="sideways"), "steer_mode"),
    (dict(steer_beta=1.0, normalize="none"), "steer_beta"), (dict(steer_beta=1.0, normalize="global"), "steer_beta"),
    (dict(steer_beta=1.0, momentum=0.5), "momentum"), (dict(steer_beta=1.0, steer_seed=-1), "steer_seed"),
])
def test_bad_steering_options_name_the_parameter(kwargs, name):
    w = torch.nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(ValueError, match=name):
        NormalizedSGD([w], lr=0.1, **{"normalize": "per_layer", **kwargs})


@pytest.mark.parametrize("kwargs, name", [
    (dict(steer_beta=math.inf), "steer_beta"), (dict(steer_mode="sideways"), "steer_mode"),
    (dict(steer_beta=1.0, parameterization="ntk"), "steer_beta"),
    (dict(steer_beta=1.0, optimizer="adam", normalize="none"), "steer_beta"),
    (dict(steer_beta=1.0, momentum=0.9), "momentum"),
])
def test_bad_run_config_steering_names_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        RunConfig(**kwargs)

"""The residual (depth-μP) parameterization: the stream's norm at init against its closed form (Monte
Carlo over real ``ResidualMLP``s), the empirical NTK and Hessian-vector products against explicit float64
Jacobians and Hessians, the learning-rate rule, and training through ``RunConfig``."""

import math

import numpy as np
import pytest
import torch

import nup
from nup.core.param import PARAMETERIZATIONS, Residual, get_parameterization
from nup.core.residual import ResidualMLP, expected_stream_norms
from nup.linalg.hessian import HessianOperator, sharpness
from nup.linalg.tangent_kernel import NTKOperator, empirical_ntk, ntk_top_eigenvalue
from nup.training.config import mse_loss


def stream_norms(activation, depth, width, n_nets, d_in=32, n_inputs=8, seed=0):
    """``q_k/q_0`` (k = 1..l, the stream then the output) of ``n_nets`` real float64 residual MLPs on
    ``n_inputs`` inputs each; returns an ``(n_nets, depth)`` array of the means over the inputs."""
    x = torch.randn(n_inputs, d_in, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True) * math.sqrt(d_in)  # q_0 = 1 for every input
    out = np.empty((n_nets, depth))
    for s in range(n_nets):
        model = Residual().build(d_in, width, depth, width, activation, seed=1000 * seed + s, dtype=torch.float64)
        with torch.no_grad():
            _, hs = model(x, return_preactivations=True)
        out[s] = [float((h**2).sum(1).mean() / h.shape[1]) for h in hs]
    return out


def test_expected_stream_norms_closed_form():
    assert expected_stream_norms(3) == pytest.approx([1.0, 2.0, 2.0])
    q = expected_stream_norms(10)  # L = 8 blocks
    assert q[:-1] == pytest.approx([(1 + 1 / 8) ** k for k in range(9)])
    assert q[-1] == q[-2]
    for depth in (3, 4, 16, 64, 1024):  # O(1): the stream grows by (1 + 1/L)^L < e at any depth
        assert max(expected_stream_norms(depth)) < math.e
    with pytest.raises(ValueError, match="depth"):
        expected_stream_norms(2)


@pytest.mark.parametrize("activation,depth,tolerance", [("abs", 6, 0.0), ("abs", 34, 0.0), ("relu", 34, 0.03)])
def test_stream_norm_at_init_matches_closed_form(activation, depth, tolerance):
    """Mean over networks of q_k/q_0 within 4 standard errors (plus, for ReLU, the O(1/m) odd term)."""
    q = stream_norms(activation, depth, width=64, n_nets=100)
    mean, sem = q.mean(0), q.std(0, ddof=1) / math.sqrt(len(q))
    expected = np.array(expected_stream_norms(depth))
    assert np.all(np.abs(mean - expected) <= 4 * sem + tolerance * expected), (mean, expected, sem)


# ---------------------------------------------------------------------------- NTK and Hessian, float64 brute force

def tiny(activation="relu", depth=5, seed=3):
    torch.manual_seed(0)
    model = Residual().build(6, 3, depth, 5, activation, seed=seed, dtype=torch.float64)
    x = torch.randn(7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    y = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    return model, x, y


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def functional(model, fn):
    """``fn(output)`` as a function of the flat parameter vector (for brute-force derivatives)."""
    shapes = [p.shape for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]

    def f(theta):
        chunks = torch.split(theta, [math.prod(s) for s in shapes])
        params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
        return fn(torch.func.functional_call(model, params, (model._x,)))
    return f


def explicit_jacobian(model, x):
    model._x = x
    theta = flat_params(model)
    jac = torch.autograd.functional.jacobian(functional(model, lambda out: out.reshape(-1)), theta)
    return jac  # (n*d_out sample-major, n_params)


def finite_difference_jacobian(model, x, eps=1e-6):
    model._x = x
    theta = flat_params(model)
    f = functional(model, lambda out: out.reshape(-1))
    cols = []
    for j in range(theta.numel()):
        e = torch.zeros_like(theta)
        e[j] = eps
        cols.append((f(theta + e) - f(theta - e)) / (2 * eps))
    return torch.stack(cols, dim=1)


@pytest.mark.parametrize("activation", ["relu", "abs"])
def test_ntk_against_explicit_jacobian(activation):
    model, x, _ = tiny(activation)
    jac = explicit_jacobian(model, x)
    # The explicit Jacobian itself against central finite differences of the forward pass (no autograd).
    assert torch.allclose(jac, finite_difference_jacobian(model, x), rtol=1e-6, atol=1e-8)
    expected = jac @ jac.T / x.shape[0]
    op = NTKOperator(model, x)
    assert op.method == "func"  # not an MLP: the generic path
    kernel = torch.stack([op.matvec(e) for e in torch.eye(op.dim, dtype=torch.float64)], dim=1)
    assert torch.allclose(kernel, expected, rtol=1e-10, atol=1e-12)
    top = ntk_top_eigenvalue(model, x, tol=1e-10, max_iter=200)
    assert top.value == pytest.approx(float(np.linalg.eigvalsh(expected.numpy())[-1]), rel=1e-8)


def test_empirical_ntk_needs_an_mlp():
    model, x, _ = tiny()
    with pytest.raises(ValueError, match="nup.core.mlp.MLP"):
        empirical_ntk(model, x)


@pytest.mark.parametrize("activation", ["relu", "abs"])
@pytest.mark.parametrize("method", ["auto", "autograd", "func"])
def test_hvp_against_explicit_hessian(activation, method):
    model, x, y = tiny(activation)
    model._x = x
    theta = flat_params(model)
    loss_of = functional(model, lambda out: mse_loss(out, y))
    hessian = torch.autograd.functional.hessian(loss_of, theta)
    # The explicit Hessian against central differences of the gradient (first-order autograd only).
    grad_of = functional(model, lambda out: mse_loss(out, y))
    eps, cols = 1e-6, []
    for j in range(theta.numel()):
        e = torch.zeros_like(theta)
        e[j] = eps
        g_plus = torch.autograd.functional.jacobian(grad_of, theta + e)
        g_minus = torch.autograd.functional.jacobian(grad_of, theta - e)
        cols.append((g_plus - g_minus) / (2 * eps))
    assert torch.allclose(hessian, torch.stack(cols, dim=1), rtol=1e-5, atol=1e-7)
    op = HessianOperator(model, mse_loss, x, y, method=method)
    assert op.method in ("autograd", "func")
    products = torch.stack([op.matvec(e) for e in torch.eye(op.dim, dtype=torch.float64)], dim=1)
    assert torch.allclose(products, hessian, rtol=1e-10, atol=1e-12)
    top = sharpness(model, mse_loss, x, y, tol=1e-10, method=method)
    assert top.value == pytest.approx(float(np.linalg.eigvalsh(hessian.numpy())[-1]), rel=1e-7)


def test_rop_is_refused():
    model, x, y = tiny()
    with pytest.raises(ValueError, match="rop"):
        HessianOperator(model, mse_loss, x, y, method="rop")


# ---------------------------------------------------------------------------- parameterization and training

def test_rules_and_learning_rates():
    model = Residual().build(10, 4, 6, 8, "relu")  # L = 4 blocks
    assert isinstance(model, ResidualMLP) and not isinstance(model, nup.MLP)
    assert model.widths == (10, 8, 8, 8, 8, 8, 4) and model.n_blocks == 4
    sigma = math.sqrt(2.0)
    assert model.multipliers == pytest.approx([1 / math.sqrt(10)] + [sigma / math.sqrt(8 * 4)] * 4 + [sigma / math.sqrt(8)])
    assert model.lr_mults == (1.0,) * 6
    per_layer = Residual(normalize="per_layer").build(10, 4, 6, 8, "relu")
    assert per_layer.lr_mults == pytest.approx([1.0, 0.5, 0.5, 0.5, 0.5, 1.0])
    groups = per_layer.parameterization.param_groups(per_layer, 0.2)
    assert [g["lr"] for g in groups] == pytest.approx([0.2, 0.1, 0.1, 0.1, 0.1, 0.2])
    assert Residual(normalize="global").build(10, 4, 6, 8).lr_mults == (1.0,) * 6
    # The init is a seeded function of the seed, equal across dtypes.
    a = Residual().build(10, 4, 5, 8, seed=7, dtype=torch.float64)
    b = Residual().build(10, 4, 5, 8, seed=7)
    assert all(torch.allclose(p.float(), q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("kwargs,name", [(dict(width_profile="quadratic"), "width_profile"),
                                         (dict(normalize="adam"), "normalize")])
def test_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Residual(**kwargs)


def test_bad_depth_and_widths():
    with pytest.raises(ValueError, match="depth"):
        Residual().build(10, 4, 2, 8)
    with pytest.raises(ValueError, match="equal"):
        ResidualMLP([10, 8, 9, 4], "relu", [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="multipliers"):
        ResidualMLP([10, 8, 8, 4], "relu", [1.0, 1.0])


def test_registered_and_trains_through_runconfig():
    assert PARAMETERIZATIONS["residual"] is Residual
    assert isinstance(get_parameterization("residual", normalize="per_layer"), Residual)
    config = nup.RunConfig(parameterization="residual", normalize="per_layer", depth=6, width=16, lr=0.5, steps=20,
                           n_train=32, probe_size=32, diagnostics=("preactivations", "updates"), diagnostic_every=10)
    result = nup.train(config)
    loss = result.metric("loss")
    assert not result.diverged and loss.iloc[-1] < 0.5 * loss.iloc[0]
    changes = result.df[(result.df.metric == "preact_change") & (result.df.step == 20)]
    assert len(changes) == 6 and (changes.value > 0).all()
    assert nup.RunConfig(parameterization="residual").build_parameterization() == Residual()

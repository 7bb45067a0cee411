"""nup.linalg.tangent_kernel against explicit float64 Jacobians (torch.autograd.functional.jacobian) and numpy.linalg.eigh."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import nup
from nup.linalg import tangent_kernel as ntk
from nup.linalg.hessian import EigenResult

ACTIVATIONS = ["relu", "abs", "leaky_relu"]
PARAMETERIZATIONS = ["sp", "ntk", "mup", "nup"]
F64 = torch.float64


def tiny(parameterization="ntk", activation="relu", d_in=5, d_out=3, depth=3, width=4, seed=1):
    return nup.get_parameterization(parameterization).build(d_in, d_out, depth, width, activation, seed=seed,
                                                           dtype=F64)


def data(n=4, d_in=5, seed=0):
    return torch.randn(n, d_in, generator=torch.Generator().manual_seed(seed), dtype=F64)


def explicit_jacobian(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Per-parameter Jacobians ``(n*d_out, numel)``, rows sample-major, by torch.autograd.functional.jacobian."""
    names = [name for name, _ in model.named_parameters()]
    params = tuple(p.detach() for p in model.parameters())

    def f(*ps):
        return torch.func.functional_call(model, dict(zip(names, ps)), (x,))
    jac = torch.autograd.functional.jacobian(f, params)
    rows = x.shape[0] * f(*params).shape[1]
    return [j.reshape(rows, -1) for j in jac]


def explicit_ntk(model, x):
    jac = torch.cat(explicit_jacobian(model, x), dim=1)
    return jac @ jac.T / x.shape[0]


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_empirical_ntk_against_explicit_jacobian(parameterization, activation):
    model, x = tiny(parameterization, activation), data()
    jacobians = explicit_jacobian(model, x)
    kernel, layers = ntk.empirical_ntk(model, x, return_layers=True)
    expected = sum(j @ j.T for j in jacobians) / x.shape[0]
    assert kernel.shape == (12, 12)
    torch.testing.assert_close(kernel, expected, rtol=1e-12, atol=1e-13)
    for layer, j in zip(layers, jacobians):  # per-layer contributions = per-layer Jacobian blocks
        torch.testing.assert_close(layer, j @ j.T / x.shape[0], rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(ntk.empirical_ntk(model, x, divide_by_n=False), expected * x.shape[0])
    weights = [0.5, 2.0, 3.0]
    torch.testing.assert_close(ntk.empirical_ntk(model, x, layer_weights=weights),
                               sum(w * k for w, k in zip(weights, layers)))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_matvec_and_trace(activation):
    model, x = tiny("nup", activation, depth=4), data(6)
    kernel = explicit_ntk(model, x)
    v = torch.randn(6 * 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    for method in ("manual", "func"):
        torch.testing.assert_close(ntk.ntk_matvec(model, x, v, method=method), kernel @ v, rtol=1e-12, atol=1e-13)
    out = ntk.ntk_matvec(model, x, v.reshape(6, 3))  # an (n, d_out) residual keeps its shape
    torch.testing.assert_close(out, (kernel @ v).reshape(6, 3))
    torch.testing.assert_close(ntk.ntk_matvec(model, x, v, divide_by_n=False), 6 * kernel @ v)
    total, per_layer = ntk.ntk_trace(model, x, per_layer=True, chunk_size=4)  # chunks of 4, 2 samples
    assert total == pytest.approx(float(torch.trace(kernel)), rel=1e-12)
    _, layers = ntk.empirical_ntk(model, x, return_layers=True)
    np.testing.assert_allclose(per_layer, [float(torch.trace(k)) for k in layers], rtol=1e-12)


def test_generic_model_through_torch_func():
    """A model that is not a nup MLP (biases, tanh) goes through torch.func vjp/jvp."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2)).double()
    x = data(5)
    kernel = explicit_ntk(model, x)
    v = torch.randn(10, dtype=F64)
    torch.testing.assert_close(ntk.ntk_matvec(model, x, v), kernel @ v, rtol=1e-12, atol=1e-13)
    result = ntk.ntk_top_eigenvalue(model, x, tol=1e-10)
    assert result.value == pytest.approx(np.linalg.eigvalsh(kernel.numpy())[-1], rel=1e-8)
    with pytest.raises(ValueError, match="MLP"):
        ntk.empirical_ntk(model, x)


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_spectrum_against_eigh(parameterization):
    model, x = tiny(parameterization, "abs", depth=4, width=8), data(8)
    kernel = explicit_ntk(model, x).numpy()
    eigenvalues, eigenvectors = np.linalg.eigh(kernel)
    top = ntk.ntk_top_eigenvalue(model, x, tol=1e-10)
    assert isinstance(top, EigenResult) and top.converged
    assert top.value == pytest.approx(eigenvalues[-1], rel=1e-8)
    assert top.vector.shape == (24,)
    assert abs(float(top.vector @ torch.from_numpy(eigenvectors[:, -1]))) == pytest.approx(1.0, abs=1e-6)
    default = ntk.ntk_top_eigenvalue(model, x)  # default tol 1e-3
    assert default.value == pytest.approx(eigenvalues[-1], rel=1e-3)
    top3 = ntk.ntk_top_eigenvalues(model, x, k=3, tol=1e-10)
    np.testing.assert_allclose(top3.values.numpy(), eigenvalues[::-1][:3], rtol=1e-8)
    warm3 = ntk.ntk_top_eigenvalues(model, x, k=3, v0=top3.vectors, tol=1e-10)  # a (k, dim) block warm start
    np.testing.assert_allclose(warm3.values.numpy(), eigenvalues[::-1][:3], rtol=1e-8)
    assert warm3.n_products < top3.n_products
    assert ntk.ntk_condition_number(model, x) == pytest.approx(eigenvalues[-1] / eigenvalues[0], rel=1e-8)
    assert ntk.ntk_trace(model, x) == pytest.approx(eigenvalues.sum(), rel=1e-10)


def test_warm_start_uses_fewer_products():
    torch.manual_seed(0)
    model, x = tiny("ntk", "relu", d_in=10, d_out=4, depth=4, width=64), data(64, d_in=10)
    y = torch.randn(64, 4, dtype=F64)
    cold = ntk.ntk_top_eigenvalue(model, x)
    grads = torch.autograd.grad(nup.mse_loss(model(x), y), list(model.parameters()))
    with torch.no_grad():  # one small GD step moves the kernel a little
        for p, g in zip(model.parameters(), grads):
            p.sub_(0.05 * g)
    cold_after = ntk.ntk_top_eigenvalue(model, x)
    warm_after = ntk.ntk_top_eigenvalue(model, x, v0=cold.vector)
    assert warm_after.n_products < cold_after.n_products
    assert warm_after.value == pytest.approx(cold_after.value, rel=2e-3)
    same = ntk.ntk_top_eigenvalue(model, x, v0=warm_after.vector, tol=1e-3)
    assert same.n_products <= 2


def test_kernel_alignment():
    y = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 2]), 3).double()
    assert ntk.kernel_alignment(y @ y.T, y) == pytest.approx(1.0)
    assert ntk.kernel_alignment(torch.eye(4, dtype=F64), y) == pytest.approx(4 / (2 * np.sqrt(6)))
    kernel = torch.arange(36, dtype=F64).reshape(6, 6)  # n = 2, d_out = 3
    expected = torch.tensor([[0 + 7 + 14, 3 + 10 + 17], [18 + 25 + 32, 21 + 28 + 35]], dtype=F64)
    torch.testing.assert_close(ntk.output_trace_kernel(kernel, 3), expected)


def test_ntk_diagnostic_in_a_training_run():
    config = nup.RunConfig(parameterization="ntk", dataset="teacher", n_train=32, depth=3, width=16, steps=4,
                           lr=0.05, dtype="float64", device="cpu", diagnostics=("ntk",), diagnostic_every=2,
                           probe_size=16)
    result = nup.train(config)
    top = result.metric("ntk_top_eigenvalue")
    assert list(top.index) == [0, 2, 4]
    # Every recorded value against explicit Jacobians on the probe batch along a trajectory trained by hand
    # (plain GD on the full batch), not against the diagnostic's own sums or its zero at step 0.
    x, y = nup.training.data.teacher_task(32, seed=0, dtype=F64, device="cpu")
    model = config.build_parameterization().build(16, 1, 3, 16, "relu", seed=0, dtype=F64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    kernels = {}
    for step in range(5):
        if step % 2 == 0:
            kernels[step] = [j @ j.T / 16 for j in explicit_jacobian(model, x[:16])]
        optimizer.zero_grad()
        nup.mse_loss(model(x), y).backward()
        optimizer.step()
    k0 = sum(kernels[0])
    yy = (y[:16] @ y[:16].T).numpy()
    for step, layers in kernels.items():
        k = sum(layers)
        assert top[step] == pytest.approx(np.linalg.eigvalsh(k.numpy())[-1], rel=1e-3)
        assert result.metric("ntk_trace")[step] == pytest.approx(float(torch.trace(k)), rel=1e-10)
        for layer, part in enumerate(layers, start=1):
            assert result.metric("ntk_trace", layer=layer)[step] == pytest.approx(float(torch.trace(part)), rel=1e-10)
        change = float(torch.linalg.matrix_norm(k - k0) / torch.linalg.matrix_norm(k0))
        assert result.metric("ntk_change")[step] == pytest.approx(change, rel=1e-8, abs=1e-14)
        alignment = (k.numpy() * yy).sum() / (np.linalg.norm(k.numpy()) * np.linalg.norm(yy))
        assert result.metric("kernel_alignment")[step] == pytest.approx(alignment, rel=1e-10)
    assert result.metric("ntk_change")[4] > 1e-4  # the kernel moved, so the comparison above is not 0 == 0


@pytest.mark.parametrize("kwargs,name", [
    (dict(tol=0.0), "tol"), (dict(tol=1.5), "tol"), (dict(tol=float("nan")), "tol"),
    (dict(max_iter=0), "max_iter"), (dict(max_iter=2.0), "max_iter"),
    (dict(v0=torch.ones(5, dtype=F64)), "v0"), (dict(v0=torch.zeros(12, dtype=F64)), "v0"),
    (dict(v0=[1.0] * 12), "v0"), (dict(method="jacobian"), "method"),
])
def test_bad_arguments(kwargs, name):
    model, x = tiny(), data()
    with pytest.raises(ValueError, match=name):
        ntk.ntk_top_eigenvalue(model, x, **kwargs)


def test_bad_inputs():
    model, x = tiny(), data()
    with pytest.raises(ValueError, match="x="):
        ntk.empirical_ntk(model, x[0])
    with pytest.raises(ValueError, match="model"):
        ntk.ntk_trace("not a model", x)
    with pytest.raises(ValueError, match="layer_weights"):
        ntk.empirical_ntk(model, x, layer_weights=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="k="):
        ntk.ntk_top_eigenvalues(model, x, k=13)
    with pytest.raises(ValueError, match="v"):
        ntk.ntk_matvec(model, x, torch.ones(7, dtype=F64))


def test_output_block_top_eigenvalue_against_the_dense_block():
    from nup.core.param import NTK

    model = NTK().build(12, 3, 4, 24, "relu", seed=3, dtype=torch.float64)
    x = torch.randn(10, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    k = ntk.empirical_ntk(model, x).reshape(10, 3, 10, 3)
    for output in range(3):
        dense = torch.linalg.eigvalsh(k[:, output, :, output])[-1].item()
        assert ntk.ntk_output_block_top_eigenvalue(model, x, output, tol=1e-10) == pytest.approx(dense, rel=1e-8)
    # one copy of the top eigenvalue: below the full kernel's, where the outputs' copies couple and split
    assert ntk.ntk_output_block_top_eigenvalue(model, x, 0) < torch.linalg.eigvalsh(k.reshape(30, 30))[-1].item()
    for bad in (3, -1, 1.0):
        with pytest.raises(ValueError, match="output"):
            ntk.ntk_output_block_top_eigenvalue(model, x, bad)
    with pytest.raises(ValueError, match="tol"):
        ntk.ntk_output_block_top_eigenvalue(model, x, 0, tol=0.0)

"""NTKOperator's ``layer_weights`` against an explicit float64 Jacobian with per-layer column scaling,
``K_w = J diag(w) J^T / n`` (``w`` repeated over each layer's columns)."""

from __future__ import annotations

import pytest
import torch

import nup
from nup.linalg.tangent_kernel import NTKOperator, empirical_ntk

F64 = torch.float64


def jacobian_blocks(model, x):
    """Per-layer Jacobians ``(n*d_out, numel_k)``, rows sample-major, by torch.autograd.functional.jacobian."""
    names = [name for name, _ in model.named_parameters()]
    params = tuple(p.detach() for p in model.parameters())

    def f(*ps):
        return torch.func.functional_call(model, dict(zip(names, ps)), (x,))
    rows = x.shape[0] * model(x[:1]).shape[1]
    return [j.reshape(rows, -1) for j in torch.autograd.functional.jacobian(f, params)]


def weighted_kernel(model, x, weights, divide_by_n=True):
    blocks = jacobian_blocks(model, x)
    jac = torch.cat(blocks, dim=1)
    column_weights = torch.cat([torch.full((b.shape[1],), float(w), dtype=F64) for b, w in zip(blocks, weights)])
    kernel = (jac * column_weights) @ jac.T
    return kernel / x.shape[0] if divide_by_n else kernel


@pytest.mark.parametrize("parameterization", ["ntk", "mup", "nup"])
@pytest.mark.parametrize("weights", [[0.5, 2.0, 3.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
def test_operator_layer_weights_against_scaled_jacobian(parameterization, weights):
    model = nup.get_parameterization(parameterization).build(5, 3, 3, 4, "leaky_relu", seed=2, dtype=F64)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(4), dtype=F64)
    v = torch.randn(18, generator=torch.Generator().manual_seed(5), dtype=F64)
    for divide_by_n in (True, False):
        expected = weighted_kernel(model, x, weights, divide_by_n)
        op = NTKOperator(model, x, divide_by_n=divide_by_n, method="manual", layer_weights=weights)
        torch.testing.assert_close(op.matvec(v), expected @ v, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(op(v.reshape(6, 3)), expected @ v, rtol=1e-12, atol=1e-13)  # (n, d_out) input
        torch.testing.assert_close(empirical_ntk(model, x, divide_by_n, layer_weights=weights), expected,
                                   rtol=1e-12, atol=1e-13)
    assert op.n_products == 2


def test_mup_lr_mults_kernel_governs_gd_with_per_layer_rates():
    """Under μP's per-layer rates a small GD step moves the residual by ``-eta K_w r`` with ``w = lr_mults``."""
    model = nup.MuP(base_width=2).build(4, 2, 3, 8, "relu", seed=0, dtype=F64)
    assert len(set(model.lr_mults)) == 3
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(5, 4, generator=g, dtype=F64), torch.randn(5, 2, generator=g, dtype=F64)
    op = NTKOperator(model, x, layer_weights=model.lr_mults)
    r0 = (model(x) - y).reshape(-1).detach()
    predicted = -1e-5 * op.matvec(r0)
    optimizer = model.parameterization.optimizer(model, 1e-5, normalize="none")
    nup.mse_loss(model(x), y).backward()
    optimizer.step()
    r1 = (model(x) - y).reshape(-1).detach()
    torch.testing.assert_close(r1 - r0, predicted, rtol=1e-3, atol=1e-12)
    plain = NTKOperator(model, x).matvec(r0)  # the unweighted kernel predicts a different move
    assert not torch.allclose(-1e-5 * plain, predicted, rtol=1e-2)


def test_layer_weights_need_the_manual_method():
    model = nup.NTK().build(5, 3, 3, 4, "relu", dtype=F64)
    x = torch.randn(4, 5, dtype=F64)
    with pytest.raises(ValueError, match="layer_weights"):
        NTKOperator(model, x, method="func", layer_weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="layer_weights"):
        NTKOperator(model, x, layer_weights=[1.0, 1.0])

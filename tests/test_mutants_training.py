"""Branches of the training machinery no other test reaches: GeometricLR with a non-positive curvature
estimate, a run stopped by a non-finite gradient while its loss is finite, ``record_every > 1``, and
``nup.diagnostics.cosine``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nup import RunConfig, train
from nup.diagnostics import DIAGNOSTICS, cosine
from nup.training.config import mse_loss
from nup.training.schedules import GeometricLR

F64 = torch.float64


def linear_problem(n: int = 12, d: int = 4, k: int = 2):
    """``f(x) = W x`` with MSE: Hessian ``I_k (x) X^T X/n``, eigenvalues ``s_i^2/n`` of X's singular values."""
    g = torch.Generator().manual_seed(0)
    q1, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=F64))
    q2, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    singular = torch.tensor([3.0, 1.5, 1.0, 0.5], dtype=F64)
    x = q1 @ torch.diag(singular) @ q2.T
    y = torch.randn(n, k, generator=g, dtype=F64)
    model = torch.nn.Linear(d, k, bias=False, dtype=F64)
    with torch.no_grad():
        model.weight.copy_(torch.randn(k, d, generator=g, dtype=F64))
    eigenvalues = (singular**2 / n).tolist()
    return model, x, y, max(eigenvalues), min(eigenvalues)


def lrs(optimizer):
    return [g["lr"] for g in optimizer.param_groups]


# ---------------------------------------------------------------------------- GeometricLR, lambda_t <= 0

def test_negative_curvature_takes_max_lr_or_keeps_the_rate():
    """A concave loss (``-MSE``): the top Hessian eigenvalue is ``-lambda_min < 0``, so ``c/lambda`` is no
    rate; ``eta_t`` goes to ``max_lr`` when that is finite, else keeps its previous value (``eta_ref`` at step 0)."""
    model, x, y, lam_max, lam_min = linear_problem()

    def concave(out, target):
        return -mse_loss(out, target)

    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = GeometricLR(opt, model, concave, x, y, c=3.0, curvature="hessian", tol=1e-10, max_iter=500)
    assert sched.last_eigenvalue == pytest.approx(-lam_min, rel=1e-8)
    assert lrs(opt) == [0.01] and sched.last_eta == 0.01

    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = GeometricLR(opt, model, concave, x, y, c=3.0, curvature="hessian", tol=1e-10, max_iter=500,
                        min_lr=1e-4, max_lr=0.7)
    assert sched.last_eigenvalue < 0
    assert lrs(opt) == [pytest.approx(0.7, rel=1e-15)] and sched.last_eta == pytest.approx(0.7, rel=1e-15)
    assert [r[1:] for r in sched.log_rows if r[1] == "schedule_eta"] == [("schedule_eta", 0, pytest.approx(0.7))]


def test_curvature_turning_negative_keeps_the_last_rate_not_the_initial_one():
    model, x, y, lam_max, _ = linear_problem()
    sign = [1.0]

    def loss_fn(out, target):
        return sign[0] * mse_loss(out, target)

    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = GeometricLR(opt, model, loss_fn, x, y, c=3.0, curvature="hessian", tol=1e-10, max_iter=500)
    assert lrs(opt)[0] == pytest.approx(3.0 / lam_max, rel=1e-8)
    sign[0] = -1.0
    opt.step()  # no gradients: a no-op, in torch's order (optimizer, then scheduler)
    sched.step()
    assert sched.last_eigenvalue < 0 and sched.n_estimates == 2
    assert lrs(opt)[0] == pytest.approx(3.0 / lam_max, rel=1e-8)  # not 0.01, not c/|lambda|


def test_zero_curvature_of_the_gradient_variant():
    """At a stationary point with a positive loss (MSE + 1 at an exact fit) ``q_t = |g|^2/(2L) = 0``."""
    model, x, _, _, _ = linear_problem()
    y = model(x).detach()

    def shifted(out, target):
        return mse_loss(out, target) + 1.0

    for max_lr, expected in ((math.inf, 0.02), (0.5, 0.5)):
        opt = torch.optim.SGD(model.parameters(), lr=0.02)
        sched = GeometricLR(opt, model, shifted, x, y, c=3.0, curvature="gradient", max_lr=max_lr)
        assert sched.last_eigenvalue == 0.0
        assert lrs(opt) == [pytest.approx(expected, rel=1e-15)]


# ---------------------------------------------------------------------------- the training loop

TINY = dict(dataset="teacher", n_train=16, depth=3, width=4, dtype="float64", parameterization="ntk", lr=0.2)


class InjectInf:
    """A diagnostic that, at construction, hooks the gradient of layer 2's weight and sets its entry
    ``[0, 0]`` to ``inf`` in the ``at``-th backward pass (0-based): the loss stays finite."""

    at = 3

    def __init__(self, ctx):
        self.ctx, self.calls = ctx, 0
        ctx.model.layers[1].weight.register_hook(self.hook)

    def hook(self, grad):
        self.calls += 1
        if self.calls - 1 == self.at:
            grad = grad.clone()
            grad[0, 0] = math.inf
        return grad

    def __call__(self, step, ctx, preactivations):
        return []


def test_a_non_finite_gradient_with_a_finite_loss_stops_the_run(monkeypatch):
    made = []

    def factory(ctx):
        made.append(InjectInf(ctx))
        return made[-1]

    monkeypatch.setitem(DIAGNOSTICS, "inject_inf", factory)
    config = RunConfig(**TINY, steps=8, diagnostics=("inject_inf",))
    result = train(config)
    clean = train(config.replace(diagnostics=()))
    assert not clean.diverged
    assert result.diverged and result.diverged_step == 3
    assert result.df[result.df.metric == "diverged"][["step", "value"]].values.tolist() == [[3, 3.0]]
    loss = result.metric("loss")
    assert loss.index.tolist() == [0, 1, 2, 3]  # the loss of step 3 was finite and recorded
    np.testing.assert_allclose(loss.values, clean.metric("loss").values[:4], rtol=1e-12)
    # The step with the infinite gradient was not taken: the weights are still finite.
    assert all(torch.isfinite(layer.weight).all() for layer in made[0].ctx.model.layers)
    assert made[0].calls == 4


def test_record_every_keeps_every_kth_step_and_the_last():
    full = train(RunConfig(**TINY, steps=10))
    sparse = train(RunConfig(**TINY, steps=10, record_every=3))
    for metric in ("loss", "lr"):
        got = sparse.metric(metric)
        assert got.index.tolist() == [0, 3, 6, 9, 10]
        np.testing.assert_array_equal(got.values, full.metric(metric).loc[[0, 3, 6, 9, 10]].values)
    assert set(sparse.df.metric) == {"loss", "lr"}


def test_record_every_with_minibatches_and_diagnostics():
    config = RunConfig(**TINY, steps=7, batch_size=8, record_every=2, diagnostic_every=3,
                       diagnostics=("preactivations",), probe_size=4)
    result = train(config)
    assert result.metric("batch_loss").index.tolist() == [0, 2, 4, 6, 7]
    assert result.metric("lr").index.tolist() == [0, 2, 4, 6, 7]
    # Full-batch losses and diagnostics follow diagnostic_every, not record_every.
    assert result.metric("loss").index.tolist() == [0, 3, 6, 7]
    assert result.metric("preact_change", layer=1).index.tolist() == [0, 3, 6, 7]
    every = train(config.replace(record_every=1))
    np.testing.assert_array_equal(result.metric("batch_loss").values,
                                  every.metric("batch_loss").loc[[0, 2, 4, 6, 7]].values)


# ---------------------------------------------------------------------------- cosine

def test_cosine_against_numpy():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        u, v = torch.randn(2, 3, 4, generator=g, dtype=F64)
        a, b = u.numpy().ravel(), v.numpy().ravel()
        assert cosine(u, v) == pytest.approx(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)), rel=1e-13)
    e1, e2 = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([1.0, 1.0], dtype=F64)
    assert cosine(e1, e2) == pytest.approx(1 / math.sqrt(2), rel=1e-15)
    assert cosine(3 * e2, -0.5 * e2) == pytest.approx(-1.0, rel=1e-15)
    assert cosine(e1, torch.tensor([0.0, 2.0], dtype=F64)) == 0.0
    assert math.isnan(cosine(torch.zeros(2, dtype=F64), e1)) and math.isnan(cosine(e1, torch.zeros(2, dtype=F64)))

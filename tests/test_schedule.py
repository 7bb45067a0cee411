"""Tests for nup.training.schedules: GeometricLR against closed forms, the uv model's catapult window, state, errors."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch

from nup.training import schedules as schedule
from nup.core.optim import NormalizedSGD
from nup.core.param import MuP, NTK
from nup.training.schedules import GeometricLR, WarmupCosine, warmup_cosine
from nup.training.config import RunConfig, mse_loss
from nup.training.loop import train
from nup.training.schedules import SCHEDULES

DT = torch.float64


# ---------------------------------------------------------------------------- helpers

def linear_problem(n: int = 12, d: int = 5, k: int = 2, seed: int = 0):
    """``f(x) = W x`` with MSE: Hessian ``I_k ⊗ X^T X/n`` and NTK ``(X X^T/n) ⊗ I_k``, both with top
    eigenvalue ``lambda_max(X^T X/n)``; ``X`` has well separated singular values so solvers converge fast."""
    g = torch.Generator().manual_seed(seed)
    q1, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=DT))
    q2, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=DT))
    x = q1 @ torch.diag(torch.tensor([3.0, 1.0, 0.8, 0.5, 0.3][:d], dtype=DT)) @ q2.T
    y = torch.randn(n, k, generator=g, dtype=DT)
    model = torch.nn.Linear(d, k, bias=False, dtype=DT)
    with torch.no_grad():
        model.weight.copy_(torch.randn(k, d, generator=g, dtype=DT))
    lam = np.linalg.eigh((x.T @ x / n).numpy())[0][-1]
    return model, x, y, float(lam)


def mlp_problem(param=None, n: int = 16, width: int = 8, depth: int = 3, seed: int = 0):
    param = param or NTK()
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(n, 6, generator=g, dtype=DT)
    y = torch.randn(n, 2, generator=g, dtype=DT)
    model = param.build(6, 2, depth, width, "relu", seed=seed, dtype=DT)
    return model, x, y


def loss_and_grad(model, x, y, params=None):
    params = list(model.parameters()) if params is None else params
    loss = mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params)
    return loss.item(), grads


def lrs(optimizer):
    return [g["lr"] for g in optimizer.param_groups]


class UV(torch.nn.Module):
    """Two-layer linear model ``f(x) = v^T u x/sqrt(m)`` (Lewkowycz et al. 2020); on one sample ``x``
    with target 0 and ``L = f^2/2`` its NTK is ``lambda = (|u|^2 + |v|^2) x^2/m``, and GD gives exactly
    ``lambda_{t+1} - lambda_t = eta f_t^2 x^2/m (eta lambda_t - 4)``: lambda falls iff ``eta lambda_t < 4``."""

    def __init__(self, u: float = 1.0, v: float = 0.01):
        super().__init__()
        self.u = torch.nn.Parameter(torch.tensor([u], dtype=DT))
        self.v = torch.nn.Parameter(torch.tensor([v], dtype=DT))

    def forward(self, x):
        return (x * (self.u * self.v).sum() / math.sqrt(self.u.numel())).reshape(-1, 1)

    def ntk(self, x: float = 1.0) -> float:
        return ((self.u ** 2).sum() + (self.v ** 2).sum()).item() * x * x / self.u.numel()


def run_uv(eta_lambda0: float, steps: int = 3000):
    model, x, y = UV(), torch.ones(1, 1, dtype=DT), torch.zeros(1, 1, dtype=DT)
    eta = eta_lambda0 / model.ntk()
    opt = torch.optim.SGD(model.parameters(), lr=eta)
    losses, lams = [], []
    for _ in range(steps):
        loss = mse_loss(model(x), y)
        losses.append(loss.item())
        lams.append(model.ntk())
        if not math.isfinite(losses[-1]) or losses[-1] > 1e12:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return eta, np.array(losses), np.array(lams)


# ---------------------------------------------------------------------------- the rule on closed forms

@pytest.mark.parametrize("curvature", ["ntk", "hessian"])
def test_quadratic_sets_c_over_lambda_max(curvature):
    model, x, y, lam = linear_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = GeometricLR(opt, model, mse_loss, x, y, c=3.0, curvature=curvature, tol=1e-10, max_iter=2000)
    # Step 0 is set in the constructor, from the geometry at initialization.
    assert lrs(opt)[0] == pytest.approx(3.0 / lam, rel=1e-6)
    assert sched.last_eigenvalue == pytest.approx(lam, rel=1e-6)
    assert sched.last_eta == pytest.approx(3.0 / lam, rel=1e-6)
    first_products = sched.last_products
    assert first_products > 0 and sched.eigenvector is not None
    for _ in range(3):  # the Hessian of a quadratic is constant: every estimate is the same
        opt.zero_grad()
        mse_loss(model(x), y).backward()
        opt.step()
        sched.step()
        assert lrs(opt)[0] == pytest.approx(3.0 / lam, rel=1e-6)
    # Warm-started from the eigenvector of the same matrix, a solve takes 1-2 products (nup.linalg.hessian.lanczos).
    assert first_products > 2 and sched.last_products <= 2
    products = [r[3] for r in sched.log_rows if r[1] == "schedule_products"]
    assert sched.n_estimates == len(products) == 4 and sched.total_products == sum(products)


def test_gradient_variant_is_c_2L_over_grad_norm_squared():
    model, x, y = mlp_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = GeometricLR(opt, model, mse_loss, x, y, c=2.5, curvature="gradient")
    for _ in range(4):
        loss, grads = loss_and_grad(model, x, y)
        g2 = sum(float((g ** 2).sum()) for g in grads)
        expected = 2.5 * 2 * loss / g2
        assert lrs(opt) == pytest.approx([expected] * len(opt.param_groups), rel=1e-12)
        assert sched.last_eigenvalue == pytest.approx(g2 / (2 * loss), rel=1e-12)
        assert sched.last_products == 0
        opt.zero_grad()
        mse_loss(model(x), y).backward()
        opt.step()
        sched.step()


def test_gradient_variant_fixes_the_rayleigh_quotient_of_the_ntk():
    # eta_t r^T K r/|r|^2 = c with K = (X X^T/n) ⊗ I_k built explicitly for the linear model.
    model, x, y, _ = linear_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    GeometricLR(opt, model, mse_loss, x, y, c=3.0, curvature="gradient")
    n, k = y.shape
    r = (model(x) - y).detach()
    kernel = torch.kron(x @ x.T / n, torch.eye(k, dtype=DT))  # rows indexed (sample, output), like r.reshape(-1)
    rv = r.reshape(-1)
    assert lrs(opt)[0] * float(rv @ kernel @ rv / (rv @ rv)) == pytest.approx(3.0, rel=1e-12)


# ---------------------------------------------------------------------------- groups and normalized updates

@pytest.mark.parametrize("curvature", ["gradient", "ntk"])
def test_per_layer_groups_keep_their_ratios(curvature):
    model, x, y = mlp_problem(MuP(base_width=4), width=16)
    opt = model.parameterization.optimizer(model, 0.05, normalize="none")
    base = lrs(opt)
    assert len(set(base)) == 3  # μP: input, hidden and readout rates all differ
    sched = GeometricLR(opt, model, mse_loss, x, y, c=3.0, curvature=curvature, tol=1e-8)
    assert sched.eta_ref == max(base)
    for _ in range(3):
        current = lrs(opt)
        assert np.allclose(np.array(current) / np.array(base), current[0] / base[0], rtol=1e-12)
        assert max(current) == pytest.approx(sched.last_eta, rel=1e-12)
        opt.zero_grad()
        mse_loss(model(x), y).backward()
        opt.step()
        sched.step()


def _trajectory(model, opt, sched, x, y, steps=4):
    out = []
    for _ in range(steps):
        opt.zero_grad()
        mse_loss(model(x), y).backward()
        opt.step()
        sched.step()
        out.append(torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()]))
    return out


@pytest.mark.parametrize("normalize", ["global", "per_layer"])
def test_normalized_update_takes_the_gd_step(normalize):
    # With μP groups (unequal ratios), normalized SGD under the schedule follows plain GD under it exactly:
    # "global" multiplies lr_k by |g|, "per_layer" (per_layer_scale="layer") by |G_k|.
    model, x, y = mlp_problem(MuP(base_width=4), width=16)
    twin = copy.deepcopy(model)
    param = model.parameterization
    gd = torch.optim.SGD(param.param_groups(twin, 0.05), lr=0.05)
    norm = NormalizedSGD(param.param_groups(model, 0.05), lr=0.05, normalize=normalize)
    s_gd = GeometricLR(gd, twin, mse_loss, x, y, c=3.0, curvature="gradient")
    s_norm = GeometricLR(norm, model, mse_loss, x, y, c=3.0, curvature="gradient")
    _, grads = loss_and_grad(model, x, y)
    norms = [float(torch.linalg.vector_norm(g)) for g in grads]
    factor = [math.sqrt(sum(v * v for v in norms))] * 3 if normalize == "global" else norms
    assert lrs(norm) == pytest.approx([a * f for a, f in zip(lrs(gd), factor)], rel=1e-12)
    for a, b in zip(_trajectory(twin, gd, s_gd, x, y), _trajectory(model, norm, s_norm, x, y)):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_per_layer_normalized_with_global_factor():
    model, x, y = mlp_problem(NTK())
    opt = NormalizedSGD(NTK().param_groups(model, 0.1), lr=0.1, normalize="per_layer")
    sched = GeometricLR(opt, model, mse_loss, x, y, c=3.0, curvature="gradient", per_layer_scale="global")
    loss, grads = loss_and_grad(model, x, y)
    g2 = sum(float((g ** 2).sum()) for g in grads)
    assert lrs(opt) == pytest.approx([3.0 * 2 * loss / g2 * math.sqrt(g2)] * 3, rel=1e-12)
    assert sched.last_grad_norm == pytest.approx(math.sqrt(g2), rel=1e-12)


# ---------------------------------------------------------------------------- the catapult window (uv model)

@pytest.mark.parametrize("eta_lambda0", [1.5, 3.0, 3.9, 4.1, 4.5])
def test_uv_model_catapult_window(eta_lambda0):
    eta, losses, lams = run_uv(eta_lambda0)
    n = min(len(losses), len(lams)) - 1
    # The exact lambda recursion that puts the upper edge at 4 (f^2 = 2L, x = 1, m = 1).
    dl = lams[1:n + 1] - lams[:n]
    pred = eta * 2 * losses[:n] * (eta * lams[:n] - 4)
    finite = np.isfinite(pred) & (np.abs(pred) < 1e6)
    assert np.allclose(dl[finite], pred[finite], rtol=1e-8, atol=1e-14)
    if eta_lambda0 < 2:  # lazy: monotone loss, lambda barely moves
        assert np.all(np.diff(losses) <= 0) and losses[-1] < 1e-20
        assert abs(lams[-1] / lams[0] - 1) < 1e-3
    elif eta_lambda0 < 4:  # catapult: the loss spikes, lambda falls below 2/eta, training converges
        assert losses.max() > 100 * losses[0]
        assert losses[-1] < 1e-20 and eta * lams[-1] < 2
    else:  # lambda only grows, so the loss blows up
        assert not math.isfinite(losses[-1]) or losses[-1] > 1e12
        assert np.all(np.diff(lams) > 0)


def test_uv_ntk_solver_agrees_with_closed_form():
    from nup.linalg.tangent_kernel import ntk_top_eigenvalue

    model = UV(0.7, -1.3)
    result = ntk_top_eigenvalue(model, torch.ones(1, 1, dtype=DT), tol=1e-10)
    assert result.value == pytest.approx(model.ntk(), rel=1e-8)


def test_schedule_keeps_uv_in_the_window_and_lambda_falling():
    # eta_t lambda_t = c in (2, 4) at every step: lambda keeps falling (the prolonged catapult), so eta_t
    # grows until max_lr caps it; capped, eta lambda drops below 2 and training settles (lambda stops).
    model, x, y = UV(), torch.ones(1, 1, dtype=DT), torch.zeros(1, 1, dtype=DT)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = GeometricLR(opt, model, mse_loss, x, y, c=3.0, curvature="ntk", tol=1e-10, max_lr=50.0)
    lams, etas = [], []
    for _ in range(25):
        lams.append(model.ntk())
        etas.append(lrs(opt)[0])
        opt.zero_grad()
        mse_loss(model(x), y).backward()
        opt.step()
        sched.step()
    lams, etas = np.array(lams), np.array(etas)
    uncapped = etas < 50.0
    assert np.all(np.diff(lams)[uncapped[:-1]] < 0) and np.all(np.diff(lams) <= 0)
    assert np.allclose(etas[uncapped] * lams[uncapped], 3.0, rtol=1e-8)
    assert uncapped[0] and not uncapped[-1] and etas[-1] == 50.0


# ---------------------------------------------------------------------------- bounds, every, state

def test_bounds_are_applied():
    model, x, y, lam = linear_problem()
    for kwargs, expected in [(dict(max_lr=0.5 / lam), 0.5 / lam), (dict(min_lr=10 / lam), 10 / lam),
                             (dict(min_lr=1 / lam, max_lr=5 / lam), 3 / lam)]:
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        GeometricLR(opt, model, mse_loss, x, y, c=3.0, curvature="hessian", tol=1e-10, **kwargs)
        assert lrs(opt)[0] == pytest.approx(expected, rel=1e-6)


def test_no_finite_rate_keeps_the_previous_one():
    # At an exact minimum 2L/|g|^2 = 0/0: the rate stays at eta_ref instead of becoming NaN.
    model, x, _, _ = linear_problem()
    y = model(x).detach()
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    sched = GeometricLR(opt, model, mse_loss, x, y, c=3.0, curvature="gradient")
    assert math.isnan(sched.last_eigenvalue) and lrs(opt) == [0.02]


def test_every_holds_the_rate_between_estimates():
    model, x, y = mlp_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = GeometricLR(opt, model, mse_loss, x, y, c=3.0, curvature="gradient", every=3)
    seen = []
    for _ in range(7):
        seen.append(lrs(opt)[0])
        opt.zero_grad()
        mse_loss(model(x), y).backward()
        opt.step()
        sched.step()
    assert seen[0] == seen[1] == seen[2] != seen[3] == seen[4] == seen[5] != seen[6]
    assert sched.n_estimates == 3
    assert [r[0] for r in sched.log_rows if r[1] == "schedule_eigenvalue"] == [0, 3, 6]
    assert {r[1] for r in sched.log_rows} == {"schedule_eigenvalue", "schedule_eta", "schedule_products"}


@pytest.mark.parametrize("curvature", ["ntk", "hessian"])
def test_state_dict_round_trip(curvature):
    model, x, y = mlp_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = GeometricLR(opt, model, mse_loss, x, y, c=3.0, curvature=curvature, every=2, tol=1e-6)
    _trajectory(model, opt, sched, x, y, steps=3)
    state = sched.state_dict()
    for key in ("optimizer", "model", "loss_fn", "x", "y", "log_rows"):
        assert key not in state
    assert state["eigenvector"] is not sched.eigenvector and torch.equal(state["eigenvector"], sched.eigenvector)
    buffer = io.BytesIO()
    torch.save({"sched": state, "opt": opt.state_dict(), "model": model.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)

    # PyTorch's resume order: build optimizer and scheduler, then load both states.
    model2 = mlp_problem()[0]
    model2.load_state_dict(saved["model"])
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1)
    sched2 = GeometricLR(opt2, model2, mse_loss, x, y, c=3.0, curvature=curvature, every=2, tol=1e-6)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    assert sched2.last_epoch == sched.last_epoch and sched2.last_eta == sched.last_eta
    assert torch.equal(sched2.eigenvector, sched.eigenvector)
    for _ in range(4):
        assert lrs(opt2) == lrs(opt)
        _trajectory(model, opt, sched, x, y, steps=1)
        _trajectory(model2, opt2, sched2, x, y, steps=1)
        assert torch.equal(sched2.eigenvector, sched.eigenvector)
        assert sched2.last_eigenvalue == sched.last_eigenvalue
    assert lrs(opt2) == lrs(opt)


# ---------------------------------------------------------------------------- errors

BAD = [
    (dict(c=0.0), "c=0.0"), (dict(c=-1.0), "c=-1.0"), (dict(c=math.inf), "c=inf"), (dict(c=math.nan), "c=nan"),
    (dict(c="3"), "c='3'"), (dict(curvature="fisher"), "curvature='fisher'"), (dict(every=0), "every=0"),
    (dict(every=-2), "every=-2"), (dict(every=1.5), "every=1.5"), (dict(every=True), "every=True"),
    (dict(min_lr=-0.1), "min_lr=-0.1"), (dict(max_lr=0.0), "max_lr=0.0"), (dict(max_lr=math.nan), "max_lr=nan"),
    (dict(min_lr=2.0, max_lr=1.0), "min_lr=2.0 > max_lr=1.0"), (dict(tol=0.0), "tol=0.0"), (dict(tol=1.0), "tol=1.0"),
    (dict(max_iter=0), "max_iter=0"), (dict(per_layer_scale="both"), "per_layer_scale='both'"),
]


@pytest.mark.parametrize("kwargs,message", BAD, ids=[m for _, m in BAD])
def test_bad_arguments_raise_before_any_work(kwargs, message):
    model, x, y, _ = linear_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    calls = []

    def counting_loss(out, target):
        calls.append(1)
        return mse_loss(out, target)

    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        GeometricLR(opt, model, counting_loss, x, y, **kwargs)
    assert "allowed" in str(info.value) or "must" in str(info.value)
    assert calls == [] and "initial_lr" not in opt.param_groups[0] and lrs(opt) == [0.01]


def test_bad_objects_raise():
    model, x, y, _ = linear_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="optimizer"):
        GeometricLR("sgd", model, mse_loss, x, y)
    with pytest.raises(ValueError, match="model"):
        GeometricLR(opt, lambda t: t, mse_loss, x, y)
    with pytest.raises(ValueError, match="loss_fn"):
        GeometricLR(opt, model, None, x, y)
    with pytest.raises(ValueError, match="x="):
        GeometricLR(opt, model, mse_loss, x.numpy(), y)
    two = torch.nn.Linear(3, 2, dtype=DT)  # weight and bias in one group
    opt2 = NormalizedSGD(two.parameters(), lr=0.1, normalize="per_layer")
    with pytest.raises(ValueError, match="per_layer_scale='layer' needs one parameter tensor per group"):
        GeometricLR(opt2, two, mse_loss, torch.ones(2, 3, dtype=DT), torch.ones(2, 2, dtype=DT))


# ---------------------------------------------------------------------------- warmup + cosine, registry, train()

def test_warmup_cosine_factor():
    f = WarmupCosine(total_steps=100, warmup_steps=10, final_fraction=0.1)
    assert f(0) == pytest.approx(1 / 11) and f(9) == pytest.approx(10 / 11) and f(10) == 1.0
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5) and f(100) == pytest.approx(0.1) and f(150) == pytest.approx(0.1)
    values = [f(t) for t in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    for kwargs, message in [(dict(warmup_steps=101), "warmup_steps=101"), (dict(warmup_steps=-1), "warmup_steps=-1"),
                            (dict(final_fraction=1.5), "final_fraction=1.5"),
                            (dict(final_fraction=-0.1), "final_fraction=-0.1")]:
        with pytest.raises(ValueError, match=message):
            WarmupCosine(**{"total_steps": 100, "warmup_steps": 10, **kwargs})


def test_warmup_cosine_is_relative_per_group():
    model, x, y = mlp_problem(MuP(base_width=4), width=16)
    opt = model.parameterization.optimizer(model, 0.05)
    base = lrs(opt)
    sched = warmup_cosine(opt, total_steps=20)  # warmup defaults to 10%: 2 steps
    assert lrs(opt) == pytest.approx([b / 3 for b in base])
    for _ in range(2):
        opt.step()
        sched.step()
    assert lrs(opt) == pytest.approx(base)


def test_schedules_are_registered_and_run():
    assert SCHEDULES["geometric"] is schedule._geometric and SCHEDULES["warmup_cosine"] is schedule._warmup_cosine
    common = dict(dataset="teacher", n_train=32, depth=3, width=8, steps=6, dtype="float64", device="cpu")
    result = train(RunConfig(**common, parameterization="ntk", lr=0.1, schedule="geometric",
                             schedule_options=(("c", 3.0), ("curvature", "gradient"), ("max_lr", 10.0))))
    assert not result.diverged and result.metric("lr").nunique() > 1
    result = train(RunConfig(**common, parameterization="nup", lr=0.1, schedule="geometric",  # per-layer normalized
                             schedule_options=(("c", 3.0), ("curvature", "ntk"), ("every", 2), ("max_lr", 10.0))))
    assert not result.diverged and result.metric("lr").nunique() > 1
    result = train(RunConfig(**common, lr=0.1, schedule="warmup_cosine", schedule_options=(("warmup_steps", 2),)))
    assert result.metric("lr").iloc[:3].tolist() == pytest.approx([0.1 / 3, 0.2 / 3, 0.1])
    with pytest.raises(ValueError, match="'warmup' is not an option of schedule 'warmup_cosine'"):
        train(RunConfig(**common, schedule="warmup_cosine", schedule_options=(("warmup", 2),)))

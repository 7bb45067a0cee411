"""The core formulas against independent computations: Monte Carlo, closed forms, float64 by hand."""

import math

import numpy as np
import pytest
import torch

import nup
from nup import NTK, SP, MuP, NuP, RunConfig, train
from nup.core.activations import get_activation, leaky_relu

ACTIVATIONS = ["relu", "abs", "leaky_relu"]


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_eoc_variance_preserves_second_moment_monte_carlo(name):
    phi = get_activation(name)
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.7
    # E phi(z)^2 = (a^2+b^2) q, so sigma^2 = 1/(a^2+b^2) maps q to q; E phi'(z)^2 = a^2+b^2 (chi_1 = 1).
    assert phi.eoc_sigma2 * (phi(z) ** 2).mean().item() == pytest.approx(1.7**2, rel=7e-3)  # 4 standard errors
    assert phi.eoc_sigma2 * (phi.derivative(z) ** 2).mean().item() == pytest.approx(1.0, rel=3e-3)


def test_activation_constants_closed_forms():
    relu, absolute = get_activation("relu"), get_activation("abs")
    assert (relu.eoc_sigma2, relu.delta, relu.kappa) == pytest.approx((2.0, 0.5, math.sqrt(2)))
    assert (absolute.eoc_sigma2, absolute.delta, absolute.kappa) == pytest.approx((1.0, 1.0, 1.0))
    s = torch.linspace(-3, 3, 101)
    assert torch.allclose(relu(s), torch.relu(s))
    assert torch.allclose(absolute(s), s.abs())
    assert torch.allclose(leaky_relu(0.1)(s), torch.nn.functional.leaky_relu(s, 0.1))


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("c", [-0.7, 0.0, 0.3, 0.95])
def test_rho_and_rho_dot_against_monte_carlo(name, c):
    phi = get_activation(name)
    g = torch.Generator().manual_seed(1)
    u, w = torch.randn(2, 2_000_000, generator=g, dtype=torch.float64)
    v = c * u + math.sqrt(1 - c**2) * w
    rho_mc = (phi(u) * phi(v)).mean().item() / phi.second_moment
    rho_dot_mc = (phi.derivative(u) * phi.derivative(v)).mean().item() / phi.second_moment
    assert float(phi.rho(c)) == pytest.approx(rho_mc, abs=3e-3)
    assert float(phi.rho_dot(c)) == pytest.approx(rho_dot_mc, abs=3e-3)


def test_bad_activation_names_the_parameter():
    with pytest.raises(ValueError, match="activation='tanh'.*'relu'"):
        get_activation("tanh")
    with pytest.raises(ValueError, match="a=0 and b=0"):
        nup.Activation(0.0, 0.0)


@pytest.mark.parametrize("profile,expected", [("constant", [8, 8, 8]), ("linear", [8, 16, 24]),
                                              ("quadratic", [8, 32, 72])])
def test_width_profiles(profile, expected):
    assert nup.hidden_widths(profile, 8, 4) == expected


def test_mlp_forward_matches_explicit_float64_computation():
    model = NTK().build(5, 3, 3, 4, "relu", seed=0, dtype=torch.float64)
    x = torch.randn(7, 5, dtype=torch.float64)
    w1, w2, w3 = (layer.weight for layer in model.layers)
    h1 = x @ w1.T / math.sqrt(5)
    h2 = math.sqrt(2) * torch.relu(h1) @ w2.T / math.sqrt(4)
    h3 = math.sqrt(2) * torch.relu(h2) @ w3.T / math.sqrt(4)
    out, preacts = model(x, return_preactivations=True)
    for got, want in zip(preacts, [h1, h2, h3]):
        assert torch.allclose(got, want)
    assert torch.equal(out, preacts[-1])


def _mlp_and_data(activation, parameterization="nup", depth=4, seed=0):
    model = nup.get_parameterization(parameterization).build(5, 3, depth, 4, activation, seed=seed,
                                                            dtype=torch.float64)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return model, x


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_linearization_stores_the_forward_pass(activation):
    model, x = _mlp_and_data(activation)
    x = x.float()
    lin = model.linearize(x)  # cast to the weights' dtype
    out, hs = model(x.double(), return_preactivations=True)
    phi = get_activation(activation)
    assert lin.output.dtype == torch.float64 and torch.equal(lin.output, out)
    assert len(lin.inputs) == model.depth and len(lin.derivatives) == model.depth - 1
    assert torch.equal(lin.inputs[0], x.double())
    for k in range(1, model.depth):  # inputs[k] = a_k = phi(h_k), derivatives[k-1] = phi'(h_k)
        torch.testing.assert_close(lin.inputs[k], phi(hs[k - 1]), rtol=0, atol=0)
        torch.testing.assert_close(lin.derivatives[k - 1], phi.derivative(hs[k - 1]), rtol=0, atol=0)
    for w, layer in zip(lin.weights, model.layers):
        assert not w.requires_grad and w.data_ptr() == layer.weight.data_ptr()
    sub = lin.rows(slice(2, 5))
    assert torch.equal(sub.output, out[2:5]) and torch.equal(sub.inputs[-1], lin.inputs[-1][2:5])


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_backpropagated_signals_and_weight_gradients_against_autograd(activation):
    model, x = _mlp_and_data(activation)
    lin = model.linearize(x)
    g = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _, hs = model(x, return_preactivations=True)
    # delta_k = d<f, G>/dh_k and dL/dW_k by autograd through the module's own forward.
    expected_deltas = torch.autograd.grad(hs[-1], hs, g, retain_graph=True)
    expected_grads = torch.autograd.grad(hs[-1], list(model.parameters()), g)
    seen = []
    for k, delta in lin.backpropagate(g):
        seen.append(k)
        torch.testing.assert_close(delta, expected_deltas[k], rtol=1e-12, atol=1e-14)
    assert seen == list(range(model.depth - 1, -1, -1))
    scales = [0.5, 2.0, 3.0, 0.0]
    for got, want, s in zip(lin.weight_gradients(g, scales), expected_grads, scales):
        torch.testing.assert_close(got, s * want, rtol=1e-12, atol=1e-14)
    for got, want in zip(lin.weight_gradients(g), expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_batched_signals_are_the_jacobians_of_the_output(activation):
    """``B_k[i, o] = df_o(x_i)/dh_k[i]``: with no cotangent, one backward recursion per output at once."""
    model, x = _mlp_and_data(activation, depth=3)
    lin = model.linearize(x)
    _, hs = model(x, return_preactivations=True)
    for k, b in lin.backpropagate():
        assert b.shape == (6, 3, hs[k].shape[1])
        for o in range(3):
            (want,) = torch.autograd.grad(hs[-1][:, o].sum(), hs[k], retain_graph=True)
            torch.testing.assert_close(b[:, o, :], want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_jvp_against_torch_func(activation):
    model, x = _mlp_and_data(activation)
    lin = model.linearize(x)
    gen = torch.Generator().manual_seed(2)
    tangents = [torch.randn(layer.weight.shape, generator=gen, dtype=torch.float64) for layer in model.layers]
    names = [name for name, _ in model.named_parameters()]
    params = {name: p.detach() for name, p in model.named_parameters()}

    def preactivations(p):
        return torch.func.functional_call(model, p, (x,), {"return_preactivations": True})[1]
    _, r_hs = torch.func.jvp(preactivations, (params,), (dict(zip(names, tangents)),))
    r_out, r_inputs = lin.jvp(tangents, return_inputs=True)
    torch.testing.assert_close(r_out, r_hs[-1], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(lin.jvp(tangents), r_out, rtol=0, atol=0)
    assert r_inputs[0] is None and len(r_inputs) == model.depth
    for k in range(1, model.depth):  # R{a_k} = D_k * R{h_k}
        torch.testing.assert_close(r_inputs[k], lin.derivatives[k - 1] * r_hs[k - 1], rtol=1e-12, atol=1e-14)


def _init_std(model):
    return [layer.weight.std().item() for layer in model.layers]


def test_parameterization_init_statistics():
    d_in, width, depth = 300, 400, 4
    sp = SP().build(d_in, 10, depth, width, "relu", seed=0, dtype=torch.float64)
    assert _init_std(sp) == pytest.approx([1 / math.sqrt(3 * f) for f in [300, 400, 400, 400]], rel=0.02)
    # PyTorch's default nn.Linear init is U(+-1/sqrt(fan_in)).
    assert sp.layers[0].weight.abs().max().item() <= 1 / math.sqrt(300)
    ntk = NTK().build(d_in, 10, depth, width, "relu", seed=0, dtype=torch.float64)
    assert _init_std(ntk) == pytest.approx([1.0] * 4, rel=0.02)
    assert ntk.multipliers == pytest.approx([1 / math.sqrt(300)] + [math.sqrt(2 / 400)] * 3)
    mup = MuP(base_width=100).build(d_in, 10, depth, width, "relu", seed=0, dtype=torch.float64)
    width_mult = 400 / 100
    assert _init_std(mup) == pytest.approx([1 / math.sqrt(300), math.sqrt(2 / 400), math.sqrt(2 / 400),
                                            math.sqrt(2 / 400) / math.sqrt(width_mult)], rel=0.03)
    assert mup.lr_mults == pytest.approx([width_mult, 1, 1, 1 / width_mult])
    nu = NuP().build(d_in, 10, depth, 16, "abs", seed=0)
    assert nu.widths == (300, 16, 64, 144, 10)
    assert nu.multipliers == pytest.approx([1 / math.sqrt(300), 1 / 4, 1 / 8, 1 / 12])


def test_parameterizations_preserve_the_signal_at_init():
    """SP shrinks the preactivations layer by layer (variance 1/3 per layer for ReLU); NTK/νP keep them."""
    x = torch.randn(256, 200, generator=torch.Generator().manual_seed(0))
    q0 = (x**2).mean().item()
    for param, lo, hi in [(NTK(), 0.8, 1.25), (NuP(), 0.8, 1.25), (SP(), 0.0, 0.01)]:
        model = param.build(200, 10, 6, 256, "relu", seed=0)
        _, hs = model(x, return_preactivations=True)
        assert lo < (hs[-2] ** 2).mean().item() / q0 < hi, param.name


def test_param_groups_carry_per_layer_learning_rates():
    model = MuP(base_width=16).build(10, 2, 3, 64, "relu")
    groups = model.parameterization.param_groups(model, lr=0.5)
    assert [g["lr"] for g in groups] == pytest.approx([0.5 * 4, 0.5, 0.5 / 4])
    assert [g["layer"] for g in groups] == [1, 2, 3]
    assert all(len(g["params"]) == 1 and g["params"][0] is layer.weight for g, layer in zip(groups, model.layers))


@pytest.mark.parametrize("mode", ["none", "global", "per_layer"])
def test_normalized_update_step_length(mode):
    model = NTK().build(6, 3, 3, 5, "abs", seed=0, dtype=torch.float64)
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    lr = 0.03
    optimizer = nup.NormalizedSGD(NTK().param_groups(model, lr), lr=lr, normalize=mode)
    before = [w.detach().clone() for w in model.parameters()]
    nup.mse_loss(model(x), y).backward()
    grads = [w.grad.clone() for w in model.parameters()]
    optimizer.step()
    steps = [b - w.detach() for b, w in zip(before, model.parameters())]
    global_norm = math.sqrt(sum((g**2).sum().item() for g in grads))
    for step, grad in zip(steps, grads):
        expected = {"none": lr * grad, "global": lr * grad / global_norm,
                    "per_layer": lr * grad / grad.norm()}[mode]
        assert torch.allclose(step, expected, rtol=1e-10, atol=1e-14)
    total = math.sqrt(sum((s**2).sum().item() for s in steps))
    if mode == "global":
        assert total == pytest.approx(lr)
    if mode == "per_layer":
        assert [s.norm().item() for s in steps] == pytest.approx([lr] * 3)


def test_mse_loss_convention():
    out = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 0.5]], dtype=torch.float64)
    y = torch.zeros_like(out)
    # |f - y|^2 / (2n): summed over outputs, averaged over samples, halved.
    assert nup.mse_loss(out, y).item() == pytest.approx((1 + 4 + 0 + 1 + 9 + 0.25) / (2 * 3))


def test_mse_gradient_gives_residual_dynamics():
    """With L = |f-y|^2/(2n), one small GD step moves the residual by -eta K r, K = J J^T / n."""
    torch.manual_seed(0)
    model = NTK().build(4, 2, 2, 6, "relu", seed=0, dtype=torch.float64)
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    params = list(model.parameters())
    jac = torch.autograd.functional.jacobian(lambda *ws: torch.func.functional_call(
        model, {f"layers.{i}.weight": w for i, w in enumerate(ws)}, (x,)).reshape(-1), tuple(params))
    J = torch.cat([j.reshape(10, -1) for j in jac], dim=1)
    K = J @ J.T / 5
    r0 = (model(x) - y).reshape(-1).detach()
    eta = 1e-4
    nup.mse_loss(model(x), y).backward()
    with torch.no_grad():
        for p in params:
            p -= eta * p.grad
    r1 = (model(x) - y).reshape(-1).detach()
    assert torch.allclose(r1 - r0, -eta * K @ r0, rtol=1e-3, atol=1e-9)


def test_train_records_long_format_and_learns():
    result = train(RunConfig(dataset="teacher", n_train=64, depth=3, width=16, lr=0.5, steps=30,
                             parameterization="ntk", dtype="float64"))
    assert list(result.df.columns) == ["step", "metric", "layer", "value"]
    loss = result.metric("loss")
    assert loss.index.tolist() == list(range(31))
    assert loss.iloc[-1] < 0.5 * loss.iloc[0]
    assert not result.diverged


def test_train_is_deterministic():
    config = RunConfig(dataset="teacher", n_train=32, depth=3, width=8, steps=10, batch_size=8,
                       diagnostics=("updates", "preactivations"), diagnostic_every=3)
    a, b = train(config), train(config)
    assert a.df.equals(b.df)


def test_divergence_is_a_result_not_an_exception():
    result = train(RunConfig(dataset="teacher", n_train=32, depth=4, width=16, lr=1e4, steps=50,
                             parameterization="ntk", normalize="none"))
    assert result.diverged
    assert 0 < result.diverged_step < 50
    diverged_rows = result.df[result.df.metric == "diverged"]
    assert diverged_rows.value.tolist() == [result.diverged_step]
    assert np.isfinite(result.df.value).all()


def test_cross_entropy_and_minibatch_sgd_on_fashion_mnist():
    pytest.importorskip("nup.training.data")
    from nup.training import data

    if not (data.data_dir() / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not present: run `make data`")
    result = train(RunConfig(loss="ce", n_train=200, n_test=100, batch_size=50, depth=3, width=32, lr=0.5,
                             steps=40, parameterization="ntk", diagnostic_every=20))
    assert set(result.df.metric) >= {"batch_loss", "loss", "test_loss", "test_accuracy"}
    assert result.metric("test_accuracy").iloc[-1] > 0.3  # 10 classes: chance is 0.1


def test_cache_reads_second_run_and_recomputes_corrupted(tmp_path, monkeypatch, caplog):
    config = RunConfig(dataset="teacher", n_train=16, depth=2, width=4, steps=3)
    first = nup.run(config, cache_dir=tmp_path)
    assert nup.is_cached(config, cache_dir=tmp_path)
    calls = []
    monkeypatch.setattr("nup.training.cache.train", lambda c: calls.append(c))  # would be used on a recompute
    second = nup.run(config, cache_dir=tmp_path)
    assert second.df.equals(first.df) and not calls
    monkeypatch.undo()
    outputs = list(tmp_path.rglob("output.pkl"))
    assert len(outputs) == 1
    outputs[0].write_bytes(outputs[0].read_bytes()[:20])  # a partial write
    third = nup.run(config, cache_dir=tmp_path)  # joblib logs a warning and recomputes
    assert "Exception while loading results" in caplog.text
    assert third.df.equals(first.df)


def test_cache_key_depends_on_every_field(tmp_path):
    base = RunConfig(dataset="teacher", n_train=16, depth=2, width=4, steps=2)
    nup.run(base, cache_dir=tmp_path)
    assert not nup.is_cached(base.replace(lr=0.2), cache_dir=tmp_path)
    assert not nup.is_cached(base.replace(seed=1), cache_dir=tmp_path)


def test_device_selection():
    assert nup.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda'"):
            nup.resolve_device("cuda")


@pytest.mark.parametrize("field,value,pattern", [
    ("parameterization", "xp", "parameterization='xp'"), ("activation", "tanh", "activation='tanh'"),
    ("depth", 0, "depth=0"), ("width", 0, "width=0"), ("lr", -1.0, "lr=-1.0"), ("lr", float("nan"), "lr=nan"),
    ("lr", float("inf"), "lr=inf"), ("n_train", 70_000, "n_train=70000"), ("depth", "4", "depth='4'"),
    ("normalize", "l2", "normalize='l2'"), ("width_profile", "cubic", "width_profile='cubic'"),
    ("loss", "hinge", "loss='hinge'"), ("batch_size", 1000, "batch_size=1000"), ("dtype", "float16", "dtype='float16'"),
])
def test_run_config_validation_names_the_parameter(field, value, pattern):
    with pytest.raises(ValueError, match=pattern.replace("(", r"\(").replace(")", r"\)")):
        RunConfig(**{field: value})


def test_savefig_is_byte_identical(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def draw(directory):
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [1, 3, 2])
        paths = nup.savefig(fig, "example", directory)
        plt.close(fig)
        return [p.read_bytes() for p in paths]

    assert draw(tmp_path / "a") == draw(tmp_path / "b")
    with pytest.raises(ValueError, match="name="):
        nup.savefig(None, "νp plot", tmp_path)

"""RunConfig options for mini-batch practice (notebook 07): a validation split held out of the training
split (``n_val``), Adam (``optimizer``), skipping the full-training-set loss (``full_loss``), the memo of
data draws, GeometricLR's curvature on a probe batch (``schedule_options probe_size``) and the cache
keys of runs that leave these options at their defaults."""

from __future__ import annotations

import math

import pytest
import torch

from nup.training import cache as nup_cache
from nup.training import data as nup_data
from nup.training import loop
from nup.training.config import RunConfig, cross_entropy_loss
from nup.training.loop import build_model_and_data, load_data, load_validation, train
from nup.training.schedules import SCHEDULES, GeometricLR

CPU = torch.device("cpu")
BASE = dict(parameterization="ntk", width=16, depth=3, loss="ce", n_train=60, n_test=40, batch_size=20,
            steps=6, lr=0.1, diagnostic_every=3, device="cpu")


def rows(result, metric):
    return result.df[result.df.metric == metric]


# ---------------------------------------------------------------------------- validation split

def test_validation_split_is_the_tail_of_one_draw_and_disjoint_from_training():
    config = RunConfig(**BASE, n_val=30)
    x, y, (xt, yt) = load_data(config, CPU, torch.float32)
    xv, yv = load_validation(config, CPU, torch.float32)
    xa, ya = nup_data.load_fashion_mnist(90, seed=0, target="labels", device="cpu")
    assert torch.equal(x, xa[:60]) and torch.equal(y, ya[:60])
    assert torch.equal(xv, xa[60:]) and torch.equal(yv, ya[60:])
    # No validation image is a training image (rows compared exactly).
    assert not (torch.cdist(xv, x) == 0).any()
    assert xt.shape == (40, 784) and yt.shape == (40,)


def test_without_validation_the_training_data_are_unchanged():
    config = RunConfig(**BASE)
    x, y, _ = load_data(config, CPU, torch.float32)
    x0, y0 = nup_data.load_fashion_mnist(60, seed=0, target="labels", device="cpu")
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert load_validation(config, CPU, torch.float32) == (None, None)


def test_validation_metrics_are_recorded_at_diagnostic_steps():
    result = train(RunConfig(**BASE, n_val=30))
    for name in ("val_loss", "val_accuracy", "test_loss", "test_accuracy"):
        assert rows(result, name).step.tolist() == [0, 3, 6], name
    # val_accuracy at step 0 is the accuracy of the initial model on the held-out tail.
    model, *_ = build_model_and_data(RunConfig(**BASE, n_val=30))
    xv, yv = load_validation(RunConfig(**BASE, n_val=30), CPU, torch.float32)
    with torch.no_grad():
        acc0 = (model(xv).argmax(1) == yv).double().mean().item()
    assert rows(result, "val_accuracy").value.iloc[0] == acc0
    assert "val_loss" not in set(train(RunConfig(**BASE)).df.metric)


@pytest.mark.parametrize("changes,message", [
    (dict(n_val=-1), "n_val"),
    (dict(n_train=59_000, n_val=1_001, batch_size=None), "n_val"),
    (dict(n_val=10, dataset="teacher", loss="mse", n_test=0), "n_val"),
])
def test_bad_validation_sizes_are_rejected(changes, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**{**BASE, **changes})


def test_data_draws_are_memoized_per_configuration():
    config = RunConfig(**BASE, n_val=30)
    first = load_data(config, CPU, torch.float32)
    assert load_data(config.replace(seed=5, lr=0.3), CPU, torch.float32)[0] is first[0]  # same data fields
    other = load_data(config.replace(data_seed=1), CPU, torch.float32)[0]
    assert other is not first[0] and not torch.equal(other, first[0])
    assert len(loop._SPLITS) <= loop._MAX_SPLITS


# ---------------------------------------------------------------------------- full-set loss

def test_full_loss_can_be_skipped_with_mini_batches():
    with_loss = train(RunConfig(**BASE))
    without = train(RunConfig(**BASE, full_loss=False))
    assert rows(with_loss, "loss").step.tolist() == [0, 3, 6]
    assert rows(without, "loss").empty
    # Nothing else changes: the same batches, the same trajectory.
    keep = with_loss.df[with_loss.df.metric != "loss"].reset_index(drop=True)
    torch.testing.assert_close(torch.tensor(keep.value.to_numpy()), torch.tensor(without.df.value.to_numpy()),
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match="full_loss"):
        RunConfig(**BASE, full_loss=1)


# ---------------------------------------------------------------------------- Adam

def test_adam_is_torch_adam_on_the_parameterization_groups():
    config = RunConfig(**{**BASE, "parameterization": "mup", "base_width": 8, "width": 16, "lr": 0.01},
                       optimizer="adam", full_loss=False)
    result = train(config)
    # The same run by hand: torch.optim.Adam over one group per layer with μP's per-layer rates.
    model, x, y, _, _ = build_model_and_data(config)
    groups = model.parameterization.param_groups(model, 0.01)
    assert [g["lr"] for g in groups] == [0.01 * 2, 0.01, 0.01 / 2]  # width_mult = 2
    optimizer = torch.optim.Adam(groups, lr=0.01)
    batches = loop._batches(config, CPU)
    losses = []
    with loop.torch_threads(result.extras["threads"]):  # the same thread count, hence the same bits
        for _ in range(config.steps + 1):
            idx = next(batches)
            loss = cross_entropy_loss(model(x[idx]), y[idx])
            losses.append(loss.item())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert rows(result, "batch_loss").value.tolist() == losses


@pytest.mark.parametrize("changes,message", [
    (dict(optimizer="adam", momentum=0.9), "momentum"),
    (dict(optimizer="adam", parameterization="nup"), "normalize"),
    (dict(optimizer="rmsprop"), "optimizer"),
])
def test_bad_adam_settings_are_rejected(changes, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**{**BASE, **changes})


def test_adam_with_nup_widths_and_no_normalization_is_allowed():
    result = train(RunConfig(**{**BASE, "parameterization": "nup", "width": 2, "lr": 1e-3}, optimizer="adam",
                             normalize="none"))
    assert not result.diverged


# ---------------------------------------------------------------------------- GeometricLR on a probe batch

def test_geometric_probe_size_measures_the_first_samples():
    config = RunConfig(**BASE, schedule="geometric", schedule_options=dict(curvature="gradient", probe_size=8))
    model, x, y, _, _ = build_model_and_data(config)
    ctx = loop.TrainContext(config, model, model.parameterization.optimizer(model, config.lr), x, y,
                            cross_entropy_loss)
    scheduler = SCHEDULES["geometric"](ctx)
    assert scheduler.x.shape[0] == 8 and torch.equal(scheduler.x, x[:8]) and torch.equal(scheduler.y, y[:8])
    # The same estimate as a GeometricLR built on those samples directly.
    model2, *_ = build_model_and_data(config)
    direct = GeometricLR(model2.parameterization.optimizer(model2, config.lr), model2, cross_entropy_loss, x[:8], y[:8],
                         curvature="gradient")
    assert scheduler.last_eigenvalue == direct.last_eigenvalue and math.isfinite(direct.last_eigenvalue)
    result = train(config)
    assert not result.diverged and len(rows(result, "schedule_eta")) == config.steps + 1


@pytest.mark.parametrize("probe_size", [0, 61, 2.5])
def test_geometric_bad_probe_size_is_rejected(probe_size):
    config = RunConfig(**BASE, schedule="geometric", schedule_options=dict(curvature="gradient", probe_size=probe_size))
    with pytest.raises(ValueError, match="probe_size"):
        train(config)


# ---------------------------------------------------------------------------- cache keys

def test_defaults_of_the_new_options_leave_the_cache_key_unchanged():
    values, _ = nup_cache._key(RunConfig(**BASE))
    assert not {"optimizer", "n_val", "full_loss"} & set(values)
    values, _ = nup_cache._key(RunConfig(**BASE, n_val=3, full_loss=False))
    assert values["n_val"] == 3 and values["full_loss"] is False
    # threads=None is resolved in the key (to this process's torch count; a count of 1 is left out)
    threads = loop.resolve_threads(None)
    assert values.get("threads", 1) == threads
    assert nup_cache._config_from_key(values) == RunConfig(**BASE, n_val=3, full_loss=False, threads=threads)


# ---------------------------------------------------------------------------- GeometricLR annealed

def test_geometric_anneal_multiplies_the_rate_by_a_cosine():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 3, generator=g), torch.randn(20, 1, generator=g)
    model = torch.nn.Linear(3, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = GeometricLR(optimizer, model, lambda out, t: ((out - t) ** 2).mean() / 2, x, y, c=1.0,
                            curvature="hessian", every=1000, anneal_steps=4)
    eta = scheduler.last_eta  # one estimate (step 0); the cosine then acts at every step
    rates = [optimizer.param_groups[0]["lr"]]
    for _ in range(6):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    expected = [eta * 0.5 * (1 + math.cos(math.pi * min(t, 4) / 4)) for t in range(7)]
    assert rates == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert rates[0] == eta and rates[4] == 0.0 == rates[6]
    assert scheduler.anneal_factor(2) == pytest.approx(0.5)
    unannealed = GeometricLR(torch.optim.SGD(model.parameters(), lr=1.0), model, torch.nn.functional.mse_loss, x, y,
                             curvature="gradient")
    assert unannealed.anneal_factor(10**6) == 1.0


@pytest.mark.parametrize("anneal_steps", [0, 2.5, "10"])
def test_geometric_bad_anneal_steps_are_rejected(anneal_steps):
    config = RunConfig(**BASE, schedule="geometric",
                       schedule_options=dict(curvature="gradient", anneal_steps=anneal_steps))
    with pytest.raises(ValueError, match="anneal_steps"):
        train(config)


def test_geometric_annealed_run_ends_at_rate_zero():
    config = RunConfig(**BASE, schedule="geometric",
                       schedule_options=dict(curvature="gradient", probe_size=16, anneal_steps=6))
    result = train(config)
    lr = rows(result, "lr").set_index("step").value
    assert not result.diverged and lr[6] == 0.0 and lr[0] > lr[3] > 0

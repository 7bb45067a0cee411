"""nup.analysis.coord_check: the long DataFrame against direct forward passes, roles, validation and the plot."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import nup  # noqa: E402
from nup.analysis.coord_check import COORD_METRICS, LAYER_ROLES, coord_check, layer_role, plot_coord_check  # noqa: E402
from nup.training.loop import load_data  # noqa: E402

TINY = dict(dataset="teacher", n_train=16, probe_size=16, dtype="float64")


@pytest.fixture(scope="module")
def frame():
    return coord_check({"νP": dict(parameterization="nup", lr=0.2), "NTK": "ntk"}, depths=[2, 4], widths=[2, 4],
                       steps=2, lr=0.3, seeds=[0, 1], cache=False, **TINY)


def test_frame_layout(frame):
    assert list(frame.columns) == ["label", "parameterization", "depth", "width", "seed", "step", "layer", "role",
                                   "metric", "value"]
    assert set(frame.metric) == set(COORD_METRICS)
    assert set(frame.step) == {0, 1, 2}
    # one row per (label, depth, width, seed, step, layer, metric)
    n_layers = 2 + 4
    assert len(frame) == 2 * 2 * 2 * 3 * n_layers * len(COORD_METRICS)
    assert not frame.duplicated(["label", "depth", "width", "seed", "step", "layer", "metric"]).any()
    assert set(frame.role.dropna()) <= set(LAYER_ROLES)
    assert dict(zip(frame.label, frame.parameterization)) == {"νP": "nup", "NTK": "ntk"}


def test_changes_against_a_trajectory_trained_by_hand(frame):
    """``preact_change`` after 1 and 2 steps against forward passes of the model trained by hand (the step-0
    rows are 0 by construction); plain GD for NTK, per-layer normalized steps ``lr G/|G|_F`` for νP."""
    change = frame[frame.metric.isin(["preact_change", "delta_rms"])]
    assert (change[change.step == 2].value > 0).all()
    for label, name, lr in (("NTK", "ntk", 0.3), ("νP", "nup", 0.2)):
        config = nup.RunConfig(parameterization=name, depth=4, width=2, seed=1, lr=lr, **TINY)
        x, y, _ = load_data(config, torch.device("cpu"), torch.float64)
        model = config.build_parameterization().build(x.shape[1], 1, 4, 2, "relu", seed=1, dtype=torch.float64)
        d = frame[(frame.label == label) & (frame.depth == 4) & (frame.width == 2) & (frame.seed == 1)]
        with torch.no_grad():
            h0 = model(x, return_preactivations=True)[1]
        for step in (1, 2):
            grads = torch.autograd.grad(nup.mse_loss(model(x), y), list(model.parameters()))
            with torch.no_grad():
                for p, g in zip(model.parameters(), grads):
                    p -= lr * (g if name == "ntk" else g / g.norm())
                hs = model(x, return_preactivations=True)[1]
            for k, (h, first) in enumerate(zip(hs, h0), start=1):
                got = d[(d.metric == "preact_change") & (d.layer == k) & (d.step == step)].value.item()
                assert got == pytest.approx(float((h - first).norm() / first.norm()), rel=1e-9)


def test_values_match_a_direct_forward_pass(frame):
    """``preact_rms`` at step 0 from the init; ``delta_rms`` equals ``preact_change * preact_rms(0)``."""
    config = nup.RunConfig(parameterization="ntk", depth=4, width=4, seed=1, **TINY)
    x, _, _ = load_data(config, torch.device("cpu"), torch.float64)
    model = config.build_parameterization().build(x.shape[1], 1, 4, 4, "relu", seed=1, dtype=torch.float64)
    with torch.no_grad():
        _, hs = model(x, return_preactivations=True)
    d = frame[(frame.label == "NTK") & (frame.depth == 4) & (frame.width == 4) & (frame.seed == 1)]
    for k, h in enumerate(hs, start=1):
        rms = d[(d.metric == "preact_rms") & (d.layer == k) & (d.step == 0)].value.item()
        assert rms == pytest.approx(float(torch.sqrt((h**2).mean())), rel=1e-12)
        at2 = d[(d.layer == k) & (d.step == 2)].set_index("metric").value
        assert at2["delta_rms"] == pytest.approx(at2["preact_change"] * rms, rel=1e-12)


def test_nup_uses_quadratic_widths_and_ntk_constant_ones():
    """The coordinate sizes at init are O(1) in every layer for both (EOC), whatever the width."""
    df = coord_check(["nup", "ntk"], depths=[3], widths=[2, 8], steps=1, cache=False, **TINY)
    rms0 = df[(df.metric == "preact_rms") & (df.step == 0)]
    assert rms0.value.between(0.2, 5).all()


@pytest.mark.parametrize("layer,depth,role", [(1, 8, "first hidden"), (4, 8, "middle hidden"),
                                              (7, 8, "last hidden"), (8, 8, "output"), (3, 8, None),
                                              (1, 2, "last hidden"), (2, 2, "output"), (1, 3, "middle hidden")])
def test_layer_roles(layer, depth, role):
    assert layer_role(layer, depth) == role


@pytest.mark.parametrize("kwargs,match", [
    (dict(parameterizations=["xp"]), "parameterization='xp'"),
    (dict(parameterizations=[]), "parameterizations"),
    (dict(parameterizations={"a": {"lr": 1}}), "'parameterization' key"),
    (dict(depths=[]), "depths"),
    (dict(widths=[0]), "widths"),
    (dict(steps=0), "steps"),
    (dict(depth=3), "depth= is set by coord_check"),
    (dict(parameterizations={"bad": dict(parameterization="nup", normalize="half")}), "bad.*normalize='half'"),
])
def test_bad_arguments_name_the_parameter(kwargs, match):
    args = dict(parameterizations=["nup"], depths=[2], widths=[2], steps=1, cache=False, **TINY)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        coord_check(**args)


def test_plot_leaves_the_global_style_alone(frame):
    before = dict(matplotlib.rcParams)
    fig, axes = plot_coord_check(frame[frame.depth == 4], x="width")
    assert len(axes) == 2 and [ax.get_title() for ax in axes] == ["νP", "NTK"]
    assert len(axes[0].lines) == len(LAYER_ROLES)
    plt.close(fig)
    fig, axes = plot_coord_check(frame, x="depth", metric="preact_change", step=1)
    plt.close(fig)
    assert dict(matplotlib.rcParams) == before
    with pytest.raises(ValueError, match="metric='loss'"):
        plot_coord_check(frame, metric="loss")
    with pytest.raises(ValueError, match="step=7"):
        plot_coord_check(frame, step=7)

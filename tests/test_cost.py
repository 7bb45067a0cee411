"""nup.core.cost against torch's own FLOP counter on real nup.MLPs."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nup.core.cost import matched_width, parameter_count, training_flops
from nup.training.config import RunConfig


@pytest.mark.parametrize("parameterization, depth, width", [("ntk", 3, 16), ("nup", 4, 8), ("mup", 5, 32)])
def test_training_flops_match_torchs_counter(parameterization, depth, width):
    config = RunConfig(parameterization=parameterization, depth=depth, width=width,
                       **({"base_width": width} if parameterization == "mup" else {}))
    widths = config.build_parameterization().widths(12, 3, depth, width)
    model = config.build_parameterization().build(12, 3, depth, width, seed=0)
    assert parameter_count(widths) == sum(p.numel() for p in model.parameters())
    x = torch.randn(7, 12)
    with FlopCounterMode(display=False) as counter:
        model(x).square().sum().backward()
    assert counter.get_total_flops() == training_flops(widths, 7)


@pytest.mark.parametrize("call, name", [(lambda: parameter_count([3]), "widths"),
                                        (lambda: parameter_count([3, 0]), "widths"),
                                        (lambda: training_flops([3, 4], 0), "n_samples")])
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ValueError, match=name):
        call()


@pytest.mark.parametrize("depth, w", [(12, 100), (4, 37), (2, 5)])
def test_matched_width_inverts_the_parameter_count(depth, w):
    widths = lambda v: [784] + [v] * (depth - 1) + [10]  # noqa: E731
    assert matched_width(parameter_count(widths(w)), depth, 784, 10) == w
    assert matched_width(parameter_count(widths(w)) + 3, depth, 784, 10) == w  # the closest count

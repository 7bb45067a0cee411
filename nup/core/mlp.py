"""A bias-free MLP whose hidden widths follow a named depth profile.

Layer ``k`` (1-based, ``k = 1..depth``) computes
``h_k = multiplier_k * W_k phi(h_{k-1})`` with ``phi(h_0) := x``; the output is ``h_depth``
(linear).  A parameterization (``nup.core.param``) sets the init of each ``W_k``, the forward
multipliers and the per-layer learning rates; the module itself only does the algebra.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nup.core.activations import Activation, get_activation
from nup.validation import check_choice, check_int

__all__ = ["MLP", "WIDTH_PROFILES", "hidden_widths"]

WIDTH_PROFILES = ("constant", "linear", "quadratic")


def hidden_widths(profile: str, width: int, depth: int) -> list[int]:
    """Hidden widths ``m_1..m_{depth-1}``: constant ``m``, linear ``k*m`` or quadratic ``k^2*m`` (νP)."""
    check_choice("width_profile", profile, WIDTH_PROFILES)
    check_int("width", width, minimum=1)
    check_int("depth", depth, minimum=1)
    power = WIDTH_PROFILES.index(profile)  # 0, 1, 2
    return [k**power * width for k in range(1, depth)]


class MLP(nn.Module):
    """Bias-free MLP ``widths[0] -> widths[1] -> ... -> widths[-1]``.

    Args:
        widths: ``[m_0, m_1, ..., m_l]``, input, hidden and output sizes (``l = len(widths) - 1``).
        activation: an ``Activation`` or a preset name.
        multipliers: the forward multiplier of each of the ``l`` layers.
    """

    def __init__(self, widths: Sequence[int], activation: str | Activation, multipliers: Sequence[float],
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__()
        widths = [check_int(f"widths[{i}]", w, minimum=1) for i, w in enumerate(widths)]
        if len(widths) < 2:
            raise ValueError(f"widths={widths!r} is too short; give at least [input size, output size]")
        if len(multipliers) != len(widths) - 1:
            raise ValueError(f"multipliers has {len(multipliers)} entries; it needs one per layer ({len(widths) - 1})")
        self.widths = tuple(widths)
        self.activation = get_activation(activation)
        self.multipliers = tuple(float(c) for c in multipliers)
        self.layers = nn.ModuleList(
            nn.Linear(m_in, m_out, bias=False, dtype=dtype, device=device) for m_in, m_out in zip(widths[:-1], widths[1:])
        )

    @property
    def depth(self) -> int:
        return len(self.layers)

    def forward(self, x: torch.Tensor, return_preactivations: bool = False):
        """The output ``h_l``; with ``return_preactivations`` also ``[h_1, ..., h_l]``."""
        preactivations = []
        h = x
        for k, (layer, c) in enumerate(zip(self.layers, self.multipliers)):
            h = c * layer(h if k == 0 else self.activation(h))
            preactivations.append(h)
        return (h, preactivations) if return_preactivations else h

    def extra_repr(self) -> str:
        return f"widths={list(self.widths)}, activation={self.activation.name}"

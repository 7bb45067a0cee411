"""A bias-free residual MLP: an input layer, ``l - 2`` residual blocks of one layer each, a readout.

The forward pass (layers ``k = 1..l``, ``l = depth``, constant hidden width ``m``, forward
multipliers ``c_k``, ``phi(s) = a*s + b*|s|``)::

    h_1 = c_1 W_1 x,    h_k = h_{k-1} + c_k W_k phi(h_{k-1})  (k = 2..l-1),    f = h_l = c_l W_l phi(h_{l-1})

``h_1..h_{l-1}`` is the *residual stream* (what ``return_preactivations`` returns, with the output
``h_l`` last, as for ``nup.core.mlp.MLP``), ``W_k`` for ``2 <= k <= l-1`` are the blocks' weights
(``m x m``).  The parameterization (``nup.core.param.Residual``) puts the block multiplier
``1/sqrt(L)``, ``L = l - 2`` the number of blocks, into ``c_k``.

The NTK and Hessian code of ``nup.linalg`` handles this model through its generic paths
(``NTKOperator(method="func")``, ``HessianOperator(method="autograd")`` or ``"func"``, chosen
automatically since a ``ResidualMLP`` is not an ``MLP``); ``empirical_ntk`` and ``ntk_trace``, which
use the MLP's own recursions, do not take it.  The attributes the training loop, the optimizer groups
and the diagnostics use (``layers``, ``depth``, ``widths``, ``multipliers``) are the MLP's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nup.core.activations import Activation
from nup.core.mlp import init_layers
from nup.validation import check_int

__all__ = ["ResidualMLP", "expected_stream_norms"]


class ResidualMLP(nn.Module):
    """Bias-free residual MLP ``widths[0] -> m -> (m -> m residual) x (l-2) -> widths[-1]``.

    Args:
        widths: ``[m_0, m, ..., m, m_l]``: input size, ``l - 1`` equal hidden widths, output size.
        activation: an ``Activation`` or a preset name.
        multipliers: the forward multiplier ``c_k`` of each of the ``l`` layers.
    """

    def __init__(self, widths: Sequence[int], activation: str | Activation, multipliers: Sequence[float],
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__()
        widths = [check_int(f"widths[{i}]", w, minimum=1) for i, w in enumerate(widths)]
        if len(widths) < 3:
            raise ValueError(f"widths={widths!r} is too short; a residual MLP needs at least [input, hidden, output]")
        if len(set(widths[1:-1])) != 1:
            raise ValueError(f"widths={widths!r} is not allowed; the hidden widths of a residual MLP must be equal")
        init_layers(self, widths, activation, multipliers, dtype, device)

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def n_blocks(self) -> int:
        """``L = l - 2``, the number of residual blocks."""
        return self.depth - 2

    def forward(self, x: torch.Tensor, return_preactivations: bool = False):
        """The output ``h_l``; with ``return_preactivations`` also ``[h_1, ..., h_l]`` (stream, then output)."""
        c, layers = self.multipliers, self.layers
        h = c[0] * layers[0](x)
        preactivations = [h]
        for k in range(1, self.depth - 1):
            h = h + c[k] * layers[k](self.activation(h))
            preactivations.append(h)
        out = c[-1] * layers[-1](self.activation(h))
        preactivations.append(out)
        return (out, preactivations) if return_preactivations else out

    def extra_repr(self) -> str:
        return f"widths={list(self.widths)}, activation={self.activation.name}, residual blocks={self.n_blocks}"


def expected_stream_norms(depth: int) -> list[float]:
    """The closed form of ``E q_k / q_0`` at init (``q_k = |h_k|^2/m_k``, ``k = 1..l``) of a depth-μP
    residual MLP at the EOC (``nup.core.param.Residual``): ``(1 + 1/L)^(k-1)`` on the stream
    ``k = 1..l-1`` and the last stream value again for the output, ``L = l - 2``.  Exact for ``ab = 0``
    (abs); for ReLU up to an ``O(1/m)`` term (see ``Residual``)."""
    check_int("depth", depth, minimum=3)
    blocks = depth - 2
    stream = [(1 + 1 / blocks) ** k for k in range(depth - 1)]
    return stream + [stream[-1]]

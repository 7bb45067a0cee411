"""A bias-free MLP whose hidden widths follow a named depth profile, and its algebra, written once.

The algebra
-----------
Layers ``k = 1..l`` (``l = depth``), ``n`` samples as the rows of every matrix, ``W_k`` of shape
``(m_k, m_{k-1})``, forward multipliers ``c_k`` and ``phi(s) = a*s + b*|s|`` (``nup.core.activations``)::

    a_0 = x,    h_k = c_k a_{k-1} W_k^T,    a_k = phi(h_k),    D_k = phi'(h_k),    f = h_l

``a_{k-1}`` (``n x m_{k-1}``) is the input of layer ``k``, ``h_k`` (``n x m_k``) its preactivation,
and the output ``f = h_l`` is linear.  ``phi`` is piecewise linear, so ``phi'' = 0`` (almost
everywhere), which the second-order formulas below use.  A parameterization (``nup.core.param``)
sets the init of each ``W_k``, the ``c_k`` and the per-layer learning rates.

*Backward (reverse mode, ``J^T``).*  For a cotangent ``G`` on the output (``n x m_l``; ``dL/df``
for a loss ``L``), the backpropagated signals ``delta_k = dL/dh_k`` (``n x m_k``) and the weight
gradients are::

    delta_l = G,    delta_{k-1} = c_k (delta_k W_k) * D_{k-1},    dL/dW_k = c_k delta_k^T a_{k-1}

(``*`` elementwise).  *Batched over the outputs* (the NTK), ``G`` is the identity on each
sample's outputs and the signals are ``B_k[i, o, :] = df_o(x_i)/dh_k`` (``n x m_l x m_k``)::

    B_l[i] = I,    B_{k-1}[i] = c_k (B_k[i] W_k) * D_{k-1}[i],    df_o(x_i)/dW_k = c_k B_k[i, o]^T a_{k-1}[i]

(a rank-one outer product per sample and output).

*Forward mode (``J V``, Pearlmutter's R-operator).*  For a direction ``V = (V_1, ..., V_l)`` in
weight space (``V_k`` shaped like ``W_k``) and ``R{.}`` the derivative along ``V``::

    R{a_0} = 0,    R{h_k} = c_k (a_{k-1} V_k^T + R{a_{k-1}} W_k^T),    R{a_k} = D_k * R{h_k},    J V = R{h_l}

*Second order (the Hessian of ``L(f)``).*  The R-operator of the backward pass; ``R{D_k} = 0``
since ``phi'' = 0``::

    R{delta_l} = (d^2 L / df^2) R{h_l},    R{delta_{k-1}} = c_k (R{delta_k} W_k + delta_k V_k) * D_{k-1},
    (H V)_k = R{dL/dW_k} = c_k (R{delta_k}^T a_{k-1} + delta_k^T R{a_{k-1}})

Who uses what: ``MLP.forward`` is the forward pass; ``MLP.linearize`` stores it with the
``D_k`` as a ``Linearization``, whose ``backpropagate`` (``delta_k`` or ``B_k``),
``weight_gradients`` (``J^T G``) and ``jvp`` (``J V`` and the ``R{a_k}``) are the only copies of
these recursions: ``nup.linalg.tangent_kernel`` builds the NTK from them, and
``nup.linalg.hessian`` adds the second-order pass on top of them.

In code, lists are 0-based and indexed by the layer's input: ``weights[k] = W_{k+1}``,
``inputs[k] = a_k`` (the input of ``weights[k]``), ``derivatives[k] = D_{k+1}`` (``k < l-1``),
and ``backpropagate`` yields ``(k, delta_{k+1})``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from nup.core.activations import Activation, get_activation
from nup.validation import check_choice, check_int

__all__ = ["MLP", "Linearization", "WIDTH_PROFILES", "hidden_widths"]

WIDTH_PROFILES = ("constant", "linear", "quadratic")


def hidden_widths(profile: str, width: int, depth: int) -> list[int]:
    """Hidden widths ``m_1..m_{depth-1}``: constant ``m``, linear ``k*m`` or quadratic ``k^2*m`` (νP)."""
    check_choice("width_profile", profile, WIDTH_PROFILES)
    check_int("width", width, minimum=1)
    check_int("depth", depth, minimum=1)
    power = WIDTH_PROFILES.index(profile)  # 0, 1, 2
    return [k**power * width for k in range(1, depth)]


def init_layers(module: nn.Module, widths: Sequence[int], activation: str | Activation, multipliers: Sequence[float],
                dtype: torch.dtype, device) -> None:
    """Set ``widths``, ``activation``, ``multipliers`` and the bias-free ``layers`` of an MLP-like module
    (``MLP`` and ``nup.core.residual.ResidualMLP`` share this)."""
    if len(multipliers) != len(widths) - 1:
        raise ValueError(f"multipliers has {len(multipliers)} entries; it needs one per layer ({len(widths) - 1})")
    module.widths = tuple(widths)
    module.activation = get_activation(activation)
    module.multipliers = tuple(float(c) for c in multipliers)
    module.layers = nn.ModuleList(
        nn.Linear(m_in, m_out, bias=False, dtype=dtype, device=device) for m_in, m_out in zip(widths[:-1], widths[1:])
    )


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
        init_layers(self, widths, activation, multipliers, dtype, device)

    @property
    def depth(self) -> int:
        return len(self.layers)

    def _layers(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The forward pass (module docstring), layer by layer: ``(a_{k-1}, h_k)`` for ``k = 1..l``."""
        h = x
        for k, (layer, c) in enumerate(zip(self.layers, self.multipliers)):
            a = h if k == 0 else self.activation(h)
            h = c * layer(a)
            yield a, h

    def forward(self, x: torch.Tensor, return_preactivations: bool = False):
        """The output ``h_l``; with ``return_preactivations`` also ``[h_1, ..., h_l]``."""
        preactivations = [h for _, h in self._layers(x)]
        h = preactivations[-1]
        return (h, preactivations) if return_preactivations else h

    @torch.no_grad()
    def linearize(self, x: torch.Tensor) -> Linearization:
        """One stored forward pass on ``x`` (cast to the weights' dtype) for products with the Jacobian
        at the current weights: the layer inputs ``a_k``, the ``D_k = phi'(h_k)`` and the output."""
        weights = [layer.weight.detach() for layer in self.layers]
        inputs, derivatives = [], []
        for k, (a, h) in enumerate(self._layers(x.to(weights[0].dtype))):
            inputs.append(a)
            if k < self.depth - 1:
                derivatives.append(self.activation.derivative(h))
        return Linearization(weights, self.multipliers, inputs, derivatives, h)

    def extra_repr(self) -> str:
        return f"widths={list(self.widths)}, activation={self.activation.name}"


class Linearization:
    """An MLP's forward pass on a batch, stored at fixed weights, and the recursions of the module
    docstring over it (no autograd; every method runs under ``torch.no_grad``).

    Attributes (0-based, see the module docstring): ``weights`` ``[W_1..W_l]`` (detached, not
    copied: build a new one after the weights change), ``multipliers`` ``[c_1..c_l]``, ``inputs``
    ``[a_0..a_{l-1}]``, ``derivatives`` ``[D_1..D_{l-1}]`` and ``output`` ``f = h_l``.
    """

    def __init__(self, weights: Sequence[torch.Tensor], multipliers: Sequence[float],
                 inputs: Sequence[torch.Tensor], derivatives: Sequence[torch.Tensor], output: torch.Tensor):
        self.weights, self.multipliers = list(weights), tuple(multipliers)
        self.inputs, self.derivatives, self.output = list(inputs), list(derivatives), output

    @property
    def depth(self) -> int:
        return len(self.weights)

    def rows(self, index) -> Linearization:
        """The same pass on a subset of the samples (``index`` any row index, e.g. a slice: views)."""
        return Linearization(self.weights, self.multipliers, [a[index] for a in self.inputs],
                             [d[index] for d in self.derivatives], self.output[index])

    @torch.no_grad()
    def backpropagate(self, cotangent: torch.Tensor | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """The backpropagated signals, top-down: yields ``(k, delta_{k+1})`` for ``k = l-1, ..., 0``.

        ``cotangent`` ``G`` (``n x m_l``) gives ``delta_k = dL/dh_k``; ``None`` gives the signals
        batched over the outputs, ``B_k`` (``n x m_l x m_k``, from ``B_l[i] = I``; any 3-D cotangent
        ``(n, r, m_l)`` is backpropagated the same way).  Each signal is computed only after the
        previous one was consumed, so a loop keeps one at a time; do not modify them in place.
        The multiplier goes on ``W_k`` for a batch of signals and on ``delta_k W_k`` for a single
        one (the cheaper side of each; the two orders round differently in the last bit).
        """
        delta = cotangent
        if delta is None:
            n, d_out = self.output.shape
            delta = torch.eye(d_out, dtype=self.output.dtype, device=self.output.device).expand(n, d_out, d_out)
        for k in range(self.depth - 1, -1, -1):
            yield k, delta
            if k > 0:
                w, c, d = self.weights[k], self.multipliers[k], self.derivatives[k - 1]
                if delta.dim() == 3:
                    delta = (delta @ (c * w)) * d[:, None, :]
                else:
                    delta = (delta @ w).mul_(c).mul_(d)

    @torch.no_grad()
    def weight_gradients(self, cotangent: torch.Tensor, scales: Sequence[float] | None = None) -> list[torch.Tensor]:
        """``J^T G``: ``[dL/dW_1, ..., dL/dW_l]``, ``dL/dW_k = c_k delta_k^T a_{k-1}`` for the output
        cotangent ``G`` (``n x m_l``), each times ``scales[k]`` if given."""
        grads = [None] * self.depth
        for k, delta in self.backpropagate(cotangent):
            grads[k] = (delta.T @ self.inputs[k]).mul_(self.multipliers[k] * (1.0 if scales is None else scales[k]))
        return grads

    @torch.no_grad()
    def jvp(self, tangents: Sequence[torch.Tensor], return_inputs: bool = False):
        """``J V = R{h_l}`` (``n x m_l``) for weight tangents ``V = [V_1, ..., V_l]``; with
        ``return_inputs`` also ``[None, R{a_1}, ..., R{a_{l-1}}]`` (aligned with ``inputs``)."""
        c, w, a, d = self.multipliers, self.weights, self.inputs, self.derivatives
        r_inputs = [None]
        r_h = None
        for k in range(self.depth):
            new = a[k] @ tangents[k].T
            if k > 0:
                r_a = d[k - 1] * r_h
                if return_inputs:
                    r_inputs.append(r_a)
                new.addmm_(r_a, w[k].T)
            r_h = new.mul_(c[k])
        return (r_h, r_inputs) if return_inputs else r_h

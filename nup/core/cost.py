"""What a network costs, counted from its layer shapes (machine-independent, unlike wall time).

For a bias-free MLP with widths ``[m_0, ..., m_l]`` the parameters are ``P = sum_k m_{k-1} m_k``.  One
forward pass over ``n`` samples is ``2 n P`` floating-point operations (a multiply and an add per weight
and sample); the backward pass computes the weight gradients (``2 n P``) and the gradients of every layer's
input except the data's (``2 n (P - m_0 m_1)``); so a gradient step costs ``6 n P - 2 n m_0 m_1``
(elementwise activations and the update are lower order, ``O(n sum m_k + P)``).
``tests/test_cost.py`` checks the count against torch's own ``FlopCounterMode``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from nup.validation import check_int

__all__ = ["parameter_count", "training_flops", "matched_width"]


def _check_widths(widths: Sequence[int]) -> list[int]:
    if not isinstance(widths, Sequence) or len(widths) < 2:
        raise ValueError(f"widths={widths!r} is not allowed; give [m_0, ..., m_l] with at least two entries")
    return [check_int("widths", w, minimum=1) for w in widths]


def parameter_count(widths: Sequence[int]) -> int:
    """``sum_k m_{k-1} m_k``: the weights of a bias-free MLP with these widths."""
    w = _check_widths(widths)
    return int(sum(a * b for a, b in zip(w[:-1], w[1:])))


def training_flops(widths: Sequence[int], n_samples: int) -> int:
    """Floating-point operations of one gradient step on ``n_samples`` samples: ``6 n P - 2 n m_0 m_1``
    (forward ``2 n P``, backward ``4 n P`` less the data's gradient)."""
    check_int("n_samples", n_samples, minimum=1)
    return n_samples * (6 * parameter_count(widths) - 2 * widths[0] * widths[1])


def matched_width(target: int, depth: int, d_in: int, d_out: int) -> int:
    """The constant hidden width ``w`` whose ``depth``-layer MLP from ``d_in`` to ``d_out`` has the parameter
    count closest to ``target``: ``(depth - 2) w^2 + (d_in + d_out) w`` (a control with as many parameters
    as a network of growing widths)."""
    check_int("target", target, minimum=1)
    check_int("depth", depth, minimum=2)
    a, b = depth - 2, check_int("d_in", d_in, minimum=1) + check_int("d_out", d_out, minimum=1)
    w = (-b + math.sqrt(b * b + 4 * a * target)) / (2 * a) if a > 0 else target / b
    candidates = [max(1, math.floor(w)), max(1, math.ceil(w))]
    return min(candidates, key=lambda v: abs(a * v * v + b * v - target))

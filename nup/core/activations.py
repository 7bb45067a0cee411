"""The activation family ``phi(s) = a*s + b*|s|`` and its Edge-of-Chaos constants.

ReLU is ``a = b = 1/2``, the absolute value ``a = 0, b = 1``, leaky ReLU with slope
``alpha`` is ``a = (1 + alpha)/2, b = (1 - alpha)/2``.  For ``z ~ N(0, q)``,
``E phi(z)^2 = (a^2 + b^2) q`` and ``E phi'(z)^2 = a^2 + b^2``, so the variance map and
``chi_1`` are both ``sigma^2 (a^2 + b^2)`` and the EOC is ``sigma^2 = 1/(a^2 + b^2)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from nup.validation import check_choice, check_finite_float

__all__ = ["Activation", "ACTIVATIONS", "get_activation", "leaky_relu"]


@dataclass(frozen=True)
class Activation:
    """``phi(s) = a*s + b*|s|``; ``name`` is for display and hashing only."""

    a: float
    b: float
    name: str = "custom"

    def __post_init__(self):
        check_finite_float("a", self.a)
        check_finite_float("b", self.b)
        if self.a == 0 and self.b == 0:
            raise ValueError("Activation: a=0 and b=0 give phi = 0; at least one must be non-zero")

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        return self.a * s + self.b * s.abs()

    def derivative(self, s: torch.Tensor) -> torch.Tensor:
        return self.a + self.b * torch.sign(s)

    @property
    def second_moment(self) -> float:
        """``a^2 + b^2 = E phi(z)^2 / E z^2`` for centred Gaussian z."""
        return self.a**2 + self.b**2

    @property
    def eoc_sigma2(self) -> float:
        """Weight variance at the Edge of Chaos, ``1/(a^2 + b^2)`` (He init for ReLU)."""
        return 1.0 / self.second_moment

    @property
    def delta(self) -> float:
        """``Delta_phi = b^2/(a^2 + b^2)``: 1 for abs, 1/2 for ReLU, 0 for a linear network."""
        return self.b**2 / self.second_moment

    @property
    def kappa(self) -> float:
        """``kappa_phi = (|a| + |b|)/sqrt(a^2 + b^2)``: 1 for abs, sqrt(2) for ReLU."""
        return (abs(self.a) + abs(self.b)) / math.sqrt(self.second_moment)

    def rho(self, c):
        """Correlation map at the EOC: the correlation of ``phi(u), phi(v)`` (unit
        variance, correlation ``c``), normalised by ``E phi^2``:
        ``(1 - Delta) c + Delta (2/pi)(sqrt(1 - c^2) + c asin c)``."""
        c = np.clip(np.asarray(c, dtype=np.float64), -1.0, 1.0)
        arc = (2 / np.pi) * (np.sqrt(1 - c**2) + c * np.arcsin(c))
        return (1 - self.delta) * c + self.delta * arc

    def rho_dot(self, c):
        """Derivative map at the EOC: ``E phi'(u) phi'(v) / E phi'^2 = 1 - Delta (2/pi) acos c``."""
        c = np.clip(np.asarray(c, dtype=np.float64), -1.0, 1.0)
        return 1 - self.delta * (2 / np.pi) * np.arccos(c)


def leaky_relu(alpha: float = 0.1) -> Activation:
    """Leaky ReLU with negative slope ``alpha``: ``a = (1+alpha)/2, b = (1-alpha)/2``."""
    check_finite_float("alpha", alpha)
    return Activation((1 + alpha) / 2, (1 - alpha) / 2, f"leaky_relu({alpha:g})")


ACTIVATIONS = {
    "relu": Activation(0.5, 0.5, "relu"),
    "abs": Activation(0.0, 1.0, "abs"),
    "leaky_relu": leaky_relu(0.1),
    "linear": Activation(1.0, 0.0, "linear"),
}


def get_activation(activation: str | Activation) -> Activation:
    """An ``Activation`` from a preset name (``relu``, ``abs``, ``leaky_relu``, ``linear``) or itself."""
    if isinstance(activation, Activation):
        return activation
    check_choice("activation", activation, ACTIVATIONS)
    return ACTIVATIONS[activation]

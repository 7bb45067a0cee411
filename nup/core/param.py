"""Parameterizations: SP, NTK, μP and νP as per-layer (init, forward multiplier, learning rate).

Each parameterization is a small frozen dataclass.  ``build`` makes an ``MLP`` and
initializes it; ``param_groups`` returns ordinary ``torch.optim`` parameter groups, one per
layer, with the layer's learning rate already scaled, so any optimizer or scheduler that
scales group learning rates *relatively* keeps the parameterization intact.

| name | init of ``W_k``                     | multiplier                 | learning rate of layer k        | widths    |
|------|-------------------------------------|----------------------------|---------------------------------|-----------|
| sp   | PyTorch default ``U(±1/sqrt(fan_in))`` | 1                       | ``lr``                          | constant  |
| ntk  | ``N(0, 1)``                          | ``sigma_k/sqrt(fan_in)``   | ``lr``                          | constant  |
| mup  | ``N(0, sigma_k^2/fan_in)``, readout ``/width_mult`` | 1          | input ``lr*width_mult``, hidden ``lr``, readout ``lr/width_mult`` | constant |
| nup  | ``N(0, 1)``                          | ``sigma_k/sqrt(fan_in)``   | ``lr`` + normalized update      | quadratic |
| residual | ``N(0, 1)``                      | ``sigma_k/sqrt(fan_in)``, blocks ``/sqrt(L)`` | ``lr``; blocks ``lr/sqrt(L)`` with ``per_layer`` | constant |

``sigma_1 = 1`` on the input layer and ``sigma_k^2 = sigma2_scale / (a^2 + b^2)`` (the EOC
when ``sigma2_scale = 1``) on the others.  ``width_mult = width / base_width`` (μP, Yang &
Hu 2021, Table 3 for SGD, in the "standard" form without multipliers).  ``residual`` builds a
``nup.core.residual.ResidualMLP`` (depth-μP, see ``Residual``); the others build an ``MLP``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from nup.core.activations import Activation, get_activation
from nup.core.mlp import MLP, WIDTH_PROFILES, hidden_widths
from nup.core.optim import NORMALIZE_MODES, NormalizedSGD
from nup.core.residual import ResidualMLP
from nup.validation import check_choice, check_int, check_positive

__all__ = ["Parameterization", "SP", "NTK", "MuP", "NuP", "Residual", "PARAMETERIZATIONS", "get_parameterization",
           "LayerRule"]


@dataclass(frozen=True)
class LayerRule:
    init: str  # "normal" or "uniform"
    init_std: float  # standard deviation of the entries of W_k
    multiplier: float
    lr_mult: float


@dataclass(frozen=True)
class Parameterization:
    """Common machinery; subclasses only define ``layer_rules``."""

    width_profile: str = "constant"
    normalize: str = "none"
    sigma2_scale: float = 1.0

    name = "base"
    model_class = MLP  # what ``build`` makes; ``Residual`` makes a ``ResidualMLP``

    def __post_init__(self):
        check_choice("width_profile", self.width_profile, WIDTH_PROFILES)
        check_choice("normalize", self.normalize, NORMALIZE_MODES)
        check_positive("sigma2_scale", self.sigma2_scale)

    def with_options(self, **options) -> Parameterization:
        """A copy with some fields replaced, e.g. ``NuP().with_options(normalize="global")``."""
        return replace(self, **options)

    def sigmas(self, depth: int, activation: Activation) -> list[float]:
        sigma = math.sqrt(self.sigma2_scale * activation.eoc_sigma2)
        return [1.0] + [sigma] * (depth - 1)

    def layer_rules(self, widths: list[int], activation: Activation) -> list[LayerRule]:
        raise NotImplementedError

    def widths(self, d_in: int, d_out: int, depth: int, width: int) -> list[int]:
        check_int("d_in", d_in, minimum=1)
        check_int("d_out", d_out, minimum=1)
        return [d_in, *hidden_widths(self.width_profile, width, depth), d_out]

    def build(self, d_in: int, d_out: int, depth: int, width: int, activation: str | Activation = "relu",
              seed: int = 0, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> MLP:
        """An initialized ``MLP``; the init is a deterministic function of ``seed``."""
        activation = get_activation(activation)
        check_int("seed", seed, minimum=0)
        widths = self.widths(d_in, d_out, depth, width)
        rules = self.layer_rules(widths, activation)
        model = self.model_class(widths, activation, [r.multiplier for r in rules], dtype=dtype, device=device)
        # Sample on the CPU in float64 from a seeded generator, so the init is identical on every device and dtype.
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer, rule in zip(model.layers, rules):
                shape = layer.weight.shape
                if rule.init == "normal":
                    w = torch.randn(shape, generator=generator, dtype=torch.float64) * rule.init_std
                else:  # uniform with the given std: U(-sqrt(3) std, sqrt(3) std)
                    w = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * math.sqrt(3) * rule.init_std
                layer.weight.copy_(w)
        model.lr_mults = tuple(r.lr_mult for r in rules)
        model.parameterization = self
        return model

    def param_groups(self, model: MLP, lr: float) -> list[dict]:
        """One group per layer, ``{"params": [W_k], "lr": lr * lr_mult_k, "layer": k, "name": "layerk",
        "fan_in": m_{k-1}, "fan_out": m_k, "multiplier": c_k}``; the last three are what
        ``NormalizedSGD(normalize="spectral")`` reads (other optimizers ignore them)."""
        check_positive("lr", lr)
        # The per-layer rates are this parameterization's rule for the model's shapes: the model carries no
        # training rule of its own (``model.lr_mults`` is kept for the NTK's per-layer weights only).
        lr_mults = [r.lr_mult for r in self.layer_rules(list(model.widths), model.activation)]
        return [{"params": [layer.weight], "lr": lr * m, "layer": k + 1, "name": f"layer{k + 1}",
                 "fan_in": layer.weight.shape[1], "fan_out": layer.weight.shape[0], "multiplier": c}
                for k, (layer, m, c) in enumerate(zip(model.layers, lr_mults, model.multipliers))]

    def optimizer(self, model: MLP, lr: float, momentum: float = 0.0, normalize: str | None = None,
                  **options) -> NormalizedSGD:
        """``NormalizedSGD`` over ``param_groups`` with this parameterization's update mode; ``options``:
        ``steer_beta``, ``steer_mode``, ``steer_seed`` (``nup.core.optim``, "Steering"; off by default) and
        ``check_finite`` ("Finite check"; off by default)."""
        return NormalizedSGD(self.param_groups(model, lr), lr=lr, momentum=momentum,
                             normalize=self.normalize if normalize is None else normalize, **options)


def _ntk_rules(widths, sigmas):
    return [LayerRule("normal", 1.0, s / math.sqrt(fan_in), 1.0) for fan_in, s in zip(widths[:-1], sigmas)]


@dataclass(frozen=True)
class SP(Parameterization):
    """Standard parameterization: PyTorch's default ``nn.Linear`` init, multiplier 1, one learning rate."""

    name = "sp"

    def layer_rules(self, widths, activation):
        # kaiming_uniform_(a=sqrt(5)) gives U(-1/sqrt(fan_in), 1/sqrt(fan_in)), whose std is 1/sqrt(3 fan_in).
        return [LayerRule("uniform", 1 / math.sqrt(3 * fan_in), 1.0, 1.0) for fan_in in widths[:-1]]


@dataclass(frozen=True)
class NTK(Parameterization):
    """NTK parameterization at the EOC: ``W ~ N(0,1)``, multiplier ``sigma_k/sqrt(fan_in)``."""

    name = "ntk"

    def layer_rules(self, widths, activation):
        return _ntk_rules(widths, self.sigmas(len(widths) - 1, activation))


@dataclass(frozen=True)
class MuP(Parameterization):
    """μP for SGD (Yang & Hu 2021, Table 3) relative to ``base_width``; EOC variances on hidden layers."""

    base_width: int = 64
    name = "mup"

    def __post_init__(self):
        super().__post_init__()
        check_int("base_width", self.base_width, minimum=1)

    def layer_rules(self, widths, activation):
        depth = len(widths) - 1
        sigmas = self.sigmas(depth, activation)
        rules = []
        for k, (fan_in, fan_out, s) in enumerate(zip(widths[:-1], widths[1:], sigmas)):
            std, lr_mult = s / math.sqrt(fan_in), 1.0
            if k == 0 and depth > 1:  # input layer: fan_in is fixed, the learning rate grows with width
                lr_mult = fan_out / self.base_width
            elif k == depth - 1 and depth > 1:  # readout: init and learning rate shrink with width
                width_mult = fan_in / self.base_width
                std, lr_mult = std / math.sqrt(width_mult), 1.0 / width_mult
            rules.append(LayerRule("normal", std, 1.0, lr_mult))
        return rules


@dataclass(frozen=True)
class NuP(Parameterization):
    """νP: EOC init + NTK multipliers + quadratic widths ``k^2 m`` + a normalized update.

    The abstract names the normalized update but does not define it; ``normalize`` selects
    our reading (``"per_layer"``, ``"global"``, ``"none"`` or the width-aware ``"spectral"``,
    see ``nup.core.optim``).  The default follows the evidence of notebook 03 (see the README).
    """

    width_profile: str = "quadratic"
    normalize: str = "per_layer"
    name = "nup"

    def layer_rules(self, widths, activation):
        return _ntk_rules(widths, self.sigmas(len(widths) - 1, activation))


@dataclass(frozen=True)
class Residual(Parameterization):
    """Depth-μP residual MLP (Yang, Yu, Zhu & Hayou 2023, "Tensor Programs VI"; Bordelon et al. 2023):
    constant width ``m``, EOC-scaled branches with the block multiplier ``1/sqrt(L)``.

    ``depth = l`` layers: an input layer, ``L = l - 2`` residual blocks ``h_k = h_{k-1} + c_k W_k phi(h_{k-1})``
    and a readout (``nup.core.residual.ResidualMLP``), so it has the parameters of a constant-width MLP of
    the same depth.  ``W ~ N(0, 1)``; multipliers ``c_1 = 1/sqrt(m_0)``, blocks ``c_k = sigma/sqrt(m L)``,
    readout ``c_l = sigma/sqrt(m)``, with the EOC ``sigma^2 = sigma2_scale/(a^2 + b^2)``.

    *At initialization* (``q_k = |h_k|^2/m``, ``q_0 = |x|^2/m_0``): given ``h_{k-1}``, the branch is
    Gaussian with mean 0, so ``E[|h_k|^2 | h_{k-1}] = |h_{k-1}|^2 + (sigma^2/L) |phi(h_{k-1})|^2`` and
    ``|phi(h)|^2 = (a^2 + b^2)|h|^2 + 2ab sum_i h_i |h_i|``.  At the EOC this gives
    ``E q_k = (1 + 1/L)^(k-1) q_0`` for ``k = 1..l-1`` and ``E |f|^2/m_l = E q_{l-1}``: the stream grows
    by at most ``(1 + 1/L)^L < e`` at any depth.  Exact when ``ab = 0`` (abs, linear); otherwise up to
    the mean of the odd term ``2ab sum_i h_i|h_i|``, which is 0 at ``k = 1`` and ``O(1/m)`` after
    (``tests/test_residual.py`` checks both by Monte Carlo).

    *Learning rates.*  Plain GD (``normalize="none"``) and the globally normalized update: one rate for
    every layer, the depth-μP rule for SGD (the ``1/sqrt(L)`` multiplier already makes each block's
    gradient ``O(1/sqrt(L))`` and its effect on the output ``O(1/L)``).  ``"per_layer"`` moves every
    layer by its rate whatever its gradient, like Adam, so the blocks take TP-VI's Adam rule
    ``lr/sqrt(L)`` (input layer and readout: ``lr``); this transposition is ours.
    """

    normalize: str = "none"
    name = "residual"
    model_class = ResidualMLP

    def __post_init__(self):
        super().__post_init__()
        if self.width_profile != "constant":
            raise ValueError(f"width_profile={self.width_profile!r} is not allowed for the residual "
                             "parameterization; its hidden width is constant ('constant')")

    def widths(self, d_in, d_out, depth, width):
        check_int("depth", depth, minimum=3)
        return super().widths(d_in, d_out, depth, width)

    def layer_rules(self, widths, activation):
        depth = len(widths) - 1
        blocks = depth - 2
        sigma = self.sigmas(depth, activation)[-1]
        block_lr = 1 / math.sqrt(blocks) if self.normalize == "per_layer" else 1.0
        rules = [LayerRule("normal", 1.0, 1 / math.sqrt(widths[0]), 1.0)]
        rules += [LayerRule("normal", 1.0, sigma / math.sqrt(widths[k] * blocks), block_lr) for k in range(1, depth - 1)]
        rules.append(LayerRule("normal", 1.0, sigma / math.sqrt(widths[-2]), 1.0))
        return rules


PARAMETERIZATIONS = {"sp": SP, "ntk": NTK, "mup": MuP, "nup": NuP, "residual": Residual}


def get_parameterization(parameterization: str | Parameterization, **options) -> Parameterization:
    """A parameterization from its name (``sp``, ``ntk``, ``mup``, ``nup``, ``residual``) and options
    (``width_profile``, ``normalize``, ``sigma2_scale``, ``base_width`` for μP); options set to
    ``None`` keep the parameterization's default."""
    options = {k: v for k, v in options.items() if v is not None}
    if isinstance(parameterization, Parameterization):
        return parameterization.with_options(**options) if options else parameterization
    check_choice("parameterization", parameterization, PARAMETERIZATIONS)
    cls = PARAMETERIZATIONS[parameterization]
    allowed = sorted(cls.__dataclass_fields__)
    for key in options:
        if key not in allowed:
            raise ValueError(f"option {key!r} is not an option of parameterization {parameterization!r}; "
                             f"allowed: {', '.join(allowed)}")
    return cls(**options)

"""A notebook's parameter schema: names, types, ranges and choices, checked in one call.

Each experiment module declares ``SCHEMA = Schema(Int("max_depth", minimum=2), ...)``.  The
notebook's ``parameters`` cell holds plain values (papermill overwrites them), and its next cell is
``p = experiment.SCHEMA.validate(globals())``: every declared name is checked before any work
starts, and the first bad one raises a ``ValueError`` naming the parameter, the value and what is
allowed.  ``p`` is a read-only ``Params`` with attribute access (``p.max_depth``).

The same schema validates the reduced sizes in ``params/*.yaml`` and the GPU sizes in
``params/gpu/*.yaml`` (``tests/test_notebook_parameters.py``), so a documented parameter set can
never go stale.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from nup.validation import range_text

__all__ = ["Schema", "Params", "Param", "Int", "Float", "Bool", "Choice", "List", "Dict", "full_batch_fields", "lr_grid_fields",
           "MIN_SEEDS"]


def _reject(name: str, value, allowed: str):
    raise ValueError(f"{name}={value!r} is not allowed; {name} must be {allowed}")


@dataclass(frozen=True)
class Param:
    """One parameter.  Subclasses implement ``check(name, value) -> value`` and ``describe()``."""

    name: str
    help: str = ""

    def check(self, name: str, value):  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Int(Param):
    minimum: int | None = None
    maximum: int | None = None

    def describe(self) -> str:
        return "an integer" + range_text(self.minimum, self.maximum)

    def check(self, name, value):
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if ok and self.minimum is not None and value < self.minimum:
            ok = False
        if ok and self.maximum is not None and value > self.maximum:
            ok = False
        return int(value) if ok else _reject(name, value, self.describe())


@dataclass(frozen=True)
class Float(Param):
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False

    def describe(self) -> str:
        return ("a number > 0" if self.positive else "a finite number") + range_text(self.minimum, self.maximum)

    def check(self, name, value):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if ok and self.positive and value <= 0:
            ok = False
        if ok and self.minimum is not None and value < self.minimum:
            ok = False
        if ok and self.maximum is not None and value > self.maximum:
            ok = False
        return float(value) if ok else _reject(name, value, self.describe())


@dataclass(frozen=True)
class Bool(Param):
    def describe(self) -> str:
        return "True or False"

    def check(self, name, value):
        return value if isinstance(value, bool) else _reject(name, value, self.describe())


@dataclass(frozen=True)
class Choice(Param):
    choices: tuple = ()

    def describe(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def check(self, name, value):
        try:
            if value in self.choices:
                return value
        except TypeError:  # unhashable
            pass
        return _reject(name, value, self.describe())


@dataclass(frozen=True)
class List(Param):
    """A non-empty list (or tuple) whose items each pass ``item``; returned as a tuple."""

    item: Param | None = None
    min_length: int = 1
    max_length: int | None = None
    distinct: bool = False
    increasing: bool = False

    def describe(self) -> str:
        what = f"a list of at least {self.min_length} item(s)"
        if self.max_length is not None:
            what = f"a list of {self.min_length} to {self.max_length} item(s)"
        extra = ", strictly increasing" if self.increasing else ", distinct" if self.distinct else ""
        return f"{what}{extra}, each {self.item.describe() if self.item else 'anything'}"

    def check(self, name, value):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            _reject(name, value, self.describe())
        if len(value) < self.min_length or (self.max_length is not None and len(value) > self.max_length):
            _reject(name, value, self.describe())
        items = tuple(self.item.check(f"{name}[{i}]", v) if self.item else v for i, v in enumerate(value))
        if self.increasing and any(b <= a for a, b in zip(items, items[1:])):
            _reject(name, value, self.describe())
        if self.distinct and len(set(items)) != len(items):
            _reject(name, value, self.describe())
        return items


@dataclass(frozen=True)
class Dict(Param):
    """A mapping with exactly the declared ``keys`` (or any of ``keys`` when ``partial``), each value
    passing ``value``; returned read-only."""

    keys: tuple = ()
    value: Param | None = None
    partial: bool = False

    def describe(self) -> str:
        which = "some of" if self.partial else "exactly"
        return f"a mapping with {which} the keys {', '.join(map(repr, self.keys))}" + (
            f", each value {self.value.describe()}" if self.value else "")

    def check(self, name, value):
        if not isinstance(value, Mapping):
            _reject(name, value, self.describe())
        keys = set(value)
        if not keys <= set(self.keys) or (not self.partial and keys != set(self.keys)) or not keys:
            _reject(name, value, self.describe())
        checked = {k: self.value.check(f"{name}[{k!r}]", value[k]) if self.value else value[k] for k in self.keys
                   if k in value}
        return MappingProxyType(checked)


class Params(Mapping):
    """Validated parameter values: read-only, with attribute access (``p.depths``)."""

    def __init__(self, values: dict):
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no parameter named {name!r}; parameters: {', '.join(self._values)}") from None

    def __setattr__(self, name, value):
        raise AttributeError("Params are read-only; change the notebook's parameters cell instead")

    def __getitem__(self, name):
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def replace(self, **changes) -> Params:
        return Params({**self._values, **changes})

    def __repr__(self):
        return "Params(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"


class Schema:
    """An ordered set of ``Param``s; ``validate(values)`` checks them all and returns ``Params``."""

    def __init__(self, *params: Param, checks: Sequence = ()):
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate parameter names in schema: {names}")
        self.params = {p.name: p for p in params}
        self.checks = tuple(checks)  # callables(Params) -> None, for constraints between parameters

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.params)

    def validate(self, values: Mapping) -> Params:
        """Check every declared name in ``values`` (e.g. a notebook's ``globals()``; other names are
        ignored) and return them as ``Params``.  Raises ``ValueError`` naming the first bad one."""
        if not isinstance(values, Mapping):
            raise ValueError(f"values={values!r} is not allowed; values must be a mapping (e.g. globals())")
        missing = [name for name in self.params if name not in values]
        if missing:
            raise ValueError(f"missing parameter(s) {', '.join(missing)}: the parameters cell must define "
                             f"{', '.join(self.params)}")
        params = Params({name: p.check(name, values[name]) for name, p in self.params.items()})
        for check in self.checks:
            check(params)
        return params

    def describe(self) -> str:
        """One line per parameter: name, what is allowed, help."""
        return "\n".join(f"{p.name}: {p.describe()}" + (f"  ({p.help})" if p.help else "")
                         for p in self.params.values())


# ---------------------------------------------------------------------------- fields several notebooks share

MIN_SEEDS = 5  # interval coverage (nup.analysis.stats): no verdict rests on fewer seeds


def full_batch_fields(activations) -> tuple[Param, ...]:
    """``steps``, ``n_train``, ``seeds`` (at least ``MIN_SEEDS``, each also its own data draw) and
    ``activation``: a full-batch GD protocol on class-balanced Fashion-MNIST (notebooks 03 and 08)."""
    return (Int("steps", minimum=1, help="T, full-batch GD steps"),
            Int("n_train", minimum=8, help="class-balanced Fashion-MNIST training images"),
            List("seeds", item=Int("seed", minimum=0), min_length=MIN_SEEDS, distinct=True,
                 help=f"initialization seeds and data draws; at least {MIN_SEEDS} (interval coverage)"),
            Choice("activation", choices=tuple(activations)))


def lr_grid_fields(family_keys, first: str, later: str) -> tuple[Param, ...]:
    """``lr_centers`` (a log2 rate per family) and the grid sizes of a learning-rate sweep along an axis
    (``nup.analysis.best_lr.next_grid``, widened at its edges): ``first`` names the first point of the axis,
    ``later`` the others."""
    return (Dict("lr_centers", keys=tuple(family_keys), value=Float("log2_lr"),
                 help=f"log2 of the centre of each family's first grid ({first})"),
            Int("first_half_points", minimum=1, help=f"grid points on each side of the centre at {first}"),
            Int("half_points", minimum=1, help=f"grid points on each side of the extrapolated optimum {later}"),
            Int("max_widen", minimum=0, help="how many times a grid is widened by two points at its edge"))

"""Argument checks shared by every public entry point.

Each raises ``ValueError`` naming the parameter, the bad value and what is allowed, so a
bad papermill parameter stops a notebook in its first cell, not deep inside torch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable


def _fmt(value) -> str:
    return repr(value)


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}={_fmt(value)} is not an integer; {name} must be an integer" + range_text(minimum, maximum))
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name}={_fmt(value)} is out of range; {name} must be an integer" + range_text(minimum, maximum))
    return int(value)


def range_text(minimum, maximum) -> str:
    """The allowed range in words, as error messages and the notebook schemas print it."""
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def check_finite_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name}={_fmt(value)} is not a finite number; {name} must be a finite real number")
    return float(value)


def check_positive(name: str, value) -> float:
    """A finite number > 0 (learning rates, scales)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={_fmt(value)} is not allowed; {name} must be a finite number > 0")
    return float(value)


def check_nonnegative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={_fmt(value)} is not allowed; {name} must be a finite number >= 0")
    return float(value)


def check_choice(name: str, value, allowed: Iterable):
    allowed = list(allowed)
    try:
        ok = value in allowed
    except TypeError:  # unhashable values
        ok = False
    if not ok:
        raise ValueError(f"{name}={_fmt(value)} is not allowed; choose one of {', '.join(map(repr, allowed))}")
    return value


def check_nonempty_list(name: str, value, item_check=None) -> list:
    """A non-empty list/tuple; ``item_check(f"{name}[i]", item)`` validates each element."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"{name}={_fmt(value)} is not a list; {name} must be a non-empty list")
    value = list(value)
    if not value:
        raise ValueError(f"{name}=[] is empty; {name} must be a non-empty list")
    if item_check is not None:
        value = [item_check(f"{name}[{i}]", v) for i, v in enumerate(value)]
    return value

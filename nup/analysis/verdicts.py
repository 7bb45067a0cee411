"""Verdicts: a statement, the number that decides it, its interval and the threshold fixed in advance.

A claim cell prints one line per verdict, ``<statement>: True``, ``False`` or ``undecided``; the
lines are scale-free (no measured number), so the reduced runs of ``make test`` can be compared with a
committed expectation.  The numbers go into ``verdict_table`` (estimate, interval, threshold), which
the notebook shows just before the claim cell.

The threshold a verdict is decided with is the one its sentence prints: a statement writes
``{threshold}`` (``compare``) or ``{target}`` and ``{tolerance}`` (``within``) where the number goes, and
the function fills it in from the same value it decides with, formatted once (``format_number``).  A
verdict built from an ``Estimate`` carries its replicate count and unit, and its line prints them
(``[n = 5 paired seeds]``).

``compare(statement, estimate, interval, op, threshold)`` decides by the interval, not the point:
``True`` when the whole interval lies on the claimed side of the threshold, ``False`` when it lies
wholly on the other side, ``None`` (printed *undecided*) otherwise.  Without an interval (a single
deterministic number) the point decides.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from nup.analysis.stats import Estimate

__all__ = ["Verdict", "compare", "within", "all_of", "format_number", "verdict_line", "claim_lines", "print_claims", "verdict_table",
           "show_verdicts"]

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


@dataclass(frozen=True)
class Verdict:
    statement: str
    holds: bool | None  # None: the interval straddles the threshold (undecided)
    estimate: float = math.nan
    low: float = math.nan
    high: float = math.nan
    threshold: str = ""
    n: int | None = None  # replicates behind the interval (None: a deterministic number)
    unit: str = ""

    def __post_init__(self):
        if not isinstance(self.statement, str) or not self.statement or ": " in self.statement.rstrip(":"):
            raise ValueError(f"statement={self.statement!r} is not allowed; a non-empty string without ': '")
        if self.holds not in (True, False, None):
            raise ValueError(f"holds={self.holds!r} is not allowed; True, False or None (undecided)")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def format_number(x: float) -> str:
    """How a threshold is printed, both in a statement and in the verdict table."""
    return f"{x:g}"


def _fill(statement: str, **numbers: float) -> str:
    for name, value in numbers.items():
        statement = statement.replace("{" + name + "}", format_number(value))
    return statement


def _unpack(estimate, interval) -> tuple[float, Sequence[float] | None, int | None, str]:
    """``(value, interval, n, unit)`` from a number and interval, or from an ``Estimate`` (interval None)."""
    if isinstance(estimate, Estimate):
        if interval is not None:
            raise ValueError("interval must be None when estimate is an Estimate (it carries its own interval)")
        return estimate.value, estimate.interval, estimate.n, estimate.unit
    return estimate, interval, None, ""


def compare(statement: str, estimate: float | Estimate, interval: Sequence[float] | None, op: str,
            threshold: float) -> Verdict:
    """The verdict of ``estimate <op> threshold`` decided by ``interval = (low, high)`` (or by the point
    when ``interval`` is None; an ``Estimate`` brings its own interval and n).  ``{threshold}`` in the
    statement prints ``threshold``.  A non-finite estimate or interval end is never True."""
    if op not in _OPS:
        raise ValueError(f"op={op!r} is not allowed; one of {', '.join(_OPS)}")
    estimate, interval, n, unit = _unpack(estimate, interval)
    statement = _fill(statement, threshold=threshold)
    low, high = (estimate, estimate) if interval is None else interval
    if not (_finite(estimate) and _finite(low) and _finite(high)):
        holds = False
    else:
        test = _OPS[op]
        if test(low, threshold) and test(high, threshold):
            holds = True
        elif not test(low, threshold) and not test(high, threshold):
            holds = False
        else:
            holds = None
    return Verdict(statement, holds, float(estimate), float(low), float(high), f"{op} {format_number(threshold)}", n,
                   unit)


def within(statement: str, estimate: float | Estimate, interval: Sequence[float] | None, target: float,
           tolerance: float) -> Verdict:
    """``|estimate - target| <= tolerance``, decided by the interval like ``compare``: True when the whole
    interval lies in ``[target - tolerance, target + tolerance]``, False when it lies wholly outside.
    ``{target}`` and ``{tolerance}`` in the statement print the numbers decided with."""
    estimate, interval, n, unit = _unpack(estimate, interval)
    statement = _fill(statement, target=target, tolerance=tolerance)
    low, high = (estimate, estimate) if interval is None else interval
    lo_edge, hi_edge = target - tolerance, target + tolerance
    if not (_finite(estimate) and _finite(low) and _finite(high)):
        holds = False
    elif lo_edge <= low and high <= hi_edge:
        holds = True
    elif high < lo_edge or low > hi_edge:
        holds = False
    else:
        holds = None
    return Verdict(statement, holds, float(estimate), float(low), float(high),
                   f"{format_number(target)} +- {format_number(tolerance)}", n, unit)


def all_of(statement: str, cells: Sequence[Verdict], badness: Callable[[Verdict], float] | None = None) -> Verdict:
    """The verdict that ``statement`` holds in every cell: False if a cell is False, undecided if a cell is
    undecided (and none False), True if all are True.  The numbers shown (and n) are the deciding cell's:
    the False (or undecided, or any) cell with the largest ``badness``, default the first such cell."""
    cells = list(cells)
    if not cells:
        raise ValueError("all_of needs at least one cell")
    for outcome in (False, None):
        deciding = [c for c in cells if c.holds is outcome]
        if deciding:
            cell = max(deciding, key=badness) if badness else deciding[0]
            break
    else:
        cell = max(cells, key=badness) if badness else cells[0]
    return Verdict(statement, cell.holds, cell.estimate, cell.low, cell.high, cell.threshold, cell.n, cell.unit)


def verdict_line(verdict: Verdict) -> str:
    word = {True: "True", False: "False", None: "undecided"}[verdict.holds]
    n = f" [n = {verdict.n} {verdict.unit}]".replace("  ]", "]") if verdict.n is not None else ""
    return f"{verdict.statement}{n}: {word}"


def claim_lines(verdicts: Iterable[Verdict]) -> list[str]:
    return [verdict_line(v) for v in verdicts]


def print_claims(verdicts: Iterable[Verdict]) -> None:
    """What a claim cell prints: one scale-free line per verdict."""
    for line in claim_lines(verdicts):
        print(line)


def verdict_table(verdicts: Iterable[Verdict], digits: int = 3) -> pd.DataFrame:
    """Estimate, interval and threshold of each verdict (the numbers behind the claim cell)."""
    rows = [{"statement": v.statement, "estimate": v.estimate, "low": v.low, "high": v.high,
             "threshold": v.threshold, "n": v.n if v.n is not None else "",
             "verdict": {True: "True", False: "False", None: "undecided"}[v.holds]}
            for v in verdicts]
    table = pd.DataFrame(rows, columns=["statement", "estimate", "low", "high", "threshold", "n", "verdict"])
    return table.round({"estimate": digits, "low": digits, "high": digits})


def show_verdicts(verdicts: Iterable[Verdict], digits: int = 3, width: int = 60) -> None:
    """Display ``verdict_table`` in a notebook with the statements in full, wrapped: an HTML table whose
    statement column wraps (``white-space: normal``, at most ~36em wide; JupyterLab and GitHub would
    otherwise keep each statement on one line), and a plain-text table whose statements are wrapped at
    ``width`` characters (for viewers that show ``text/plain``)."""
    import html
    import textwrap

    from IPython.display import display

    table = verdict_table(verdicts, digits)
    cells = [["" if isinstance(x, float) and math.isnan(x) else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))
              for x in row] for row in table.itertuples(index=False)]
    columns = list(table.columns)
    cell = "padding:0.25em 0.6em;vertical-align:top;"
    style = {"statement": cell + "text-align:left;white-space:normal;overflow-wrap:anywhere;min-width:18em;max-width:36em;"}
    head = "".join(f'<th style="{style.get(c, cell + "text-align:right;")}">{html.escape(c)}</th>' for c in columns)
    body = "".join("<tr>" + "".join(f'<td style="{style.get(c, cell + "text-align:right;white-space:nowrap;")}">'
                                    f"{html.escape(v)}</td>" for c, v in zip(columns, row)) + "</tr>" for row in cells)
    markup = f'<table class="dataframe nup-verdicts"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    wrapped = [textwrap.wrap(row[0], width) or [""] for row in cells]
    widths = [max([len(columns[0])] + [len(line) for lines in wrapped for line in lines])]
    widths += [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns) if i > 0]
    lines = ["  ".join([columns[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(columns[1:], widths[1:])]).rstrip()]
    for row, statement in zip(cells, wrapped):
        for k, part in enumerate(statement):
            rest = [v.rjust(w) for v, w in zip(row[1:], widths[1:])] if k == 0 else []
            lines.append("  ".join([part.ljust(widths[0])] + rest).rstrip())
    display({"text/html": markup, "text/plain": "\n".join(lines)}, raw=True)

"""Catapult-phase helpers: ``lambda_0`` of a run, learning rates in units of ``2/lambda_0``, loss-spike
counting, the lazy / catapult / divergent phase of a run, and two cheap NTK diagnostics.

Background (literature, not the paper; ``docs/definitions.md``, "Catapult and EOS"): with MSE
``L = |f - y|^2/(2n)`` and ``K = J J^T/n`` the residuals follow ``r <- (I - eta K) r``.  For
``eta * lambda_0 < 2`` (``lambda_0 = lambda_max(K_0)``) training is *lazy*: the loss decreases
monotonically.  Above 2 the top mode grows, the loss spikes, ``lambda_t`` falls below ``2/eta`` and
training converges (*catapult*, Lewkowycz et al. 2020; the window ends at ``eta * lambda_0 = 4`` in
the two-layer linear model, about 12 reported for ReLU networks); far above, training *diverges*.

* ``initial_eigenvalues(configs)``: ``lambda_max(K_0)`` of many configs at once, as the step-0 ``ntk_lambda`` of cached 0-step
  runs in parallel (Lanczos to a relative tolerance of 1e-4), rounded to 4 significant digits (notebooks 05 and
  06 set their rates from it).
* ``initial_ntk_eigenvalue(config)``: the same for one config (the very model and data ``nup.training.loop.train``
  starts from).
* ``config_for_ratio(config, ratio)``: the config with ``lr = ratio / lambda_0``.
* ``spike_steps(loss, rise)`` / ``count_spikes``: where the loss jumps by a factor ``1 + rise`` above
  its running minimum (one count per excursion, however long).
* ``largest_rise(loss)``: ``max_t loss_t / min_{s<t} loss_s - 1`` (0 for a monotone curve).
* ``classify_phase(loss, diverged, ...)``: ``"lazy"``, ``"catapult"`` or ``"divergent"``; the one phase rule of
  notebooks 05 and 06 (rules in its docstring).
* ``window_edge(ratios, phases)``: the bracket of the upper edge of the catapult window.

The catapult diagnostics ``"ntk_lambda"`` (full-batch ``lambda_max`` of the NTK) and ``"ntk_motion"``
(the motion of the probe kernel's shape) live in ``nup.diagnostics.ntk``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from nup.training.config import RunConfig
from nup.training.loop import build_model_and_data
from nup.training.sweep import sweep
from nup.validation import check_int, check_positive

__all__ = ["initial_ntk_eigenvalue", "initial_eigenvalues", "config_for_ratio", "spike_steps", "count_spikes",
           "largest_rise", "classify_phase", "PHASES", "window_edge", "constant_loss"]

PHASES = ("lazy", "catapult", "divergent")


# ---------------------------------------------------------------------------- lambda_0 and learning rates

def initial_eigenvalues(configs: list[RunConfig], n_jobs: int = 1, digits: int = 4) -> list[float]:
    """``lambda_max(K_0)`` (full training set, the model each config trains) of every config, as the step-0
    value of the ``"ntk_lambda"`` diagnostic of a 0-step run: cached like any run and computed in parallel.
    Rounded to ``digits`` significant digits, so the learning rates set from it do not move (nor miss the
    run cache) when the eigen-solver's last digits do."""
    if not isinstance(configs, (list, tuple)) or not all(isinstance(c, RunConfig) for c in configs):
        raise ValueError(f"configs={configs!r} is not allowed; pass a list of nup.RunConfig")
    digits = check_int("digits", digits, minimum=1, maximum=17)
    probes = [c.replace(steps=0, diagnostics=("ntk_lambda",), diagnostic_every=1, lr=1.0, schedule="constant",
                        schedule_options=(), n_test=0) for c in configs]
    frame = sweep(probes, n_jobs=n_jobs)
    values = frame[frame.metric == "ntk_lambda"].sort_values(["run", "step"]).groupby("run")["value"].first()
    return [float(f"{values[i]:.{digits}g}") for i in range(len(configs))]


def initial_ntk_eigenvalue(config: RunConfig) -> float:
    """``lambda_max(K_0)`` of one config: ``initial_eigenvalues([config])[0]`` (the one way ``lambda_0`` is
    computed, cached and rounded)."""
    if not isinstance(config, RunConfig):
        raise ValueError(f"config={config!r} is not a RunConfig; build one with nup.RunConfig(...)")
    return initial_eigenvalues([config])[0]


def _model_and_data(config: RunConfig):
    model, x, y, _, _ = build_model_and_data(config)
    return model, x, y


def config_for_ratio(config: RunConfig, ratio: float, lambda0: float | None = None) -> RunConfig:
    """``config`` with ``lr = ratio / lambda_0`` (``lambda_0`` measured unless given), so ``eta * lambda_0 = ratio``."""
    ratio = check_positive("ratio", ratio)
    if lambda0 is None:
        lambda0 = initial_ntk_eigenvalue(config)
    lambda0 = check_positive("lambda0", lambda0)
    return config.replace(lr=ratio / lambda0)


def constant_loss(config: RunConfig) -> float:
    """The loss of the best constant output, ``|y - mean(y)|^2/(2n)`` (MSE runs): what a network that
    stopped depending on its input would reach."""
    _, _, y = _model_and_data(config)
    y = y.double()
    return float(((y - y.mean(dim=0)) ** 2).sum() / (2 * y.shape[0]))


# ---------------------------------------------------------------------------- loss curves


def _curve(loss) -> np.ndarray:
    values = np.asarray(loss, dtype=float).reshape(-1)
    if values.size == 0:
        raise ValueError("loss is empty; pass the loss values of a run in step order")
    return values


def spike_steps(loss: Sequence[float], rise: float = 0.2) -> np.ndarray:
    """Indices where a loss spike starts: the loss exceeds ``(1 + rise)`` times its running minimum.

    One spike is one excursion: it ends once the loss is back below ``peak/(1 + rise)``, and the
    running minimum restarts there.  Non-finite values end the scan (a diverged run).
    """
    rise = check_positive("rise", rise)
    values = _curve(loss)
    starts = []
    low, peak, in_spike = values[0], None, False
    for t in range(1, len(values)):
        v = values[t]
        if not math.isfinite(v):
            break
        if in_spike:
            peak = max(peak, v)
            if v < peak / (1 + rise):
                in_spike, low = False, v
        elif v > (1 + rise) * low:
            starts.append(t)
            in_spike, peak = True, v
        else:
            low = min(low, v)
    return np.asarray(starts, dtype=int)


def count_spikes(loss: Sequence[float], rise: float = 0.2) -> int:
    """How many loss spikes (see ``spike_steps``)."""
    return int(len(spike_steps(loss, rise)))


def largest_rise(loss: Sequence[float]) -> float:
    """``max_t loss_t / min_{s<t} loss_s - 1`` over the finite prefix; 0 when the loss never rises, inf
    when it becomes non-finite."""
    values = _curve(loss)
    finite = np.isfinite(values)
    if not finite.all():
        return math.inf
    if len(values) < 2:
        return 0.0
    running_min = np.minimum.accumulate(values)[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(running_min > 0, values[1:] / running_min, np.where(values[1:] > 0, np.inf, 1.0))
    return float(max(0.0, ratios.max() - 1))


def classify_phase(loss: Sequence[float], diverged: bool = False, rise: float = 0.05, settle: float = 0.5,
                   blowup: float = 1e4, lambda_ratio: float | None = None, dead: float = 1e-6,
                   baseline: float | None = None, accuracy: float | None = None,
                   chance: float | None = None) -> str:
    """The phase of a run from its loss curve (values in step order): the one phase rule of notebooks 05
    and 06.

    * ``"divergent"``: the run diverged (``diverged``, a non-finite loss, or a loss above ``blowup``
      times the initial one), it did not come back (final loss not below ``settle`` times the
      initial one; ``settle = 1``: it ended above its initial loss), it ended dead
      (``lambda_ratio = lambda_end/lambda_0``, if given, below ``dead``: a ReLU network whose units
      all died after a blow-up), it ended at chance (``accuracy``, the final accuracy, not above
      ``chance``, both given), or it spiked and came back no better than ``baseline`` (if given; e.g.
      ``constant_loss(config)``, the loss of the best constant output): it died in its spike;
    * ``"lazy"``: otherwise, if the loss never rose by more than ``rise`` above its running minimum
      (it decreased, nearly monotonically).  A run without a spike that is merely slow stays lazy
      even when it ends above ``baseline``;
    * ``"catapult"``: otherwise: it came back after at least one loss spike larger than ``rise``.

    A divergent run is never a catapult, however long it spiked.  Oscillations late in a run
    (Edge-of-Stability behaviour) do not make a run divergent.
    """
    values = _curve(loss)
    check_positive("rise", rise)
    check_positive("settle", settle)
    check_positive("blowup", blowup)
    check_positive("dead", dead)
    if (accuracy is None) != (chance is None):
        raise ValueError(f"accuracy={accuracy!r} and chance={chance!r}: pass both (the final accuracy and the "
                         "accuracy of chance, e.g. 0.1 for ten balanced classes) or neither")
    if diverged or not np.isfinite(values).all() or values.max() > blowup * values[0]:
        return "divergent"
    if not values[-1] < settle * values[0]:
        return "divergent"
    if lambda_ratio is not None and not lambda_ratio >= dead:  # NaN counts as dead
        return "divergent"
    if accuracy is not None and not accuracy > chance:  # NaN counts as chance
        return "divergent"
    if largest_rise(values) <= rise:
        return "lazy"
    if baseline is not None and not values[-1] < baseline:
        return "divergent"
    return "catapult"


def window_edge(ratios: Sequence[float], phases: Sequence[str]) -> tuple[float, float]:
    """``(lo, hi)``: the largest ratio that did not diverge below the first divergent ratio, and that ratio.

    The upper edge of the catapult window lies in ``[lo, hi)``; ``hi`` is ``inf`` when no run diverged
    and ``lo`` is ``nan`` when the smallest ratio already diverged.
    """
    ratios, phases = [float(r) for r in ratios], list(phases)
    if not ratios or len(ratios) != len(phases):
        raise ValueError(f"ratios and phases must be non-empty and of the same length, got {len(ratios)} and "
                         f"{len(phases)}; pass the eta*lambda_0 of each run with its phase")
    pairs = sorted(zip(ratios, phases))
    for phase in (p for _, p in pairs):
        if phase not in PHASES:
            raise ValueError(f"phase {phase!r} is not allowed; phases are {', '.join(PHASES)}")
    lo = math.nan
    for ratio, phase in pairs:
        if phase == "divergent":
            return lo, ratio
        lo = ratio
    return lo, math.inf

"""Training diagnostics, looked up by name from ``RunConfig.diagnostics``.

A diagnostic is a factory ``factory(ctx) -> callable(step, ctx, preactivations) -> [(metric, layer, value)]``
(``ctx`` a ``nup.diagnostics.context.TrainContext``; ``preactivations`` the training forward pass's, or ``None``
in mini-batch runs), optionally with ``after_step(step, ctx)`` called after each optimizer step.
The built-ins are listed in ``DIAGNOSTICS`` below, not registered by importing modules;
``register_diagnostic(name, factory)`` adds your own.

* ``"updates"`` (``updates.py``): update norms, distance from init, update cosines, every
  ``diagnostic_every`` steps; ``"updates_every_step"``: the same at every step; ``"update_lags"``:
  cosines of multi-step updates (2 and 10 steps) with the cumulative update, at every step.
* ``"preactivations"`` (``preactivations.py``): relative preactivation change on a probe batch.
* ``"ntk"``, ``"ntk_lambda"``, ``"ntk_motion"`` (``ntk.py``): the empirical NTK's spectrum, change, motion.
* ``"sharpness"`` (``sharpness.py``): the top Hessian eigenvalue.
"""

from collections.abc import Callable

from nup.diagnostics.ntk import NTKLambda, NTKMotion, NTKTracker
from nup.diagnostics.preactivations import PreactivationChange
from nup.diagnostics.sharpness import SharpnessTracker
from nup.diagnostics.updates import EveryStepUpdateTracker, LaggedUpdateCosine, UpdateTracker, cosine

__all__ = ["DIAGNOSTICS", "register_diagnostic", "UpdateTracker", "EveryStepUpdateTracker", "LaggedUpdateCosine",
           "PreactivationChange", "NTKTracker", "NTKLambda",
           "NTKMotion", "SharpnessTracker", "cosine"]

DIAGNOSTICS: dict[str, Callable] = {
    "updates": UpdateTracker,
    "updates_every_step": EveryStepUpdateTracker,
    "update_lags": LaggedUpdateCosine,
    "preactivations": PreactivationChange,
    "ntk": NTKTracker,
    "ntk_lambda": NTKLambda,
    "ntk_motion": NTKMotion,
    "sharpness": SharpnessTracker,
}


def register_diagnostic(name: str, factory: Callable) -> Callable:
    """Make ``RunConfig(diagnostics=(name,))`` call ``factory(ctx)``; returns ``factory``."""
    DIAGNOSTICS[name] = factory
    return factory

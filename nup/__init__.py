"""nup: νP (the Normalized Update Parameterization), its baselines and diagnostics.

A runnable companion to D. Terjék, *MLPs at the EOC: Dynamics of Feature Learning*
(arXiv 2502.13110, 2025).  See the README for which definitions the abstract states and
which are this project's reading.
"""

__version__ = "0.1.0"

from nup.activations import ACTIVATIONS, Activation, get_activation, leaky_relu
from nup.mlp import MLP, WIDTH_PROFILES, hidden_widths
from nup.optim import NORMALIZE_MODES, NormalizedSGD
from nup.param import MuP, NTK, NuP, PARAMETERIZATIONS, SP, Parameterization, get_parameterization
from nup.device import resolve_device, resolve_dtype
from nup.training import DIAGNOSTICS, SCHEDULES, RunConfig, RunResult, mse_loss, train
from nup import diagnostics  # noqa: F401  (registers the "updates" and "preactivations" diagnostics)
from nup import kernels, ntk, curvature  # noqa: F401
from nup.cache import is_cached, run
from nup.plotting import savefig
from nup import sweep  # noqa: F401  (the module: nup.sweep.grid, nup.sweep.sweep)
from nup import schedule  # noqa: F401  (registers the "geometric" and "warmup_cosine" schedules)
from nup import catapult  # noqa: F401  (registers the "ntk_lambda" and "ntk_motion" diagnostics)

__all__ = [
    "__version__", "Activation", "ACTIVATIONS", "get_activation", "leaky_relu", "MLP", "WIDTH_PROFILES",
    "hidden_widths", "NormalizedSGD", "NORMALIZE_MODES", "Parameterization", "SP", "NTK", "MuP", "NuP",
    "PARAMETERIZATIONS", "get_parameterization", "resolve_device", "resolve_dtype", "RunConfig", "RunResult",
    "train", "run", "is_cached", "mse_loss", "DIAGNOSTICS", "SCHEDULES", "savefig",
]

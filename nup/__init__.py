"""nup: νP (the Normalized Update Parameterization), its baselines and diagnostics.

A runnable companion to D. Terjék, *MLPs at the EOC: Dynamics of Feature Learning*
(arXiv 2502.13110, 2025).  See the README for which definitions the abstract states and
which are this project's reading, and ``docs/definitions.md`` for the math.

Quick start::

    import nup
    model = nup.NuP().build(784, 10, depth=8, width=16)       # EOC init, NTK multipliers, k^2 m widths
    opt = nup.NuP().optimizer(model, lr=1.0)                   # per-layer normalized update (NormalizedSGD)
    cfg = nup.RunConfig(parameterization="nup", depth=8, width=16, lr=1.0, steps=100)
    result = nup.run(cfg)                                      # one training run, cached under results/
    result.df                                                  # long-format frame: step, metric, layer, value
    frame = nup.sweep([cfg.replace(lr=lr) for lr in (0.5, 1.0, 2.0)], n_jobs=2)   # cached, in parallel
    # interval estimates: nup.analysis.stats; verdicts: nup.analysis.verdicts; FLOPs: nup.core.cost

Layout (each folder may import the ones above it, never below):

    nup/validation.py   argument checks shared by everything
    nup/core/           activations, the MLP (forward and backward), parameterizations, optimizer, device
    nup/theory/         infinite-width kernels and the exact EOC sampler
    nup/linalg/         Lanczos, Hessian-vector products, empirical-NTK products (no training loop)
    nup/diagnostics/    per-step diagnostics, one registry (DIAGNOSTICS)
    nup/training/          config, loop, data, run cache, sweeps, schedules (SCHEDULES)
    nup/analysis/       frames, fits, best learning rate, catapult phases, coordinate check
    nup/experiments/    one module per notebook: parameter schema, run, claims
"""

from nup.version import __version__

from nup.core.activations import ACTIVATIONS, Activation, get_activation, leaky_relu
from nup.core.mlp import MLP, WIDTH_PROFILES, hidden_widths
from nup.core.optim import NORMALIZE_MODES, NormalizedSGD
from nup.core.param import (MuP, NTK, NuP, PARAMETERIZATIONS, SP, Parameterization, Residual,
                            get_parameterization)
from nup.core.device import resolve_device, resolve_dtype
from nup.diagnostics import DIAGNOSTICS, register_diagnostic
from nup.training.schedules import SCHEDULES, GeometricLR, register_schedule, warmup_cosine
from nup.training.config import RunConfig, RunResult, mse_loss
from nup.training.loop import train
from nup.training.cache import is_cached, run
from nup.training.sweep import grid, sweep
from nup.plotting import savefig

__all__ = [
    "__version__", "Activation", "ACTIVATIONS", "get_activation", "leaky_relu", "MLP", "WIDTH_PROFILES",
    "hidden_widths", "NormalizedSGD", "NORMALIZE_MODES", "Parameterization", "SP", "NTK", "MuP", "NuP", "Residual",
    "PARAMETERIZATIONS", "get_parameterization", "resolve_device", "resolve_dtype", "RunConfig", "RunResult",
    "train", "run", "is_cached", "mse_loss", "DIAGNOSTICS", "SCHEDULES", "register_diagnostic",
    "register_schedule", "GeometricLR", "warmup_cosine", "grid", "sweep", "savefig",
]

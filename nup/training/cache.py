"""The run cache: ``run(config)`` returns ``train(config)``, computed once.

A run is keyed by a hash of its full configuration (with ``device="auto"`` resolved, and
``threads=None`` resolved to the count the run would use, ``torch.get_num_threads()``; a count of 1
is left out of the key, as every run used 1 thread before ``RunConfig.threads`` existed) and the
``nup`` version, and stored by ``joblib.Memory`` under ``$NUP_RESULTS_DIR`` if set, else ``results/`` in
the repository root when ``nup`` is an editable checkout (a ``pyproject.toml`` beside the package folder),
else ``results/`` in the current working directory (``nup.plotting.default_dir``).
joblib writes each result to a temporary file and renames it, so a killed run leaves a
complete result or none; a result it cannot read is recomputed, with a warning.  After
changing ``nup``'s numerics, bump ``nup.__version__`` or run ``make clean`` (which deletes ``results/``).
"""

from __future__ import annotations

import os
from pathlib import Path

from joblib import Memory

from nup.core.device import resolve_device
from nup.plotting import default_dir
from nup.training.config import RunConfig, RunResult
from nup.training.loop import resolve_threads, train

__all__ = ["run", "is_cached", "results_dir"]


def results_dir() -> Path:
    """``$NUP_RESULTS_DIR`` if set, else ``default_dir("results")`` (the checkout's, or the working directory's)."""
    return Path(os.environ.get("NUP_RESULTS_DIR") or default_dir("results"))


def _config_from_key(values: dict) -> RunConfig:
    """The ``RunConfig`` that a cache key stands for (a key without ``threads`` means 1 thread)."""
    return RunConfig(**{"threads": 1, **values})


def _train_from_dict(config: dict, version: str) -> RunResult:
    # ``version`` is unused here: it is part of the cache key.
    return train(_config_from_key(config))


def _cached_function(cache_dir):
    memory = Memory(location=str(cache_dir or results_dir()), verbose=0)
    return memory.cache(_train_from_dict)


# Fields added after results were cached: left out of the key at their default, so that adding an
# option keeps every earlier result valid (a run at the default is the run from before the field).
KEY_OMITTED_AT_DEFAULT = {"label_noise": 0.0, "optimizer": "sgd", "n_val": 0, "full_loss": True}


def _key(config: RunConfig):
    from nup.version import __version__

    values = config.as_dict()
    values["device"] = resolve_device(config.device).type
    values["threads"] = resolve_threads(config.threads)  # the last bits of a result depend on it
    if values["threads"] == 1:
        del values["threads"]
    for name, default in KEY_OMITTED_AT_DEFAULT.items():
        if values[name] == default:
            del values[name]
    return values, __version__


def run(config: RunConfig, cache: bool = True, cache_dir: str | os.PathLike | None = None) -> RunResult:
    """``train(config)``, read from the cache when this configuration ran before."""
    if not isinstance(config, RunConfig):
        raise ValueError(f"config={config!r} is not a RunConfig; build one with nup.RunConfig(...)")
    values, version = _key(config)
    if not cache:
        return train(_config_from_key(values))
    result = _cached_function(cache_dir)(values, version)
    result.extras.setdefault("threads", 1)  # a result cached before RunConfig.threads: 1 thread
    return result


def is_cached(config: RunConfig, cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether ``run(config)`` would be read from the cache."""
    return _cached_function(cache_dir).check_call_in_cache(*_key(config))

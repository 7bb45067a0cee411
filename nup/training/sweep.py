"""Sweeps: many ``RunConfig`` in, one long-format ``DataFrame`` out.

``grid(depth=[2, 4], lr=[0.1, 1.0])`` spells out a cartesian product as a list of dicts;
``sweep(configs)`` runs each configuration through the run cache (``nup.training.cache.run``), so a
finished run is never computed twice, and stacks the runs' ``(step, metric, layer, value)``
rows with a ``run`` index and one column per config field that varies across the sweep.

Backends (argument ``backend``, else ``$NUP_SWEEP_BACKEND``, else ``"loky"``):

* ``"loky"``: local worker processes through ``joblib.Parallel`` (``n_jobs`` of them;
  ``n_jobs=1`` runs in this process, like ``"serial"``); runs already in the cache are read in this
  process, so a fully cached sweep starts no worker;
* ``"serial"``: one run after the other in this process;
* ``"dask"``: joblib's Dask backend on a ``dask.distributed`` cluster whose scheduler is
  ``scheduler=`` (an address or a ``Client``), else ``$NUP_DASK_SCHEDULER``, else the
  default client of this session.  Uses every worker of the cluster (``n_jobs`` is ignored);
  the workers must see ``cache_dir`` (a shared file system) and have ``nup`` installed.

Faults.  A run that raises is reported, not raised: it gets one row with ``metric="failed"``
and the reason in the ``error`` column.  A worker process that dies (killed, out of memory,
a crash in native code) breaks the whole ``joblib.Parallel`` call; the runs that finished are
kept, the ones that never started are resubmitted, and the ones that were in flight are
bisected until the run that kills its worker runs alone; it is tried ``retries`` more times
before it is reported as failed (in ``"serial"`` a dying run takes the sweep with it, as
there is no worker).  Runs are written to the cache as they finish, so a sweep killed
outright resumes where it stopped, and its local workers exit with it, within a second even after
SIGKILL (``exit_with_parent``), instead of lingering as orphans.  A diverged run is a result like any other
(``diverged``, ``diverged_step``).

Threads.  A run's torch thread count is ``RunConfig.threads``, and its result depends on it in the last
bits (see ``nup.training.loop``).  A config that leaves it ``None`` gets its worker's share of this
machine's cores, ``max(1, cores // n_jobs)`` (``n_jobs`` workers run at once; serially, one run gets all
the cores), or ``sweep(threads=...)``; with Dask, the worker's own default.  So parallel sweeps do not
oversubscribe, and a config that pins ``threads`` gives the same DataFrame bit for bit serially,
through loky or through Dask, whatever the machine's core count.
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from nup.training import cache as nup_cache
from nup.core.device import resolve_device
from nup.diagnostics import DIAGNOSTICS
from nup.training.config import RunConfig, RunResult
from nup.training.schedules import SCHEDULES
from nup.validation import check_choice, check_int

__all__ = ["grid", "sweep", "parallel_map", "RUN_COLUMNS", "worker_threads", "cores", "exit_with_parent", "BACKENDS",
           "CONFIG_FIELDS"]

BACKENDS = ("loky", "serial", "dask")
CONFIG_FIELDS = tuple(f.name for f in fields(RunConfig))
RUN_COLUMNS = ("step", "metric", "layer", "value")  # the long format of a run's frame


# ----------------------------------------------------------------------------------- grid

def grid(**axes) -> list[dict]:
    """The cartesian product of ``axes`` as a list of dicts, last axis varying fastest.

    Each axis is a ``RunConfig`` field name with a non-empty list (tuple, range, array) of
    values; a tuple-valued field takes a list of tuples, e.g. ``classes=[(0, 1), (2, 3)]``.
    """
    if not axes:
        raise ValueError(f"grid() needs at least one axis, e.g. grid(depth=[2, 4]); axes are RunConfig fields: "
                         f"{', '.join(CONFIG_FIELDS)}")
    columns = []
    for name, values in axes.items():
        if name not in CONFIG_FIELDS:
            raise ValueError(f"grid axis {name!r} is not a RunConfig field; choose from {', '.join(CONFIG_FIELDS)}")
        if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
            raise ValueError(f"grid axis {name}={values!r} is not a list; give a non-empty list of values, "
                             f"e.g. {name}=[{values!r}]")
        # ``.item()`` turns numpy scalars into Python ones, so configs hash the same either way.
        values = [v.item() if isinstance(v, np.generic) else v for v in values]
        if not values:
            raise ValueError(f"grid axis {name}=[] is empty; give at least one value")
        columns.append(values)
    return [dict(zip(axes, combo)) for combo in itertools.product(*columns)]


# ---------------------------------------------------------------------------------- sweep

@dataclass
class _Outcome:
    result: RunResult | None = None
    error: str | None = None


def sweep(configs, n_jobs: int = 1, backend: str | None = None, progress: bool = True, cache: bool = True,
          cache_dir: str | os.PathLike | None = None, retries: int = 1, scheduler=None,
          threads: int | None = None, columns=()) -> pd.DataFrame:
    """Run ``configs`` (``RunConfig`` objects or dicts of their fields) and return one DataFrame.

    Columns: ``run`` (the index into ``configs``), every config field whose value differs
    between runs, the runs' ``step, metric, layer, value`` rows, ``diverged``,
    ``diverged_step`` (nullable) and ``error`` (``None`` unless the run failed).  All configs
    are validated before any run starts; a bad one is a ``ValueError`` naming its index and
    field.

    ``n_jobs``: local worker processes (-1: one per core).  ``backend``: ``"loky"``,
    ``"serial"`` or ``"dask"`` (see the module docstring); ``scheduler``: the Dask scheduler
    address or ``Client`` (implies ``backend="dask"``).  ``cache=False`` computes every run
    and stores nothing; ``cache_dir`` defaults to ``nup.training.cache.results_dir()``.  ``retries``:
    how many more times a run whose worker process died is tried.  ``threads``: the torch threads of
    every config that leaves ``RunConfig.threads`` at ``None``; ``None`` gives each worker its share,
    ``max(1, cores // n_jobs)`` (Dask: the worker's default).  Configs that pin ``threads`` keep it.
    """
    configs = _validate_configs(configs)
    columns = tuple(check_choice("columns", name, CONFIG_FIELDS) for name in columns)
    n_jobs = _validate_n_jobs(n_jobs)
    for name, value in (("progress", progress), ("cache", cache)):
        if not isinstance(value, bool):
            raise ValueError(f"{name}={value!r} is not allowed; {name} must be True or False")
    retries = check_int("retries", retries, minimum=0)
    if threads is not None:
        threads = check_int("threads", threads, minimum=1)
    backend = _resolve_backend(backend, scheduler)
    if backend == "loky" and n_jobs == 1:
        backend = "serial"
    if threads is None and backend != "dask":
        threads = worker_threads(n_jobs if backend == "loky" else 1)
    if threads is not None:
        configs = [c if c.threads is not None else c.replace(threads=threads) for c in configs]
    if backend != "dask":
        # On a cluster the workers, not this machine, decide whether CUDA exists.
        for i, config in enumerate(configs):
            try:
                resolve_device(config.device)
            except ValueError as exc:
                raise ValueError(f"configs[{i}]: {exc}") from None
    cache_dir = str(Path(cache_dir if cache_dir is not None else nup_cache.results_dir()).resolve())

    client, own_client = _dask_client(scheduler) if backend == "dask" else (None, False)

    from nup.progress import progress as progress_bar

    # Passing ``disable`` only when progress=False lets TQDM_DISABLE=1 switch the bar off.
    bar = progress_bar(total=len(configs), desc="runs", unit="run", **({} if progress else {"disable": True}))
    try:
        if backend == "serial":
            outcomes = _run_serial(configs, cache, cache_dir, bar)
        else:
            outcomes = _run_parallel(configs, client, n_jobs, cache, cache_dir, retries, bar)
    finally:
        bar.close()
        if own_client:
            client.close()
    failed = [i for i, o in enumerate(outcomes) if o.error is not None]
    if failed:
        runs = f"{failed[:10]}{'...' if len(failed) > 10 else ''}"
        warnings.warn(f"{len(failed)} of {len(configs)} runs failed (runs {runs}); "
                      "their reasons are in the 'error' column", RuntimeWarning, stacklevel=2)
    return _frame(configs, outcomes, columns)


def _validate_configs(configs) -> list[RunConfig]:
    if isinstance(configs, (RunConfig, Mapping)):
        configs = [configs]
    if isinstance(configs, (str, bytes)) or not isinstance(configs, Iterable):
        raise ValueError(f"configs={configs!r} is not a list; configs must be a non-empty list of RunConfig or dicts")
    configs = list(configs)
    if not configs:
        raise ValueError("configs=[] is empty; configs must be a non-empty list of RunConfig or dicts "
                         "(see nup.training.sweep.grid)")
    out = []
    for i, item in enumerate(configs):
        if isinstance(item, RunConfig):
            config = item
        elif isinstance(item, Mapping):
            unknown = [k for k in item if k not in CONFIG_FIELDS]
            if unknown:
                raise ValueError(f"configs[{i}]: {unknown[0]!r} is not a RunConfig field; choose from "
                                 f"{', '.join(CONFIG_FIELDS)}")
            try:
                config = RunConfig(**item)
            except ValueError as exc:
                raise ValueError(f"configs[{i}]: {exc}") from None
        else:
            raise ValueError(f"configs[{i}]={item!r} is not a RunConfig or a dict of RunConfig fields")
        out.append(config)  # validated once, when it was built (RunConfig is frozen)
    return out


def cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def worker_threads(n_jobs: int) -> int:
    """Each of ``n_jobs`` concurrent workers' share of the cores: ``max(1, cores() // n_jobs)``."""
    return max(1, cores() // check_int("n_jobs", n_jobs, minimum=1))


def _validate_n_jobs(n_jobs) -> int:
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, numbers.Integral) or (n_jobs < 1 and n_jobs != -1):
        raise ValueError(f"n_jobs={n_jobs!r} is not allowed; n_jobs must be an integer >= 1, or -1 for all cores")
    return (os.cpu_count() or 1) if n_jobs == -1 else int(n_jobs)


def _resolve_backend(backend, scheduler) -> str:
    if backend is None:
        env = os.environ.get("NUP_SWEEP_BACKEND")
        if env:
            backend = check_choice("NUP_SWEEP_BACKEND", env, BACKENDS)
        else:
            backend = "dask" if scheduler is not None else "loky"
    else:
        check_choice("backend", backend, BACKENDS)
    if scheduler is not None and backend != "dask":
        raise ValueError(f"scheduler={scheduler!r} is only used by backend='dask', not backend={backend!r}")
    return backend


# ------------------------------------------------------------------------------ execution

def _run_one(index: int, config: RunConfig, cache: bool, cache_dir: str, marker_dir: str | None = None,
             registry: dict | None = None):
    """One run, in whichever process executes it; never raises, so one bad run cannot abort
    the joblib call.  Returns ``(index, _Outcome)``."""
    _mark(marker_dir, f"{index}.started")
    if registry:
        # Diagnostics and schedules registered in the parent (a notebook, a test) exist here too.
        DIAGNOSTICS.update(registry["diagnostics"])
        SCHEDULES.update(registry["schedules"])
    try:
        return index, _Outcome(result=nup_cache.run(config, cache=cache, cache_dir=cache_dir))
    except Exception as exc:  # noqa: BLE001 (a failed run is a result)
        return index, _Outcome(error=f"{type(exc).__name__}: {exc}")
    finally:
        _mark(marker_dir, f"{index}.finished")


_WATCHDOG: threading.Thread | None = None


def exit_with_parent(parent_pid: int, poll_seconds: float = 0.2) -> None:
    """Make this local worker process exit (``os._exit``) within ``poll_seconds`` of the death of
    ``parent_pid``, the process that drives the sweep, whatever killed it (SIGKILL included).

    The loky initializer of every worker: a daemon thread polls ``os.getppid()``, which changes
    when the parent dies (the worker is handed to init or a subreaper), so a killed sweep leaves
    no orphans (loky's reusable workers would otherwise wait for work that never comes).  A thread
    rather than ``prctl(PR_SET_PDEATHSIG)``: that signal fires when the *thread* that started the
    worker exits, not the process.  Where ``parent_pid`` is not the direct parent, its existence
    is polled instead (POSIX only).
    """
    global _WATCHDOG
    if _WATCHDOG is not None or parent_pid == os.getpid():
        return
    direct = os.getppid() == parent_pid

    def alive() -> bool:
        if direct:
            return os.getppid() == parent_pid
        if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
            return True
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def watch() -> None:
        while alive():
            time.sleep(poll_seconds)
        os._exit(70)  # nobody is left to report to

    if not alive():
        os._exit(70)
    _WATCHDOG = threading.Thread(target=watch, name="nup-exit-with-parent", daemon=True)
    _WATCHDOG.start()


def _mark(marker_dir: str | None, name: str) -> None:
    """Tells the parent how far a run got, should its worker die before the result arrives.
    A worker that does not share the parent's file system leaves no markers visible there;
    the parent then suspects every unfinished run."""
    if marker_dir is not None:
        try:
            Path(marker_dir, name).touch()
        except OSError:
            pass


def _run_serial(configs, cache, cache_dir, bar) -> list[_Outcome]:
    outcomes = []
    for i, config in enumerate(configs):
        outcomes.append(_run_one(i, config, cache, cache_dir)[1])
        bar.update()
    return outcomes


def _registry(configs) -> dict:
    """The factories of the diagnostics and schedules the configs name (pickled to workers)."""
    diagnostics = {name for c in configs for name in c.diagnostics}
    return {"diagnostics": {name: DIAGNOSTICS[name] for name in diagnostics},
            "schedules": {c.schedule: SCHEDULES[c.schedule] for c in configs}}


def _run_parallel(configs, client, n_jobs, cache, cache_dir, retries, bar) -> list[_Outcome]:
    """Run everything at once; after a worker death, bisect the runs that were in flight.

    A dead worker fails the whole joblib call.  Runs that had finished are kept, runs that had
    not started go back to the main batch, and the runs in flight (found by their start
    markers) are split in halves that run as separate batches: the half without the culprit
    completes, the other is split again, until the culprit runs alone.  Only a death alone
    counts as an attempt, so innocent runs are never charged for another's crash.
    """
    outcomes: dict[int, _Outcome] = {}
    attempts: dict[int, int] = {}
    registry = _registry(configs)
    pending = list(range(len(configs)))  # not yet started
    if cache and client is None:
        # Local workers would only read these back from the cache: read them here, and start no
        # worker at all when every run is cached (a re-run notebook).  Not with Dask, whose workers
        # may resolve device="auto" differently from this process.
        for i in pending:
            if nup_cache.is_cached(configs[i], cache_dir=cache_dir):
                outcomes[i] = _run_one(i, configs[i], cache, cache_dir)[1]
                bar.update()
        pending = [i for i in pending if i not in outcomes]
    suspects: deque[list[int]] = deque()  # groups that were in flight when a worker died
    # With Dask, joblib uses every worker of the cluster; locally, n_jobs=1 would run in this process.
    # Local workers exit with this process, even one killed with SIGKILL (exit_with_parent).
    engine = (dict(backend="dask", client=client) if client is not None else
              dict(backend="loky", initializer=exit_with_parent, initargs=(os.getpid(),)))
    n_jobs = -1 if client is not None else max(n_jobs, 2)
    marker_root = tempfile.mkdtemp(prefix="nup-sweep-")
    try:
        while pending or suspects:
            if pending:
                batch, pending = pending, []
            else:
                batch = suspects.popleft()
            markers = tempfile.mkdtemp(dir=marker_root)
            tasks = [(i, configs[i], cache, cache_dir, markers, registry) for i in batch]
            done, error = _run_batch(tasks, engine, n_jobs, outcomes, bar)
            if error is None:
                continue
            reason = f"{type(error).__name__}: {' '.join(str(error).split())}"
            if len(batch) == 1:  # alone in its worker: this run killed it
                i = batch[0]
                attempts[i] = attempts.get(i, 0) + 1
                if attempts[i] > retries:
                    tries = f"{attempts[i]} attempt{'s' if attempts[i] > 1 else ''}"
                    outcomes[i] = _Outcome(error=f"the worker running this configuration died or failed "
                                                 f"({tries}): {reason}")
                    bar.update()
                else:
                    suspects.append(batch)
                continue
            unfinished = [i for i in batch if i not in done]
            # In flight: started in a worker and not finished there (a finished run whose result
            # was lost with the batch is innocent; it simply runs again, or is read from the cache).
            marks = set(os.listdir(markers))
            in_flight = [i for i in unfinished if f"{i}.started" in marks and f"{i}.finished" not in marks]
            if not in_flight:  # no markers (or a death before any): suspect them all
                in_flight = unfinished
            pending = [i for i in unfinished if i not in in_flight] + pending
            half = (len(in_flight) + 1) // 2
            suspects.extend(group for group in (in_flight[:half], in_flight[half:]) if group)
    finally:
        shutil.rmtree(marker_root, ignore_errors=True)
    return [outcomes[i] for i in range(len(configs))]


def _run_batch(tasks, engine, n_jobs, outcomes, bar) -> tuple[set[int], Exception | None]:
    """Run ``tasks`` through joblib, storing outcomes as they arrive; ``(indices done, the
    exception that stopped the batch or None)``."""
    import joblib

    done: set[int] = set()
    try:
        with joblib.parallel_config(**engine):
            # batch_size=1: one run per task, so a death loses only the runs in flight.
            parallel = joblib.Parallel(n_jobs=n_jobs, batch_size=1, return_as="generator_unordered")
            for i, outcome in parallel(joblib.delayed(_run_one)(*task) for task in tasks):
                outcomes[i] = outcome
                done.add(i)
                bar.update()
    except Exception as exc:  # noqa: BLE001 (a worker died, or the engine failed: _run_one itself never raises)
        return done, exc
    return done, None


def _dask_client(scheduler):
    """``(client, whether we created it)`` for ``scheduler`` (address or Client), else
    ``$NUP_DASK_SCHEDULER``, else the session's default client."""
    try:
        import distributed
    except ImportError as exc:
        raise ImportError("backend='dask' needs dask.distributed, which is an optional extra: "
                          "pip install 'nup[dask]' (or pip install 'dask[distributed]')") from exc
    if isinstance(scheduler, distributed.Client):
        return scheduler, False
    address = scheduler if scheduler is not None else os.environ.get("NUP_DASK_SCHEDULER")
    if address is not None:
        if not isinstance(address, str) or not address:
            raise ValueError(f"scheduler={address!r} is not allowed; give a scheduler address such as "
                             "'tcp://10.0.0.1:8786' or a dask.distributed.Client")
        return distributed.Client(address, set_as_default=False), True
    try:
        return distributed.default_client(), False
    except ValueError:
        raise ValueError("backend='dask' needs a scheduler: pass scheduler='tcp://host:8786' (or a "
                         "dask.distributed.Client), set NUP_DASK_SCHEDULER, or create a Client first") from None


# -------------------------------------------------------------------------------- results

def _frame(configs: list[RunConfig], outcomes: list[_Outcome], columns=()) -> pd.DataFrame:
    first = configs[0]
    varying = [name for name in CONFIG_FIELDS
               if name in columns or any(getattr(c, name) != getattr(first, name) for c in configs)]
    parts = []
    for outcome in outcomes:
        if outcome.result is not None:
            parts.append(outcome.result.df[list(RUN_COLUMNS)])
        else:  # one row that says so; step 0 keeps the column an integer
            parts.append(pd.DataFrame({"step": [0], "metric": ["failed"], "layer": [0], "value": [math.nan]}))
    lengths = [len(p) for p in parts]
    run = np.repeat(np.arange(len(configs)), lengths)
    frame = pd.concat(parts, ignore_index=True).astype({"step": "int64", "layer": "int64", "value": "float64"})

    def per_run(values, dtype=None) -> pd.Series:
        """One value per run, repeated over that run's rows."""
        return pd.Series(values, dtype=dtype).take(run).reset_index(drop=True)

    frame.insert(0, "run", run)
    for position, name in enumerate(varying, start=1):
        values = [getattr(c, name) for c in configs]
        # Tuples and None stay Python objects (pandas would otherwise turn None into NaN).
        mixed = any(v is None or isinstance(v, tuple) for v in values)
        frame.insert(position, name, per_run(values, object if mixed else None))
    diverged_step = [o.result.diverged_step if o.result is not None else None for o in outcomes]
    frame["diverged"] = per_run([s is not None for s in diverged_step], bool)
    frame["diverged_step"] = per_run(diverged_step, "Int64")
    frame["error"] = per_run([o.error for o in outcomes], object)
    return frame


def _threaded(fn, args):
    from nup.training.loop import torch_threads

    with torch_threads():
        return fn(*args)


def parallel_map(fn: Callable, tasks: Sequence[tuple], n_jobs: int = 1, desc: str | None = None) -> list:
    """``[fn(*task) for task in tasks]``, in order, each call under ``nup.training.loop.THREADS`` torch
    threads, in ``n_jobs`` worker processes (loky, whose workers exit with this process as ``sweep``'s
    do); the results do not depend on ``n_jobs``.  For computations that are not training runs (spectra,
    kernels); ``fn`` must be a module-level function (it is pickled by reference)."""
    from nup.progress import progress

    tasks = list(tasks)
    if n_jobs == 1 or len(tasks) < 2:
        return [_threaded(fn, t) for t in progress(tasks, desc=desc)]
    import joblib

    with joblib.parallel_config(backend="loky", initializer=exit_with_parent, initargs=(os.getpid(),)):
        results = joblib.Parallel(n_jobs=n_jobs, return_as="generator")(
            joblib.delayed(_threaded)(fn, t) for t in tasks)
        return list(progress(results, total=len(tasks), desc=desc))

"""Training runs: one frozen ``RunConfig`` in, one long-format ``DataFrame`` out.

``train(config)`` builds the data, the model (through its parameterization), the optimizer
(``build_optimizer``: the parameterization's SGD, or Adam) and an optional learning-rate schedule,
runs full-batch GD (``batch_size=None``) or mini-batch SGD, and records ``(step, metric, layer,
value)`` rows; ``layer = 0`` means the whole network.  A run whose loss or gradient becomes NaN or
inf stops and is returned with ``diverged_step`` set: divergence is a result, not an exception.  The gradient
check is one host sync per step: inside ``NormalizedSGD.step`` (``check_finite=True``; it reads the norms the
normalized steps compute anyway, and moves nothing when a gradient is not finite), or, for Adam, one fused
reduction before the step (``nup.core.optim.gradients_finite``).

Threads.  A run executes under ``RunConfig.threads`` torch intra-op threads (which also set MKL's
count), set on entry and restored on exit (``torch_threads``); ``threads=None`` (the default) takes
the machine's default, the calling process's ``torch.get_num_threads()`` when the run starts, so a
single run uses the machine.  The count used is recorded in ``RunResult.extras["threads"]`` and is
part of the run's cache key (``nup.training.cache``; left out at 1, the count every run used before
the option existed, so earlier results keep their keys).  The count changes the last bits of a
result, which the training dynamics then amplify: MKL splits the inner dimension of some matrix
products across threads (small outputs with a long inner dimension, e.g. the last layer's weight
gradient ``dY^T h``), and ATen splits reductions over more than 32,768 elements (e.g. the MSE sum at
``n_train > 3276``).  So a fixed count gives the same DataFrame, bit for bit, on any machine and
through any sweep backend, and two counts in general do not; notebooks pin theirs.  ``nup.training.sweep``
gives each of its ``n_jobs`` workers ``max(1, cores // n_jobs)`` threads.  See the README for what
remains machine-dependent (the CPU's vector instruction set, CUDA).

Data.  ``n_val > 0`` holds a validation split out of the training split: one class-balanced draw of
``n_train + n_val`` training images, of which the last ``n_val`` are never trained on
(``load_validation``; ``val_loss`` and ``val_accuracy`` at each diagnostic step, like the test
metrics).  The draws are memoized per process (``_load_splits``), so the runs of a sweep that share
their data load it once; the tensors are shared between those runs and never modified in place.

The config, result and context types live in ``nup.training.config``.
"""


from __future__ import annotations

import math
import threading
from collections import OrderedDict
from contextlib import contextmanager

import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from nup.core.device import resolve_device, resolve_dtype
from nup.core.optim import gradients_finite
from nup.diagnostics import DIAGNOSTICS
from nup.training import data as nup_data
from nup.training.config import LOSS_FUNCTIONS, RunConfig, RunResult, TrainContext
from nup.training.schedules import SCHEDULES
from nup.validation import check_int

__all__ = ["train", "build_model_and_data", "build_optimizer", "load_data", "load_validation",
           "torch_threads", "resolve_threads", "THREADS"]

THREADS = 1  # the count ``torch_threads()`` pins when given none (helpers outside train(), e.g. the experiments')

_threads_lock = threading.Lock()
_threads_users = 0
_threads_before: int | None = None
_blas_limits = None  # threadpoolctl's handle while some run is inside torch_threads


def resolve_threads(threads: int | None) -> int:
    """The torch thread count a run with ``RunConfig.threads = threads`` uses: ``threads``, or for
    ``None`` the machine's default, ``torch.get_num_threads()`` now."""
    return torch.get_num_threads() if threads is None else check_int("threads", threads, minimum=1)


@contextmanager
def torch_threads(threads: int | None = None):
    """Run the body under ``threads`` (default ``THREADS``) torch intra-op threads, and as many threads in
    the BLAS libraries numpy and scipy load (OpenBLAS, MKL: threadpoolctl), then restore both.  The BLAS
    pin matters as much as torch's: numpy's OpenBLAS splits work by its own thread count, so the last bits
    of a numpy eigendecomposition otherwise follow the machine.

    ``torch.set_num_threads`` is process-wide, so concurrent users (runs in several Python threads
    of one process, e.g. a threaded Dask worker) share one count: the first in records the previous
    count, the last out restores it, and nobody restores it while another run is still inside.
    """
    global _threads_users, _threads_before, _blas_limits
    threads = THREADS if threads is None else check_int("threads", threads, minimum=1)
    with _threads_lock:
        if _threads_users == 0:
            _threads_before = torch.get_num_threads()
            _blas_limits = threadpool_limits(limits=threads, user_api="blas")
        elif torch.get_num_threads() != threads:
            raise ValueError(f"threads={threads} is not allowed while another run in this process uses "
                             f"{torch.get_num_threads()} torch threads; runs in one process share one count")
        _threads_users += 1
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                _blas_limits.restore_original_limits()
                _blas_limits = None
                if torch.get_num_threads() != _threads_before:
                    torch.set_num_threads(_threads_before)


def load_data(config: RunConfig, device: torch.device, dtype: torch.dtype):
    """``(x, y, (x_test, y_test))``; targets are one-hot for MSE and labels for cross-entropy.  With
    ``n_val > 0`` the training samples are the first ``n_train`` of one draw of ``n_train + n_val``."""
    x, y, _, test = _load_splits(config, device, dtype)
    return x, y, test


def load_validation(config: RunConfig, device: torch.device, dtype: torch.dtype):
    """``(x_val, y_val)``: the last ``n_val`` samples of the training draw, which ``load_data`` leaves out of
    the training samples; ``(None, None)`` when ``n_val = 0``."""
    return _load_splits(config, device, dtype)[2]


# The data-determining fields of a config: the key of the per-process memo of recent draws.
_DATA_FIELDS = ("dataset", "loss", "n_train", "n_val", "n_test", "classes", "data_seed", "label_noise")
_SPLITS: OrderedDict = OrderedDict()
_MAX_SPLITS = 2


def _load_splits(config: RunConfig, device: torch.device, dtype: torch.dtype):
    """``(x, y, (x_val, y_val), (x_test, y_test))``, memoized for the last ``_MAX_SPLITS`` data configurations."""
    key = (*(getattr(config, name) for name in _DATA_FIELDS), str(device), dtype)
    if key in _SPLITS:
        _SPLITS.move_to_end(key)
        return _SPLITS[key]
    n, none = config.n_train, (None, None)
    if config.dataset == "teacher":
        x, y = nup_data.teacher_task(n + config.n_test, seed=config.data_seed, dtype=dtype, device=device)
        splits = x[:n], y[:n], none, (x[n:], y[n:]) if config.n_test else none
    else:
        target = "onehot" if config.loss == "mse" else "labels"
        x, y = nup_data.load_fashion_mnist(n + config.n_val, split="train", seed=config.data_seed, target=target,
                                           dtype=dtype, device=device, classes=config.classes,
                                           label_noise=config.label_noise)  # the test labels stay clean
        test = none
        if config.n_test:
            test = nup_data.load_fashion_mnist(config.n_test, split="test", seed=config.data_seed, target=target,
                                               dtype=dtype, device=device, classes=config.classes)
        splits = x[:n], y[:n], (x[n:], y[n:]) if config.n_val else none, test
    _SPLITS[key] = splits
    while len(_SPLITS) > _MAX_SPLITS:
        _SPLITS.popitem(last=False)
    return splits


def build_model_and_data(config: RunConfig):
    """``(model, x, y, x_test, y_test)``: the initialized model and the data ``train(config)`` starts from."""
    device, dtype = resolve_device(config.device), resolve_dtype(config.dtype)
    x, y, (x_test, y_test) = load_data(config, device, dtype)
    d_out = (len(config.classes) if config.classes else 10) if config.loss == "ce" else y.shape[1]
    model = config.build_parameterization().build(x.shape[1], d_out, config.depth, config.width, config.activation,
                                                  seed=config.seed, dtype=dtype, device=device)
    return model, x, y, x_test, y_test


def build_optimizer(config: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """``optimizer="sgd"``: the parameterization's ``NormalizedSGD`` (its update mode, ``momentum``, the
    steering options with ``steer_seed = config.seed``, and its finite check on); ``"adam"``:
    ``torch.optim.Adam`` (betas 0.9, 0.999) over the same per-layer groups, so per-layer rates carry over."""
    parameterization = config.build_parameterization()  # the training rule comes from the config, not the model
    if config.optimizer == "adam":
        return torch.optim.Adam(parameterization.param_groups(model, config.lr), lr=config.lr)
    steering = dict(steer_beta=config.steer_beta, steer_mode=config.steer_mode, steer_seed=config.seed) \
        if config.steer_beta else {}
    return parameterization.optimizer(model, config.lr, momentum=config.momentum, check_finite=True, **steering)


def train(config: RunConfig) -> RunResult:
    """Run one configuration under ``config.threads`` torch threads (``None``: the machine's default,
    ``torch.get_num_threads()``); the count used is in ``extras["threads"]``.  See the module docstring.
    ``config`` was validated when it was built (a ``RunConfig`` is frozen), so it is not checked again."""
    threads = resolve_threads(config.threads)
    with torch_threads(threads):
        result = _train(config)
    result.extras = {**result.extras, "threads": threads}
    return result


def _train(config: RunConfig) -> RunResult:
    torch.manual_seed(config.seed)
    model, x, y, x_test, y_test = build_model_and_data(config)
    device = x.device
    x_val, y_val = load_validation(config, device, x.dtype)
    optimizer = build_optimizer(config, model)
    ctx = TrainContext(config, model, optimizer, x, y, LOSS_FUNCTIONS[config.loss], x_test, y_test,
                       x_val=x_val, y_val=y_val)
    scheduler = SCHEDULES[config.schedule](ctx)
    diagnostics = [DIAGNOSTICS[name](ctx) for name in config.diagnostics]
    batches = _batches(config, device)
    params = [p for p in model.parameters() if p.requires_grad]
    checks_itself = getattr(optimizer, "check_finite", False)

    rows: list[tuple[int, str, int, float]] = []
    diverged_step = None
    for step in range(config.steps + 1):
        idx = next(batches)
        xb, yb = (x, y) if idx is None else (x[idx], y[idx])
        out, preacts = model(xb, return_preactivations=True)
        loss = ctx.loss_fn(out, yb)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            diverged_step = step
            break
        is_last = step == config.steps
        if step % config.record_every == 0 or is_last:
            rows.append((step, "loss" if idx is None else "batch_loss", 0, loss_value))
            rows.append((step, "lr", 0, optimizer.param_groups[-1]["lr"]))
        if step % config.diagnostic_every == 0 or is_last:
            with torch.no_grad():
                if idx is not None and config.full_loss:
                    rows.append((step, "loss", 0, ctx.loss_fn(model(x), y).item()))
                if x_test is not None or x_val is not None:
                    rows.extend((step, *r) for r in _test_metrics(ctx))
            for diagnostic in diagnostics:
                rows.extend((step, *r) for r in diagnostic(step, ctx, preacts if idx is None else None))
        if is_last:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if checks_itself:
            optimizer.step()  # moves nothing when a gradient is not finite
            finite = optimizer.last_step_finite
        else:
            finite = gradients_finite([p.grad for p in params if p.grad is not None])
            if finite:
                optimizer.step()
        if not finite:
            diverged_step = step
            break
        for diagnostic in diagnostics:
            after_step = getattr(diagnostic, "after_step", None)
            if after_step is not None:
                rows.extend((step, *r) for r in after_step(step, ctx))
        if scheduler is not None:
            scheduler.step()
    rows.extend(getattr(scheduler, "log_rows", ()))  # e.g. GeometricLR's schedule_eigenvalue / schedule_eta
    if diverged_step is not None:
        rows.append((diverged_step, "diverged", 0, float(diverged_step)))
    df = pd.DataFrame(rows, columns=["step", "metric", "layer", "value"])
    df = df.astype({"step": "int64", "layer": "int64", "value": "float64"})
    return RunResult(config, df, diverged_step, ctx.state.get("extras", {}))


def _test_metrics(ctx: TrainContext):
    """``val_loss``, ``val_accuracy`` (with ``n_val``), ``test_loss``, ``test_accuracy`` (with ``n_test``)."""
    rows = []
    for prefix, x, y in (("val", ctx.x_val, ctx.y_val), ("test", ctx.x_test, ctx.y_test)):
        if x is None:
            continue
        out = ctx.model(x)
        rows.append((f"{prefix}_loss", 0, ctx.loss_fn(out, y).item()))
        labels = y if ctx.config.loss == "ce" else y.argmax(dim=1)
        if ctx.config.dataset != "teacher":
            rows.append((f"{prefix}_accuracy", 0, (out.argmax(dim=1) == labels).double().mean().item()))
    return rows


def _batches(config: RunConfig, device: torch.device):
    """Index tensors of seeded mini-batches (reshuffled every epoch), or ``None`` forever for full batch."""
    if config.batch_size is None or config.batch_size == config.n_train:
        while True:
            yield None
    generator = torch.Generator().manual_seed(10_007 + config.seed)
    while True:
        perm = torch.randperm(config.n_train, generator=generator)
        for start in range(0, config.n_train - config.batch_size + 1, config.batch_size):
            yield perm[start:start + config.batch_size].to(device)

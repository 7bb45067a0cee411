"""Training runs: one frozen ``RunConfig`` in, one long-format ``DataFrame`` out.

``train(config)`` builds the data, the model (through its parameterization), the optimizer
and an optional learning-rate schedule, runs full-batch GD (``batch_size=None``) or
mini-batch SGD, and records ``(step, metric, layer, value)`` rows; ``layer = 0`` means the
whole network.  A run whose loss or gradient becomes NaN or inf stops and is returned with
``diverged_step`` set: divergence is a result, not an exception.

Diagnostics and schedules are looked up by name in ``DIAGNOSTICS`` and ``SCHEDULES``, so the
config stays a plain hashable value that the run cache (``nup.cache``) can key on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import pandas as pd
import torch

from nup import data as nup_data
from nup.activations import ACTIVATIONS
from nup.device import DTYPES, resolve_device, resolve_dtype
from nup.optim import NORMALIZE_MODES
from nup.param import PARAMETERIZATIONS, get_parameterization
from nup.mlp import WIDTH_PROFILES
from nup.validation import check_choice, check_int, check_nonnegative, check_positive

__all__ = ["RunConfig", "RunResult", "train", "build_model_and_data", "load_data", "mse_loss", "DIAGNOSTICS", "SCHEDULES",
           "TrainContext"]

LOSSES = ("mse", "ce")
DATASETS = {"fashion_mnist": 60_000, "teacher": 1_000_000}
TEST_SIZES = {"fashion_mnist": 10_000, "teacher": 1_000_000}


def mse_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``|f - y|^2/(2n)``: squared error summed over outputs, averaged over the n samples, halved,
    so that the residual dynamics read ``r <- (I - eta K) r`` with ``K = J J^T/n``."""
    return ((output - target) ** 2).sum() / (2 * output.shape[0])


def cross_entropy_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(output, target)


LOSS_FUNCTIONS = {"mse": mse_loss, "ce": cross_entropy_loss}


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run; ``None`` options take the parameterization's default."""

    parameterization: str = "nup"
    activation: str = "relu"
    depth: int = 4
    width: int = 32
    width_profile: str | None = None
    normalize: str | None = None
    sigma2_scale: float = 1.0
    base_width: int | None = None  # μP only
    lr: float = 0.1
    steps: int = 100
    batch_size: int | None = None  # None: full-batch gradient descent
    momentum: float = 0.0
    loss: str = "mse"
    dataset: str = "fashion_mnist"
    n_train: int = 256
    n_test: int = 0
    classes: tuple[int, ...] | None = None
    seed: int = 0
    data_seed: int = 0
    dtype: str = "float32"
    device: str = "auto"
    record_every: int = 1
    diagnostics: tuple[str, ...] = ()
    diagnostic_every: int = 10
    probe_size: int = 64
    schedule: str = "constant"
    schedule_options: tuple[tuple[str, object], ...] = ()

    def __post_init__(self):
        # Lists from papermill/YAML become tuples so the config stays hashable.
        for name in ("classes", "diagnostics", "schedule_options"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(tuple(v) if isinstance(v, list) else v for v in value))
            elif isinstance(value, dict):
                object.__setattr__(self, name, tuple(sorted(value.items())))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field; called on construction."""
        check_choice("parameterization", self.parameterization, PARAMETERIZATIONS)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_int("depth", self.depth, minimum=1)
        check_int("width", self.width, minimum=1)
        if self.width_profile is not None:
            check_choice("width_profile", self.width_profile, WIDTH_PROFILES)
        if self.normalize is not None:
            check_choice("normalize", self.normalize, NORMALIZE_MODES)
        check_positive("sigma2_scale", self.sigma2_scale)
        if self.base_width is not None:
            check_int("base_width", self.base_width, minimum=1)
        check_positive("lr", self.lr)
        check_int("steps", self.steps, minimum=0)
        check_nonnegative("momentum", self.momentum)
        check_choice("loss", self.loss, LOSSES)
        check_choice("dataset", self.dataset, DATASETS)
        check_int("n_train", self.n_train, minimum=1, maximum=DATASETS[self.dataset])
        check_int("n_test", self.n_test, minimum=0, maximum=TEST_SIZES[self.dataset])
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, minimum=1, maximum=self.n_train)
        check_int("seed", self.seed, minimum=0)
        check_int("data_seed", self.data_seed, minimum=0)
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("device", self.device, ("auto", "cpu", "cuda"))
        check_int("record_every", self.record_every, minimum=1)
        check_int("diagnostic_every", self.diagnostic_every, minimum=1)
        check_int("probe_size", self.probe_size, minimum=1)
        for name in self.diagnostics:
            check_choice("diagnostics", name, DIAGNOSTICS)
        check_choice("schedule", self.schedule, SCHEDULES)
        if self.classes is not None:
            if not isinstance(self.classes, tuple) or len(nup_data.check_classes(self.classes)) < 2:
                raise ValueError(f"classes={self.classes!r} is not allowed; give None (all 10 classes) or a list of at "
                                 "least 2 distinct class labels in 0..9")
            if self.dataset != "fashion_mnist":
                raise ValueError(f"classes={self.classes!r} only applies to dataset='fashion_mnist'; leave it None")
        if self.dataset == "teacher" and self.loss == "ce":
            raise ValueError("loss='ce' needs class labels; dataset='teacher' is a regression task, use loss='mse'")

    def replace(self, **changes) -> RunConfig:
        values = asdict(self)
        values.update(changes)
        return RunConfig(**values)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def build_parameterization(self):
        options = dict(width_profile=self.width_profile, normalize=self.normalize, sigma2_scale=self.sigma2_scale)
        if self.parameterization == "mup":
            options["base_width"] = self.base_width
        return get_parameterization(self.parameterization, **options)


@dataclass
class RunResult:
    config: RunConfig
    df: pd.DataFrame
    diverged_step: int | None = None
    extras: dict = field(default_factory=dict)  # small, picklable side results (e.g. final spectra)

    @property
    def diverged(self) -> bool:
        return self.diverged_step is not None

    def metric(self, name: str, layer: int = 0) -> pd.Series:
        """The values of one metric (indexed by step) for one layer (0: whole network)."""
        rows = self.df[(self.df.metric == name) & (self.df.layer == layer)]
        return rows.set_index("step")["value"]


@dataclass
class TrainContext:
    """What diagnostics and schedules see: the run's model, data and loss."""

    config: RunConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    x: torch.Tensor
    y: torch.Tensor
    loss_fn: Callable
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    state: dict = field(default_factory=dict)


# name -> factory(ctx) -> callable(step, ctx, preactivations) -> list of (metric, layer, value)
DIAGNOSTICS: dict[str, Callable] = {}
# name -> factory(ctx) -> an object with .step() (a torch LRScheduler), or None for a constant rate
SCHEDULES: dict[str, Callable] = {"constant": lambda ctx: None}


def register_diagnostic(name: str):
    def decorator(factory):
        DIAGNOSTICS[name] = factory
        return factory
    return decorator


def register_schedule(name: str):
    def decorator(factory):
        SCHEDULES[name] = factory
        return factory
    return decorator


def load_data(config: RunConfig, device: torch.device, dtype: torch.dtype):
    """``(x, y, x_test, y_test)``; targets are one-hot for MSE and labels for cross-entropy."""
    if config.dataset == "teacher":
        x, y = nup_data.teacher_task(config.n_train + config.n_test, seed=config.data_seed, dtype=dtype, device=device)
        n = config.n_train
        return x[:n], y[:n], (x[n:], y[n:]) if config.n_test else (None, None)
    target = "onehot" if config.loss == "mse" else "labels"
    x, y = nup_data.load_fashion_mnist(config.n_train, split="train", seed=config.data_seed, target=target,
                                       dtype=dtype, device=device, classes=config.classes)
    test = (None, None)
    if config.n_test:
        test = nup_data.load_fashion_mnist(config.n_test, split="test", seed=config.data_seed, target=target,
                                           dtype=dtype, device=device, classes=config.classes)
    return x, y, test


def build_model_and_data(config: RunConfig):
    """``(model, x, y, x_test, y_test)``: the initialized model and the data ``train(config)`` starts from."""
    config.validate()
    device, dtype = resolve_device(config.device), resolve_dtype(config.dtype)
    x, y, (x_test, y_test) = load_data(config, device, dtype)
    d_out = (len(config.classes) if config.classes else 10) if config.loss == "ce" else y.shape[1]
    model = config.build_parameterization().build(x.shape[1], d_out, config.depth, config.width, config.activation,
                                                  seed=config.seed, dtype=dtype, device=device)
    return model, x, y, x_test, y_test


def train(config: RunConfig) -> RunResult:
    """Run one configuration; see the module docstring."""
    torch.manual_seed(config.seed)
    model, x, y, x_test, y_test = build_model_and_data(config)
    device = x.device
    optimizer = model.parameterization.optimizer(model, config.lr, momentum=config.momentum)
    ctx = TrainContext(config, model, optimizer, x, y, LOSS_FUNCTIONS[config.loss], x_test, y_test)
    scheduler = SCHEDULES[config.schedule](ctx)
    diagnostics = [DIAGNOSTICS[name](ctx) for name in config.diagnostics]
    batches = _batches(config, device)

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
                if idx is not None:
                    rows.append((step, "loss", 0, ctx.loss_fn(model(x), y).item()))
                if x_test is not None:
                    rows.extend((step, *r) for r in _test_metrics(ctx))
            for diagnostic in diagnostics:
                rows.extend((step, *r) for r in diagnostic(step, ctx, preacts if idx is None else None))
        if is_last:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if not all(torch.isfinite(p.grad).all() for p in model.parameters()):
            diverged_step = step
            break
        optimizer.step()
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
    out = ctx.model(ctx.x_test)
    rows = [("test_loss", 0, ctx.loss_fn(out, ctx.y_test).item())]
    labels = ctx.y_test if ctx.config.loss == "ce" else ctx.y_test.argmax(dim=1)
    if ctx.config.dataset != "teacher":
        rows.append(("test_accuracy", 0, (out.argmax(dim=1) == labels).double().mean().item()))
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

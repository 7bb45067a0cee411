"""What a run is: a frozen, hashable ``RunConfig``; what it returns: ``RunResult``; what diagnostics and
schedules see: ``TrainContext``; the two losses.

Diagnostics and schedules are looked up by name in ``DIAGNOSTICS`` (``nup.diagnostics``) and
``SCHEDULES`` (``nup.training.schedules``), so the config stays a plain hashable value that the run cache
(``nup.training.cache``) can key on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import pandas as pd
import torch

from nup.core.activations import ACTIVATIONS
from nup.core.device import DTYPES
from nup.core.mlp import WIDTH_PROFILES
from nup.core.optim import NORMALIZE_MODES, check_steering
from nup.core.param import PARAMETERIZATIONS, get_parameterization
from nup.diagnostics import DIAGNOSTICS
from nup.diagnostics.context import TrainContext
from nup.training import data as nup_data
from nup.training.schedules import SCHEDULES
from nup.validation import check_choice, check_int, check_nonnegative, check_positive

__all__ = ["RunConfig", "RunResult", "TrainContext", "mse_loss", "cross_entropy_loss", "LOSS_FUNCTIONS", "LOSSES",
           "OPTIMIZERS"]


LOSSES = ("mse", "ce")
OPTIMIZERS = ("sgd", "adam")  # sgd: the parameterization's NormalizedSGD; adam: torch.optim.Adam on its groups
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
    optimizer: str = "sgd"  # "adam": torch.optim.Adam (betas 0.9, 0.999) on the parameterization's groups
    loss: str = "mse"
    dataset: str = "fashion_mnist"
    n_train: int = 256
    n_test: int = 0
    n_val: int = 0  # validation samples held out of the training split (fashion_mnist): val_loss, val_accuracy
    classes: tuple[int, ...] | None = None
    label_noise: float = 0.0  # fraction of training labels replaced by another class (fashion_mnist)
    seed: int = 0
    data_seed: int = 0
    dtype: str = "float32"
    device: str = "auto"
    record_every: int = 1
    diagnostics: tuple[str, ...] = ()
    diagnostic_every: int = 10
    full_loss: bool = True  # with mini-batches, also the loss on all n_train samples at each diagnostic step
    probe_size: int = 64
    schedule: str = "constant"
    schedule_options: tuple[tuple[str, object], ...] = ()
    # Steering of each layer's update direction (nup.core.optim, "Steering"; notebook 04's intervention):
    # 0 is off.  The control's random directions are drawn from a generator seeded by ``seed``.
    steer_beta: float = 0.0
    steer_mode: str = "cumulative"
    # torch (and BLAS) intra-op threads of the run.  None: the machine's default, the calling
    # process's ``torch.get_num_threads()`` when the run starts (a sweep gives each of its n_jobs
    # workers its share of the cores instead).  The last bits of a result depend on the count (see
    # nup.training.loop), so it is recorded (``RunResult.extras["threads"]``) and part of the cache key.
    threads: int | None = None

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
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("loss", self.loss, LOSSES)
        check_choice("dataset", self.dataset, DATASETS)
        check_int("n_train", self.n_train, minimum=1, maximum=DATASETS[self.dataset])
        check_int("n_test", self.n_test, minimum=0, maximum=TEST_SIZES[self.dataset])
        check_int("n_val", self.n_val, minimum=0, maximum=DATASETS[self.dataset] - self.n_train)
        if self.n_val and self.dataset != "fashion_mnist":
            raise ValueError(f"n_val={self.n_val!r} only applies to dataset='fashion_mnist'; leave it 0")
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, minimum=1, maximum=self.n_train)
        check_int("seed", self.seed, minimum=0)
        check_int("data_seed", self.data_seed, minimum=0)
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("device", self.device, ("auto", "cpu", "cuda"))
        check_int("record_every", self.record_every, minimum=1)
        check_int("diagnostic_every", self.diagnostic_every, minimum=1)
        if not isinstance(self.full_loss, bool):
            raise ValueError(f"full_loss={self.full_loss!r} is not allowed; full_loss must be True or False")
        check_int("probe_size", self.probe_size, minimum=1)
        if self.threads is not None:
            check_int("threads", self.threads, minimum=1)
        for name in self.diagnostics:
            check_choice("diagnostics", name, DIAGNOSTICS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_steering(self.steer_beta, self.steer_mode)
        if self.steer_beta:
            if self.optimizer != "sgd":
                raise ValueError(f"steer_beta={self.steer_beta!r} needs optimizer='sgd', not {self.optimizer!r}")
            check_steering(self.steer_beta, self.steer_mode, self.build_parameterization().normalize, self.momentum)
        if self.classes is not None:
            if not isinstance(self.classes, tuple) or len(nup_data.check_classes(self.classes)) < 2:
                raise ValueError(f"classes={self.classes!r} is not allowed; give None (all 10 classes) or a list of at "
                                 "least 2 distinct class labels in 0..9")
            if self.dataset != "fashion_mnist":
                raise ValueError(f"classes={self.classes!r} only applies to dataset='fashion_mnist'; leave it None")
        nup_data.check_label_noise(self.label_noise)
        if self.label_noise and self.dataset != "fashion_mnist":
            raise ValueError(f"label_noise={self.label_noise!r} only applies to dataset='fashion_mnist'; leave it 0")
        if self.dataset == "teacher" and self.loss == "ce":
            raise ValueError("loss='ce' needs class labels; dataset='teacher' is a regression task, use loss='mse'")
        if self.optimizer == "adam":
            if self.momentum:
                raise ValueError(f"momentum={self.momentum!r} is not allowed with optimizer='adam' (its betas are "
                                 "0.9, 0.999); leave momentum 0")
            normalize = self.build_parameterization().normalize
            if normalize != "none":
                raise ValueError(f"optimizer='adam' takes the raw gradient, but parameterization "
                                 f"{self.parameterization!r} uses normalize={normalize!r}; set normalize='none'")

    def replace(self, **changes) -> RunConfig:
        values = asdict(self)
        values.update(changes)
        return RunConfig(**values)

    def as_dict(self) -> dict:
        """The fields by name (what the run cache keys on), the steering fields only when steering is on, so
        that adding them kept every earlier result's key."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if not self.steer_beta:
            del values["steer_beta"], values["steer_mode"]
        return values

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

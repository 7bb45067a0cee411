"""``TrainContext``: what diagnostics and schedules see of a run (its config, model, optimizer, data and
loss).  It lives on the diagnostics floor, below ``nup.training``, so that a diagnostic never imports
the training loop; ``nup.training.config`` re-exports it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["TrainContext"]


@dataclass
class TrainContext:
    """What diagnostics and schedules see: the run's model, data and loss.  ``config`` is the run's
    ``nup.training.config.RunConfig``."""

    config: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    x: torch.Tensor
    y: torch.Tensor
    loss_fn: Callable
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    state: dict = field(default_factory=dict)

"""Learning-rate schedules: the geometry-aware ``GeometricLR`` and a warmup-plus-cosine baseline.

The abstract only says that *a geometry-aware learning-rate schedule prolongs the catapult
phase indefinitely* (stated).  The rule below is ours (``docs/definitions.md``, "Catapult and
EOS" and "Geometry-aware schedule"): with MSE ``L = |r|^2/(2n)`` and ``K = J J^T/n`` the
residuals follow ``r <- (I - eta K) r``, and a catapult lasts only while ``eta * lambda_t > 2``.
So the rate is reset from the current geometry,

* ``curvature="ntk"`` or ``"hessian"``: ``eta_t = c / lambda_t``, ``lambda_t`` the top eigenvalue
  of the empirical NTK (``nup.linalg.tangent_kernel.ntk_top_eigenvalue``) or of the loss Hessian
  (``nup.linalg.hessian.sharpness``), re-estimated every ``every`` steps, each solve warm-started
  from the previous eigenvector;
* ``curvature="gradient"`` (no eigen-solver): ``eta_t = c * 2 L_t / |grad L_t|^2``.  With
  ``g = J^T r/n`` this is ``c / q_t`` where ``q_t = r^T K r/|r|^2`` is a Rayleigh quotient of
  ``K`` (``<= lambda_max``), so ``eta_t * q_t = c``; ``q_t`` is what ``last_eigenvalue`` records.

``c`` in (2, 4) keeps training inside the catapult window of the two-layer linear model.
``eta_t`` is clipped to ``[min_lr, max_lr]``: ``lambda_t`` can collapse, so cap it.  The gradient
variant needs a tight cap: ``q_t <= lambda_max`` means ``eta_t lambda_max >= c`` with no upper bound,
so it reaches ``max_lr`` within a few steps (notebook 06: caps of 300-1000/``lambda_0`` killed a
ReLU network, 100/``lambda_0`` did not).  Under νP the schedule turns the normalized step into
GD's step at ``eta_t`` (see below); ``per_layer_scale="global"`` keeps the normalized direction.
For μP's per-layer rates the kernel that governs GD is ``sum_k lr_mult_k K_k``
(``nup.linalg.tangent_kernel.NTKOperator(layer_weights=model.lr_mults)``); the schedule uses the plain NTK.

How ``eta_t`` reaches the optimizer (it composes with any ``torch.optim`` optimizer and with
the per-layer groups of ``nup.core.param``):

* **relative per group**: ``lr_k = base_lr_k * eta_t / eta_ref`` with ``eta_ref = max_k base_lr_k``
  (the groups' ``initial_lr`` at construction).  Per-layer ratios are never overwritten, and the
  largest layer rate is ``eta_t``; since ``lambda_max(D^1/2 K D^1/2) <= max(D) lambda_max(K)``
  for the diagonal of layer rates ``D``, the preconditioned ``eta * lambda`` is at most ``c``.
* **normalized updates** (``nup.core.optim.NormalizedSGD``): the target is the step plain GD at
  ``eta_t`` would take.  ``normalize="global"`` steps ``lr * g/|g|``, so ``lr_k`` is multiplied by
  ``|g|``; ``normalize="per_layer"`` steps ``lr_k * G_k/|G_k|``, so with
  ``per_layer_scale="layer"`` (default) ``lr_k`` is multiplied by ``|G_k|`` (the step is then
  exactly GD's, layer by layer) and with ``"global"`` by ``|g|`` (keeps the per-layer normalized
  direction, the same total scale as the global mode).  The norms are of the full-batch
  gradient on ``(x, y)`` at the current parameters: exact for full-batch GD without momentum.

*Mini-batches.*  By default ``lambda_t`` (and the gradient norms of the normalized update) are measured
on the whole training set, which costs a full pass per solver product.  The schedule option
``probe_size`` (``RunConfig.schedule_options``) measures them on a fixed probe batch instead: the first
``probe_size`` training samples (the same samples at every estimate; the order of ``load_data`` is
already shuffled), which is what mini-batch training needs.  Mini-batch SGD also needs its rate to
decay, or the gradient noise keeps the loss up (and with cross-entropy ``lambda_t`` falls as the logits
grow, so ``eta_t`` rises until SGD may diverge; notebook 07): the option ``anneal_steps`` multiplies
``eta_t`` by the cosine factor ``(1 + cos(pi t/anneal_steps))/2`` at every step ``t`` (0 after
``anneal_steps``), so the schedule sets the rate from the geometry and the cosine takes it to 0.

Call ``step()`` after ``optimizer.step()``; the constructor already sets the rates of step 0
from the geometry at initialization.  Every estimate is appended to ``log_rows`` as
``(step, metric, 0, value)`` rows (``schedule_eigenvalue``, ``schedule_eta``,
``schedule_products``), ready for ``RunResult.df``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from nup.linalg.hessian import sharpness
from nup.linalg.tangent_kernel import ntk_top_eigenvalue
from nup.validation import check_choice, check_int, check_nonnegative, check_positive

if TYPE_CHECKING:  # annotations only: diagnostics and schedules never import the training loop
    from nup.diagnostics.context import TrainContext

__all__ = ["GeometricLR", "CURVATURES", "PER_LAYER_SCALES", "WarmupCosine", "warmup_cosine", "SCHEDULES",
           "register_schedule"]

CURVATURES = ("ntk", "hessian", "gradient")
PER_LAYER_SCALES = ("layer", "global")
# Held by reference, never saved: the scheduler's state is only what a resumed run needs.
_EXCLUDED_FROM_STATE = ("optimizer", "model", "loss_fn", "x", "y", "log_rows")


def _check_max_lr(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) or value <= 0:
        raise ValueError(f"max_lr={value!r} is not allowed; max_lr must be a number > 0 (math.inf for no cap)")
    return float(value)


class GeometricLR(LRScheduler):
    """``eta_t = clip(c / lambda_t, min_lr, max_lr)``, applied relatively to every parameter group.

    Args:
        optimizer: any ``torch.optim.Optimizer``; its groups' ``lr`` at construction are the base rates.
        model, loss_fn, x, y: what ``lambda_t`` is measured on, ``loss_fn(model(x), y)`` (full batch).
        c: target ``eta_t * lambda_t``, in (0, inf); (2, 4) is the catapult window.
        curvature: ``"ntk"``, ``"hessian"`` or ``"gradient"`` (see the module docstring).
        every: re-estimate every this many steps (``eta_t`` is held in between).
        min_lr, max_lr: bounds on ``eta_t`` (``0 <= min_lr <= max_lr``; ``max_lr`` may be ``math.inf``).
        tol, max_iter: passed to the eigen-solver (``tol`` relative, in (0, 1)).
        per_layer_scale: ``"layer"`` or ``"global"``, only used with ``normalize="per_layer"``.
        anneal_steps: if given, ``eta_t`` is multiplied by ``(1 + cos(pi min(t, anneal_steps)/anneal_steps))/2``
            at every step (``>= 1``; see the module docstring).

    When an estimate gives no finite rate (``lambda_t <= 0`` with ``max_lr = inf``, or NaN),
    ``eta_t`` keeps its previous value (``eta_ref`` at step 0).

    Logging attributes: ``last_eigenvalue`` (``lambda_t``, or ``q_t`` for ``"gradient"``),
    ``last_products`` (matrix-vector products of the last solve, 0 for ``"gradient"``),
    ``last_converged``, ``last_eta`` (``eta_t`` after bounds), ``last_estimate_step``,
    ``n_estimates``, ``total_products``, ``eigenvector`` (the warm start), ``log_rows``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module, loss_fn: Callable,
                 x: torch.Tensor, y: torch.Tensor, c: float = 3.0, curvature: str = "ntk", every: int = 1,
                 min_lr: float = 0.0, max_lr: float = math.inf, tol: float = 1e-3, max_iter: int = 200,
                 per_layer_scale: str = "layer", anneal_steps: int | None = None):
        # Every check runs before any estimate (the base constructor already takes a step).
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer={type(optimizer).__name__} is not allowed; pass a torch.optim.Optimizer")
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model={type(model).__name__} is not allowed; pass a torch.nn.Module")
        if not callable(loss_fn):
            raise ValueError(f"loss_fn={loss_fn!r} is not callable; pass loss_fn(output, target) -> scalar")
        for name, t in (("x", x), ("y", y)):
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{name}={type(t).__name__} is not allowed; {name} must be a torch.Tensor")
        self.c = check_positive("c", c)
        self.curvature = check_choice("curvature", curvature, CURVATURES)
        self.every = check_int("every", every, minimum=1)
        self.min_lr = check_nonnegative("min_lr", min_lr)
        self.max_lr = _check_max_lr(max_lr)
        if self.min_lr > self.max_lr:
            raise ValueError(f"min_lr={min_lr!r} > max_lr={max_lr!r} is not allowed; min_lr must be <= max_lr")
        self.tol = check_positive("tol", tol)
        if self.tol >= 1:  # the solvers' relative tolerance (nup.linalg.hessian.check_eigen_args)
            raise ValueError(f"tol={tol!r} is not allowed; tol must be a relative tolerance in (0, 1)")
        self.max_iter = check_int("max_iter", max_iter, minimum=1)
        self.per_layer_scale = check_choice("per_layer_scale", per_layer_scale, PER_LAYER_SCALES)
        self.anneal_steps = None if anneal_steps is None else check_int("anneal_steps", anneal_steps, minimum=1)
        self.normalize = getattr(optimizer, "normalize", "none")
        if self.normalize == "per_layer" and per_layer_scale == "layer":
            for i, group in enumerate(optimizer.param_groups):
                if len(group["params"]) != 1:
                    raise ValueError(f"per_layer_scale='layer' needs one parameter tensor per group, but "
                                     f"param_groups[{i}] has {len(group['params'])}; use per_layer_scale='global'")
        base = [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
        if not base or max(base) <= 0:
            raise ValueError(f"the optimizer's group learning rates {base!r} are not allowed; the largest must be > 0")

        self.model, self.loss_fn, self.x, self.y = model, loss_fn, x, y
        self.eta_ref = max(base)
        self.eigenvector: torch.Tensor | None = None
        self.last_eigenvalue = math.nan
        self.last_products = 0
        self.last_converged = False
        self.last_eta: float | None = None
        self.last_estimate_step: int | None = None
        self.last_grad_norm = math.nan
        self.n_estimates = 0
        self.total_products = 0
        self.log_rows: list[tuple[int, str, int, float]] = []
        super().__init__(optimizer)  # takes step 0: estimates the geometry at initialization

    # ------------------------------------------------------------------ the rule
    def get_lr(self) -> list[float]:
        grads = None
        if self.last_eta is None or self.last_epoch % self.every == 0:
            grads = self._estimate()
        scale = self.last_eta / self.eta_ref * self.anneal_factor(self.last_epoch)
        return [base * scale * f for base, f in zip(self._base(), self._step_factors(grads))]

    def anneal_factor(self, t: int) -> float:
        """``(1 + cos(pi min(t, T)/T))/2`` with ``T = anneal_steps``; 1 without annealing."""
        if self.anneal_steps is None:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(t, self.anneal_steps) / self.anneal_steps))

    def _base(self) -> list[float]:
        return [float(b) for b in self.base_lrs]

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad]

    def _loss_and_grads(self) -> tuple[float, list[torch.Tensor]]:
        params = self._params()
        with torch.enable_grad():  # the scheduler may be stepped under no_grad
            loss = self.loss_fn(self.model(self.x), self.y)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        # autograd.grad, not backward: the optimizer's .grad buffers stay untouched.
        return loss.item(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]

    def _estimate(self) -> list[torch.Tensor] | None:
        grads = None
        if self.curvature == "gradient":
            loss, grads = self._loss_and_grads()
            g2 = sum(float((g.double() ** 2).sum()) for g in grads)
            value = g2 / (2 * loss) if loss > 0 else math.nan
            products, converged = 0, True
        else:
            if self.curvature == "ntk":
                result = ntk_top_eigenvalue(self.model, self.x, v0=self.eigenvector, tol=self.tol,
                                            max_iter=self.max_iter)
            else:
                result = sharpness(self.model, self.loss_fn, self.x, self.y, v0=self.eigenvector, tol=self.tol,
                                   max_iter=self.max_iter)
            value, products, converged = float(result.value), int(result.n_products), bool(result.converged)
            # A NaN vector (diverged model) is refused as v0 by the solvers: restart cold instead.
            self.eigenvector = result.vector.detach().clone() if math.isfinite(value) else None
        previous = self.eta_ref if self.last_eta is None else self.last_eta
        eta = previous
        if not math.isnan(value):
            eta = min(max(self.c / value if value > 0 else math.inf, self.min_lr), self.max_lr)
            if not math.isfinite(eta):
                eta = previous
        self.last_eigenvalue, self.last_products, self.last_converged, self.last_eta = value, products, converged, eta
        self.last_estimate_step = self.last_epoch
        self.n_estimates += 1
        self.total_products += products
        step = self.last_epoch
        self.log_rows += [(step, "schedule_eigenvalue", 0, value), (step, "schedule_eta", 0, eta),
                          (step, "schedule_products", 0, float(products))]
        return grads

    def _step_factors(self, grads: list[torch.Tensor] | None) -> list[float]:
        """Per-group multipliers that turn a normalized step of length ``lr`` into GD's ``lr * |grad|``."""
        n_groups = len(self.optimizer.param_groups)
        if self.normalize not in ("global", "per_layer"):
            return [1.0] * n_groups
        if grads is None:
            _, grads = self._loss_and_grads()
        norms = [float(torch.linalg.vector_norm(g)) for g in grads]
        self.last_grad_norm = math.sqrt(sum(n * n for n in norms))
        if self.normalize == "global" or self.per_layer_scale == "global":
            return [self.last_grad_norm] * n_groups
        # One tensor per group (checked in __init__), in the order _params() lists them.
        it = iter(norms)
        return [next(it) if g["params"][0].requires_grad else 0.0 for g in self.optimizer.param_groups]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything but the optimizer, model, loss, data and log rows; the eigenvector is copied."""
        state = {k: v for k, v in self.__dict__.items() if k not in _EXCLUDED_FROM_STATE}
        if state.get("eigenvector") is not None:
            state["eigenvector"] = state["eigenvector"].clone()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = {k: v for k, v in state_dict.items() if k not in _EXCLUDED_FROM_STATE}
        if state.get("eigenvector") is not None:
            state["eigenvector"] = state["eigenvector"].clone()
        self.__dict__.update(state)


class WarmupCosine:
    """The ``LambdaLR`` factor: linear warmup ``(t+1)/(w+1)`` for ``t < w``, then a cosine from 1 down to
    ``final_fraction`` reached at ``t = total_steps`` (a callable object, so ``LambdaLR`` saves it)."""

    def __init__(self, total_steps: int, warmup_steps: int, final_fraction: float = 0.0):
        self.total_steps = check_int("total_steps", total_steps, minimum=0)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, minimum=0, maximum=self.total_steps)
        self.final_fraction = check_nonnegative("final_fraction", final_fraction)
        if self.final_fraction > 1:
            raise ValueError(f"final_fraction={final_fraction!r} is not allowed; final_fraction must be in [0, 1]")

    def __call__(self, t: int) -> float:
        w, f = self.warmup_steps, self.final_fraction
        if t < w:
            return (t + 1) / (w + 1)
        progress = min(1.0, (t - w) / max(1, self.total_steps - w))
        return f + (1 - f) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int | None = None,
                  final_fraction: float = 0.0) -> LambdaLR:
    """Linear warmup plus cosine decay, relative to each group's rate; ``warmup_steps`` defaults to 10%."""
    if warmup_steps is None:
        warmup_steps = round(0.1 * check_int("total_steps", total_steps, minimum=0))
    return LambdaLR(optimizer, WarmupCosine(total_steps, warmup_steps, final_fraction))


def _options(ctx: TrainContext, schedule: str, allowed: tuple[str, ...]) -> dict:
    options = dict(ctx.config.schedule_options)
    for key in options:
        if key not in allowed:
            raise ValueError(f"schedule_options key {key!r} is not an option of schedule {schedule!r}; "
                             f"allowed: {', '.join(allowed)}")
    return options


_GEOMETRIC_OPTIONS = ("c", "curvature", "every", "min_lr", "max_lr", "tol", "max_iter", "per_layer_scale",
                      "probe_size", "anneal_steps")


def _geometric(ctx: TrainContext) -> GeometricLR:
    options = _options(ctx, "geometric", _GEOMETRIC_OPTIONS)
    x, y = ctx.x, ctx.y
    probe_size = options.pop("probe_size", None)
    if probe_size is not None:  # the curvature on a fixed probe batch: the first probe_size training samples
        probe_size = check_int("probe_size", probe_size, minimum=1, maximum=len(x))
        x, y = x[:probe_size], y[:probe_size]
    return GeometricLR(ctx.optimizer, ctx.model, ctx.loss_fn, x, y, **options)


def _warmup_cosine(ctx: TrainContext) -> LambdaLR:
    return warmup_cosine(ctx.optimizer, ctx.config.steps,
                         **_options(ctx, "warmup_cosine", ("warmup_steps", "final_fraction")))


# name -> factory(ctx) -> an object with .step() (a torch LRScheduler), or None for a constant rate.
# Built-ins are listed here, not registered by importing modules; register_schedule adds your own.
SCHEDULES: dict[str, Callable] = {"constant": lambda ctx: None, "geometric": _geometric,
                                  "warmup_cosine": _warmup_cosine}


def register_schedule(name: str, factory: Callable) -> Callable:
    """Make ``RunConfig(schedule=name)`` call ``factory(ctx)`` (a ``TrainContext``) for its scheduler."""
    SCHEDULES[name] = factory
    return factory

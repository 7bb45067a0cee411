"""Benchmark: the cost of ``nup.train`` over a bare torch loop, and of each diagnostic.

    python bench/bench_train.py [--quick] [--repeats N]      (``make bench`` runs the full size)

Every number printed is a RATIO of timings taken in this process, round-robin and best of
``--repeats`` (other load on a shared machine only ever adds time, so the fastest run is the least
disturbed one); absolute times are printed beside them for scale only.

1. ``train(config)`` against a bare torch loop on the same model, data and optimizer (forward,
   ``loss.item()``, ``zero_grad``, ``backward``, ``step``; both include building the model and
   data), for νP at depths 8 and 16 (``m = 8``, hidden widths ``k^2 m``) and a width-256 depth-8
   NTK network, all on 256 Fashion-MNIST samples, at equal thread counts: 1 thread, and the
   machine's cores (``RunConfig.threads``; the bare loop under the same ``torch_threads``); the
   row at the cores is what a single run with the default ``threads=None`` does on a machine whose
   torch default is its core count.  Goal: at most 1.05 at both.  ``train()`` checks that every
   gradient is finite inside ``NormalizedSGD.step`` (one sync on the norms the step computes anyway);
   the column "separate check" is what that check costs as its own pass over the gradients (as
   before, and as under Adam), timed alone (best of many), as a share of one bare step.
2. Each diagnostic's cost as a share of a training step, at ``diagnostic_every=10`` (the
   default): ``(T_with - T_without) / T_without`` over the run, and the cost of one call in steps.
   ``updates_every_step`` (registered here only) is ``"updates"`` at every step, as it ran before
   it honoured ``diagnostic_every``.
3. A small sweep (a slice of notebook 03's grid, ``cache=False``): serially with 1 torch thread per
   run, serially at the default (each run gets every core), and with ``n_jobs=2`` loky workers (each
   gets ``max(1, cores // 2)`` threads; first call, workers starting; then warm).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nup import RunConfig, train  # noqa: E402
from nup.core.optim import gradients_finite  # noqa: E402
from nup.diagnostics import DIAGNOSTICS  # noqa: E402
from nup.diagnostics.updates import EveryStepUpdateTracker  # noqa: E402
from nup.training.config import LOSS_FUNCTIONS  # noqa: E402
from nup.training.loop import build_model_and_data, resolve_threads, torch_threads  # noqa: E402
from nup.training.sweep import cores, grid, sweep  # noqa: E402

def round_robin(fns: dict, repeats: int) -> dict[str, float]:
    """Best wall time of each callable over ``repeats`` round-robin passes."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            gc.collect()
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def bare_loop(config: RunConfig) -> float:
    """The same run as ``train(config)`` without recording, checks or diagnostics, under the same torch
    thread count (``config.threads``); the final loss."""
    with torch_threads(resolve_threads(config.threads)):
        return _bare_loop(config)


def _bare_loop(config: RunConfig) -> float:
    torch.manual_seed(config.seed)
    model, x, y, _, _ = build_model_and_data(config)
    optimizer = model.parameterization.optimizer(model, config.lr, momentum=config.momentum)
    loss_fn = LOSS_FUNCTIONS[config.loss]
    for step in range(config.steps + 1):
        loss = loss_fn(model(x), y)
        value = loss.item()
        if step == config.steps:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return value


def final_loss(result) -> float:
    return float(result.metric("loss").iloc[-1])


def separate_check_cost(config: RunConfig, repeats: int) -> float:
    """Best seconds of the finite check as a separate pass over the gradients of one step of ``config``'s
    model (``gradients_finite`` without the norms: what ``train()`` paid before the check moved into the
    optimizer, and still pays under Adam)."""
    with torch_threads(resolve_threads(config.threads)):
        model, x, y, _, _ = build_model_and_data(config)
        LOSS_FUNCTIONS[config.loss](model(x), y).backward()
        grads = [p.grad for p in model.parameters()]
        return round_robin({"check": lambda: gradients_finite(grads)}, repeats)["check"]


SETUPS = {  # name: (config, steps, quick steps)
    "νP depth 8, m=8": (dict(parameterization="nup", width=8, depth=8), 100, 30),
    "νP depth 16, m=8": (dict(parameterization="nup", width=8, depth=16), 20, 6),
    "NTK depth 8, width 256": (dict(parameterization="ntk", width=256, depth=8), 100, 30),
}


def bench_overhead(args) -> None:
    counts = sorted({1, cores()})
    print(f"\n== 1. train() against a bare torch loop (same model, data, optimizer, thread count; "
          f"threads = {' and '.join(map(str, counts))}) ==")
    print(f"  {'setup':24s} {'threads':>7s} {'params':>10s} {'steps':>5s} {'bare s/step':>12s} {'train/bare':>11s} "
          f"{'separate check/step':>20s}")
    for name, (options, steps, quick_steps) in SETUPS.items():
        for threads in counts:
            config = RunConfig(**options, n_train=256, lr=0.05, steps=quick_steps if args.quick else steps,
                               threads=threads)
            n_params = sum(p.numel() for p in build_model_and_data(config)[0].parameters())
            same = final_loss(train(config)) == bare_loop(config)
            best = round_robin({"bare": lambda: bare_loop(config), "train": lambda: train(config)}, args.repeats)
            step = best["bare"] / (config.steps + 1)
            check = separate_check_cost(config, args.repeats * 4)
            print(f"  {name:24s} {threads:7d} {n_params:10,d} {config.steps:5d} {step:12.4f} "
                  f"{best['train'] / best['bare']:11.3f} {check / step:20.4f}"
                  f"{'' if same else '   (final losses differ!)'}")
    print("  goal: train/bare <= 1.05 at every thread count")


def bench_diagnostics(args) -> None:
    print("\n== 2. Each diagnostic's cost as a share of a training step (diagnostic_every=10) ==")
    setups = {"NTK depth 8, width 256": dict(parameterization="ntk", width=256, depth=8),
              "νP depth 8, m=8": dict(parameterization="nup", width=8, depth=8)}
    steps = 30 if args.quick else 100
    DIAGNOSTICS.setdefault("updates_every_step", EveryStepUpdateTracker)
    names = list(DIAGNOSTICS)
    for name, options in setups.items():
        base = RunConfig(**options, n_train=256, lr=0.05, steps=steps, diagnostic_every=10, probe_size=64)
        calls = len(range(0, steps + 1, 10))
        fns = {"none": lambda: train(base)}
        for diagnostic in names:
            fns[diagnostic] = (lambda d: lambda: train(base.replace(diagnostics=(d,))))(diagnostic)
        best = round_robin(fns, args.repeats)
        step_time = best["none"] / (steps + 1)
        print(f"  {name} ({steps} steps, {calls} diagnostic steps; one step {step_time * 1e3:.2f} ms):")
        print(f"    {'diagnostic':16s} {'share of a step':>16s} {'one call, in steps':>19s}")
        for diagnostic in names:
            extra = best[diagnostic] - best["none"]
            print(f"    {diagnostic:16s} {extra / best['none']:16.3f} {extra / calls / step_time:19.2f}")


def bench_sweep(args) -> None:
    from joblib.externals.loky import get_reusable_executor

    n_cores = cores()
    print(f"\n== 3. A sweep: serial against n_jobs=2 ({n_cores} cores) ==")
    steps = 30 if args.quick else 100
    common = dict(steps=steps, n_train=64, probe_size=64, diagnostics=("preactivations",), diagnostic_every=10)
    configs = [dict(common, parameterization="nup", width=4, **p) for p in grid(depth=[4, 8], lr=[0.25, 0.5, 1.0, 2.0])]
    configs += [dict(common, parameterization="ntk", width=64, **p) for p in grid(depth=[4, 8], lr=[0.5, 1.0, 2.0, 4.0])]

    def cold():
        get_reusable_executor().shutdown(wait=True)
        return sweep(configs, n_jobs=2, cache=False, progress=False)

    fns = {"one": lambda: sweep(configs, backend="serial", threads=1, cache=False, progress=False),
           "serial": lambda: sweep(configs, backend="serial", cache=False, progress=False),
           "n_jobs=2, first call": cold, "n_jobs=2, warm": lambda: sweep(configs, n_jobs=2, cache=False, progress=False)}
    best = round_robin(fns, args.repeats)
    share = max(1, n_cores // 2)
    labels = {"one": "serial, 1 torch thread per run",
              "serial": f"serial, {n_cores} torch threads per run (default)",
              "n_jobs=2, first call": f"n_jobs=2 x {share} threads, first call (workers start)",
              "n_jobs=2, warm": f"n_jobs=2 x {share} threads, warm workers"}
    print(f"  {len(configs)} runs of {steps} steps (νP m=4 and NTK width 64, depths 4 and 8, 64 samples)")
    print(f"  {'':48s} {'time/s':>7s} {'runs/s':>7s} {'time/1-thread serial':>21s}")
    for name, label in labels.items():
        print(f"  {label:48s} {best[name]:7.2f} {len(configs) / best[name]:7.2f} {best[name] / best['one']:21.3f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (a check, not a measurement)")
    parser.add_argument("--repeats", type=int, default=None, help="round-robin passes (default 5, quick 3)")
    parser.add_argument("--skip", default="", help="comma list of sections to skip: overhead,diagnostics,sweep")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.repeats < 1:
        raise ValueError(f"--repeats={args.repeats} is not allowed; give an integer >= 1")
    skip = set(filter(None, args.skip.split(",")))
    unknown = skip - {"overhead", "diagnostics", "sweep"}
    if unknown:
        raise ValueError(f"--skip={args.skip!r} is not allowed; choose from overhead, diagnostics, sweep")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads by default, {cores()} cores; ratios of best-of-"
          f"{args.repeats} round-robin timings in this process")
    if "overhead" not in skip:
        bench_overhead(args)
    if "diagnostics" not in skip:
        bench_diagnostics(args)
    if "sweep" not in skip:
        bench_sweep(args)


if __name__ == "__main__":
    main()

"""A coordinate check over width *and* depth, in the style of μP's ``get_coord_data``.

μP's coordinate check (Yang et al. 2021, ``mup.coord_check``) trains each width for a few
steps and plots the typical size of each layer's activations against width: under a correct
parameterization the curves are flat.  Here the same is done over depth as well, on the
preactivations ``h_k`` of a fixed probe batch, with ``nup``'s own training loop (so every
parameterization, normalized update and option of ``RunConfig`` is available, and runs are
cached):

``coord_check(parameterizations, depths, widths, steps=3)`` returns a long DataFrame with one
row per (label, depth, width, seed, step, layer, metric):

* ``preact_rms``: ``sqrt(mean_i |h_k(x_i)|^2 / m_k)``, the typical coordinate size;
* ``preact_change``: ``|h_k(t) - h_k(0)|_F / |h_k(0)|_F`` on the probe batch;
* ``delta_rms``: ``preact_change * preact_rms(0)``, the typical size of a coordinate's change,
  the quantity whose flatness in width μP's check looks at.

``plot_coord_check(df, x="width")`` draws one panel per parameterization with one line per
layer role (first hidden, middle hidden, last hidden, output) against width or depth.  It
leaves styling (``sns.set_theme``) to the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from nup.training.config import RunConfig
from nup.validation import check_choice, check_int, check_nonempty_list

__all__ = ["coord_check", "plot_coord_check", "layer_role", "COORD_METRICS", "LAYER_ROLES"]

COORD_METRICS = ("preact_rms", "preact_change", "delta_rms")
LAYER_ROLES = ("first hidden", "middle hidden", "last hidden", "output")


def layer_role(layer: int, depth: int) -> str | None:
    """``"first hidden"`` (k = 1), ``"middle hidden"`` (k = depth // 2), ``"last hidden"`` (k = depth - 1),
    ``"output"`` (k = depth), or ``None``; when two roles share a layer (shallow nets) the later one wins."""
    if layer == depth:
        return "output"
    if layer == depth - 1:
        return "last hidden"
    if layer == max(depth // 2, 1):
        return "middle hidden"
    if layer == 1:
        return "first hidden"
    return None


def _normalize_parameterizations(parameterizations) -> dict[str, dict]:
    """``{label: RunConfig fields}`` from a list of names or a mapping label -> name | dict of fields."""
    if isinstance(parameterizations, str):
        parameterizations = [parameterizations]
    if isinstance(parameterizations, Mapping):
        items = list(parameterizations.items())
    elif isinstance(parameterizations, Sequence) and parameterizations:
        items = [(p, p) for p in parameterizations]
    else:
        raise ValueError(f"parameterizations={parameterizations!r} is not allowed; give a non-empty list of names "
                         "(e.g. ['nup', 'ntk']) or a dict label -> name or dict of RunConfig fields")
    if not items:
        raise ValueError("parameterizations is empty; give at least one parameterization")
    out = {}
    for label, spec in items:
        if isinstance(spec, str):
            spec = {"parameterization": spec}
        elif not isinstance(spec, Mapping) or "parameterization" not in spec:
            raise ValueError(f"parameterizations[{label!r}]={spec!r} is not allowed; give a name or a dict of "
                             "RunConfig fields with a 'parameterization' key")
        out[str(label)] = dict(spec)
    return out


def coord_check(parameterizations, depths: Sequence[int], widths: Sequence[int], steps: int = 3,
                lr: float = 0.1, seeds: Sequence[int] = (0,), n_jobs: int = 1, progress: bool = False,
                cache: bool = True, **config) -> pd.DataFrame:
    """Per-layer preactivation statistics after ``0..steps`` steps, over depths x widths x seeds.

    ``parameterizations``: names (``["nup", "ntk", "mup", "sp"]``) or ``{label: name or dict of
    RunConfig fields}``, e.g. ``{"νP global": dict(parameterization="nup", normalize="global", lr=0.5)}``
    (a dict's ``lr`` overrides ``lr``).  ``config``: further ``RunConfig`` fields for every run
    (default: full-batch GD on 64 Fashion-MNIST samples, all of them the probe batch).
    ``width`` is the parameterization's width argument (νP: the base ``m`` of ``k^2 m``).
    Returns columns ``label, parameterization, depth, width, seed, step, layer, role, metric, value``.
    All configurations are validated before any run starts.
    """
    from nup.training.sweep import sweep

    specs = _normalize_parameterizations(parameterizations)
    depths = check_nonempty_list("depths", depths, lambda n, v: check_int(n, v, minimum=1))
    widths = check_nonempty_list("widths", widths, lambda n, v: check_int(n, v, minimum=1))
    seeds = check_nonempty_list("seeds", seeds, lambda n, v: check_int(n, v, minimum=0))
    steps = check_int("steps", steps, minimum=1)
    for reserved in ("depth", "width", "seed", "steps", "diagnostics", "diagnostic_every", "parameterization"):
        if reserved in config:
            raise ValueError(f"{reserved}= is set by coord_check itself; it is not allowed in **config")
    base = dict(n_train=64, probe_size=64, lr=lr)
    base.update(config)
    configs, keys = [], []
    for label, spec in specs.items():
        for depth in depths:
            for width in widths:
                for seed in seeds:
                    fields = dict(base, **spec, depth=depth, width=width, seed=seed, steps=steps,
                                  diagnostics=("preactivations",), diagnostic_every=1)
                    try:
                        configs.append(RunConfig(**fields))
                    except (TypeError, ValueError) as exc:
                        where = f"parameterizations[{label!r}] at depth={depth}, width={width}"
                        raise ValueError(f"{where}: {exc}") from None
                    keys.append((label, spec["parameterization"], depth, width, seed))
    df = sweep(configs, n_jobs=n_jobs, progress=progress, cache=cache)
    df = df[df.metric.isin(["preact_change", "preact_norm2"])]
    frames = []
    for run, rows in df.groupby("run", sort=True):
        label, name, depth, width, seed = keys[run]
        wide = rows.pivot_table(index=["step", "layer"], columns="metric", values="value").reset_index()
        rms = np.sqrt(wide["preact_norm2"].to_numpy())
        rms0 = wide.groupby("layer")["preact_norm2"].transform(lambda s: np.sqrt(s.iloc[0])).to_numpy()
        wide = wide.assign(preact_rms=rms, delta_rms=wide["preact_change"].to_numpy() * rms0)
        long = wide.melt(id_vars=["step", "layer"], value_vars=list(COORD_METRICS), var_name="metric")
        long.insert(0, "seed", seed)
        long.insert(0, "width", width)
        long.insert(0, "depth", depth)
        long.insert(0, "parameterization", name)
        long.insert(0, "label", label)
        frames.append(long)
    out = pd.concat(frames, ignore_index=True)
    out.insert(out.columns.get_loc("layer") + 1, "role",
               [layer_role(k, d) for k, d in zip(out.layer, out.depth)])
    return out.astype({"depth": "int64", "width": "int64", "seed": "int64", "step": "int64", "layer": "int64",
                       "value": "float64"})


def plot_coord_check(df: pd.DataFrame, x: str = "width", metric: str = "delta_rms", step: int | None = None,
                     axes=None, logy: bool = True):
    """One panel per label: ``metric`` at ``step`` (default: the last) against ``x`` (``"width"`` or
    ``"depth"``), one line per layer role, mean over seeds and over the other axis' values
    (give a DataFrame with a single depth for ``x="width"`` and vice versa to avoid averaging).
    Returns ``(fig, axes)``; does not change the global style."""
    import matplotlib.pyplot as plt

    check_choice("x", x, ("width", "depth"))
    check_choice("metric", metric, COORD_METRICS)
    if not isinstance(df, pd.DataFrame) or not {"label", "role", "step", "metric", "value", x} <= set(df.columns):
        raise ValueError("df must be a DataFrame returned by nup.analysis.coord_check.coord_check")
    step = int(df.step.max()) if step is None else check_int("step", step, minimum=0)
    data = df[(df.metric == metric) & (df.step == step) & df.role.notna()]
    if data.empty:
        raise ValueError(f"no rows with metric={metric!r} at step={step}; steps in df: {sorted(df.step.unique())}")
    labels = list(dict.fromkeys(df.label))
    if axes is None:
        fig, axes = plt.subplots(1, len(labels), figsize=(2.2 * len(labels), 2.6), sharey=True, squeeze=False)
        axes = axes[0]
    else:
        axes = np.atleast_1d(axes)
        fig = axes[0].figure
        if len(axes) != len(labels):
            raise ValueError(f"axes has {len(axes)} panels; it needs one per label ({len(labels)})")
    for ax, label in zip(axes, labels):
        d = data[data.label == label]
        for role in LAYER_ROLES:
            r = d[d.role == role].groupby(x)["value"].mean()
            if len(r):
                ax.plot(r.index, r.values, marker="o", ms=3, label=role)
        ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set(xlabel=x, title=label)
    axes[0].set_ylabel(f"{metric} after {step} steps")
    axes[-1].legend(frameon=False, fontsize="small")
    return fig, axes

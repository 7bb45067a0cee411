"""Bad input: each public entry point, driven with a table of bad values.

Every case must raise ``ValueError`` whose message names the parameter, the bad value and
what is allowed, so that a wrong papermill parameter stops a notebook in its first cells
(where it builds ``RunConfig`` objects and calls ``grid``) rather than deep inside torch.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from nup import RunConfig, get_parameterization, resolve_device, resolve_dtype
from nup.core.optim import NormalizedSGD
from nup.training.sweep import grid, sweep

TEACHER = dict(dataset="teacher")
PARAMETERIZATIONS = "one of 'sp', 'ntk', 'mup', 'nup'"
NORMALIZE = "one of 'none', 'global', 'per_layer'"

# field=value -> the message, as a regular expression (re.escape'd pieces where literal).
RUN_CONFIG_CASES = [
    (dict(depth="4"), "depth='4' is not an integer; depth must be an integer >= 1"),
    (dict(depth=2.5), "depth=2.5 is not an integer; depth must be an integer >= 1"),
    (dict(depth=True), "depth=True is not an integer"),
    (dict(depth=0), "depth=0 is out of range; depth must be an integer >= 1"),
    (dict(width=0), "width=0 is out of range; width must be an integer >= 1"),
    (dict(width=None), "width=None is not an integer"),
    (dict(lr=-0.1), "lr=-0.1 is not allowed; lr must be a finite number > 0"),
    (dict(lr=0), "lr=0 is not allowed; lr must be a finite number > 0"),
    (dict(lr=math.nan), "lr=nan is not allowed; lr must be a finite number > 0"),
    (dict(lr=math.inf), "lr=inf is not allowed"),
    (dict(lr="0.1"), "lr='0.1' is not allowed; lr must be a finite number > 0"),
    (dict(parameterization="adam"), f"parameterization='adam' is not allowed; choose {PARAMETERIZATIONS}"),
    (dict(parameterization="NuP"), "parameterization='NuP' is not allowed"),
    (dict(activation="swish"), "activation='swish' is not allowed; choose one of 'relu', 'abs'"),
    (dict(width_profile="cubic"),
     "width_profile='cubic' is not allowed; choose one of 'constant', 'linear', 'quadratic'"),
    (dict(normalize="l2"), f"normalize='l2' is not allowed; choose {NORMALIZE}"),
    (dict(loss="hinge"), "loss='hinge' is not allowed; choose one of 'mse', 'ce'"),
    (dict(loss="ce"), "loss='ce' needs class labels; dataset='teacher' is a regression task, use loss='mse'"),
    (dict(dataset="mnist"), "dataset='mnist' is not allowed; choose one of 'fashion_mnist', 'teacher'"),
    (dict(dataset="fashion_mnist", n_train=60_001),
     r"n_train=60001 is out of range; n_train must be an integer in \[1, 60000\]"),
    (dict(dataset="fashion_mnist", n_test=10_001),
     r"n_test=10001 is out of range; n_test must be an integer in \[0, 10000\]"),
    (dict(n_train=0), r"n_train=0 is out of range"),
    (dict(n_train=256, batch_size=300), r"batch_size=300 is out of range; batch_size must be an integer in \[1, 256\]"),
    (dict(batch_size=0), r"batch_size=0 is out of range"),
    (dict(steps=-1), "steps=-1 is out of range; steps must be an integer >= 0"),
    (dict(momentum=-0.5), "momentum=-0.5 is not allowed; momentum must be a finite number >= 0"),
    (dict(sigma2_scale=0), "sigma2_scale=0 is not allowed; sigma2_scale must be a finite number > 0"),
    (dict(base_width=0), "base_width=0 is out of range; base_width must be an integer >= 1"),
    (dict(seed=-1), "seed=-1 is out of range; seed must be an integer >= 0"),
    (dict(seed="0"), "seed='0' is not an integer"),
    (dict(dtype="float16"), "dtype='float16' is not allowed; choose one of 'float32', 'float64'"),
    (dict(device="tpu"), "device='tpu' is not allowed; choose one of 'auto', 'cpu', 'cuda'"),
    (dict(record_every=0), "record_every=0 is out of range; record_every must be an integer >= 1"),
    (dict(diagnostic_every=0), "diagnostic_every=0 is out of range"),
    (dict(diagnostics=["gradients"]),
     "diagnostics='gradients' is not allowed; choose one of 'updates', "),
    (dict(schedule="cosine"), "schedule='cosine' is not allowed; choose one of 'constant'"),
]


@pytest.mark.parametrize("bad, message", RUN_CONFIG_CASES, ids=[str(b) for b, _ in RUN_CONFIG_CASES])
def test_run_config_rejects(bad, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**{**TEACHER, **bad})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda():
    message = "device='cuda' was asked for but torch.cuda.is_available() is False; use device='cpu' or 'auto'"
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_device("cuda")


OTHER_CASES = [
    (lambda: resolve_device("gpu"), "device='gpu' is not allowed; choose one of 'auto', 'cpu', 'cuda'"),
    (lambda: resolve_dtype("bfloat16"), "dtype='bfloat16' is not allowed; choose one of 'float32', 'float64'"),
    (lambda: get_parameterization("adam"), f"parameterization='adam' is not allowed; choose {PARAMETERIZATIONS}"),
    (lambda: get_parameterization("nup", base_width=8),
     "option 'base_width' is not an option of parameterization 'nup'; allowed: normalize, sigma2_scale, width_profile"),
    (lambda: get_parameterization("nup", normalize="l2"), f"normalize='l2' is not allowed; choose {NORMALIZE}"),
    (lambda: get_parameterization("sp", width_profile="cubic"), "width_profile='cubic' is not allowed"),
    (lambda: get_parameterization("ntk", sigma2_scale=-1),
     "sigma2_scale=-1 is not allowed; sigma2_scale must be a finite number > 0"),
    (lambda: get_parameterization("mup", base_width=0),
     "base_width=0 is out of range; base_width must be an integer >= 1"),
    (lambda: NormalizedSGD(_params(), lr=-1), "lr=-1 is not allowed; lr must be a finite number > 0"),
    (lambda: NormalizedSGD(_params(), lr=math.nan), "lr=nan is not allowed"),
    (lambda: NormalizedSGD(_params(), lr=0.1, normalize="l2"), f"normalize='l2' is not allowed; choose {NORMALIZE}"),
    (lambda: NormalizedSGD(_params(), lr=0.1, momentum=1.0),
     r"momentum=1.0 is not allowed; momentum must be in \[0, 1\)"),
    (lambda: NormalizedSGD(_params(), lr=0.1, momentum=-0.1),
     "momentum=-0.1 is not allowed; momentum must be a finite number >= 0"),
    (lambda: NormalizedSGD([{"params": _params(), "lr": -1.0}], lr=0.1),
     r"lr \(of a parameter group\)=-1.0 is not allowed"),
    # grid
    (lambda: grid(), r"grid\(\) needs at least one axis, e.g. grid\(depth=\[2, 4\]\)"),
    (lambda: grid(depth=[]), r"grid axis depth=\[\] is empty; give at least one value"),
    (lambda: grid(depth=[2], lr=()), r"grid axis lr=\[\] is empty"),
    (lambda: grid(depth=4), r"grid axis depth=4 is not a list; give a non-empty list of values, e.g. depth=\[4\]"),
    (lambda: grid(activation="relu"), r"grid axis activation='relu' is not a list"),
    (lambda: grid(depht=[2]),
     "grid axis 'depht' is not a RunConfig field; choose from parameterization, activation, depth"),
    # sweep: the configs
    (lambda: sweep([]), r"configs=\[\] is empty; configs must be a non-empty list of RunConfig or dicts"),
    (lambda: sweep(grid(depth=[2])[:0]), r"configs=\[\] is empty"),
    (lambda: sweep("configs.yaml"), "configs='configs.yaml' is not a list"),
    (lambda: sweep([TEACHER, 42]), r"configs\[1\]=42 is not a RunConfig or a dict of RunConfig fields"),
    (lambda: sweep([TEACHER, dict(TEACHER, depht=2)]), r"configs\[1\]: 'depht' is not a RunConfig field; choose from"),
    (lambda: sweep([TEACHER, dict(TEACHER, depth="4")]),
     r"configs\[1\]: depth='4' is not an integer; depth must be an integer >= 1"),
    (lambda: sweep([dict(TEACHER, lr=-1)]), r"configs\[0\]: lr=-1 is not allowed; lr must be a finite number > 0"),
    (lambda: sweep([dict(TEACHER, parameterization="adam")]),
     rf"configs\[0\]: parameterization='adam' is not allowed; choose {PARAMETERIZATIONS}"),
    # sweep: its own arguments
    (lambda: sweep([TEACHER], n_jobs=0),
     "n_jobs=0 is not allowed; n_jobs must be an integer >= 1, or -1 for all cores"),
    (lambda: sweep([TEACHER], n_jobs="4"), "n_jobs='4' is not allowed"),
    (lambda: sweep([TEACHER], retries=-1), "retries=-1 is out of range; retries must be an integer >= 0"),
    (lambda: sweep([TEACHER], threads=0), "threads=0 is out of range; threads must be an integer >= 1"),
    (lambda: sweep([TEACHER], progress="yes"), "progress='yes' is not allowed; progress must be True or False"),
    (lambda: sweep([TEACHER], cache=None), "cache=None is not allowed; cache must be True or False"),
    (lambda: sweep([TEACHER], backend="spark"),
     "backend='spark' is not allowed; choose one of 'loky', 'serial', 'dask'"),
    (lambda: sweep([TEACHER], backend="loky", scheduler="tcp://127.0.0.1:8786"),
     "scheduler='tcp://127.0.0.1:8786' is only used by backend='dask', not backend='loky'"),
]


def _params():
    return [torch.zeros(2, requires_grad=True)]


@pytest.mark.parametrize("call, message", OTHER_CASES, ids=range(len(OTHER_CASES)))
def test_entry_points_reject(call, message, tmp_path, monkeypatch):
    monkeypatch.setenv("NUP_RESULTS_DIR", str(tmp_path))  # nothing may run, but never in results/
    with pytest.raises(ValueError, match=message):
        call()
    assert not list(tmp_path.rglob("output.pkl"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_sweep_rejects_cuda_without_cuda_before_running_anything(tmp_path):
    message = r"configs\[1\]: device='cuda' was asked for but torch.cuda.is_available\(\) is False"
    with pytest.raises(ValueError, match=message):
        sweep([TEACHER, dict(TEACHER, device="cuda")], backend="serial", cache_dir=tmp_path, progress=False)
    assert not list(tmp_path.rglob("output.pkl"))


def test_dask_scheduler_must_be_an_address():
    pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install 'nup[dask]')")
    with pytest.raises(ValueError, match="scheduler=123 is not allowed; give a scheduler address such as"):
        sweep([TEACHER], scheduler=123, progress=False)

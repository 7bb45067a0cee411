"""Tests for nup.training.sweep: grid, the sweep DataFrame, local processes (loky) and a real Dask cluster.

Parallel results are compared with the serial run's; both use ``cache=False`` (or separate
cache directories), so the comparison is between two computations, not one computation
read back twice.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from pandas.testing import assert_frame_equal

import nup.training.cache
from nup import RunConfig, train
from helpers import count_trains
from nup.training.sweep import grid, sweep

NO_DASK = "dask.distributed is not installed (pip install 'nup[dask]')"
# Tiny teacher runs: a few milliseconds each.
# Pinned to 1 thread: serial and parallel sweeps then run the same computation and share cache entries.
BASE = dict(dataset="teacher", depth=2, width=8, steps=10, n_train=32, threads=1)


def tiny_configs():
    """Four runs that differ in depth and lr, one of them diverging (sp, lr=1e4)."""
    return [dict(BASE, parameterization="sp", **point) for point in grid(depth=[2, 3], lr=[0.1, 1e4])]


@pytest.fixture(scope="module")
def serial_frame():
    return sweep(tiny_configs(), backend="serial", cache=False, progress=False)


# ------------------------------------------------------------------------------------ grid

def test_grid_is_the_cartesian_product_last_axis_fastest():
    points = grid(depth=[2, 3], lr=(0.1, 1.0, 10.0))
    assert points == [{"depth": d, "lr": lr} for d in (2, 3) for lr in (0.1, 1.0, 10.0)]


def test_grid_turns_numpy_values_into_python_ones():
    points = grid(width=np.array([8, 16]), classes=[(0, 1)])
    assert points == [{"width": 8, "classes": (0, 1)}, {"width": 16, "classes": (0, 1)}]
    assert all(type(p["width"]) is int for p in points)


# ------------------------------------------------------------------------------- the frame

def test_frame_has_run_varying_fields_and_divergence_columns(serial_frame):
    df = serial_frame
    assert list(df.columns) == ["run", "depth", "lr", "step", "metric", "layer", "value",
                                "diverged", "diverged_step", "error"]
    assert df["diverged_step"].dtype == "Int64" and df["diverged"].dtype == bool
    per_run = df.groupby("run").first()
    assert per_run["depth"].tolist() == [2, 2, 3, 3]
    assert per_run["lr"].tolist() == [0.1, 1e4, 0.1, 1e4]
    assert per_run["diverged"].tolist() == [False, True, False, True]
    assert per_run["error"].isna().all()
    # Each run's rows are the run's own DataFrame, in order.
    for i, config in enumerate(tiny_configs()):
        result = train(RunConfig(**config))
        rows = df[df.run == i][["step", "metric", "layer", "value"]].reset_index(drop=True)
        assert_frame_equal(rows, result.df[["step", "metric", "layer", "value"]], check_dtype=False)
        assert (df[df.run == i]["diverged_step"].dropna() == (result.diverged_step or 0)).all()


def test_sweep_accepts_run_configs_and_dicts():
    df = sweep([RunConfig(**BASE), dict(BASE, seed=1)], backend="serial", cache=False, progress=False)
    assert df.run.unique().tolist() == [0, 1] and "seed" in df.columns


def test_a_run_that_raises_is_a_failed_row_not_an_exception(tmp_path, monkeypatch):
    monkeypatch.setenv("NUP_DATA_DIR", str(tmp_path))  # no Fashion-MNIST files here
    configs = [BASE, dict(BASE, dataset="fashion_mnist", n_train=8)]
    with pytest.warns(RuntimeWarning, match=r"1 of 2 runs failed \(runs \[1\]\)"):
        df = sweep(configs, backend="serial", cache=False, progress=False)
    failed = df[df.run == 1]
    assert failed.metric.tolist() == ["failed"] and failed.value.isna().all() and not failed.diverged.any()
    assert str(tmp_path) in failed.error.iloc[0]
    assert df[df.run == 0].metric.isin(["loss", "lr"]).all() and df[df.run == 0].error.isna().all()


def test_torch_thread_count_does_not_change_tiny_runs():
    """Every run uses nup.training.loop.THREADS whatever the caller's count (tests/test_determinism.py
    checks a configuration whose bits would otherwise change)."""
    previous = torch.get_num_threads()
    try:
        frames = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            frames.append(train(RunConfig(**dict(BASE, depth=3))).df)
    finally:
        torch.set_num_threads(previous)
    assert_frame_equal(frames[0], frames[1])


def test_progress_bar_follows_progress_and_tqdm_disable(capsys):
    sweep([BASE], backend="serial", cache=False, progress=False)
    assert "runs" not in capsys.readouterr().err
    sweep([BASE], backend="serial", cache=False, progress=True)
    # tqdm reads TQDM_DISABLE when imported (``make test`` sets it); the SIGKILL test in
    # test_faults.py checks a fresh process with TQDM_DISABLE=1 stays quiet.
    shown = "runs" in capsys.readouterr().err
    assert shown == ("TQDM_DISABLE" not in os.environ)


def test_bad_configs_stop_the_sweep_before_any_run(tmp_path, monkeypatch):
    calls = count_trains(monkeypatch)
    with pytest.raises(ValueError, match=r"configs\[1\]: lr=-1"):
        sweep([BASE, dict(BASE, lr=-1)], backend="serial", cache_dir=tmp_path, progress=False)
    assert calls == [] and not list(tmp_path.rglob("output.pkl"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_an_up_front_error(tmp_path):
    with pytest.raises(ValueError, match=r"configs\[1\]: device='cuda'.*torch.cuda.is_available\(\) is False"):
        sweep([BASE, dict(BASE, device="cuda")], n_jobs=2, cache_dir=tmp_path, progress=False)
    assert not list(tmp_path.rglob("output.pkl"))


def test_label_noise_enters_the_cache_key_only_when_set():
    """Adding the field kept every earlier result valid: at its default it is not in the key."""
    key = nup.training.cache._key(RunConfig(**BASE))[0]
    assert "label_noise" not in key and "seed" in key
    assert nup.training.cache._key(RunConfig(**dict(BASE, dataset="fashion_mnist", label_noise=0.2)))[0][
        "label_noise"] == 0.2


def test_auto_device_is_cuda_when_available():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert nup.training.cache._key(RunConfig(**BASE))[0]["device"] == expected


# --------------------------------------------------------------------------- local processes

def test_local_processes_equal_the_serial_run(serial_frame):
    df = sweep(tiny_configs(), n_jobs=2, backend="loky", cache=False, progress=False)
    assert_frame_equal(df, serial_frame)


def test_runs_cached_by_workers_are_read_back_not_recomputed(tmp_path, serial_frame, monkeypatch):
    monkeypatch.setenv("NUP_SWEEP_BACKEND", "loky")  # the backend=None path
    first = sweep(tiny_configs(), n_jobs=2, cache_dir=tmp_path, progress=False)
    assert all(nup.training.cache.is_cached(RunConfig(**c), cache_dir=tmp_path) for c in tiny_configs())
    calls = count_trains(monkeypatch)
    again = sweep(tiny_configs(), backend="serial", cache_dir=tmp_path, progress=False)
    assert calls == []
    assert_frame_equal(first, serial_frame)
    assert_frame_equal(again, serial_frame)


def test_backend_from_environment_is_validated(monkeypatch):
    monkeypatch.setenv("NUP_SWEEP_BACKEND", "spark")
    message = "NUP_SWEEP_BACKEND='spark' is not allowed; choose one of 'loky', 'serial', 'dask'"
    with pytest.raises(ValueError, match=message):
        sweep([BASE], progress=False)


def test_dask_missing_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(ImportError, match=r"nup\[dask\]"):
        sweep([BASE], backend="dask", progress=False)


# ------------------------------------------------------------------------------------ dask

def test_dask_without_a_scheduler_says_how_to_give_one(monkeypatch):
    pytest.importorskip("distributed", reason=NO_DASK)
    monkeypatch.delenv("NUP_DASK_SCHEDULER", raising=False)
    with pytest.raises(ValueError, match="NUP_DASK_SCHEDULER"):
        sweep([BASE], backend="dask", progress=False)


def test_dask_local_cluster_equals_the_serial_run(serial_frame, tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed", reason=NO_DASK)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        df = sweep(tiny_configs(), backend="dask", scheduler=cluster.scheduler_address, cache=False, progress=False)
        assert_frame_equal(df, serial_frame)
        # Selected by environment variables alone, as a notebook run on a cluster would be.
        monkeypatch.setenv("NUP_SWEEP_BACKEND", "dask")
        monkeypatch.setenv("NUP_DASK_SCHEDULER", cluster.scheduler_address)
        calls = count_trains(monkeypatch)  # patched here only: the runs happen in the workers
        df = sweep(tiny_configs(), cache_dir=tmp_path, progress=False)
        assert calls == []
        assert_frame_equal(df, serial_frame)
        assert all(nup.training.cache.is_cached(RunConfig(**c), cache_dir=tmp_path) for c in tiny_configs())
        # A Client of one's own (say, made in a notebook) is used and left open.
        monkeypatch.delenv("NUP_SWEEP_BACKEND")
        with distributed.Client(cluster, set_as_default=False) as client:
            df = sweep(tiny_configs(), scheduler=client, cache_dir=tmp_path, progress=False)
            assert client.status == "running"
        assert_frame_equal(df, serial_frame)


def test_columns_keeps_fields_that_do_not_vary(tmp_path):
    configs = [RunConfig(dataset="teacher", n_train=8, depth=2, width=4, steps=1, lr=lr) for lr in (0.1, 0.2)]
    frame = sweep(configs, cache_dir=tmp_path, progress=False, columns=["seed", "depth"])
    assert {"lr", "seed", "depth"} <= set(frame.columns)
    assert set(frame.seed) == {0}
    with pytest.raises(ValueError, match="columns='nope'"):
        sweep(configs, cache_dir=tmp_path, columns=["nope"])


def test_a_cached_parallel_sweep_reads_in_this_process_and_starts_no_worker(tmp_path, serial_frame, monkeypatch):
    sweep(tiny_configs(), backend="serial", cache_dir=tmp_path, progress=False)
    started = []
    monkeypatch.setattr(nup.training.sweep, "_run_batch", lambda tasks, *args: started.append(tasks) or (set(), None))
    df = sweep(tiny_configs(), n_jobs=2, backend="loky", cache_dir=tmp_path, progress=False)
    assert started == []
    assert_frame_equal(df, serial_frame)
    # One run missing from the cache: only it goes to the workers.
    extra = dict(BASE, seed=5)
    with pytest.raises(KeyError):  # the stand-in pool computed nothing
        sweep(tiny_configs() + [extra], n_jobs=2, backend="loky", cache_dir=tmp_path, progress=False)
    assert [[task[0] for task in tasks] for tasks in started] == [[4]]

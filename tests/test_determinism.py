"""Results independent of the core count and of the sweep backend, for a pinned thread count.

A run executes under ``RunConfig.threads`` torch threads, so a ``RunConfig`` that pins them gives the
same DataFrame bit for bit under any ``torch.get_num_threads()`` of the calling process, serially,
through loky workers and through Dask.  The first test shows that the configuration used here does
depend on the thread count, so the others have teeth (and the count is part of the cache key).
"""

from __future__ import annotations

import threading

import pandas as pd
import pytest
import torch

from nup import RunConfig, train
from nup.training import loop
from nup.training import sweep as sweep_module
from nup.training.sweep import sweep

# Fashion-MNIST, νP m=4 at depth 6 (hidden widths up to 100): big enough for torch to split its work
# between threads, so that 1, 2 and 3 threads give different bits when nothing fixes the count.
CONFIG = dict(parameterization="nup", width=4, depth=6, n_train=64, steps=12, lr=0.25, threads=1)
CONFIGS = [CONFIG, dict(CONFIG, seed=1)]


def exact(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a, b, check_exact=True)


@pytest.fixture
def restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def test_the_thread_count_changes_the_bits_when_nothing_fixes_it():
    frames = []
    for threads in (1, 2, 3):
        with loop.torch_threads(threads):
            frames.append(loop._train(RunConfig(**CONFIG)).df)
    assert not frames[0].value.equals(frames[1].value) or not frames[0].value.equals(frames[2].value)


@pytest.mark.parametrize("pinned", [1, 2])
def test_same_frame_under_any_torch_thread_count_serial_and_parallel(restore_threads, pinned):
    configs = [dict(c, threads=pinned) for c in CONFIGS]
    frames = {}
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        frames[f"serial, {threads} threads"] = sweep(configs, backend="serial", cache=False, progress=False)
        assert torch.get_num_threads() == threads  # restored after the runs
    torch.set_num_threads(3)
    frames["loky, n_jobs=2"] = sweep(configs, n_jobs=2, backend="loky", cache=False, progress=False)
    reference = frames.pop("serial, 1 threads")
    for name, frame in frames.items():
        exact(frame, reference)
    # train() itself, called directly, is the same computation.
    exact(train(RunConfig(**configs[0])).df, reference[reference.run == 0][["step", "metric", "layer", "value"]]
          .reset_index(drop=True))


def test_same_frame_through_a_threaded_dask_worker(restore_threads):
    """Two runs at once in one worker process (two threads) share the fixed thread count."""
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")
    reference = sweep(CONFIGS, backend="serial", cache=False, progress=False)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        frame = sweep(CONFIGS, backend="dask", scheduler=cluster.scheduler_address, cache=False, progress=False)
    exact(frame, reference)


@pytest.mark.parametrize("pinned", [None, 2])
def test_concurrent_runs_in_threads_of_one_process(restore_threads, pinned):
    torch.set_num_threads(2)
    configs = [dict(c, threads=pinned) for c in CONFIGS]  # None: both take the process's count, 2
    reference = [train(RunConfig(**c)).df for c in configs]
    results = [None, None]

    def work(i):
        results[i] = train(RunConfig(**configs[i])).df

    workers = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for got, expected in zip(results, reference):
        exact(got, expected)
    assert torch.get_num_threads() == 2  # the last run out restored it


def test_torch_threads_sets_and_restores(restore_threads):
    torch.set_num_threads(2)
    with loop.torch_threads() as threads:
        assert threads == loop.THREADS == torch.get_num_threads()
        with loop.torch_threads():  # nested (another run in this process): shares the count
            assert torch.get_num_threads() == loop.THREADS
        assert torch.get_num_threads() == loop.THREADS  # the outer run still holds it
        with pytest.raises(ValueError, match="threads=2 is not allowed while another run"):
            with loop.torch_threads(2):
                pass
    assert torch.get_num_threads() == 2


def test_torch_threads_is_restored_after_a_failing_run(restore_threads, monkeypatch):
    torch.set_num_threads(2)
    monkeypatch.setattr(loop, "build_model_and_data", lambda config: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        train(RunConfig(**CONFIG))
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("threads, message", [
    (0, "threads=0 is out of range; threads must be an integer >= 1"),
    ("1", "threads='1' is not an integer"),
])
def test_torch_threads_validates(threads, message):
    with pytest.raises(ValueError, match=message):
        with loop.torch_threads(threads):
            pass


def test_sweep_threads_applies_to_configs_that_leave_it_open(monkeypatch):
    """``sweep(threads=k)`` sets every unpinned config's count; a pinned config keeps its own; with
    ``threads=None`` each of ``n_jobs`` workers gets ``max(1, cores // n_jobs)``."""
    seen = []
    real = sweep_module.nup_cache.run

    def recording(config, **kwargs):
        seen.append(config.threads)
        return real(config, **kwargs)

    monkeypatch.setattr(sweep_module.nup_cache, "run", recording)
    short = dict(CONFIG, steps=1, threads=None)
    sweep([short, dict(short, threads=1)], threads=2, backend="serial", cache=False, progress=False)
    assert seen == [2, 1]
    monkeypatch.setattr(sweep_module, "cores", lambda: 8)
    seen.clear()
    sweep([short], backend="serial", cache=False, progress=False)
    assert seen == [8]  # serially, one run at a time gets every core
    assert [sweep_module.worker_threads(n) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    with pytest.raises(ValueError, match="threads=0 is out of range; threads must be an integer >= 1"):
        sweep([CONFIG], threads=0, progress=False)

"""``RunConfig.threads``: validated, recorded with the result, part of the cache key, and results at a
pinned count that do not depend on the calling process's thread count.

Results at *different* counts differ in the last bits (MKL splits the inner dimension of some matrix
products across threads, ATen splits large reductions; tests/test_determinism.py shows a config whose
bits change), which is why the count is recorded and keyed; ``threads=1`` reproduces every result
computed before the option existed.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from nup import RunConfig, train
from nup.training import cache, loop

SMALL = dict(parameterization="nup", width=4, depth=6, n_train=64, steps=8, lr=0.25)


@pytest.fixture
def restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("threads, message", [
    (0, "threads=0 is out of range; threads must be an integer >= 1"),
    (-2, "threads=-2 is out of range; threads must be an integer >= 1"),
    ("2", "threads='2' is not an integer; threads must be an integer >= 1"),
    (1.5, "threads=1.5 is not an integer"),
    (True, "threads=True is not an integer"),
])
def test_bad_thread_count_names_the_parameter(threads, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RunConfig(**SMALL, threads=threads)


def test_the_count_used_is_recorded(restore_threads):
    torch.set_num_threads(2)
    assert train(RunConfig(**dict(SMALL, steps=1), threads=1)).extras["threads"] == 1
    assert torch.get_num_threads() == 2  # restored
    assert train(RunConfig(**dict(SMALL, steps=1))).extras["threads"] == 2  # None: the process's count
    torch.set_num_threads(1)
    assert train(RunConfig(**dict(SMALL, steps=1), threads=2)).extras["threads"] == 2
    assert loop.resolve_threads(None) == 1 and loop.resolve_threads(3) == 3


def test_pinned_count_gives_the_same_bits_under_any_caller_count(restore_threads):
    """threads=1 is the computation every run did before the option (``_train`` under 1 thread),
    and threads=2 is as reproducible, at 1 or 2 threads in the calling process."""
    with loop.torch_threads(1):
        before = loop._train(RunConfig(**SMALL)).df
    for pinned in (1, 2):
        frames = []
        for caller in (1, 2):
            torch.set_num_threads(caller)
            frames.append(train(RunConfig(**SMALL, threads=pinned)).df)
        pd.testing.assert_frame_equal(frames[0], frames[1], check_exact=True)
        if pinned == 1:
            pd.testing.assert_frame_equal(frames[0], before, check_exact=True)


def test_cache_key_keeps_earlier_results_and_separates_counts(restore_threads, tmp_path):
    one = RunConfig(**SMALL, threads=1)
    values, _ = cache._key(one)
    assert "threads" not in values  # the key every run had before RunConfig.threads: earlier results stay valid
    assert cache._key(RunConfig(**SMALL, threads=2))[0]["threads"] == 2
    torch.set_num_threads(2)
    assert cache._key(RunConfig(**SMALL))[0]["threads"] == 2  # None: resolved like device="auto"
    torch.set_num_threads(1)
    assert "threads" not in cache._key(RunConfig(**SMALL))[0]

    torch.set_num_threads(2)
    first = cache.run(one, cache_dir=tmp_path)
    assert cache.is_cached(one, cache_dir=tmp_path)
    assert not cache.is_cached(RunConfig(**SMALL, threads=2), cache_dir=tmp_path)
    assert not cache.is_cached(RunConfig(**SMALL), cache_dir=tmp_path)  # None is 2 threads here
    torch.set_num_threads(1)
    assert cache.is_cached(RunConfig(**SMALL), cache_dir=tmp_path)  # ... and 1 thread here
    again = cache.run(RunConfig(**SMALL), cache_dir=tmp_path)
    assert again.extras["threads"] == first.extras["threads"] == 1
    pd.testing.assert_frame_equal(first.df, again.df, check_exact=True)


def test_torch_threads_also_pins_the_blas_libraries():
    """numpy's BLAS runs at the run's count inside torch_threads and at its own count again outside."""
    import numpy  # noqa: F401  (loads the BLAS library threadpoolctl inspects)
    from threadpoolctl import threadpool_info

    from nup.training.loop import torch_threads

    def blas_threads():
        return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    before = blas_threads()
    with torch_threads(1):
        assert set(blas_threads().values()) == {1}
    assert blas_threads() == before

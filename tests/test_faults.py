"""Faults: kills mid-write, unreadable cache files, a sweep killed part-way, dying workers, divergence.

What joblib does (joblib 1.6, ``_store_backends.py``): ``dump_item`` pickles a result to
``output.pkl.<uuid>-<pid>-<thread>`` and ``os.replace``s it onto ``output.pkl``, so
``output.pkl`` is either absent or complete.  ``MemorizedFunc._cached_call`` treats any
exception while loading ``output.pkl`` as a miss: it logs a warning ("Exception while
loading results") through the ``joblib`` logger and recomputes, overwriting the file.
The tests below check both, and what ``nup.training.sweep`` builds on them.
"""

from __future__ import annotations

import io
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from collections import Counter
from pathlib import Path

import joblib
import pytest
import torch
from pandas.testing import assert_frame_equal

import nup.training.cache
import nup.training.sweep
from nup import RunConfig, train
from nup.training.cache import is_cached, run
from helpers import count_trains
from nup.training.sweep import sweep
from nup.training.schedules import SCHEDULES
from nup.training.config import LOSS_FUNCTIONS
from nup.core.optim import NORMALIZE_MODES, NormalizedSGD, gradients_finite

BASE = dict(dataset="teacher", depth=2, width=8, steps=10, n_train=32)
REPO_ROOT = Path(__file__).resolve().parents[1]


def result_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.rglob("output.pkl"))


# --------------------------------------------------------------------------- atomic writes

class SimulatedKill(BaseException):
    """Stops the process's work at once, like SIGKILL (``except Exception`` does not catch it)."""


def test_a_result_killed_mid_write_leaves_no_result_file(tmp_path, monkeypatch):
    real_dump = joblib.numpy_pickle.dump

    def dump_half_then_die(value, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_dump(value, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        raise SimulatedKill

    config = RunConfig(**BASE)
    with monkeypatch.context() as patch:
        patch.setattr(joblib.numpy_pickle, "dump", dump_half_then_die)
        with pytest.raises(SimulatedKill):
            run(config, cache_dir=tmp_path)
    # The half-written bytes are in a temporary file; output.pkl never appeared.
    assert result_files(tmp_path) == []
    assert [p.name.split(".")[:2] for p in tmp_path.rglob("output.pkl.*")] == [["output", "pkl"]]
    assert not is_cached(config, cache_dir=tmp_path)
    calls = count_trains(monkeypatch)
    assert_frame_equal(run(config, cache_dir=tmp_path).df, train(config).df)
    assert len(calls) == 1 and is_cached(config, cache_dir=tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_an_unreadable_result_is_recomputed_with_a_warning(damage, tmp_path, monkeypatch, caplog):
    config = RunConfig(**BASE)
    expected = run(config, cache_dir=tmp_path).df
    (path,) = result_files(tmp_path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not a pickle" * 10, "empty": b""}[damage])

    calls = count_trains(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="joblib"):
        result = run(config, cache_dir=tmp_path)
    assert "Exception while loading results" in caplog.text
    assert len(calls) == 1
    assert_frame_equal(result.df, expected)
    assert_frame_equal(joblib.load(path).df, expected)  # the file was rewritten whole

    caplog.clear()
    assert_frame_equal(run(config, cache_dir=tmp_path).df, expected)
    assert len(calls) == 1 and "Exception" not in caplog.text


def test_a_sweep_recomputes_an_unreadable_result(tmp_path, monkeypatch, caplog):
    configs = [BASE, dict(BASE, seed=1)]
    expected = sweep(configs, backend="serial", cache_dir=tmp_path, progress=False)
    path = result_files(tmp_path)[0]
    path.write_bytes(path.read_bytes()[:100])
    calls = count_trains(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="joblib"):
        again = sweep(configs, backend="serial", cache_dir=tmp_path, progress=False)
    assert len(calls) == 1 and "Exception while loading results" in caplog.text
    assert_frame_equal(again, expected)


# ---------------------------------------------------------------------- a sweep killed part-way

# Six runs of ~0.2 s each, so the poll below sees the cache grow one run at a time.
SLOW_CONFIGS = [dict(BASE, depth=3, steps=400, seed=seed) for seed in range(6)]


def test_a_sweep_killed_with_sigkill_resumes_to_the_identical_result(tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    script = textwrap.dedent(f"""
        from nup.training.sweep import sweep
        sweep({SLOW_CONFIGS!r}, backend="serial", cache_dir={str(cache_dir)!r})
    """)
    env = dict(os.environ, TQDM_DISABLE="1")
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(result_files(cache_dir)) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert process.poll() is None, f"the sweep ended before it could be killed: {process.communicate()}"
        process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    assert "%|" not in stderr.decode(), "TQDM_DISABLE=1 should hide the progress bar"

    configs = [RunConfig(**c) for c in SLOW_CONFIGS]
    cached = [is_cached(c, cache_dir=cache_dir) for c in configs]
    assert 2 <= sum(cached) < len(configs), cached
    assert cached == sorted(cached, reverse=True)  # the serial sweep finished a prefix
    for path in result_files(cache_dir):  # what is there is complete
        assert joblib.load(path).df is not None
    stamps = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in result_files(cache_dir)}

    calls = count_trains(monkeypatch)
    resumed = sweep(SLOW_CONFIGS, backend="serial", cache_dir=cache_dir, progress=False)
    # Only the unfinished runs were computed; the finished ones were read, not rewritten.
    assert [c.seed for c in calls] == [c.seed for c, done in zip(configs, cached) if not done]
    assert all((p.stat().st_ino, p.stat().st_mtime_ns) == stamp for p, stamp in stamps.items())

    uninterrupted = sweep(SLOW_CONFIGS, backend="serial", cache=False, progress=False)
    assert_frame_equal(resumed, uninterrupted)


# --------------------------------------------------------------------------- dying workers

def exit_worker(ctx):
    """A schedule that SIGKILLs its own process, counting attempts in the file ``counter``.

    Only for these tests: the sweep ships it to its workers (pickled by reference to this
    module, which they import).  It never kills the pytest process itself (``guard_pid``).
    """
    options = dict(ctx.config.schedule_options)
    with open(options["counter"], "a") as f:
        f.write("x")
    if os.getpid() == options["guard_pid"]:
        raise RuntimeError("test_exit_worker would kill the test process; run it in a worker")
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture
def exit_worker_schedule(monkeypatch):
    """Registers ``exit_worker`` for one test only, so other tests never see it among the schedules."""
    monkeypatch.setitem(SCHEDULES, "test_exit_worker", exit_worker)


def dying(counter: Path, seed: int) -> dict:
    options = dict(counter=str(counter), guard_pid=os.getpid())
    return dict(BASE, seed=seed, schedule="test_exit_worker", schedule_options=options)


def test_a_worker_killed_with_sigkill_does_not_take_the_sweep_down(tmp_path, exit_worker_schedule):
    counter = tmp_path / "attempts"
    configs = [dict(BASE, seed=0), dying(counter, seed=1), dict(BASE, seed=2)]
    reference = sweep([configs[0], configs[2]], backend="serial", cache=False, progress=False)

    with pytest.warns(RuntimeWarning, match=r"1 of 3 runs failed \(runs \[1\]\)"):
        df = sweep(configs, n_jobs=2, backend="loky", cache=False, progress=False, retries=0)

    error = df[df.run == 1].error.iloc[0]
    assert df[df.run == 1].metric.tolist() == ["failed"]
    assert error.startswith("the worker running this configuration died or failed (1 attempt): "
                            "TerminatedWorkerError")
    assert "SIGKILL" in error  # loky reports the worker's exit code
    # One attempt alone in a worker, and perhaps one in the first batch (not charged).
    assert len(counter.read_text()) in (1, 2)
    others = df[df.run != 1].reset_index(drop=True)
    expected = reference.assign(run=reference.run.map({0: 0, 1: 2}))
    assert_frame_equal(others[expected.columns], expected, check_dtype=False)


def fake_pool(monkeypatch, die_times: dict[int, int], slots: int = 2, markers_visible: bool = True) -> Counter:
    """Replace the worker pool by a deterministic stand-in: tasks run ``slots`` at a time; a
    run (by seed) in ``die_times`` kills its worker that many times, and like loky's, the
    pool then fails the whole call, losing its partner in flight.  With ``markers_visible``
    False the workers' start markers never reach the parent (a cluster without a shared file
    system).  Returns the deaths."""
    deaths: Counter = Counter()

    def run_batch(tasks, engine, n_jobs, outcomes, bar):
        done = set()
        for k in range(0, len(tasks), slots):
            in_flight = tasks[k:k + slots]
            for index, config, *_, markers, _registry in in_flight:
                if markers_visible:
                    Path(markers, f"{index}.started").touch()
            seeds = [config.seed for _, config, *_ in in_flight]
            killers = [seed for seed in seeds if deaths[seed] < die_times.get(seed, 0)]
            if killers:
                deaths[killers[0]] += 1
                return done, RuntimeError("worker died")
            for index, config, cache, cache_dir, markers, _registry in in_flight:
                outcomes[index] = nup.training.sweep._run_one(index, config, cache, cache_dir,
                                                              markers if markers_visible else None)[1]
                done.add(index)
                bar.update()
        return done, None

    monkeypatch.setattr(nup.training.sweep, "_run_batch", run_batch)
    return deaths


SIX = [dict(BASE, seed=seed) for seed in range(6)]


@pytest.fixture(scope="module")
def six_serial():
    return sweep(SIX, backend="serial", cache=False, progress=False)


@pytest.mark.parametrize("die_times, retries, failed, markers_visible", [
    ({1: 99}, 1, {1: "2 attempts"}, True),  # dies alone twice: reported; its partner is not charged
    ({1: 99, 4: 99}, 0, {1: "1 attempt", 4: "1 attempt"}, True),
    ({0: 1, 5: 2}, 2, {}, True),  # flaky runs: retried until they finish
    ({2: 1}, 0, {}, True),  # a death in a batch is not an attempt: run alone, it finishes
    ({2: 99, 3: 99}, 1, {2: "2 attempts", 3: "2 attempts"}, True),  # two culprits in flight together
    ({1: 99, 4: 1}, 1, {1: "2 attempts"}, False),  # no markers: all unfinished runs are bisected
])
def test_worker_deaths_are_blamed_on_their_run_alone(die_times, retries, failed, markers_visible, monkeypatch,
                                                     six_serial):
    deaths = fake_pool(monkeypatch, die_times, markers_visible=markers_visible)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        df = sweep(SIX, n_jobs=2, backend="loky", cache=False, progress=False, retries=retries)
    errors = df.groupby("run").error.first().dropna()
    assert {run: error.split("(")[1].split(")")[0] for run, error in errors.items()} == failed
    assert set(deaths) == set(die_times)  # innocents never die, culprits die at most retries+1 times alone
    for run in failed:
        # retries+1 deaths alone, and uncharged ones in batches: one with markers, one per
        # bisection level without.
        assert retries + 1 <= deaths[run] <= retries + (2 if markers_visible else 5)
    ok = ~df.run.isin(list(failed))
    assert_frame_equal(df[ok].drop(columns="error").reset_index(drop=True),
                       six_serial[six_serial.run.isin(df[ok].run)].drop(columns="error").reset_index(drop=True))


# -------------------------------------------------------------------------------- divergence

def test_a_diverged_run_is_a_cached_result(tmp_path, monkeypatch):
    diverging = dict(BASE, parameterization="sp", lr=1e4)  # NaN/inf loss within a few steps
    df = sweep([dict(BASE, parameterization="sp"), diverging], backend="serial", cache_dir=tmp_path, progress=False)
    assert is_cached(RunConfig(**diverging), cache_dir=tmp_path)
    bad = df[df.run == 1]
    step = int(bad.diverged_step.iloc[0])
    assert bad.diverged.all() and (bad.diverged_step == step).all() and step > 0
    assert bad[bad.metric == "diverged"].step.tolist() == [step]
    assert bad[bad.metric == "loss"].step.max() < step and bad.value.notna().all()
    assert not df[df.run == 0].diverged.any() and df[df.run == 0].diverged_step.isna().all()

    calls = count_trains(monkeypatch)  # read back, divergence included
    result = run(RunConfig(**diverging), cache_dir=tmp_path)
    assert calls == [] and result.diverged and result.diverged_step == step


def test_a_worker_that_cannot_write_its_start_marker_still_runs():
    """On a cluster without a shared file system the marker directory does not exist."""
    index, outcome = nup.training.sweep._run_one(7, RunConfig(**BASE), False, "/nonexistent", "/nonexistent/markers")
    assert index == 7 and outcome.error is None
    assert_frame_equal(outcome.result.df, train(RunConfig(**BASE)).df)


class PoisonGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``factor`` on the ``at``-th backward pass
    (0-based), so the loss stays finite while the gradient does not."""

    calls = 0

    @staticmethod
    def forward(ctx, x, at, factor):
        ctx.at, ctx.factor = at, factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        hit = PoisonGradient.calls == ctx.at
        PoisonGradient.calls += 1
        return (grad * ctx.factor if hit else grad), None, None


def poisoned_loss(at: int, factor: float):
    from nup.training.config import mse_loss

    PoisonGradient.calls = 0
    return lambda out, y: mse_loss(PoisonGradient.apply(out, at, factor), y)


@pytest.mark.parametrize("factor", [math.nan, math.inf, -math.inf])
def test_a_non_finite_gradient_with_a_finite_loss_stops_the_run_at_that_step(factor, monkeypatch):
    config = RunConfig(**dict(BASE, steps=12), diagnostics=("updates",), diagnostic_every=1)
    clean = train(config).df
    monkeypatch.setitem(LOSS_FUNCTIONS, "mse", poisoned_loss(at=5, factor=factor))
    result = train(config)
    assert result.diverged_step == 5
    df = result.df
    assert df[df.metric == "diverged"].step.tolist() == [5]
    assert df[df.metric == "loss"].step.tolist() == list(range(6))  # the loss at step 5 was finite
    assert df.step.max() == 5
    # No update was taken at step 5 (no update rows there) and everything before is the clean run's.
    assert not ((df.step == 5) & (df.metric == "update_norm")).any()
    before = df[df.step < 5].reset_index(drop=True)
    assert_frame_equal(before, clean[clean.step < 5].reset_index(drop=True))


@pytest.mark.parametrize("values, finite", [
    ([[1.0, 2.0], [3.0]], True),
    ([[1e30, -1e30], [3e38]], True),  # finite, though the squares (and the fused 2-norm) overflow
    ([[1.0, math.nan], [3.0]], False),
    ([[1.0, 2.0], [math.inf]], False),
    ([[1e30, 1e30], [-math.inf]], False),
])
def test_gradients_finite_is_exact(values, finite):
    grads = [torch.tensor(v) for v in values]
    assert gradients_finite(grads) is finite
    assert gradients_finite(grads, torch._foreach_norm(grads)) is finite  # norms computed by the caller


@pytest.mark.parametrize("normalize, steer_beta", [(mode, 0.0) for mode in NORMALIZE_MODES]
                         + [("per_layer", 1.0), ("spectral", -1.0)])  # steering: the check's own norm pass
@pytest.mark.parametrize("values, finite", [([[1.0, 2.0], [3.0]], True), ([[1e30, -1e30], [3e38]], True),
                                            ([[1.0, math.nan], [3.0]], False), ([[1.0, 2.0], [-math.inf]], False)])
def test_the_optimizers_finite_check_moves_nothing_on_a_bad_gradient(normalize, steer_beta, values, finite):
    def weights_after_step(check_finite):
        params = []
        for v in values:
            p = torch.ones(len(v), requires_grad=True)
            p.grad = torch.tensor(v)
            params.append(p)
        params.append(torch.ones(2, requires_grad=True))  # no gradient: ignored
        groups = [dict(params=[p], fan_in=len(p), fan_out=1, multiplier=1.0) for p in params]
        optimizer = NormalizedSGD(groups, lr=0.1, normalize=normalize, check_finite=check_finite,
                                  steer_beta=steer_beta)
        optimizer.step()
        return torch.cat([p.detach() for p in params]), optimizer.last_step_finite

    checked, moved = weights_after_step(True)
    unchecked, unknown = weights_after_step(False)
    assert moved is finite and unknown is None
    if finite:  # the check changes no bit of a step
        assert torch.equal(checked, unchecked)
    else:
        assert torch.equal(checked, torch.ones_like(checked))
    with pytest.raises(ValueError, match="check_finite"):
        NormalizedSGD([torch.ones(2, requires_grad=True)], lr=0.1, check_finite=1)


# ---------------------------------------------------------------------------- a dying parent

def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux ``/proc``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (a dead child its new parent has not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc (Linux)")
def test_workers_exit_when_the_sweep_process_is_killed(tmp_path):
    # Runs far longer than the test: the workers are busy when their parent dies.
    configs = [dict(BASE, steps=10_000_000, seed=seed) for seed in range(4)]
    script = textwrap.dedent(f"""
        from nup.training.sweep import sweep
        sweep({configs!r}, n_jobs=2, backend="loky", cache=False, progress=False)
    """)
    env = dict(os.environ, TQDM_DISABLE="1", TMPDIR=str(tmp_path))  # the sweep's start markers land here
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("nup-sweep-*/*/*.started"))) < 2 and time.monotonic() < deadline:
            assert process.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.05)
        workers = children(process.pid)
        assert len(list(tmp_path.glob("nup-sweep-*/*/*.started"))) >= 2 and len(workers) >= 2, workers
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = [pid for pid in workers if running(pid)]
        assert survivors == [], f"processes the sweep started outlived it: {survivors}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in workers:  # only the processes this test's sweep started
            if running(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(os.name != "posix", reason="the fallback for a non-direct parent polls os.kill(pid, 0)")
def test_a_worker_watching_a_process_that_is_not_its_parent_exits_when_it_dies():
    watched = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    script = textwrap.dedent(f"""
        import time
        from nup.training.sweep import exit_with_parent
        exit_with_parent({watched.pid}, poll_seconds=0.05)
        print("watching", flush=True)
        time.sleep(120)
    """)
    worker = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE)
    try:
        assert worker.stdout.readline() == b"watching\n"
        watched.kill()
        watched.wait()
        assert worker.wait(timeout=10) == 70
        # Already gone at the start: exits at once.
        late = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, timeout=60)
        assert late.returncode == 70 and late.stdout == b""
    finally:
        for process in (watched, worker):
            if process.poll() is None:
                process.kill()
                process.wait()

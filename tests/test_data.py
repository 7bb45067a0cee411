"""Tests for nup.training.data (IDX parser, Fashion-MNIST loader, teacher task) and scripts/fetch_data.py."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from nup.training import data

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


# ---------------------------------------------------------------------------- helpers

def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX payload."""
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}i", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write(path: Path, payload: bytes, compress: bool) -> Path:
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def have_fashion_mnist() -> bool:
    d = data.data_dir()
    return all((d / f"{n}.gz").is_file() or (d / n).is_file() for n in data.FASHION_MNIST_FILES)


needs_data = pytest.mark.skipif(
    not have_fashion_mnist(),
    reason="Fashion-MNIST files not present (run `make data` or scripts/fetch_data.py)",
)


@pytest.fixture(scope="module")
def fetch():
    """scripts/fetch_data.py imported as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("fetch_data", REPO_ROOT / "scripts" / "fetch_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- IDX parser

@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_labels_and_images(tmp_path, compress):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=17, dtype=np.uint8)
    images = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    # Names without .gz: compression must be detected from the magic bytes, not the extension.
    got_labels = data.read_idx(write(tmp_path / "labels", idx_bytes(labels), compress))
    got_images = data.read_idx(write(tmp_path / "images", idx_bytes(images), compress))
    assert got_labels.dtype == np.uint8 and got_labels.shape == (17,)
    assert got_images.dtype == np.uint8 and got_images.shape == (5, 4, 3)
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_array_equal(got_images, images)


def test_read_idx_magic_numbers(tmp_path):
    payload = idx_bytes(np.zeros((2, 3), dtype=np.uint8))
    assert int.from_bytes(idx_bytes(np.zeros(4, np.uint8))[:4], "big") == 2049
    assert int.from_bytes(idx_bytes(np.zeros((1, 2, 2), np.uint8))[:4], "big") == 2051
    assert data.read_idx(write(tmp_path / "ok", payload, False)).shape == (2, 3)


def test_read_idx_other_dtype(tmp_path):
    values = np.array([[1, -2], [300, -40000]], dtype=np.int32)
    payload = struct.pack(">BBBB2i", 0, 0, 0x0C, 2, 2, 2) + values.astype(">i4").tobytes()
    np.testing.assert_array_equal(data.read_idx(write(tmp_path / "i32", payload, True)), values)


@pytest.mark.parametrize("magic", [b"\x00\x00\x07\x01", b"\x12\x34\x08\x01", b"\x00\x00\x08\x00"])
def test_read_idx_bad_magic(tmp_path, magic):
    payload = magic + idx_bytes(np.zeros(4, np.uint8))[4:]
    with pytest.raises(ValueError, match="magic"):
        data.read_idx(write(tmp_path / "bad", payload, False))


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_truncated(tmp_path, compress):
    payload = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))[:-5]
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(write(tmp_path / "short", payload, compress))


def test_read_idx_truncated_gzip_stream(tmp_path):
    blob = gzip.compress(idx_bytes(np.arange(100, dtype=np.uint8)))
    (tmp_path / "cut.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(tmp_path / "cut.gz")


def test_read_idx_too_short(tmp_path):
    with pytest.raises(ValueError, match="too short"):
        data.read_idx(write(tmp_path / "tiny", b"\x00\x00", False))


# ---------------------------------------------------------------------------- configuration

def test_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.delenv("NUP_DATA_DIR", raising=False)
    assert data.data_dir() == REPO_ROOT / "data" / "fashion-mnist"
    monkeypatch.setenv("NUP_DATA_DIR", str(tmp_path))
    assert data.data_dir() == tmp_path


def test_missing_files_message(monkeypatch, tmp_path):
    monkeypatch.setenv("NUP_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="make data"):
        data.load_fashion_mnist(10, device=CPU)


def test_tables_agree(fetch):
    assert fetch.FILES == data.FASHION_MNIST_FILES


# ---------------------------------------------------------------------------- validation

@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"n": 0}, r"n=0"),
        ({"n": 2.5}, r"n=2\.5"),
        ({"n": True}, r"n=True"),
        ({"n": 60001}, r"n=60001 .*60000 samples of the 'train' split.*1 <= n <= 60000"),
        ({"n": 10001, "split": "test"}, r"n=10001 .*'test'.*n <= 10000"),
        ({"n": 12001, "classes": (0, 1)}, r"n=12001 .*classes \(0, 1\).*n <= 12000"),
        ({"n": 10, "split": "val"}, r"split='val'.*'train', 'test'"),
        ({"n": 10, "target": "mse"}, r"target='mse'.*'onehot', 'labels'"),
        ({"n": 10, "classes": (0, 10)}, r"classes=\(0, 10\).*0\.\.9"),
        ({"n": 10, "classes": (1, 1)}, r"classes=\(1, 1\).*distinct"),
        ({"n": 10, "classes": ()}, r"classes=\(\)"),
        ({"n": 10, "seed": -1}, r"seed=-1"),
        ({"n": 10, "dtype": torch.int64}, r"dtype=torch\.int64"),
        ({"n": 10, "label_noise": 1.0}, r"label_noise=1\.0.*\[0, 1\)"),
        ({"n": 10, "label_noise": -0.1}, r"label_noise=-0\.1"),
        ({"n": 10, "label_noise": "0.1"}, r"label_noise='0\.1'"),
    ],
)
def test_load_fashion_mnist_validation(monkeypatch, tmp_path, kwargs, pattern):
    # Point at an empty folder: validation must fail before any file is touched.
    monkeypatch.setenv("NUP_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=pattern):
        data.load_fashion_mnist(device=CPU, **kwargs)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"n": 0}, r"n=0"),
        ({"n": 8, "d_in": 0}, r"d_in=0"),
        ({"n": 8, "d_out": -1}, r"d_out=-1"),
        ({"n": 8, "teacher_width": 1.5}, r"teacher_width=1\.5"),
        ({"n": 8, "noise": -0.1}, r"noise=-0\.1"),
        ({"n": 8, "noise": float("nan")}, r"noise=nan"),
        ({"n": 8, "seed": "a"}, r"seed='a'"),
        ({"n": 8, "dtype": torch.int32}, r"dtype=torch\.int32"),
    ],
)
def test_teacher_task_validation(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        data.teacher_task(device=CPU, **kwargs)


# ---------------------------------------------------------------------------- Fashion-MNIST

@needs_data
def test_fashion_mnist_determinism():
    x1, y1 = data.load_fashion_mnist(200, seed=3, device=CPU)
    x2, y2 = data.load_fashion_mnist(200, seed=3, device=CPU)
    x3, _ = data.load_fashion_mnist(200, seed=4, device=CPU)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    assert x1.shape == (200, 784) and x1.dtype == torch.float32 and y1.shape == (200, 10)


@needs_data
@pytest.mark.parametrize("n, split", [(1, "train"), (37, "train"), (1234, "test"), (10000, "test")])
def test_fashion_mnist_balance(n, split):
    _, labels = data.load_fashion_mnist(n, split=split, target="labels", device=CPU)
    assert labels.dtype == torch.int64 and labels.shape == (n,)
    assert labels.min() >= 0 and labels.max() < 10
    counts = torch.bincount(labels, minlength=10)
    assert counts.sum() == n and counts.max() - counts.min() <= 1
    # The first n % 10 classes get the extra sample.
    assert counts.tolist() == [n // 10 + (i < n % 10) for i in range(10)]


@needs_data
def test_fashion_mnist_onehot_and_labels_agree():
    x_o, y_o = data.load_fashion_mnist(50, seed=1, device=CPU, dtype=torch.float64)
    x_l, y_l = data.load_fashion_mnist(50, seed=1, target="labels", device=CPU, dtype=torch.float64)
    assert y_o.dtype == torch.float64 and x_o.dtype == torch.float64
    assert torch.equal(y_o.sum(1), torch.ones(50, dtype=torch.float64))
    assert set(y_o.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(y_o.argmax(1), y_l) and torch.equal(x_o, x_l)


@needs_data
def test_fashion_mnist_class_subset():
    x, y = data.load_fashion_mnist(101, classes=(7, 2), device=CPU)
    assert y.shape == (101, 2) and torch.equal(y.sum(1), torch.ones(101))
    assert y.sum(0).tolist() == [51, 50]
    _, labels = data.load_fashion_mnist(101, classes=(7, 2), target="labels", device=CPU)
    full_x, full_labels = data.load_fashion_mnist(60000, target="labels", device=CPU)
    # Re-indexing: label 0 means class 7, 1 means class 2; check via the matching images.
    rows = {tuple(r) for r in full_x[full_labels == 7][:, :50].tolist()}
    assert all(tuple(r) in rows for r in x[labels == 0][:, :50].tolist())


@pytest.mark.parametrize("n,n_classes,fraction", [(1000, 10, 0.3), (101, 2, 0.5), (50, 10, 0.0), (7, 3, 0.99)])
def test_corrupt_labels_flips_exactly_the_fraction_to_other_classes(n, n_classes, fraction):
    labels = np.arange(n) % n_classes
    noisy = data.corrupt_labels(labels, fraction, n_classes, seed=5)
    changed = noisy != labels
    assert changed.sum() == round(fraction * n)  # every corrupted label is another class
    assert noisy.min() >= 0 and noisy.max() < n_classes and noisy.dtype == np.int64
    assert np.array_equal(noisy, data.corrupt_labels(labels, fraction, n_classes, seed=5))
    assert np.array_equal(labels, np.arange(n) % n_classes)  # the input is not modified
    if fraction and n > 100:
        assert not np.array_equal(noisy, data.corrupt_labels(labels, fraction, n_classes, seed=6))


def test_corrupt_labels_draws_the_new_class_uniformly_among_the_others():
    labels = np.zeros(20000, dtype=np.int64)
    noisy = data.corrupt_labels(labels, 0.9, 10, seed=0)
    counts = np.bincount(noisy, minlength=10)
    assert counts[0] == 2000
    assert np.all(np.abs(counts[1:] - 2000) < 5 * np.sqrt(2000))  # 18000 spread over 9 classes


@needs_data
def test_fashion_mnist_label_noise_changes_only_the_labels():
    x, y = data.load_fashion_mnist(200, seed=3, device=CPU, target="labels")
    x0, y0 = data.load_fashion_mnist(200, seed=3, device=CPU, target="labels", label_noise=0.0)
    xn, yn = data.load_fashion_mnist(200, seed=3, device=CPU, target="labels", label_noise=0.25)
    _, yh = data.load_fashion_mnist(200, seed=3, device=CPU, label_noise=0.25)
    assert torch.equal(x, x0) and torch.equal(y, y0) and torch.equal(x, xn)
    assert (yn != y).sum() == 50 and torch.equal(yh.argmax(1), yn)


@needs_data
def test_run_config_label_noise_reaches_the_training_labels_not_the_test_labels():
    import nup
    from nup.training.loop import load_data

    config = nup.RunConfig(n_train=100, n_test=100, label_noise=0.5, loss="ce")
    x, y, (xt, yt) = load_data(config, CPU, torch.float32)
    x0, y0, (xt0, yt0) = load_data(config.replace(label_noise=0.0), CPU, torch.float32)
    assert torch.equal(x, x0) and (y != y0).sum() == 50
    assert torch.equal(xt, xt0) and torch.equal(yt, yt0)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(label_noise=1.0), r"label_noise=1\.0"), (dict(label_noise=-0.5), r"label_noise=-0\.5"),
    (dict(dataset="teacher", label_noise=0.1), r"label_noise=0\.1 only applies to dataset='fashion_mnist'"),
])
def test_run_config_rejects_bad_label_noise(kwargs, pattern):
    import nup

    with pytest.raises(ValueError, match=pattern):
        nup.RunConfig(**kwargs)


@needs_data
def test_fashion_mnist_standardized():
    x, _ = data.load_fashion_mnist(20000, seed=0, device=CPU)
    assert abs(x.mean().item()) < 0.02
    assert abs(x.std().item() - 1.0) < 0.02
    # Test split uses the training transform, so it is only approximately standardized.
    xt, _ = data.load_fashion_mnist(5000, split="test", device=CPU)
    assert abs(xt.mean().item()) < 0.05 and abs(xt.std().item() - 1.0) < 0.05


@needs_data
def test_fashion_mnist_default_device():
    x, y = data.load_fashion_mnist(10)
    assert x.device.type == ("cuda" if torch.cuda.is_available() else "cpu") == y.device.type


def test_loader_rejects_wrong_size(monkeypatch, tmp_path):
    # A well-formed IDX file of the wrong size is caught by the loader's cheap size check.
    for name in data.FASHION_MNIST_FILES:
        write(tmp_path / f"{name}.gz", idx_bytes(np.zeros(10, np.uint8)), True)
    monkeypatch.setenv("NUP_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="expected 60008"):
        data.load_fashion_mnist(10, device=CPU)


# ---------------------------------------------------------------------------- teacher task

def test_teacher_task_shapes_and_determinism():
    x, y = data.teacher_task(100, d_in=8, d_out=3, seed=5, device=CPU)
    assert x.shape == (100, 8) and y.shape == (100, 3)
    assert x.dtype == y.dtype == torch.float32
    x2, y2 = data.teacher_task(100, d_in=8, d_out=3, seed=5, device=CPU)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, y3 = data.teacher_task(100, d_in=8, d_out=3, seed=6, device=CPU)
    assert not torch.equal(x, x3) and not torch.equal(y, y3)


def test_teacher_task_unit_variance_and_noise():
    _, y = data.teacher_task(20000, d_out=2, seed=0, dtype=torch.float64, device=CPU)
    assert torch.allclose(y.std(0), torch.ones(2, dtype=torch.float64), atol=0.05)
    assert torch.allclose(y.mean(0), torch.zeros(2, dtype=torch.float64), atol=0.05)
    _, y_noisy = data.teacher_task(20000, d_out=2, seed=0, noise=0.5, dtype=torch.float64, device=CPU)
    assert torch.allclose((y_noisy - y).std(0), torch.full((2,), 0.5, dtype=torch.float64), atol=0.02)


# ---------------------------------------------------------------------------- fetch script

@pytest.fixture
def fake_fetch(fetch, monkeypatch, tmp_path):
    """Swap the real table for two tiny files and cut off every real source (no network, no apt)."""
    payloads = {"a-labels-idx1-ubyte": idx_bytes(np.arange(10, dtype=np.uint8)),
                "b-images-idx3-ubyte": idx_bytes(np.ones((2, 3, 3), np.uint8))}
    table = {k: (len(v), hashlib.sha256(v).hexdigest()) for k, v in payloads.items()}
    monkeypatch.setattr(fetch, "FILES", table)
    monkeypatch.setattr(fetch, "debian_files", lambda: {})
    monkeypatch.setattr(fetch, "apt_install", lambda: False)
    calls = []

    def download(url, out):  # serves correct files unless a test flips `corrupt`
        name = url.rsplit("/", 1)[1].removesuffix(".gz")
        calls.append(name)
        blob = payloads[name]
        out.write_bytes(gzip.compress(blob[:-1] + b"\x07" if download.corrupt else blob))

    download.corrupt = False
    monkeypatch.setattr(fetch, "download", download)
    return fetch, payloads, calls, download, tmp_path / "dest"


def test_fetch_verify_detects_corruption(fake_fetch, tmp_path):
    fetch, payloads, *_ = fake_fetch
    name = "a-labels-idx1-ubyte"
    good = write(tmp_path / "good.gz", payloads[name], True)
    plain = write(tmp_path / "plain", payloads[name], False)
    flipped = write(tmp_path / "flipped.gz", payloads[name][:-1] + b"\xff", True)
    short = write(tmp_path / "short.gz", payloads[name][:-1], True)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(good.read_bytes()[:-6])
    assert fetch.verify(good, name) is None and fetch.verify(plain, name) is None
    assert "sha256" in fetch.verify(flipped, name)
    assert "size" in fetch.verify(short, name)
    assert fetch.verify(cut, name) is not None


def test_fetch_rejects_corrupt_download(fake_fetch, capsys):
    fetch, _, calls, download, dest = fake_fetch
    download.corrupt = True
    assert fetch.main(["--dest", str(dest)]) == 1
    assert sorted(calls) == ["a-labels-idx1-ubyte", "b-images-idx3-ubyte"]
    assert list(dest.iterdir()) == []  # rejected files and temp files are gone
    err = capsys.readouterr().err
    assert "dataset-fashion-mnist" in err and str(dest) in err


def test_fetch_replaces_corrupt_existing_file(fake_fetch):
    fetch, payloads, calls, _, dest = fake_fetch
    dest.mkdir()
    write(dest / "a-labels-idx1-ubyte.gz", payloads["a-labels-idx1-ubyte"], True)  # good: kept
    write(dest / "b-images-idx3-ubyte.gz", b"garbage", True)  # bad: discarded and re-fetched
    assert fetch.main(["--dest", str(dest)]) == 0
    assert calls == ["b-images-idx3-ubyte"]
    assert sorted(p.name for p in dest.iterdir()) == ["a-labels-idx1-ubyte.gz", "b-images-idx3-ubyte.gz"]
    np.testing.assert_array_equal(data.read_idx(dest / "b-images-idx3-ubyte.gz"), np.ones((2, 3, 3)))
    calls.clear()
    assert fetch.main(["--dest", str(dest)]) == 0 and calls == []  # second run: nothing to do


def test_fetch_copies_from_debian(fake_fetch, monkeypatch, tmp_path):
    fetch, payloads, calls, _, dest = fake_fetch
    src = tmp_path / "deb"
    src.mkdir()
    found = {n: write(src / f"{n}.gz", p, True) for n, p in payloads.items()}
    monkeypatch.setattr(fetch, "debian_files", lambda: found)
    assert fetch.main(["--dest", str(dest)]) == 0 and calls == []
    assert all(fetch.verify(dest / f"{n}.gz", n) is None for n in payloads)


def test_default_dir_is_the_checkout_for_an_editable_install_else_the_working_directory(tmp_path):
    from nup.plotting import default_dir

    checkout = tmp_path / "checkout"
    (checkout / "nup").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("[project]\nname = 'nup'\n")
    site = tmp_path / "site-packages"
    (site / "nup").mkdir(parents=True)
    cwd = tmp_path / "work"
    for name in ("results", "figures", "data"):
        assert default_dir(name, checkout / "nup", cwd) == checkout / name
        assert default_dir(name, site / "nup", cwd) == cwd / name
    assert default_dir("results") == REPO_ROOT / "results"  # this checkout is an editable one


def test_results_figures_and_data_dirs_follow_env_then_checkout_then_cwd(tmp_path, monkeypatch):
    import nup.plotting
    from nup.plotting import figures_dir
    from nup.training.cache import results_dir

    for var in ("NUP_RESULTS_DIR", "NUP_FIGURES_DIR", "NUP_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    assert (results_dir(), figures_dir(), data.data_dir()) == (
        REPO_ROOT / "results", REPO_ROOT / "figures", REPO_ROOT / "data" / "fashion-mnist")
    # installed into site-packages: no pyproject.toml beside the package folder
    site = tmp_path / "site-packages" / "nup"
    site.mkdir(parents=True)
    monkeypatch.setattr(nup.plotting, "__file__", str(site / "plotting.py"))
    monkeypatch.chdir(tmp_path)
    assert (results_dir(), figures_dir(), data.data_dir()) == (
        tmp_path / "results", tmp_path / "figures", tmp_path / "data" / "fashion-mnist")
    for var, name in (("NUP_RESULTS_DIR", "r"), ("NUP_FIGURES_DIR", "f"), ("NUP_DATA_DIR", "d")):
        monkeypatch.setenv(var, str(tmp_path / name))
    assert (results_dir(), figures_dir(), data.data_dir()) == (tmp_path / "r", tmp_path / "f", tmp_path / "d")

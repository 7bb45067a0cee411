"""Data sets for nup: Fashion-MNIST (from local IDX files) and a synthetic teacher task.

Fashion-MNIST files are put in place by ``make data`` / ``scripts/fetch_data.py``,
which also verifies their SHA-256. This module only checks sizes, so loading stays fast.

The files are read from ``$NUP_DATA_DIR`` if set, else ``data/fashion-mnist`` in the repository root when
``nup`` is an editable checkout (a ``pyproject.toml`` beside the package folder), else
``data/fashion-mnist`` in the current working directory (``nup.plotting.default_dir``).
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from nup.plotting import default_dir
from nup.validation import check_int

REPO_ROOT = Path(__file__).resolve().parents[2]
# Value at import time (the working directory then, when nup is not an editable checkout); data_dir() re-resolves.
DEFAULT_DATA_DIR = default_dir("data") / "fashion-mnist"
# Value at import time; the loaders call data_dir() so a later NUP_DATA_DIR change is honoured.
DATA_DIR = Path(os.environ.get("NUP_DATA_DIR") or DEFAULT_DATA_DIR)

# Decompressed name -> (bytes, sha256 of the decompressed payload); see docs/data.md.
FASHION_MNIST_FILES: dict[str, tuple[int, str]] = {
    "train-images-idx3-ubyte": (47040016, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte": (60008, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte": (7840016, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte": (10008, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLIT_SIZES = {"train": 60000, "test": 10000}
NUM_CLASSES = 10
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
TARGETS = ("onehot", "labels")

# IDX type code -> big-endian numpy dtype (byte 2 of the magic number).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# Caches keyed by resolved file / directory path, so changing NUP_DATA_DIR never serves stale data.
_ARRAYS: dict[Path, np.ndarray] = {}
_STATS: dict[Path, tuple[np.ndarray, float]] = {}


def data_dir() -> Path:
    """Directory holding the Fashion-MNIST files: $NUP_DATA_DIR if set, else ``data/fashion-mnist`` in the
    checkout (editable install) or in the working directory (``nup.plotting.default_dir``)."""
    return Path(os.environ.get("NUP_DATA_DIR") or default_dir("data") / "fashion-mnist")


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------------------- IDX parsing

def _read_payload(path: str | os.PathLike) -> bytes:
    """Return the file's bytes, gunzipped if it starts with the gzip magic (not judged by name)."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise ValueError(f"{path}: corrupt or truncated gzip stream ({exc})") from exc
    return raw


def parse_idx(payload: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode an uncompressed IDX payload into a (read-only) numpy array of shape dims."""
    if len(payload) < 4:
        raise ValueError(f"{source}: only {len(payload)} bytes, too short for an IDX header")
    zero, code, ndim = int.from_bytes(payload[:2], "big"), payload[2], payload[3]
    if zero != 0 or code not in _IDX_DTYPES or ndim < 1:
        raise ValueError(
            f"{source}: bad IDX magic number 0x{payload[:4].hex()}; expected 0x0000TTNN with "
            f"type TT in {{{', '.join(f'{c:02x}' for c in _IDX_DTYPES)}}} and NN >= 1 dimensions"
        )
    header = 4 + 4 * ndim
    if len(payload) < header:
        raise ValueError(f"{source}: truncated IDX header ({len(payload)} bytes, need {header})")
    dims = tuple(int.from_bytes(payload[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(payload) != expected:
        what = "truncated" if len(payload) < expected else "has trailing bytes"
        raise ValueError(f"{source}: IDX file {what}: {len(payload)} bytes, expected {expected} for shape {dims}")
    arr = np.frombuffer(payload, dtype=dtype, offset=header).reshape(dims)
    # Multi-byte types are big-endian on disk; hand back native byte order.
    return arr if dtype.itemsize == 1 else arr.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not) into a numpy array of shape dims.

    Raises ValueError for a bad magic number, a size mismatch (truncated file) or corrupt gzip.
    uint8 arrays are read-only views over the decoded bytes; copy before writing.
    """
    return parse_idx(_read_payload(path), source=str(path))


# ---------------------------------------------------------------------------- Fashion-MNIST

def _find_file(directory: Path, name: str) -> Path:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Fashion-MNIST file {name}(.gz) not found in {directory}. Run `make data` "
        f"(or `python scripts/fetch_data.py`), or set NUP_DATA_DIR to a folder holding the four .gz files."
    )


def _load_array(directory: Path, name: str) -> np.ndarray:
    """Decode one Fashion-MNIST file once per process; check its decompressed size."""
    path = _find_file(directory, name).resolve()
    if path not in _ARRAYS:
        payload = _read_payload(path)
        n_bytes = FASHION_MNIST_FILES[name][0]
        if len(payload) != n_bytes:
            raise ValueError(
                f"{path} decompresses to {len(payload)} bytes, expected {n_bytes}; "
                "the file is damaged, delete it and run `make data`"
            )
        _ARRAYS[path] = parse_idx(payload, source=str(path))
    return _ARRAYS[path]


def _train_stats(directory: Path) -> tuple[np.ndarray, float]:
    """Per-pixel mean and global std of the centred pixels over the whole training split."""
    key = directory.resolve()
    if key not in _STATS:
        x = _load_array(directory, SPLIT_FILES["train"][0]).reshape(SPLIT_SIZES["train"], -1)
        mean = x.mean(axis=0, dtype=np.float64)
        # Chunked so we never hold a float64 copy of the whole split (376 MB).
        sq = sum(((x[i:i + 10000] - mean) ** 2).sum() for i in range(0, len(x), 10000))
        _STATS[key] = (mean, float(np.sqrt(sq / x.size)))
    return _STATS[key]


def _check_float_dtype(dtype: torch.dtype) -> None:
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype={dtype!r} is invalid; use a floating torch dtype such as torch.float32")


def check_classes(classes: Iterable[int] | None) -> tuple[int, ...]:
    if classes is None:
        return tuple(range(NUM_CLASSES))
    try:
        chosen = tuple(classes)
    except TypeError:
        raise ValueError(f"classes={classes!r} is invalid; give a sequence of labels in 0..{NUM_CLASSES - 1}") from None
    bad = [c for c in chosen if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < NUM_CLASSES]
    if not chosen or bad or len(set(chosen)) != len(chosen):
        raise ValueError(
            f"classes={classes!r} is invalid; give distinct labels in 0..{NUM_CLASSES - 1}, e.g. (0, 1)"
            + (f" (unknown: {bad})" if bad else "")
        )
    return tuple(int(c) for c in chosen)


def _balanced_counts(n: int, k: int) -> list[int]:
    """Split n over k classes as evenly as possible; the first n % k classes get one more."""
    return [n // k + (i < n % k) for i in range(k)]


def load_fashion_mnist(
    n: int,
    split: str = "train",
    seed: int = 0,
    target: str = "onehot",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    classes: Iterable[int] | None = None,
    label_noise: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded, class-balanced subset of n Fashion-MNIST samples.

    x: (n, 784) images, standardized with the training split's per-pixel mean and global std
    (the same transform for train and test). y: (n, len(classes)) one-hot 0/1 floats for
    target="onehot" (MSE), or (n,) int64 labels for target="labels" (cross-entropy).
    ``classes`` restricts to a subset of labels, re-indexed 0..len(classes)-1 in the given order.
    Samples are shuffled (classes interleaved); the same seed gives identical tensors.
    ``label_noise``: the fraction of samples whose label is replaced by a different class
    (``corrupt_labels``, seeded by ``seed``); the images and the subset do not change with it.
    """
    # Validate everything before touching the disk; split sizes are fixed, Fashion-MNIST is exactly balanced.
    if split not in SPLIT_FILES:
        raise ValueError(f"split={split!r} is invalid; choose one of {tuple(SPLIT_FILES)}")
    if target not in TARGETS:
        raise ValueError(f"target={target!r} is invalid; choose one of {TARGETS}")
    chosen = check_classes(classes)
    check_int("n", n, minimum=1)
    check_int("seed", seed, minimum=0)
    check_label_noise(label_noise)
    _check_float_dtype(dtype)
    available = SPLIT_SIZES[split] // NUM_CLASSES * len(chosen)
    if n > available:
        which = "" if classes is None else f" with classes {chosen}"
        raise ValueError(
            f"n={n} is larger than the {available} samples of the {split!r} split{which}; "
            f"choose 1 <= n <= {available}"
        )
    device = default_device() if device is None else torch.device(device)

    directory = data_dir()
    images_name, labels_name = SPLIT_FILES[split]
    labels = _load_array(directory, labels_name)
    images = _load_array(directory, images_name)
    mean, std = _train_stats(directory)

    rng = np.random.default_rng(seed)
    picked = []
    for cls, count in zip(chosen, _balanced_counts(n, len(chosen))):
        pool = np.flatnonzero(labels == cls)
        picked.append(rng.choice(pool, size=count, replace=False))
    idx = rng.permutation(np.concatenate(picked))

    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    x = (images[idx].reshape(n, -1).astype(np_dtype) - mean.astype(np_dtype)) / np_dtype(std)
    remap = np.full(NUM_CLASSES, -1, dtype=np.int64)
    remap[list(chosen)] = np.arange(len(chosen))
    y = remap[labels[idx]]
    if label_noise:
        y = corrupt_labels(y, label_noise, len(chosen), seed)
    y = torch.from_numpy(y)
    if target == "onehot":
        y = torch.nn.functional.one_hot(y, len(chosen)).to(dtype)
    return torch.from_numpy(x).to(device=device, dtype=dtype), y.to(device)


def check_label_noise(label_noise) -> float:
    """``label_noise`` must be a number in [0, 1)."""
    ok = isinstance(label_noise, (int, float, np.floating)) and not isinstance(label_noise, bool)
    if not ok or not 0 <= label_noise < 1:
        raise ValueError(f"label_noise={label_noise!r} is invalid; give the fraction of corrupted labels, "
                         "a number in [0, 1)")
    return float(label_noise)


def corrupt_labels(labels: np.ndarray, fraction: float, n_classes: int, seed: int) -> np.ndarray:
    """A copy of ``labels`` (ints in ``0..n_classes-1``) in which ``round(fraction * n)`` samples, drawn
    without replacement, carry a uniformly drawn *different* class.  Seeded by ``seed`` through a stream
    of its own, so the same seed corrupts the same samples whatever else it seeds."""
    fraction = check_label_noise(fraction)
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng([seed, 0x1ABE1])
    flipped = rng.choice(len(labels), size=int(round(fraction * len(labels))), replace=False)
    out = labels.copy()
    # A shift by 1..n_classes-1 (mod n_classes) is a uniform draw among the other classes.
    out[flipped] = (labels[flipped] + rng.integers(1, n_classes, size=len(flipped))) % n_classes
    return out


# ---------------------------------------------------------------------------- teacher task

def teacher_task(
    n: int,
    d_in: int = 16,
    d_out: int = 1,
    seed: int = 0,
    teacher_width: int = 64,
    noise: float = 0.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic teacher-student regression: x ~ N(0, I), y = tanh-teacher(x) (+ noise).

    The teacher is a fixed random two-layer tanh network drawn from ``seed``; its output is
    standardized to zero mean / unit variance per output using a fixed reference sample, so
    the target function does not depend on n. ``noise`` is the std of added Gaussian label noise.
    Returns x: (n, d_in), y: (n, d_out).
    """
    for name, value in (("n", n), ("d_in", d_in), ("d_out", d_out), ("teacher_width", teacher_width)):
        check_int(name, value, minimum=1)
    check_int("seed", seed, minimum=0)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < float("inf"):
        raise ValueError(f"noise={noise!r} is invalid; noise must be a finite number >= 0")
    _check_float_dtype(dtype)
    device = default_device() if device is None else torch.device(device)

    # Everything is drawn on CPU in float64 from one generator, so results match across devices.
    g = torch.Generator().manual_seed(int(seed))
    w1 = torch.randn(d_in, teacher_width, generator=g, dtype=torch.float64) / d_in ** 0.5
    b1 = 0.1 * torch.randn(teacher_width, generator=g, dtype=torch.float64)
    w2 = torch.randn(teacher_width, d_out, generator=g, dtype=torch.float64) / teacher_width ** 0.5

    def teacher(inputs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(inputs @ w1 + b1) @ w2

    ref = teacher(torch.randn(8192, d_in, generator=g, dtype=torch.float64))
    mu, sigma = ref.mean(0), ref.std(0)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    y = (teacher(x) - mu) / sigma
    if noise > 0:
        y = y + noise * torch.randn(n, d_out, generator=g, dtype=torch.float64)
    return x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)

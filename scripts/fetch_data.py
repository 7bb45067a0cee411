#!/usr/bin/env python3
"""Put the four Fashion-MNIST IDX files in place as <dest>/<name>.gz and verify them.

Stdlib only, so it runs before any virtual environment exists.
Sources, in order: files already in dest; the Debian package ``dataset-fashion-mnist``;
installing that package with apt-get (root only); the upstream download URLs.
Every file is checked (size and SHA-256 of the decompressed payload) before it lands in dest.

Usage: python scripts/fetch_data.py [--dest DIR]
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Kept in sync with nup/training/data.py by tests/test_data.py (this script must not import torch).
FILES: dict[str, tuple[int, str]] = {
    "train-images-idx3-ubyte": (47040016, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte": (60008, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte": (7840016, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte": (10008, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
DEB_PACKAGE = "dataset-fashion-mnist"
DEB_DIR = Path("/usr/share/datasets/fashion-mnist")
UPSTREAM_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/{name}.gz"
TIMEOUT_S = 60


def say(msg: str) -> None:
    print(f"[fetch_data] {msg}", flush=True)


def default_dest() -> Path:
    return Path(os.environ.get("NUP_DATA_DIR") or REPO_ROOT / "data" / "fashion-mnist")


def verify(path: Path, name: str) -> str | None:
    """Return None if path holds the right payload for ``name``, else a short reason.

    Gzip is detected by magic bytes; the size and SHA-256 are those of the decompressed
    payload, because Debian recompressed the .gz files.
    """
    n_bytes, sha = FILES[name]
    try:
        with open(path, "rb") as raw:
            is_gzip = raw.read(2) == b"\x1f\x8b"
        digest, size = hashlib.sha256(), 0
        with (gzip.open(path, "rb") if is_gzip else open(path, "rb")) as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        return f"unreadable ({exc})"
    if size != n_bytes:
        return f"size {size} != {n_bytes}"
    if digest.hexdigest() != sha:
        return "sha256 mismatch"
    return None


def install(name: str, dest: Path, write: Callable[[Path], None]) -> bool:
    """Write ``name`` via ``write(tmp)`` into a temp file in dest, verify, then os.replace.

    The temp file lives in dest so the final rename is atomic; a bad file is deleted.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; data files should be readable like any other
        problem = verify(tmp, name)
        if problem is None:
            os.replace(tmp, dest / f"{name}.gz")
            return True
        say(f"  {name}: rejected, {problem}")
    except Exception as exc:  # any source failure just means "try the next source"
        say(f"  {name}: failed, {exc}")
    tmp.unlink(missing_ok=True)
    return False


def debian_files() -> dict[str, Path]:
    """Locate the Debian package's .gz files: dpkg -L, then the usual folder, then a glob."""
    candidates: list[str] = []
    if shutil.which("dpkg"):
        res = subprocess.run(["dpkg", "-L", DEB_PACKAGE], capture_output=True, text=True)
        if res.returncode == 0:
            candidates = res.stdout.split()
    if not candidates:
        candidates = [str(p) for p in DEB_DIR.glob("*")]
    if not candidates:
        for d in glob.glob("/usr/share/**/fashion-mnist*", recursive=True):
            candidates += glob.glob(os.path.join(d, "*")) if os.path.isdir(d) else [d]
    found = {}
    for c in candidates:
        for name in FILES:
            if os.path.basename(c) in (f"{name}.gz", name) and os.path.isfile(c):
                found.setdefault(name, Path(c))
    return found


def apt_install() -> bool:
    """Install the Debian package (root + apt-get only). Returns True if apt-get succeeded."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        say("skip apt-get (needs root and apt-get)")
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", DEB_PACKAGE]):
        say("run " + " ".join(cmd))
        if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            say(f"  {' '.join(cmd)} failed")
            return False
    return True


def download(url: str, out: Path) -> None:
    """Stream url to out (raises on network errors)."""
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp, open(out, "wb") as f:
        shutil.copyfileobj(resp, f, 1 << 20)


def copy_from_debian(missing: list[str], dest: Path) -> None:
    found = debian_files()
    if not found:
        say("  no Debian copy found")
    for name in missing:
        if name in found:
            src = found[name]
            if install(name, dest, lambda tmp, src=src: shutil.copyfile(src, tmp)):
                say(f"  {name}: copied from {src}")


def apt_then_copy(missing: list[str], dest: Path) -> None:
    if apt_install():
        copy_from_debian(missing, dest)


def download_all(missing: list[str], dest: Path) -> None:
    for name in missing:
        url = UPSTREAM_URL.format(name=name)
        if install(name, dest, lambda tmp, url=url: download(url, tmp)):
            say(f"  {name}: downloaded from {url}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=None,
                        help="target folder (default: $NUP_DATA_DIR or <repo>/data/fashion-mnist)")
    dest = (parser.parse_args(argv).dest or default_dest()).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    say(f"dest {dest}")

    def still_missing() -> list[str]:
        return [n for n in FILES if not (dest / f"{n}.gz").is_file()]

    # (a) already there: keep what verifies, discard the rest.
    for name in FILES:
        path = dest / f"{name}.gz"
        if path.is_file():
            problem = verify(path, name)
            if problem:
                say(f"  {name}: existing file discarded, {problem}")
                path.unlink()
    if not still_missing():
        say("all 4 files present and verified")
        return 0

    steps: list[tuple[str, Callable[[list[str], Path], None]]] = [
        ("copy from Debian package " + DEB_PACKAGE, copy_from_debian),
        ("install Debian package with apt-get", apt_then_copy),
        ("download from upstream", download_all),
    ]
    for label, step in steps:
        missing = still_missing()
        say(f"{label}: {len(missing)} file(s) needed")
        step(missing, dest)
        if not still_missing():
            say("all 4 files present and verified")
            return 0

    print(
        f"[fetch_data] ERROR: missing or unverifiable in {dest}: {', '.join(still_missing())}.\n"
        f"  Tried: existing files, the Debian package {DEB_PACKAGE} (dpkg -L, {DEB_DIR}), apt-get install "
        f"(root only), and {UPSTREAM_URL.format(name='<name>')}.\n"
        f"  Fix: `sudo apt-get update && sudo apt-get install {DEB_PACKAGE}`, or place the four .gz files "
        f"({', '.join(f'{n}.gz' for n in FILES)}) in {dest}, then re-run this script.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())

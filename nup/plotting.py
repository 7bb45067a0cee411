"""Figures: one ``savefig`` that writes ``figures/<name>.pdf`` and ``.png`` reproducibly and shows the
figure inline when it runs in a notebook.

* Metadata that would change on every run (creation date, software version) is dropped, so an
  unchanged figure is byte-identical after a rebuild.
* Each file is written to a temporary name and renamed, so a killed run leaves the old file or the
  new one, never half of one.
* Inside a Jupyter kernel the figure is displayed as a PNG rendered at ``inline_dpi`` (smaller than
  the saved file, so committed notebooks stay small) and closed, so it appears exactly once; the
  committed notebooks therefore carry every figure, and GitHub and JupyterLab show it.
* ``$NUP_FIGURES_DIR`` redirects the files (``make test`` and ad-hoc papermill runs use it, so the
  committed ``figures/`` are never overwritten by a run at another size).

Styling (``sns.set_theme``) is left to the notebooks.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path

__all__ = ["savefig", "figures_dir", "in_notebook"]

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_PDF_METADATA = {"Creator": None, "Producer": None, "CreationDate": None}
_PNG_METADATA = {"Software": None}


def figures_dir() -> Path:
    default = Path(__file__).resolve().parents[1] / "figures"
    return Path(os.environ.get("NUP_FIGURES_DIR", default))


def in_notebook() -> bool:
    """Whether this code runs inside a Jupyter kernel (not plain IPython or Python)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _render(fig, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, bbox_inches="tight", **kwargs)
    return buffer.getvalue()


def savefig(fig, name: str, directory: str | os.PathLike | None = None, dpi: int = 150, inline_dpi: int = 80,
            show: bool | None = None, close: bool = True) -> list[Path] | None:
    """Write ``<directory>/<name>.pdf`` and ``.png`` (atomically); in a notebook also show the figure
    inline (``show=None``: only there).  ``close`` closes the figure afterwards, so the notebook's
    inline backend does not draw it a second time.  Returns both paths, or ``None`` when the figure was
    shown (so a notebook cell that ends in ``savefig`` shows the figure and nothing else)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name={name!r} is not allowed; use ASCII letters, digits, '_', '-' and '.' only")
    for arg, value in (("dpi", dpi), ("inline_dpi", inline_dpi)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 10:
            raise ValueError(f"{arg}={value!r} is not allowed; {arg} must be an integer >= 10")
    directory = Path(directory) if directory is not None else figures_dir()
    directory.mkdir(parents=True, exist_ok=True)
    pdf, png = directory / f"{name}.pdf", directory / f"{name}.png"
    _write_atomically(pdf, _render(fig, "pdf", metadata=_PDF_METADATA))
    _write_atomically(png, _render(fig, "png", dpi=dpi, metadata=_PNG_METADATA))
    if in_notebook() if show is None else show:
        from IPython.display import Image, display

        display(Image(data=_render(fig, "png", dpi=inline_dpi, metadata=_PNG_METADATA), format="png"))
        shown = True
    else:
        shown = False
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return None if shown else [pdf, png]

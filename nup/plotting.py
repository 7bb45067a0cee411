"""Figures: one ``savefig`` that writes ``figures/<name>.pdf`` and ``.png`` reproducibly and shows the
figure inline when it runs in a notebook.

* Metadata that would change on every run (creation date, software version) is dropped, so an
  unchanged figure is byte-identical after a rebuild.
* Each file is written to a temporary name and renamed, so a killed run leaves the old file or the
  new one, never half of one.
* Inside a Jupyter kernel the figure is displayed as a PNG and closed, so it appears exactly once; the
  committed notebooks therefore carry every figure, and GitHub and JupyterLab show it.
* The inline PNG is readable: a browser shows it at one image pixel per CSS pixel (96 per inch), so
  text of ``s`` points rendered at ``d`` dpi shows at ``s * d / 96`` points.  ``choose_inline_dpi(...)`` picks
  the smallest dpi that shows the figure's smallest text at ``MIN_DISPLAYED_PT`` (9 pt) or more, at
  most ``MAX_INLINE_WIDTH_PX`` (1100) pixels wide.  A figure too wide for both is shown at that width
  and ``savefig`` warns (``FigureTooWideWarning``, naming the figure): split it into rows.
* ``style()`` raises matplotlib's font sizes to at least ``MIN_FONT_PT`` (10 pt); call it after
  ``sns.set_theme(...)`` (which resets them).  At 10 pt a figure up to ~12.7 inches wide is readable
  inline; at seaborn's ``paper`` sizes (8.8 pt ticks), up to ~11 inches.
* The files in ``figures/`` keep ``dpi=150``.

Where files go: ``savefig(..., directory=)``, else ``$NUP_FIGURES_DIR`` (``make test`` and ad-hoc
papermill runs set it, so the committed ``figures/`` are never overwritten by a run at another size),
else ``figures/`` in the repository root when ``nup`` is an editable checkout (a ``pyproject.toml``
beside the package folder), else ``figures/`` in the current working directory (``default_dir``; the
run cache ``results/`` and ``data/`` are found the same way).
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import tempfile
import warnings
from pathlib import Path

__all__ = ["savefig", "figures_dir", "default_dir", "in_notebook", "style", "choose_inline_dpi", "smallest_font_pt",
           "FigureTooWideWarning", "MIN_FONT_PT", "MIN_DISPLAYED_PT", "MAX_INLINE_WIDTH_PX"]

MIN_FONT_PT = 10.0  # what ``style()`` guarantees
MIN_DISPLAYED_PT = 9.0  # the smallest text size an inline figure shows at
MAX_INLINE_WIDTH_PX = 1100  # the widest inline PNG (wider ones are shrunk by JupyterLab and GitHub)
CSS_PX_PER_INCH = 96  # a browser shows an image pixel per CSS pixel, 96 CSS pixels per inch
_FONT_KEYS = ("font.size", "axes.labelsize", "axes.titlesize", "xtick.labelsize", "ytick.labelsize",
              "legend.fontsize", "legend.title_fontsize", "figure.titlesize", "figure.labelsize")


class FigureTooWideWarning(UserWarning):
    """A figure too wide to show its text at ``MIN_DISPLAYED_PT`` within ``MAX_INLINE_WIDTH_PX``."""

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_PDF_METADATA = {"Creator": None, "Producer": None, "CreationDate": None}
_PNG_METADATA = {"Software": None}


def default_dir(name: str, package_dir: str | os.PathLike | None = None, cwd: str | os.PathLike | None = None) -> Path:
    """Where ``name`` (``"results"``, ``"figures"``, ``"data"``) lives when no environment variable says:
    in the repository root when the package (``package_dir``, default ``nup``'s folder) is an editable
    checkout, recognised by a ``pyproject.toml`` beside it; else in ``cwd`` (default: the working
    directory), for example when ``nup`` is installed into site-packages."""
    package_dir = Path(package_dir if package_dir is not None else Path(__file__).resolve().parent)
    root = package_dir.parent
    if (root / "pyproject.toml").is_file():
        return root / name
    return Path(cwd if cwd is not None else Path.cwd()) / name


def figures_dir() -> Path:
    """``$NUP_FIGURES_DIR`` if set, else ``default_dir("figures")``."""
    return Path(os.environ.get("NUP_FIGURES_DIR") or default_dir("figures"))


def _points(size) -> float:
    """A matplotlib font size (a number or a name such as ``"small"``) in points."""
    from matplotlib.font_manager import FontProperties

    return float(FontProperties(size=size).get_size_in_points())


def style(min_pt: float = MIN_FONT_PT) -> None:
    """Raise every matplotlib font size (text, axis labels, titles, ticks, legends) to at least ``min_pt``
    points, keeping larger ones; call it after ``sns.set_theme(...)``, which resets them."""
    import matplotlib as mpl

    for key in _FONT_KEYS:
        if key in mpl.rcParams and _points(mpl.rcParams[key]) < min_pt:
            mpl.rcParams[key] = min_pt


def smallest_font_pt(fig) -> float:
    """The size in points of the smallest visible, non-empty text of ``fig`` (``nan`` if it has none);
    tick labels exist once the figure is drawn."""
    from matplotlib.text import Text

    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    return float(min(sizes)) if sizes else math.nan


def choose_inline_dpi(width_in: float, font_pt: float, min_displayed_pt: float = MIN_DISPLAYED_PT,
               max_width_px: int = MAX_INLINE_WIDTH_PX) -> tuple[int, bool]:
    """``(dpi, readable)``: the dpi to show a ``width_in``-inch wide figure whose smallest text is
    ``font_pt`` points, and whether its text then shows at ``min_displayed_pt`` or more.  The dpi is the
    smallest that makes the text readable, but at most ``max_width_px / width_in`` (never below 10)."""
    need = math.ceil(min_displayed_pt * CSS_PX_PER_INCH / font_pt) if font_pt > 0 and math.isfinite(font_pt) else 80
    cap = max(10, math.floor(max_width_px / width_in))
    dpi = min(need, cap)
    return dpi, dpi >= need


def _png_width_px(png: bytes) -> int:
    return struct.unpack(">I", png[16:20])[0]  # IHDR width


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


def _inline_png(fig, name: str, file_png: bytes, file_dpi: int, dpi: int | None) -> bytes:
    """The PNG shown inline: at ``dpi``, or (``None``) at ``choose_inline_dpi``'s choice, warning when the
    figure is too wide to be readable."""
    if dpi is None:
        width_in = _png_width_px(file_png) / file_dpi  # the saved PNG is cropped as the inline one is
        font_pt = smallest_font_pt(fig)  # the saved PNG drew the figure, so tick labels exist
        dpi, readable = choose_inline_dpi(width_in, font_pt)
        if not readable:
            widest = MAX_INLINE_WIDTH_PX * font_pt / (MIN_DISPLAYED_PT * CSS_PX_PER_INCH)
            # warn_explicit with a fixed location: the message a notebook shows names no temporary kernel
            # file, so a committed notebook stays byte-identical across runs and machines.
            warnings.warn_explicit(
                f"figure {name!r} is {width_in:.1f} in wide: inline at most {MAX_INLINE_WIDTH_PX} px wide, its "
                f"{font_pt:.3g}-pt text shows at {font_pt * dpi / CSS_PX_PER_INCH:.1f} pt (< {MIN_DISPLAYED_PT:g} pt); "
                f"split it into rows of at most {widest:.1f} in (or use larger fonts, nup.plotting.style())",
                FigureTooWideWarning, filename="nup.plotting.savefig", lineno=0, module="nup.plotting")
    return _render(fig, "png", dpi=dpi, metadata=_PNG_METADATA)


def savefig(fig, name: str, directory: str | os.PathLike | None = None, dpi: int = 150, inline_dpi: int | None = None,
            show: bool | None = None, close: bool = True) -> list[Path] | None:
    """Write ``<directory>/<name>.pdf`` and ``.png`` (atomically); in a notebook also show the figure
    inline (``show=None``: only there).  ``inline_dpi=None`` picks the inline dpi that shows the smallest
    text at 9 pt or more within 1100 px (``nup.plotting.choose_inline_dpi``) and warns (``FigureTooWideWarning``)
    when the figure is too wide for both; an integer forces that dpi.  ``close`` closes the figure
    afterwards, so the notebook's inline backend does not draw it a second time.  Returns both paths,
    or ``None`` when the figure was shown (so a notebook cell that ends in ``savefig`` shows the figure
    and nothing else)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name={name!r} is not allowed; use ASCII letters, digits, '_', '-' and '.' only")
    for arg, value in (("dpi", dpi), ("inline_dpi", inline_dpi)):
        if arg == "inline_dpi" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 10:
            raise ValueError(f"{arg}={value!r} is not allowed; {arg} must be an integer >= 10")
    directory = Path(directory) if directory is not None else figures_dir()
    directory.mkdir(parents=True, exist_ok=True)
    pdf, png = directory / f"{name}.pdf", directory / f"{name}.png"
    _write_atomically(pdf, _render(fig, "pdf", metadata=_PDF_METADATA))
    file_png = _render(fig, "png", dpi=dpi, metadata=_PNG_METADATA)
    _write_atomically(png, file_png)
    if in_notebook() if show is None else show:
        from IPython.display import Image, display

        display(Image(data=_inline_png(fig, name, file_png, dpi, inline_dpi), format="png"))
        shown = True
    else:
        shown = False
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return None if shown else [pdf, png]

"""Figures: one ``savefig`` that writes ``figures/<name>.pdf`` and ``.png`` reproducibly.

Metadata that would change on every run (creation date, software version) is dropped, so an
unchanged figure is byte-identical after a rebuild.  Styling (``sns.set_theme``) is left to
the notebooks.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["savefig", "figures_dir"]

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def figures_dir() -> Path:
    default = Path(__file__).resolve().parents[1] / "figures"
    return Path(os.environ.get("NUP_FIGURES_DIR", default))


def savefig(fig, name: str, directory: str | os.PathLike | None = None, dpi: int = 150) -> list[Path]:
    """Write ``<directory>/<name>.pdf`` and ``.png``; returns both paths."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name={name!r} is not allowed; use ASCII letters, digits, '_', '-' and '.' only")
    directory = Path(directory) if directory is not None else figures_dir()
    directory.mkdir(parents=True, exist_ok=True)
    pdf, png = directory / f"{name}.pdf", directory / f"{name}.png"
    fig.savefig(pdf, bbox_inches="tight", metadata={"Creator": None, "Producer": None, "CreationDate": None})
    fig.savefig(png, bbox_inches="tight", dpi=dpi, metadata={"Software": None})
    return [pdf, png]

"""Progress bars: ``tqdm.auto`` that also honours ``TQDM_DISABLE`` inside Jupyter.

``tqdm.auto`` picks the widget bar (``tqdm.notebook``) in a kernel with ipywidgets, and that
class ignores tqdm's ``TQDM_*`` environment defaults; headless runs (``make figures``,
``make test``) set ``TQDM_DISABLE=1`` so that no bar lands in a committed notebook.
"""

from __future__ import annotations

import os

from tqdm.auto import tqdm

__all__ = ["progress", "progress_disabled"]


def progress_disabled() -> bool:
    """Whether ``$TQDM_DISABLE`` asks for no progress bars (any value but '', '0' or 'false')."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false")


def progress(iterable=None, **kwargs):
    """``tqdm.auto.tqdm(iterable, **kwargs)``, switched off when ``$TQDM_DISABLE`` is set."""
    if progress_disabled():
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)

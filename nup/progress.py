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
    """``tqdm.auto.tqdm(iterable, **kwargs)``, switched off when ``$TQDM_DISABLE`` is set.

    The environment is read at each call (tqdm reads it once, at import), so ``disable`` is
    always passed explicitly; a caller's ``disable=True`` still wins.
    """
    kwargs["disable"] = kwargs.get("disable", False) or progress_disabled()
    return tqdm(iterable, **kwargs)

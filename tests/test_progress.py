"""Progress bars obey TQDM_DISABLE, also the Jupyter widget bar that tqdm itself lets ignore it."""

import pytest

from nup.progress import progress, progress_disabled


@pytest.mark.parametrize("value,disabled", [("1", True), ("true", True), ("", False), ("0", False)])
def test_tqdm_disable_values(monkeypatch, value, disabled):
    monkeypatch.setenv("TQDM_DISABLE", value)
    assert progress_disabled() is disabled
    assert progress(range(3)).disable is disabled


def test_widget_bar_is_disabled_too(monkeypatch):
    pytest.importorskip("ipywidgets")
    from tqdm.notebook import tqdm as widget_tqdm

    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setattr("nup.progress.tqdm", widget_tqdm)  # what tqdm.auto picks inside a Jupyter kernel
    assert progress(range(3)).disable

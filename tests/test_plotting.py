"""Inline figures are readable: the PNG a notebook shows has its smallest text at 9 pt or more at the size a
browser shows it (one image pixel per CSS pixel, 96 per inch), at most 1100 px wide; a figure too wide for
both warns, naming it.  The embed is byte-reproducible."""

import struct
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from nup import plotting  # noqa: E402


def _shown(monkeypatch, fig, name, tmp_path, **kwargs):
    """The PNG bytes savefig displays inline."""
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, **kw: shown.append(obj.data))
    plotting.savefig(fig, name, tmp_path, show=True, **kwargs)
    assert len(shown) == 1
    return shown[0]


def _png_size(png: bytes) -> tuple[int, int]:
    return struct.unpack(">II", png[16:24])


def _figure(width_in, fontsize):
    fig, axes = plt.subplots(1, 3, figsize=(width_in, 3))
    for ax in axes:
        ax.plot([0, 1, 2], [1, 3, 2])
        ax.set_xlabel("depth", fontsize=fontsize)
        ax.set_title("panel", fontsize=fontsize)
        ax.tick_params(labelsize=fontsize)
    return fig


@pytest.mark.parametrize("width_in,fontsize", [(6, 8.8), (9, 10), (4, 12)])
def test_inline_text_is_at_least_9pt_as_displayed(monkeypatch, tmp_path, width_in, fontsize):
    fig = _figure(width_in, fontsize)
    with warnings.catch_warnings():
        warnings.simplefilter("error", plotting.FigureTooWideWarning)
        png = _shown(monkeypatch, fig, "ok", tmp_path)
    saved_width_px = _png_size((tmp_path / "ok.png").read_bytes())[0]
    inline_dpi = _png_size(png)[0] / (saved_width_px / 150)  # the same tight crop at another dpi
    assert fontsize * inline_dpi / plotting.CSS_PX_PER_INCH >= plotting.MIN_DISPLAYED_PT - 0.05
    assert _png_size(png)[0] <= plotting.MAX_INLINE_WIDTH_PX + 2


def test_a_figure_too_wide_to_be_readable_warns_with_its_name(monkeypatch, tmp_path):
    fig = _figure(15, 8.8)  # 15 in at 8.8 pt needs ~1470 px
    with pytest.warns(plotting.FigureTooWideWarning, match="'wide_one'.*split it into rows") as caught:
        png = _shown(monkeypatch, fig, "wide_one", tmp_path)
    assert _png_size(png)[0] <= plotting.MAX_INLINE_WIDTH_PX + 2
    # Shown with a fixed location, never a temporary kernel file: committed notebooks stay byte-identical.
    assert {(w.filename, w.lineno) for w in caught} == {("nup.plotting.savefig", 0)}


def test_choose_inline_dpi():
    assert plotting.choose_inline_dpi(6, 8.8) == (99, True)  # 8.8 pt * 99 / 96 = 9.07 pt
    assert plotting.choose_inline_dpi(6, 12) == (72, True)
    dpi, readable = plotting.choose_inline_dpi(15, 8.8)
    assert dpi == 1100 // 15 and not readable


def test_style_raises_every_font_size_to_the_minimum():
    with matplotlib.rc_context({"font.size": 8, "xtick.labelsize": "small", "axes.titlesize": 14}):
        plotting.style()
        fig = _figure(5, None)
        fig.canvas.draw()
        assert plotting.smallest_font_pt(fig) >= plotting.MIN_FONT_PT
        assert matplotlib.rcParams["axes.titlesize"] == 14  # larger sizes are kept
        plt.close(fig)


def test_inline_png_is_byte_identical(monkeypatch, tmp_path):
    def draw(name):
        return _shown(monkeypatch, _figure(6, 9), name, tmp_path)

    assert draw("a") == draw("b")


def test_explicit_inline_dpi_is_kept_and_validated(monkeypatch, tmp_path):
    png = _shown(monkeypatch, _figure(15, 8.8), "forced", tmp_path, inline_dpi=40)
    assert _png_size(png)[0] < 15 * 40 + 10
    with pytest.raises(ValueError, match="inline_dpi"):
        plotting.savefig(_figure(4, 9), "bad", tmp_path, inline_dpi=5)

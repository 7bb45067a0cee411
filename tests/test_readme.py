"""The README a reader finishes in ten minutes: it opens with the findings table, stays near 2,500 words,
and every number it keeps is one the notebook it cites prints (so the README cannot drift from the
notebooks)."""

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_WORDS = 2600
NUMBER = re.compile(r"(?<![\w.])-?\d+\.\d+(?![\w.])")  # decimals: the measured numbers (not depths, widths)
LINK = re.compile(r"\((notebooks/\d\d_\w+\.ipynb)\)")


def _outputs(path: Path) -> str:
    """Everything a notebook's code cells printed or displayed as text."""
    nb = nbformat.read(path, as_version=4)
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            data = out.get("data", {})
            parts += [data.get("text/plain", ""), data.get("text/html", "")]
    return "\n".join(parts)


def _findings_rows() -> list[str]:
    text = README.read_text()
    start = text.index("## What we found")
    table = text[start:text.index("\n## ", start + 5)]
    return [line for line in table.splitlines() if line.startswith("|") and LINK.search(line)]


def test_the_readme_opens_with_what_was_found_and_stays_short():
    text = README.read_text()
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert headings[0] == "What we found", headings
    words = len(text.split())
    assert words <= MAX_WORDS, f"README has {words} words (at most {MAX_WORDS}); move details to docs/"


def test_every_notebook_has_a_row():
    linked = {LINK.search(row).group(1) for row in _findings_rows()}
    assert linked == {f"notebooks/{p.name}" for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))}


@pytest.mark.parametrize("row", _findings_rows(), ids=lambda r: LINK.search(r).group(1).split("/")[1][:2])
def test_every_number_in_a_row_is_printed_by_its_notebook(row):
    outputs = _outputs(ROOT / LINK.search(row).group(1))
    missing = [n for n in NUMBER.findall(row) if n not in outputs]
    assert not missing, f"numbers in the README row not printed by its notebook: {missing}"

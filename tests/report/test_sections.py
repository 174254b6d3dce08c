"""The sections page: commands add sections to one self-contained page in their output folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from cnnlens.errors import InputError
from cnnlens.report.sections import Figure, Section, Table, read_sections, render_sections, write_section


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (255, 0, 0)).save(path)


def test_sections_accumulate_in_order_and_inline_their_figures(tmp_path: Path) -> None:
    _png(tmp_path / "b" / "fig.png")
    write_section(
        tmp_path, Section("b", "Second", "para one\n\npara two", [Figure("fig.png", "cap")], order=2)
    )
    write_section(
        tmp_path, Section("a", "First <x>", tables=[Table(["k", "v"], [["pi", 3.14159265]])], order=1)
    )
    page = render_sections(tmp_path, "Probe").read_text()
    assert page.index("First &lt;x&gt;") < page.index("Second")  # ordered and escaped
    assert "data:image/png;base64," in page and "fig.png" not in page.split("<body>")[1].split("cap")[0]
    assert "3.142" in page and "<p>para two</p>" in page
    assert [s.key for s in read_sections(tmp_path)] == ["a", "b"]


def test_a_missing_figure_is_refused_and_a_malformed_section_skipped(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope.png"):
        write_section(tmp_path, Section("c", "C", figures=[Figure("nope.png")]))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "section.json").write_text("{not json")
    write_section(tmp_path, Section("e", "E"))
    assert [s.key for s in read_sections(tmp_path)] == ["e"]

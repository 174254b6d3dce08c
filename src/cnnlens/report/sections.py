"""One self-contained HTML page gathered from the sections that commands leave in an output folder.

A command that contributes to a page (each ``cnnlens probe`` tool, each ``cnnlens hypothesis``
experiment) writes its figures and numbers under ``OUT/<key>/`` and describes them in
``OUT/<key>/section.json`` with :func:`write_section`; :func:`render_sections` then (re)builds
``OUT/index.html`` from every section found, so running a second tool into the same folder adds its
section to the page instead of replacing the page.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from cnnlens.errors import InputError
from cnnlens.outputs import subfolder, write_json, write_text

SECTION_FILE = "section.json"
PAGE_FILE = "index.html"


@dataclass
class Figure:
    """An image file of the section (path relative to the section's folder) and its caption."""

    path: str
    caption: str = ""


@dataclass
class Table:
    """A table: column names and rows of cells (numbers are shown with 4 significant digits)."""

    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Section:
    """What one command adds to the page.

    Attributes:
        key: The section's folder under the output folder, e.g. ``"filters"``; also its anchor.
        title: Heading of the section.
        text: Paragraphs (plain text; blank lines separate paragraphs).
        figures: Images to show, in order.
        tables: Tables to show, after the figures.
        verdict: One line in bold under the heading (e.g. a hypothesis experiment's verdict).
        order: Sections are sorted by ``(order, key)``.
        html: Extra HTML (already safe: the caller escapes anything from the user), e.g. an
            interactive plot; shown after the tables.
    """

    key: str
    title: str
    text: str = ""
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    verdict: str = ""
    order: int = 100
    html: str = ""


def write_section(out: str | os.PathLike[str], section: Section) -> Path:
    """Write ``OUT/<key>/section.json`` (atomically); figures must already be in that folder."""
    folder = subfolder(out, section.key)
    for fig in section.figures:
        if not (folder / fig.path).is_file():
            raise InputError(f"section {section.key!r}: figure {fig.path} is not in {folder}")
    return write_json(folder / SECTION_FILE, asdict(section))


def read_sections(out: str | os.PathLike[str]) -> list[Section]:
    """Every readable section under ``out``, sorted; a malformed ``section.json`` is skipped."""
    sections: list[Section] = []
    root = Path(out)
    if not root.is_dir():
        return sections
    for path in sorted(root.glob(f"*/{SECTION_FILE}")):
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            raw["figures"] = [Figure(**f) for f in raw.get("figures", [])]
            raw["tables"] = [Table(**t) for t in raw.get("tables", [])]
            sections.append(Section(**raw))
        except (OSError, ValueError, TypeError):
            continue
    return sorted(sections, key=lambda s: (s.order, s.key))


def _data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def render_sections(out: str | os.PathLike[str], title: str, intro: str = "") -> Path:
    """(Re)write ``OUT/index.html`` from every section in ``out``: images inline, no network needed."""
    root = Path(out)
    view: list[dict[str, Any]] = []
    for s in read_sections(root):
        figures = [
            {"uri": _data_uri(root / s.key / f.path), "caption": f.caption}
            for f in s.figures
            if (root / s.key / f.path).is_file()
        ]
        tables = [
            {"columns": t.columns, "rows": [[_cell(c) for c in r] for r in t.rows], "caption": t.caption}
            for t in s.tables
        ]
        paragraphs = [p.strip() for p in s.text.split("\n\n") if p.strip()]
        view.append({**asdict(s), "figures": figures, "tables": tables, "paragraphs": paragraphs})
    env = Environment(
        loader=PackageLoader("cnnlens.report", "templates"), autoescape=select_autoescape(["html", "j2"])
    )
    html = env.get_template("sections.html.j2").render(title=title, intro=intro, sections=view)
    return write_text(root / PAGE_FILE, html)

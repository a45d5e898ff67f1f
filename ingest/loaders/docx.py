"""Word .docx via python-docx: paragraphs and tables in order, a section per heading."""

from __future__ import annotations

import io
import re
from pathlib import Path

from ingest.loaders.base import Loader, LoadOptions, make_document
from ingest.loaders.text import SPLIT_LEVEL
from ingest.loaders.zipguard import check_zip
from kb.errors import LoaderError
from kb.types import Document, Section

_HEADING_STYLE = re.compile(r"^heading\s*(\d)$", re.IGNORECASE)


class DocxLoader(Loader):
    name = "docx"
    extensions = (".docx",)

    def load(self, path: Path, data: bytes, options: LoadOptions) -> list[Document]:
        check_zip(path, data, max_bytes=options.max_bytes, kind=".docx")
        import docx

        # python-docx raises assorted errors (PackageNotFoundError, KeyError, XML errors)
        # for damaged packages; each one means the file cannot be read
        try:
            document = docx.Document(io.BytesIO(data))
            core_title = document.core_properties.title
            # style names by id, read once: `paragraph.style` searches every style per call
            style_names = {style.style_id: style.name for style in document.styles}
            blocks = list(document.iter_inner_content())
            sections, style_title = _sections(blocks, style_names)
        except Exception as exc:
            raise LoaderError(
                f"cannot read .docx {path}: {type(exc).__name__}: {exc}; the file is damaged "
                "or not a Word document, re-save it from Word or LibreOffice as .docx"
            ) from exc
        title = (core_title or "").strip() or style_title
        result = make_document(path, sections, title=title, metadata={"format": self.name})
        if result is None:
            raise LoaderError(f"empty file: the .docx {path} has no text; add content or remove it")
        return [result]


def _sections(blocks: list, style_names: dict[str, str]) -> tuple[list[Section], str | None]:
    """Split at headings up to SPLIT_LEVEL; the title is the Title-styled or first heading text."""
    from docx.table import Table

    sections: list[Section] = []
    heading: str | None = None
    texts: list[str] = []
    title_style: str | None = None
    first_heading: str | None = None
    for block in blocks:
        if isinstance(block, Table):
            texts.append("\n".join(_table_lines(block)))
            continue
        text = block.text.strip()
        style_id = block._p.style  # the w:pStyle id; None means the default paragraph style
        style = style_names.get(style_id, style_id) or ""
        if style == "Title" and text:
            title_style = title_style or text
        level = _heading_level(style)
        if level and text:
            first_heading = first_heading or text
            if level <= SPLIT_LEVEL:
                sections.append(Section("\n\n".join(texts), heading=heading))
                heading, texts = text, []
        texts.append(text)
    sections.append(Section("\n\n".join(texts), heading=heading))
    return sections, title_style or first_heading


def _heading_level(style: str) -> int | None:
    match = _HEADING_STYLE.match(style or "")
    return int(match.group(1)) if match else None


def _table_lines(table) -> list[str]:
    lines = []
    for row in table.rows:
        cells: list[str] = []
        for cell in row.cells:  # a merged cell repeats across the columns it spans
            text = " ".join(cell.text.split())
            if text and (not cells or cells[-1] != text):
                cells.append(text)
        if cells:
            lines.append(" | ".join(cells))
    return lines

"""HTML: visible text and <title>, a section per h1-h3, page chrome (nav, header, ...) dropped."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from ingest.loaders.base import Loader, LoadOptions, make_document
from ingest.loaders.text import reject_binary
from kb.errors import LoaderError
from kb.types import Document, Section

# fmt: off
DROPPED = frozenset({
    "script", "style", "nav", "header", "footer", "aside", "noscript", "template", "head",
    "svg", "iframe", "object", "embed", "canvas", "select", "button",
})
SECTION_TAGS = frozenset({"h1", "h2", "h3"})
# blocks are set apart by blank lines; line tags start a new line (table rows, list items)
BLOCKS = frozenset({
    "address", "article", "blockquote", "details", "dialog", "div", "dl", "fieldset",
    "figcaption", "figure", "form", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "main", "ol", "p",
    "pre", "section", "summary", "table", "ul",
})
LINES = frozenset({"br", "dd", "dt", "li", "tr"})
# fmt: on
CELLS = frozenset({"td", "th"})
_SPACES = re.compile(r"\s+")
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)


class ParsedHtml(NamedTuple):
    title: str | None
    sections: list[Section]
    encoding: str | None


class HtmlLoader(Loader):
    name = "html"
    extensions = (".html", ".htm", ".xhtml")

    def load(self, path: Path, data: bytes, options: LoadOptions) -> list[Document]:
        reject_binary(path, data)
        parsed = html_sections(data)
        metadata = {"format": self.name}
        if parsed.encoding:
            metadata["encoding"] = parsed.encoding
        document = make_document(path, parsed.sections, title=parsed.title, metadata=metadata)
        if document is None:
            raise LoaderError(f"no visible text in {path}: the page is empty or script-only")
        return [document]


def html_sections(markup: bytes | str) -> ParsedHtml:
    """Parse HTML with BeautifulSoup/lxml into a title and sections, at any nesting depth."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(markup, "lxml")  # builds its tree from parser events, not recursion
    title_tag = soup.title
    title = title_tag.get_text(" ", strip=True) if title_tag else None
    sections, first_h1 = _walk_sections(soup)
    return ParsedHtml(title or first_h1, sections, getattr(soup, "original_encoding", None))


def _walk_sections(soup) -> tuple[list[Section], str | None]:
    """Sections and first visible h1, by a depth-first walk with an explicit stack (no recursion)."""
    from bs4 import NavigableString, Tag
    from bs4.element import PreformattedString

    sections: list[Section] = []
    heading: str | None = None
    first_h1: str | None = None
    parts: list[str] = []
    in_pre = 0
    stack = [(soup, iter(soup.contents))]
    while stack:
        tag, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            if tag.name in BLOCKS:
                parts.append("\n")
            in_pre -= tag.name == "pre"
            continue
        if isinstance(child, NavigableString):
            if not isinstance(child, PreformattedString):  # comments, doctype, CDATA
                parts.append(str(child) if in_pre else _SPACES.sub(" ", child))
            continue
        if not isinstance(child, Tag) or _is_hidden(child):
            continue
        name = child.name
        if name in SECTION_TAGS:
            text = _SPACES.sub(" ", child.get_text(" ")).strip()
            if name == "h1" and first_h1 is None:
                first_h1 = text or None
            if text:
                sections.append(Section("".join(parts), heading=heading))
                heading, parts = text, []
        if name in BLOCKS or name in LINES:
            parts.append("\n")
        elif name in CELLS:
            parts.append(" ")
        in_pre += name == "pre"
        stack.append((child, iter(child.contents)))
    sections.append(Section("".join(parts), heading=heading))
    return [Section(_tidy(s.text), heading=s.heading) for s in sections], first_h1


def _is_hidden(tag) -> bool:
    if tag.name in DROPPED:
        return True
    attrs = tag.attrs
    return (
        "hidden" in attrs
        or attrs.get("aria-hidden") == "true"
        or bool(_HIDDEN_STYLE.search(attrs.get("style") or ""))
    )


def _tidy(text: str) -> str:
    """Strip the spaces that inline whitespace leaves at line starts and ends."""
    return "\n".join(line.strip() for line in text.split("\n"))

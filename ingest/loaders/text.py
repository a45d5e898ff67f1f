"""Plain text, Markdown and reStructuredText: decoded text split into sections at headings."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ingest.loaders.base import Loader, LoadOptions, make_document
from ingest.loaders.decode import decode_bytes, looks_binary
from kb.errors import LoaderError, UnsupportedFile
from kb.types import Document, Section

SPLIT_LEVEL = 3  # headings up to this level start a new section; deeper ones stay inline


def reject_binary(path: Path, data: bytes) -> None:
    """Raise UnsupportedFile when a text-format file (.txt, .html, .eml, ...) holds binary data."""
    if looks_binary(data):
        kind = f"a {path.suffix.lower()} file" if path.suffix else "a file without extension"
        raise UnsupportedFile(
            f"binary data in {kind}: {path} holds NUL bytes or control characters; "
            "convert it to text or move it out of the folder"
        )


def decode_text_file(path: Path, data: bytes) -> tuple[str, str]:
    """Decode a text-format file to (text, encoding); binary data raises UnsupportedFile."""
    reject_binary(path, data)
    return decode_bytes(data)


def single_document(
    path: Path, sections: list[Section], title: str | None, metadata: dict
) -> list[Document]:
    document = make_document(path, sections, title=title, metadata=metadata)
    if document is None:
        raise LoaderError(f"empty file: {path} has no text; add content or remove it")
    return [document]


class PlainTextLoader(Loader):
    name = "text"
    extensions = (".txt", ".text")

    def load(self, path: Path, data: bytes, options: LoadOptions) -> list[Document]:
        text, encoding = decode_text_file(path, data)
        metadata = {"format": self.name, "encoding": encoding}
        return single_document(path, [Section(text)], None, metadata)


class MarkdownLoader(Loader):
    """Title from the first level-1 heading (or front matter); a section per heading."""

    name = "markdown"
    extensions = (".md", ".markdown")

    def load(self, path: Path, data: bytes, options: LoadOptions) -> list[Document]:
        text, encoding = decode_text_file(path, data)
        lines = text.splitlines()
        front_title, lines = _strip_front_matter(lines)
        headings = markdown_headings(lines)
        title = next((h.text for h in headings if h.level == 1), None) or front_title
        metadata = {"format": self.name, "encoding": encoding}
        return single_document(path, split_at_headings(lines, headings), title, metadata)


class RstLoader(Loader):
    """Title from the first underlined heading; a section per heading."""

    name = "rst"
    extensions = (".rst",)

    def load(self, path: Path, data: bytes, options: LoadOptions) -> list[Document]:
        text, encoding = decode_text_file(path, data)
        lines = text.splitlines()
        headings = rst_headings(lines)
        title = headings[0].text if headings else None
        metadata = {"format": self.name, "encoding": encoding}
        return single_document(path, split_at_headings(lines, headings), title, metadata)


@dataclass(frozen=True)
class Heading:
    start: int  # first line of the heading (overline included)
    end: int  # first line after it (underline included)
    text: str
    level: int


def split_at_headings(lines: list[str], headings: list[Heading]) -> list[Section]:
    """Cut lines into sections at headings up to SPLIT_LEVEL; headings become plain text lines."""
    sections: list[Section] = []
    heading: str | None = None
    buffer: list[str] = []
    position = 0
    for found in headings:  # in order and not overlapping
        buffer.extend(lines[position : found.start])
        if found.level <= SPLIT_LEVEL:
            sections.append(Section("\n".join(buffer), heading=heading))
            heading, buffer = found.text, []
        buffer.append(found.text)
        position = found.end
    buffer.extend(lines[position:])
    sections.append(Section("\n".join(buffer), heading=heading))
    return sections


_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_MARKERS = frozenset("#`~")
_UNDERLINES = frozenset("=-")
_NOT_SETEXT_TEXT = re.compile(r"^(?: {4}|\t| {0,3}(?:[-*+>|]|\d+[.)])(?:\s|$))")


def markdown_headings(lines: list[str]) -> list[Heading]:
    """ATX (`# Title`) and setext (underlined) headings outside fenced code blocks."""
    headings = []
    fence: str | None = None
    resume = 0  # a setext heading also consumes its underline
    for i in _candidate_lines(lines):
        if i < resume:
            continue
        line = lines[i]
        opened = _FENCE.match(line)
        if fence is not None:
            if opened and opened.group(1) == fence:
                fence = None
        elif opened:
            fence = opened.group(1)
        elif match := _ATX.match(line):
            headings.append(Heading(i, i + 1, match.group(2).strip(), len(match.group(1))))
        elif (
            i + 1 < len(lines)
            and line.strip()
            and not _NOT_SETEXT_TEXT.match(line)
            and (underline := _SETEXT.match(lines[i + 1]))
        ):
            level = 1 if underline.group(1)[0] == "=" else 2
            headings.append(Heading(i, i + 2, line.strip(), level))
            resume = i + 2
    return headings


def _candidate_lines(lines: list[str]) -> list[int]:
    """Lines that can open a fence or a heading: "#", "`" or "~" lines, and lines over "=" / "-".

    Filtering first keeps a 100 MB Markdown file from paying for regexes on every line.
    """
    starts = [line[:4].lstrip(" ")[:1] for line in lines]
    return [
        i
        for i, start in enumerate(starts)
        if start in _MARKERS or (i + 1 < len(starts) and starts[i + 1] in _UNDERLINES)
    ]


def _strip_front_matter(lines: list[str]) -> tuple[str | None, list[str]]:
    """Drop a leading YAML front-matter block; return its `title:` value, if any."""
    if not lines or lines[0].strip() != "---":
        return None, lines
    for end in range(1, min(len(lines), 200)):
        if lines[end].strip() in ("---", "..."):
            title = None
            for line in lines[1:end]:
                if line.lower().startswith("title:"):
                    title = line.split(":", 1)[1].strip().strip("\"'") or None
            return title, lines[end + 1 :]
    return None, lines


_ADORNMENT = re.compile(r"^([!-/:-@\[-`{-~])\1+[ \t]*$")


def rst_headings(lines: list[str]) -> list[Heading]:
    """Underlined (optionally overlined) titles; levels in order of first appearance of a style."""
    headings = []
    styles: list[tuple[str, bool]] = []
    i = 0
    while i + 1 < len(lines):
        line, below = lines[i], lines[i + 1]
        over = _ADORNMENT.match(line)
        if (
            over
            and below.strip()
            and i + 2 < len(lines)
            and lines[i + 2].strip() == line.strip()
            and len(line.strip()) >= len(below.strip())
        ):
            style, text, end = (over.group(1), True), below.strip(), i + 3
        elif (
            line.strip()
            and not line[0].isspace()
            and not over
            and (under := _ADORNMENT.match(below))
            and len(below.rstrip()) >= len(line.rstrip())
            and (i == 0 or not lines[i - 1].strip())
        ):
            style, text, end = (under.group(1), False), line.strip(), i + 2
        else:
            i += 1
            continue
        if style not in styles:
            styles.append(style)
        headings.append(Heading(i, end, text, styles.index(style) + 1))
        i = end
    return headings

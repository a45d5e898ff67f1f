"""Sentences with their character offsets, for checking answers and quoting passages."""

from __future__ import annotations

import re
from dataclasses import dataclass

#: an end of sentence: . ! or ? (then closing quotes or brackets) before space and a word that
#: does not start in lower case; a full-width 。！？; or a line break. "e.g. the" and "3.40.1"
#: do not split, nor does a line break inside a hard-wrapped paragraph (below)
_BOUNDARY = re.compile(r"(?<=[.!?])([\"'”’)\]]*)[ \t]+(?=\S)|(?<=[。！？])|[ \t\r]*\n\s*")
#: a line that starts a block of its own: a list item, heading, table row, quote, rule or fence
_BLOCK_START = re.compile(r"[-*+•#|>=`]|\d{1,3}[.)]\s")
#: a line that is a block of its own, whatever follows: a heading, table row or code fence
_HEADING = re.compile(r"\s*(?:#|\||```)")
#: a line this long that ends in a word or a comma was cut by the writer's editor, not by them:
#: wrapped text (Markdown, mail, plain text) fills lines to 60-80 characters, headings and code
#: lines rarely do
_WRAPPED_LINE = 50
#: citation marks that a writer put after the period ("... 8000. [1]") belong to that sentence
_LEADING_CITATIONS = re.compile(r"(?:\[\s*\d+(?:\s*[,;]\s*\d+)*\s*\]\s*)+")
_ABBREVIATION = re.compile(r"(?:\b(?:e\.g|i\.e|etc|vs|cf|approx|Dr|Mr|Ms|Mrs|No|Fig|Sec)\.)$")


@dataclass(frozen=True)
class Span:
    """A piece of a text and where it is: `text == source[start:end]`."""

    text: str
    start: int
    end: int


def split_sentences(text: str) -> list[Span]:
    """The sentences (and stand-alone lines) of `text`, stripped, with offsets into it."""
    pieces: list[tuple[int, int]] = []
    cursor = 0
    for match in _BOUNDARY.finditer(text):
        inside = match.end() < len(text) and (
            text[match.end()].islower()
            or _ABBREVIATION.search(text[max(0, match.start() - 12) : match.start()])
        )
        if "\n" not in match.group() and inside:
            continue  # "e.g. The", "i.e. the", "kb. the": inside a sentence
        if "\n" in match.group() and _wrapped(text, cursor, match):
            continue
        if match.end() == cursor:
            continue
        pieces.append((cursor, match.start() + len(match.group(1) or "")))  # closing quotes stay
        cursor = match.end()
    pieces.append((cursor, len(text)))

    spans: list[Span] = []
    for start, end in pieces:
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start >= end:
            continue
        lead = _LEADING_CITATIONS.match(text, start, end)
        if lead and spans and lead.end() > start:
            prev = spans[-1]
            cut = start + len(lead.group().rstrip())
            spans[-1] = Span(text[prev.start : cut], prev.start, cut)
            start = lead.end()
            if start >= end:
                continue
        spans.append(Span(text[start:end], start, end))
    return spans


def _wrapped(text: str, cursor: int, match: re.Match) -> bool:
    """Whether a line break only wraps a paragraph: one break (no blank line), neither line a
    heading or table row nor the next one a list item, and the line before it ending in a comma
    or long and cut mid-sentence."""
    if match.group().count("\n") > 1 or match.end() >= len(text):
        return False
    if _BLOCK_START.match(text, match.end()):
        return False
    newline = text.rfind("\n", cursor, match.start())
    line = text[newline + 1 if newline >= 0 else cursor : match.start()]
    if not line or line[-1] in ".!?:;" or _HEADING.match(line):
        return False
    wraps = len(line) >= _WRAPPED_LINE and (line[-1].isalnum() or line[-1] in ")`'\"")
    return line[-1] == "," or wraps


def windows(span: Span, max_words: int) -> list[Span]:
    """A long sentence (a table row, unpunctuated text) as pieces of at most `max_words`
    words, cut between words, with offsets in the same text as the span's."""
    words = list(re.finditer(r"\S+", span.text))
    if len(words) <= max_words:
        return [span]
    out = []
    for i in range(0, len(words), max_words):
        first, last = words[i], words[min(i + max_words, len(words)) - 1]
        piece = span.text[first.start() : last.end()]
        out.append(Span(piece, span.start + first.start(), span.start + last.end()))
    return out


def word_count(text: str) -> int:
    return len(text.split())

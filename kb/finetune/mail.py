"""Mail and news messages in classification data: their headers, and the header labels.

A labelled file that is a mail or Usenet message (a block of `Name: value` lines, then a blank
line, then the body) keeps only the headers asked for in its prompt (`clean_message`); all of
its headers stay available to `--header-labels`.

A header label is one line at the end of an example's neighbours: how the pool's labelled
messages that share something with the text are labelled. `SameHeader` shares a header value
(`from`: the sender's other messages, evidence a text's own words may not carry; `subject`, its
reply prefixes dropped: the rest of the thread). `Quoted` shares an author: the pool's messages
sent by the authors the text quotes on its attribution lines (`a@b.c (Name) writes:`), whose
replies sit in the same conversation. `kb.finetune.neighbours` sees only the `HeaderLabel`
interface, resolved by name with `header_label`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Protocol

DEFAULT_KEPT_HEADERS = ("subject",)
#: the `--header-labels` name that counts the labels of the authors a message quotes
QUOTED = "quoted"

_HEADER_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9._-]*):(?:[ \t]|$)")
_MESSAGE_HEADERS = {"from", "subject", "newsgroups", "message-id", "to", "date"}
_SPACE = re.compile(r"\s+")
_ADDRESS = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
#: a line that names whom a message quotes: "... writes:", "In article <id>, ...", "... said:"
_ATTRIBUTION = re.compile(
    r"\b(?:writes|wrote|says|said)\b|^[\s>|:]*in (?:a previous )?(?:article|message)\b",
    re.IGNORECASE,
)
_REPLY = re.compile(r"^(?:\s*(?:re|fwd?|aw)\s*(?:\[\d+\])?\s*:)+", re.IGNORECASE)


# -- messages ------------------------------------------------------------------------------


def split_message(text: str) -> tuple[dict[str, str], str | None]:
    """(headers, body) of a mail or news message: a block of `Name: value` lines, at least two
    of them, one a usual message header, then a blank line. Body None: not a message."""
    lines = text.splitlines()
    headers: dict[str, str] = {}
    last = None
    for i, line in enumerate(lines):
        if not line.strip():
            if headers.keys() & _MESSAGE_HEADERS and len(headers) >= 2:
                return headers, "\n".join(lines[i + 1 :]).strip()
            break
        if line[0] in " \t" and last is not None:
            headers[last] += " " + line.strip()
            continue
        match = _HEADER_LINE.match(line)
        if not match:
            break
        last = match.group(1).lower()
        headers[last] = line[match.end() :].strip()
    return headers, None


def message_headers(text: str) -> dict[str, str]:
    """A mail or news message's headers by lower-case name (folded lines joined); {} for text
    that is not a message."""
    headers, body = split_message(text)
    return headers if body is not None else {}


def clean_message(text: str, keep_headers: tuple[str, ...] = DEFAULT_KEPT_HEADERS) -> str:
    """For a mail or news message keep the named headers and the body; other text comes back
    stripped. Headers come out in the order named, under their usual capitalisation."""
    headers, body = split_message(text)
    if body is None:
        return text.strip()
    kept = [
        f"{name.title()}: {headers[name].strip()}"
        for name in keep_headers
        if headers.get(name, "").strip()
    ]
    return ("\n".join(kept) + "\n\n" + body).strip() if kept else body


def header_key(value: str | None) -> str | None:
    """What makes two header values the same: the mail address in it when it has one (a
    sender writes `Name <a@b.c>` in one message and `a@b.c (Name)` in the next), else the value
    without reply and forward prefixes (`Re: Re[2]: Fwd:`, so a thread's subjects match), case
    and runs of white space ignored; None for a missing or blank value."""
    if value is None:
        return None
    address = _ADDRESS.search(value)
    if address:
        return address.group(0).casefold()
    key = _SPACE.sub(" ", _REPLY.sub("", value)).strip().casefold()
    return key or None


def quoted_senders(text: str, sender: str | None = None) -> list[str]:
    """The mail addresses on a message's attribution lines (`In article <id>, a@b.c (Name)
    writes:`, `a@b.c wrote:`, `In a previous article, a@b.c says:`, at any quoting depth),
    case-folded, first seen first, the message's own `sender` (its From value) left out. Only
    the body is read when the text is a mail or news message."""
    _, body = split_message(text)
    own = header_key(sender)
    out: list[str] = []
    for line in (text if body is None else body).splitlines():
        if not _ATTRIBUTION.search(line):
            continue
        for address in _ADDRESS.findall(line):
            address = address.casefold()
            if address != own and address not in out:
                out.append(address)
    return out


# -- header labels -------------------------------------------------------------------------


class HeaderLabel(Protocol):
    """One `--header-labels` line: which pool messages count for a text, and how it reads."""

    name: str
    index: str  # the header by whose `header_key` the pool's messages are looked up

    def keys(self, text: str, headers: Mapping[str, str]) -> list[str]:
        """The text's keys into the pool's `index`; a pool message matching any one counts."""
        ...

    def line(self, counts: Counter[str]) -> str:
        """The neighbours line: the counted labels, most common first."""
        ...


def _ranked(counts: Counter[str]) -> str:
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{label} {n}" for label, n in ranked) or "none"


class SameHeader:
    """The pool's messages whose `name` header has the text's value of it."""

    def __init__(self, name: str):
        self.name = self.index = name

    def keys(self, text: str, headers: Mapping[str, str]) -> list[str]:
        key = header_key(headers.get(self.name))
        return [key] if key is not None else []

    def line(self, counts: Counter[str]) -> str:
        return f"Labelled messages with the same {self.name.title()}: {_ranked(counts)}"


class Quoted:
    """The pool's messages sent by the authors the text quotes (its attribution lines)."""

    name = QUOTED
    index = "from"

    def keys(self, text: str, headers: Mapping[str, str]) -> list[str]:
        return quoted_senders(text, headers.get("from"))

    def line(self, counts: Counter[str]) -> str:
        return f"Labelled messages by the authors it quotes: {_ranked(counts)}"


def header_label(name: str) -> HeaderLabel:
    """The header label a `--header-labels` name stands for: `quoted`, else a header name."""
    return Quoted() if name == QUOTED else SameHeader(name)

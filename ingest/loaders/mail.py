"""Mail and news messages (RFC 822): Subject is the title, the text body is the text."""

from __future__ import annotations

import contextlib
import email
import email.policy
import re
from email.header import decode_header, make_header
from email.message import Message
from pathlib import Path

from ingest.loaders.base import Loader, LoadOptions, make_document
from ingest.loaders.decode import decode_bytes
from ingest.loaders.text import reject_binary
from kb.errors import LoaderError
from kb.types import Document, Section

KEPT_HEADERS = ("From", "Date", "Newsgroups")
_IDENTIFYING = {"from", "subject", "newsgroups", "message-id", "path", "xref"}
_FIELD = re.compile(rb"^[!-9;-~]+:")
_MAX_HEADER_LINES = 200


def looks_like_message(data: bytes) -> bool:
    """True when the file opens with an RFC 822 header block naming a sender, subject or group."""
    lines = data[:16384].splitlines()
    if lines and lines[0].startswith(b"From "):  # mbox envelope line
        lines = lines[1:]
    names: set[str] = set()
    for line in lines[:_MAX_HEADER_LINES]:
        if not line.strip():
            return len(names) >= 2 and bool(names & _IDENTIFYING)
        if line[:1] in (b" ", b"\t"):  # a folded header line (damaged files may start with one)
            continue
        if not _FIELD.match(line):
            return False
        names.add(line.split(b":", 1)[0].decode("ascii").lower())
    return False


class EmailLoader(Loader):
    """`.eml` files, and files without a registered extension that `looks_like_message` accepts."""

    name = "email"
    extensions = (".eml",)

    def load(self, path: Path, data: bytes, options: LoadOptions) -> list[Document]:
        reject_binary(path, data)
        if data.startswith(b"From "):
            data = data.split(b"\n", 1)[-1]
        message = email.message_from_bytes(data, policy=email.policy.compat32)
        subject = _header(message, "Subject")
        metadata: dict[str, str] = {"format": self.name}
        for name in KEPT_HEADERS:
            if (value := _header(message, name)) is not None:
                metadata[name.lower()] = value
        document = make_document(path, _body_sections(message), title=subject, metadata=metadata)
        if document is None and subject:  # a post whose subject line says it all
            document = make_document(path, [Section(subject)], title=subject, metadata=metadata)
        if document is None:
            raise LoaderError(f"empty message: {path} has no subject or body text; remove it")
        return [document]


def _header(message: Message, name: str) -> str | None:
    # raw_items keeps undeclared 8-bit bytes as surrogate escapes; `message.get` would turn
    # them into U+FFFD, so decode them like a body instead ("Caf\xe9" -> "Café")
    wanted = name.lower()
    raw = next((value for key, value in message.raw_items() if key.lower() == wanted), None)
    if raw is None:
        return None
    raw = str(raw)
    if not raw.isascii():
        with contextlib.suppress(UnicodeEncodeError):  # already real text, not escaped bytes
            raw = decode_bytes(raw.encode("ascii", "surrogateescape"))[0]
    try:
        value = str(make_header(decode_header(raw)))
    except (LookupError, UnicodeError, ValueError):
        value = raw
    return " ".join(value.split()) or None


def _body_sections(message: Message) -> list[Section]:
    """Text of the plain-text parts; HTML parts only when there is no plain text."""
    plain, html = [], []
    for part in message.walk():
        if part.is_multipart() or part.get_filename():
            continue
        content_type = part.get_content_type()
        if content_type == "text/plain":
            plain.append(_part_text(part))
        elif content_type == "text/html":
            from ingest.loaders.html import html_sections

            html.extend(html_sections(part.get_payload(decode=True) or b"").sections)
    return [Section(text) for text in plain] if any(t.strip() for t in plain) else html


def _part_text(part: Message) -> str:
    payload = part.get_payload(decode=True) or b""
    charset = part.get_content_charset()
    if charset:
        try:
            return payload.decode(charset, errors="replace")
        except LookupError:
            pass
    return decode_bytes(payload)[0]

"""Document loaders: `load_file` turns one file into documents, `iter_files` walks a folder.

Loaders are registered by name; the file extension picks one. Files with an unknown or no
extension are sniffed: mail/news messages go to the email loader, other text to the plain-text
loader, and binary data raises UnsupportedFile.
"""

from __future__ import annotations

import stat
from pathlib import Path

from ingest.loaders.base import DEFAULT_MAX_BYTES, Loader, LoadOptions
from ingest.loaders.decode import SNIFF_BYTES, looks_binary
from ingest.loaders.docx import DocxLoader
from ingest.loaders.html import HtmlLoader
from ingest.loaders.mail import EmailLoader, looks_like_message
from ingest.loaders.pdf import PdfLoader
from ingest.loaders.tables import CsvLoader, JsonlLoader, XlsxLoader
from ingest.loaders.text import MarkdownLoader, PlainTextLoader, RstLoader
from ingest.loaders.walk import iter_files
from kb.errors import InvalidInput, KBError, LoaderError, UnsupportedFile
from kb.types import Document

__all__ = [
    "EXTENSIONS",
    "LOADERS",
    "SUPPORTED_EXTENSIONS",
    "Loader",
    "LoadOptions",
    "get_loader",
    "iter_files",
    "load_file",
    "register",
]

LOADERS: dict[str, Loader] = {}
EXTENSIONS: dict[str, str] = {}  # ".md" -> "markdown"
SUPPORTED_EXTENSIONS: set[str] = set()


def register(loader: Loader) -> None:
    """Add a loader under its name and claim its extensions."""
    LOADERS[loader.name] = loader
    for extension in loader.extensions:
        EXTENSIONS[extension] = loader.name
        SUPPORTED_EXTENSIONS.add(extension)


for _loader in (
    PlainTextLoader(),
    MarkdownLoader(),
    RstLoader(),
    HtmlLoader(),
    PdfLoader(),
    DocxLoader(),
    CsvLoader(),
    JsonlLoader(),
    XlsxLoader(),
    EmailLoader(),
):
    register(_loader)


def get_loader(name: str) -> Loader:
    """The loader registered under `name`; an unknown name lists the known ones."""
    try:
        return LOADERS[name]
    except KeyError:
        known = ", ".join(sorted(LOADERS))
        raise InvalidInput(f"unknown loader {name!r}: use one of {known}") from None


def load_file(
    path: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    jsonl_text_field: str | None = None,
    csv_text_field: str | None = None,
) -> list[Document]:
    """Load one file into documents (several for CSV/JSONL/XLSX, one per record).

    Raises UnsupportedFile for unknown or binary files and LoaderError for broken ones; never
    reads more than `max_bytes` (the KB_MAX_FILE_BYTES setting) from the file.
    """
    path = Path(path)
    options = LoadOptions(
        max_bytes=max_bytes, jsonl_text_field=jsonl_text_field, csv_text_field=csv_text_field
    )
    size = _regular_file_size(path)
    name = EXTENSIONS.get(path.suffix.lower()) or _sniff(path, _read(path, SNIFF_BYTES))
    if size > max_bytes:
        raise _too_large(path, size, max_bytes)
    data = _read(path, max_bytes + 1, expected=size)
    if len(data) > max_bytes:  # the file grew since stat()
        raise _too_large(path, len(data), max_bytes)
    if not data or data.isspace():
        raise LoaderError(f"empty file: {path} has no text; add content or remove it")
    try:
        return get_loader(name).load(path, data, options)
    except KBError:
        raise
    except Exception as exc:  # parsers of untrusted files fail in unforeseen ways: report, go on
        raise LoaderError(
            f"cannot load {path} as {name}: {type(exc).__name__}: {exc}; check the file "
            "(it may be damaged) or convert it to another supported format"
        ) from exc


def _regular_file_size(path: Path) -> int:
    try:
        info = path.stat()
    except OSError as exc:
        raise LoaderError(f"cannot read {path}: {exc.strerror}; check the path") from exc
    if not stat.S_ISREG(info.st_mode):
        raise UnsupportedFile(f"not a regular file: {path}; load_file reads files only")
    return info.st_size


def _read(path: Path, limit: int, *, expected: int | None = None) -> bytes:
    """Read at most `limit` bytes, sizing the first read by the expected (stat) size."""
    # read(n) allocates n bytes up front, so asking for the whole limit would cost limit bytes
    first = limit if expected is None else min(expected + 1, limit)
    try:
        with path.open("rb") as file:
            data = file.read(first)
            if len(data) == first < limit:  # the file grew since stat(): read on to the limit
                data += file.read(limit - first)
            return data
    except OSError as exc:
        raise LoaderError(f"cannot read {path}: {exc.strerror}; check its permissions") from exc


def _sniff(path: Path, head: bytes) -> str:
    """Loader name for a file whose extension is not registered, judged by its first bytes."""
    if looks_binary(head):
        kind = f"type {path.suffix.lower()}" if path.suffix else "without extension"
        raise UnsupportedFile(
            f"unsupported file {kind}: {path} holds binary data; supported are plain text and "
            f"{', '.join(sorted(SUPPORTED_EXTENSIONS))}; convert it or leave it out"
        )
    return "email" if looks_like_message(head) else "text"


def _too_large(path: Path, size: int, max_bytes: int) -> LoaderError:
    return LoaderError(
        f"file too large: {path} is {size:,} bytes, over the {max_bytes:,}-byte limit; "
        "raise KB_MAX_FILE_BYTES or split the file"
    )

"""The loader interface: a loader turns one file's bytes into documents."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ingest.loaders.decode import normalize_text
from kb.types import Document, Section

DEFAULT_MAX_BYTES = 200 * 1024 * 1024


@dataclass(frozen=True)
class LoadOptions:
    """Per-call knobs the pipeline passes through `load_file`."""

    max_bytes: int = DEFAULT_MAX_BYTES
    jsonl_text_field: str | None = None
    csv_text_field: str | None = None


class Loader(ABC):
    """One file format. `load_file` has already checked the size and read the bytes."""

    #: registry key, e.g. "pdf"
    name: ClassVar[str]
    #: lower-case extensions with the dot, e.g. (".htm", ".html"); empty for sniffed-only loaders
    extensions: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def load(self, path: Path, data: bytes, options: LoadOptions) -> list[Document]:
        """Turn the file's bytes into documents; raise LoaderError naming the problem and fix."""


def make_document(
    source: str | Path,
    sections: list[Section],
    *,
    title: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Document | None:
    """Normalise section texts, drop empty sections; None when no text is left."""
    kept = []
    for section in sections:
        text = normalize_text(section.text)
        if text:
            kept.append(Section(text=text, page=section.page, heading=section.heading))
    if not kept:
        return None
    title = " ".join(title.split()) if title else None
    return Document(source=str(source), sections=kept, title=title or None, metadata=metadata or {})

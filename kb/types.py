"""Records shared across the core: documents, chunks and retrieved passages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Section:
    """A span of a document's text with its own page or heading (a PDF page, an HTML section)."""

    text: str
    page: int | None = None
    heading: str | None = None


@dataclass
class Document:
    """What a loader returns: the text of one file (or one record of a CSV/JSONL file)."""

    source: str  # path of the file, or "path#record" for record-per-document formats
    sections: list[Section]
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n\n".join(s.text for s in self.sections)


@dataclass
class Chunk:
    """A piece of a document that is embedded and indexed."""

    text: str
    ordinal: int  # position of the chunk in its document
    start: int  # character offsets into the section's text (PDF: into the page's text)
    end: int
    page: int | None = None
    heading: str | None = None
    title: str | None = None
    #: BM25 terms (kb.store.bm25.chunk_terms), made where the chunk is; the commit makes them
    #: when this is None
    terms: list[str] | None = field(default=None, repr=False, compare=False)


@dataclass
class Passage:
    """A retrieved chunk with its score and provenance."""

    chunk_id: int
    doc_id: str
    source: str
    text: str
    score: float
    start: int
    end: int
    ordinal: int = 0
    page: int | None = None
    heading: str | None = None
    title: str | None = None
    scores: dict[str, float] = field(default_factory=dict)  # per-method scores before fusion

    def to_dict(self) -> dict[str, Any]:
        return {
            "chunk_id": self.chunk_id,
            "doc_id": self.doc_id,
            "source": self.source,
            "text": self.text,
            "score": self.score,
            "start": self.start,
            "end": self.end,
            "ordinal": self.ordinal,
            "page": self.page,
            "heading": self.heading,
            "title": self.title,
            "scores": self.scores,
        }

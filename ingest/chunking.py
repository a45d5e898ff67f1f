"""Documents -> chunks with langchain-text-splitters, sized in tokens of the embedder's tokenizer."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from langchain_text_splitters import RecursiveCharacterTextSplitter

from kb.errors import InvalidInput
from kb.types import Chunk, Document

if TYPE_CHECKING:
    from ingest.boilerplate import LineCounts

SEPARATORS = ["\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ", ""]


class Chunker:
    """Splits each section of a document on paragraph, line, sentence and word boundaries.

    Offsets are character positions in `Document.text` (sections joined by a blank line);
    PDF chunks also carry their page number. With `drop_boilerplate`, the ingest passes the
    collection's line counts to `split`, and text repeated across its files is not chunked
    (a chunk never spans a dropped run, so its offsets still give its exact text).
    """

    def __init__(
        self,
        count_tokens: Callable[[str], int],
        chunk_size: int = 256,
        chunk_overlap: int = 32,
        drop_boilerplate: bool = False,
    ):
        if chunk_size < 16:
            raise InvalidInput(f"chunk size {chunk_size} is too small: use at least 16 tokens")
        if not 0 <= chunk_overlap < chunk_size:
            raise InvalidInput(
                f"chunk overlap {chunk_overlap} must be between 0 and the chunk size ({chunk_size})"
            )
        self.count_tokens = count_tokens
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        self.drop_boilerplate = drop_boilerplate
        self._splitter = RecursiveCharacterTextSplitter(
            separators=SEPARATORS,
            keep_separator="end",
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            length_function=count_tokens,
        )

    @property
    def fingerprint(self) -> str:
        # a change of the setting re-chunks every file on its next ingest
        boilerplate = ";boilerplate" if self.drop_boilerplate else ""
        return f"chunk={self.chunk_size}/{self.chunk_overlap}{boilerplate}"

    def split(self, doc: Document, boilerplate: LineCounts | None = None) -> list[Chunk]:
        """Chunks of the document, leaving out the lines `boilerplate` counts as such."""
        chunks: list[Chunk] = []
        base = 0
        for section in doc.sections:
            text = section.text
            spans = boilerplate.kept_spans(text) if boilerplate else [(0, len(text))]
            for span_start, span_end in spans:
                for piece, start in self._split_text(text[span_start:span_end]):
                    at = base + span_start + start
                    chunks.append(
                        Chunk(
                            text=piece,
                            ordinal=len(chunks),
                            start=at,
                            end=at + len(piece),
                            page=section.page,
                            heading=section.heading,
                            title=doc.title,
                        )
                    )
            base += len(text) + 2  # the blank line Document.text puts between sections
        return chunks

    def _split_text(self, text: str) -> list[tuple[str, int]]:
        stripped = text.strip()
        if not stripped:
            return []
        if self.count_tokens(stripped) <= self.chunk_size:  # most short documents: one call
            return [(stripped, text.index(stripped))]
        out = []
        cursor = 0
        for piece in self._splitter.split_text(text):
            # overlapping chunks start before the end of the previous one, never before its start
            at = text.find(piece, cursor)
            if at < 0:
                at = text.find(piece)
            at = max(at, 0)
            out.append((piece, at))
            cursor = at + 1
        return out

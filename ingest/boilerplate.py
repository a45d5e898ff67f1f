"""Boilerplate: lines repeated across many files of a collection (site navigation, footers,
cookie banners), found by counting and left out of the chunks.

A line (whitespace collapsed) is boilerplate once the collection has at least `MIN_FILES`
files and the line occurs in at least `MIN_SHARE` of them. Files, not documents, are counted:
the rows of one CSV file share their field names by design. A run of boilerplate lines (blank
lines inside it included) is dropped when it holds at least `MIN_RUN_CHARS` characters, so a
lone short line that happens to be common ("}", "Example") stays in its text.

Ingest is incremental, so the counts live in the collection (`to_json`/`from_json`, the
collection's meta) and a second ingest of a few files judges them against everything stored.
The counts are a sketch: the `MAX_TRACKED` most frequent lines are kept, and a file that is
re-ingested after a change counts again (a share barely moves by it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from kb.types import Document

MIN_FILES = 5
MIN_SHARE = 0.5
MIN_RUN_CHARS = 16
MAX_TRACKED = 20_000
META_KEY = "boilerplate"


def line_key(line: str) -> str | None:
    """A short hash of the line with its whitespace collapsed; None for a blank line."""
    flat = " ".join(line.split())
    if not flat:
        return None
    return hashlib.blake2b(flat.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def file_keys(docs: Iterable[Document]) -> set[str]:
    """The distinct line keys of one file's documents."""
    keys = set()
    for doc in docs:
        for section in doc.sections:
            for line in section.text.split("\n"):
                key = line_key(line)
                if key is not None:
                    keys.add(key)
    return keys


@dataclass
class LineCounts:
    """In how many files each line occurs, out of `files` counted."""

    files: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, docs: Iterable[Document]) -> None:
        """Count one file (all the documents it yielded)."""
        self.add_keys(file_keys(docs))

    def add_keys(self, keys: Iterable[str]) -> None:
        """Count one file by its distinct line keys (`file_keys`)."""
        self.files += 1
        for key in keys:
            self.counts[key] = self.counts.get(key, 0) + 1

    def is_boilerplate(self, key: str | None) -> bool:
        if key is None or self.files < MIN_FILES:
            return False
        return self.counts.get(key, 0) >= MIN_SHARE * self.files

    def kept_spans(self, text: str) -> list[tuple[int, int]]:
        """The (start, end) spans of `text` left once boilerplate runs are cut out."""
        if self.files < MIN_FILES:
            return [(0, len(text))]
        spans: list[tuple[int, int]] = []
        kept_from = 0
        run_start: int | None = None  # where the current run of boilerplate lines starts
        run_chars = 0
        pos = 0
        for line in text.split("\n"):
            end = pos + len(line)
            key = line_key(line)
            if self.is_boilerplate(key):
                if run_start is None:
                    run_start, run_chars = pos, 0
                run_chars += len(line.strip())
            elif key is not None:  # a line of the document's own: the run ends here
                if run_start is not None and run_chars >= MIN_RUN_CHARS:
                    spans.append((kept_from, run_start))
                    kept_from = pos
                run_start = None
            pos = end + 1
        if run_start is not None and run_chars >= MIN_RUN_CHARS:
            spans.append((kept_from, run_start))
            kept_from = len(text)
        spans.append((kept_from, len(text)))
        return [(s, e) for s, e in spans if text[s:e].strip()]

    def to_json(self) -> str:
        """The counts as stored, cut to the `MAX_TRACKED` most frequent lines (newest first
        among equals, so that lines of files ingested one at a time can still add up)."""
        items = list(self.counts.items())[::-1]
        items.sort(key=lambda item: -item[1])
        kept = dict(items[:MAX_TRACKED][::-1])
        return json.dumps({"files": self.files, "counts": kept}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> LineCounts:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(files=int(data["files"]), counts={k: int(v) for k, v in data["counts"].items()})

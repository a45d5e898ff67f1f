"""Folder -> collection sync: load, chunk and embed only what changed, commit in generations.

Parsing runs in a background thread while the embedder works on the previous batch, so on
two cores the CPU-bound loaders and the model overlap.

With the chunker's `drop_boilerplate`, every loaded file adds its lines to the collection's
counts (ingest.boilerplate) before it is chunked, and the first files of a collection wait
until `BOILERPLATE_WARMUP` files have been counted, so that they too lose their navigation.
The counts are committed with the chunks.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ingest.boilerplate import META_KEY, LineCounts
from ingest.chunking import Chunker
from kb.embedders import Embedder
from kb.errors import KBError, LoaderError, UnsupportedFile
from kb.store.bm25 import chunk_terms
from kb.store.collection import Collection, NewDocument
from kb.types import Chunk, Document

# files counted before the first is chunked; later files are judged by the counts so far
BOILERPLATE_WARMUP = 50


@dataclass
class IngestReport:
    collection: str
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    chunks_embedded: int = 0
    documents_written: int = 0
    files_seen: int = 0
    generation: int = 0
    seconds: float = 0.0
    # where the time went. Loading (parsing) and chunking run in the prefetch thread, beside
    # the embedding; waiting is the time the embedder sat idle for parsed and chunked files
    seconds_loading: float = 0.0
    seconds_chunking: float = 0.0
    seconds_embedding: float = 0.0
    seconds_waiting: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class IngestProgress:
    """Callbacks an ingest reports through; the CLI draws a bar, the service records a job."""

    def start(self, files_total: int) -> None: ...

    def file_done(self, path: str, status: str, error: str | None = None) -> None: ...

    def chunks_embedded(self, n: int) -> None: ...

    def committed(self, generation: int) -> None: ...


@dataclass
class _Pending:
    """A loaded file (origin) waiting for its vectors."""

    origin: str
    origin_hash: str
    status: str  # "added" | "updated"
    docs: list[tuple[Document, list[Chunk]]]
    display: str = ""  # the origin as readers see it (relative to the folder ingested)


@dataclass
class Source:
    """One unit of sync: a file, an upload, or a record given directly."""

    origin: str
    content_hash: str
    load: Callable[[], list[Document]]
    display: str = ""  # shown in reports and stored as the documents' display source


def file_hash(path: Path, max_bytes: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        read = 0
        while block := f.read(1 << 20):
            h.update(block)
            read += len(block)
            if read > max_bytes:
                break  # the loader will refuse it by size; the hash need not cover it
    return h.hexdigest()


#: what a bad file raises while it is loaded or chunked: it is reported and skipped
FILE_ERRORS = (KBError, OSError, ValueError, RecursionError, MemoryError)


def load_source(source: Source) -> list[Document]:
    """The documents of a source; LoaderError when it yields none."""
    docs = source.load()
    if not docs:
        raise LoaderError(f"{source.display or source.origin}: no documents found in the file")
    return docs


def chunk_source(
    chunker: Chunker, source: Source, docs: list[Document], boilerplate: LineCounts | None
) -> list[tuple[Document, list[Chunk]]]:
    """Each document with its chunks (those left with none dropped), the lines `boilerplate`
    counts as such left out; LoaderError or UnsupportedFile when no chunk is left at all."""
    name = source.display or source.origin
    chunked = [(d, chunker.split(d, boilerplate)) for d in docs]
    chunked = [(d, c) for d, c in chunked if c]
    if not chunked and boilerplate is not None and _has_text(docs):
        raise UnsupportedFile(
            f"{name}: all its text repeats across the collection's files (boilerplate); "
            "set KB_DROP_BOILERPLATE=false to keep such files"
        )
    if not chunked:
        raise LoaderError(f"{name}: no text left after parsing; check that the file has text")
    for doc, chunks in chunked:  # tokenised here, off the writer: on the loader or a Ray worker
        for chunk in chunks:
            chunk.terms = chunk_terms(chunk.text, doc.title)
    return chunked


def failure(exc: BaseException) -> tuple[str, str]:
    """How a file's error is reported: ("skipped", reason) for an unsupported file, else
    ("failed", message)."""
    if isinstance(exc, UnsupportedFile):
        return "skipped", str(exc)
    return "failed", _describe(exc)


def embed_input(chunk: Chunk) -> str:
    """Chunks are embedded with their document title, which often carries the topic."""
    if chunk.title and not chunk.text.startswith(chunk.title):
        return f"{chunk.title}\n{chunk.text}"
    return chunk.text


class Ingestor:
    """Syncs sources into one collection; the caller holds the collection's write lock."""

    def __init__(
        self,
        collection: Collection,
        embedder: Embedder,
        chunker: Chunker,
        *,
        commit_every_chunks: int = 20_000,
        embed_batch_chunks: int = 512,
        progress: IngestProgress | None = None,
        prefetch: bool = True,
    ):
        self.collection = collection
        self.embedder = embedder
        self.chunker = chunker
        self.commit_every = commit_every_chunks
        # commits happen between embed batches, so a batch may not outgrow the commit interval
        self.embed_batch = max(1, min(embed_batch_chunks, commit_every_chunks))
        self.progress = progress or IngestProgress()
        self.prefetch = prefetch  # False loads in the caller's thread (benchmarks/ingest.py)
        self.boilerplate: LineCounts | None = None
        if chunker.drop_boilerplate:
            self.boilerplate = LineCounts.from_json(collection.meta().get(META_KEY))

    def sync(
        self,
        sources: Iterable[Source],
        *,
        total: int | None = None,
        prune_origins: Iterable[str] = (),
    ) -> IngestReport:
        started = time.perf_counter()
        report = IngestReport(collection=self.collection.name)
        stored = self.collection.origins()
        self.progress.start(total or 0)

        ready: list[_Pending] = []  # loaded and embedded, waiting for a commit
        batch: list[_Pending] = []  # loaded, waiting for vectors
        batch_chunks = 0
        ready_chunks = 0
        loaded = self._chunked(sources, stored, report)
        items = iter(_prefetch(loaded) if self.prefetch else loaded)
        while True:
            waiting = time.perf_counter()
            item = next(items, _DONE)
            report.seconds_waiting += time.perf_counter() - waiting
            if item is _DONE:
                break
            if item is None:
                continue
            batch.append(item)
            batch_chunks += sum(len(c) for _, c in item.docs)
            if batch_chunks >= self.embed_batch:
                ready_chunks += self._embed(batch, report)
                ready += batch
                batch, batch_chunks = [], 0
            if ready_chunks >= self.commit_every:
                self._commit(ready, [], report)
                ready, ready_chunks = [], 0
        self._embed(batch, report)
        ready += batch
        return self._finish(ready, prune_origins, report, started)

    def _finish(
        self,
        ready: list[_Pending],
        prune_origins: Iterable[str],
        report: IngestReport,
        started: float,
    ) -> IngestReport:
        """The last commit: what is ready, and the documents of files gone from the folder."""
        removed_docs: list[str] = []
        for origin in prune_origins:
            removed_docs += self._doc_ids_of_origin(origin)
            report.removed += 1
            self.progress.file_done(origin, "removed")
        self._commit(ready, removed_docs, report)
        report.generation = self.collection.generation
        report.seconds = round(time.perf_counter() - started, 3)
        for name in ("loading", "chunking", "embedding", "waiting"):
            key = f"seconds_{name}"
            setattr(report, key, round(getattr(report, key), 3))
        return report

    def _doc_ids_of_origin(self, origin: str) -> list[str]:
        return self.collection.doc_ids_of_origin(origin)

    def _chunked(
        self, sources: Iterable[Source], stored: dict[str, str], report: IngestReport
    ) -> Iterator[_Pending | None]:
        """Load each changed source and chunk it, holding the first ones back while the
        boilerplate counts are too thin to judge them."""
        held: list[tuple[Source, list[Document]]] = []
        for source in sources:
            started = time.perf_counter()
            docs = self._load(source, stored, report)
            report.seconds_loading += time.perf_counter() - started
            if docs is None:
                yield None  # keeps the consumer's view of progress moving
                continue
            if self.boilerplate is not None:
                self.boilerplate.add(docs)
                if self.boilerplate.files < BOILERPLATE_WARMUP:
                    held.append((source, docs))
                    continue
            for waiting, waiting_docs in held:
                yield self._timed_chunk(waiting, waiting_docs, stored, report)
            held = []
            yield self._timed_chunk(source, docs, stored, report)
        for waiting, waiting_docs in held:
            yield self._timed_chunk(waiting, waiting_docs, stored, report)

    def _timed_chunk(
        self, source: Source, docs: list[Document], stored: dict[str, str], report: IngestReport
    ) -> _Pending | None:
        started = time.perf_counter()
        try:
            return self._chunk(source, docs, stored, report)
        finally:
            report.seconds_chunking += time.perf_counter() - started

    def _load(
        self, source: Source, stored: dict[str, str], report: IngestReport
    ) -> list[Document] | None:
        report.files_seen += 1
        name = source.display or source.origin
        try:
            if stored.get(source.origin) == source.content_hash:
                report.unchanged += 1
                self.progress.file_done(name, "unchanged")
                return None
            return load_source(source)
        except FILE_ERRORS as exc:
            self._failed(name, exc, report)
            return None

    def _chunk(
        self, source: Source, docs: list[Document], stored: dict[str, str], report: IngestReport
    ) -> _Pending | None:
        name = source.display or source.origin
        try:
            chunked = chunk_source(self.chunker, source, docs, self.boilerplate)
        except FILE_ERRORS as exc:
            self._failed(name, exc, report)
            return None
        status = "updated" if source.origin in stored else "added"
        return _Pending(source.origin, source.content_hash, status, chunked, name)

    def _failed(self, name: str, exc: BaseException, report: IngestReport) -> None:
        self._record_failure(name, *failure(exc), report)

    def _record_failure(self, name: str, status: str, message: str, report: IngestReport) -> None:
        if status == "skipped":
            report.skipped.append({"path": name, "reason": message})
        else:
            report.failed.append({"path": name, "error": message})
        self.progress.file_done(name, status, message)

    def _embed(self, batch: list[_Pending], report: IngestReport) -> int:
        chunks = [c for p in batch for _, cs in p.docs for c in cs]
        if not chunks:
            return 0
        started = time.perf_counter()
        vectors = self.embedder.embed(
            [embed_input(c) for c in chunks], progress=self.progress.chunks_embedded
        )
        report.seconds_embedding += time.perf_counter() - started
        report.chunks_embedded += len(chunks)
        pos = 0
        for p in batch:
            with_vectors = []
            for doc, cs in p.docs:
                with_vectors.append((doc, cs, vectors[pos : pos + len(cs)]))
                pos += len(cs)
            p.docs = with_vectors  # type: ignore[assignment]
        return len(chunks)

    def _commit(
        self, ready: list[_Pending], delete_doc_ids: list[str], report: IngestReport
    ) -> None:
        if not ready and not delete_doc_ids:
            return
        add: list[NewDocument] = []
        delete = set(delete_doc_ids)
        for p in ready:
            # an updated file may have dropped some of its documents (e.g. CSV rows)
            delete.update(self._doc_ids_of_origin(p.origin))
            for doc, chunks, vectors in p.docs:  # type: ignore[misc]
                add.append(
                    NewDocument(
                        source=doc.source,
                        origin=p.origin,
                        origin_hash=p.origin_hash,
                        title=doc.title,
                        metadata=doc.metadata,
                        chars=len(doc.text),
                        chunks=chunks,
                        vectors=np.asarray(vectors),
                        display=p.display + doc.source[len(p.origin) :]
                        if doc.source.startswith(p.origin)
                        else p.display,
                    )
                )
        meta = {META_KEY: self.boilerplate.to_json()} if self.boilerplate is not None else None
        generation = self.collection.commit(add=add, delete_doc_ids=delete, meta=meta)
        report.documents_written += len(add)
        for p in ready:
            setattr(report, p.status, getattr(report, p.status) + 1)
            self.progress.file_done(p.display, p.status)
        self.progress.committed(generation)


def folder_sources(
    root: Path, *, loader_options: dict[str, Any], fingerprint: str, max_bytes: int
) -> tuple[list[Source], list[Path]]:
    """Sources for every file under `root` (or `root` itself if it is a file), each displayed
    by its path relative to `root` (a file root by its name)."""
    from ingest.loaders import iter_files

    files = [root] if root.is_file() else list(iter_files(root))
    base = os.path.abspath(root.parent if root.is_file() else root)
    sources = []
    for path in files:
        origin = os.path.abspath(path)
        display = os.path.relpath(origin, base)
        load = FileLoad(path, origin, display, max_bytes, loader_options)
        try:
            digest = file_hash(path, max_bytes)
        except OSError as exc:
            digest = f"unreadable:{exc}"
        sources.append(Source(origin, f"{digest}:{fingerprint}", load, display=display))
    return sources, files


@dataclass(frozen=True)
class FileLoad:
    """Loads one file's documents: a `Source.load` that pickles small (by reference to this
    class), for a Ray ingest that ships millions of sources to its workers."""

    path: Path
    origin: str
    display: str
    max_bytes: int
    options: dict[str, Any]

    def __call__(self) -> list[Document]:
        from ingest.loaders import load_file

        try:
            docs = load_file(self.path, max_bytes=self.max_bytes, **self.options)
        except KBError as exc:  # reported to clients: named without the server's folders
            raise type(exc)(str(exc).replace(str(self.path), self.display)) from None
        for doc in docs:  # sources are absolute, whatever path the caller gave
            if doc.source.startswith(str(self.path)):
                doc.source = self.origin + doc.source[len(str(self.path)) :]
        return docs


def document_sources(docs: Iterable[Document], fingerprint: str) -> Iterator[Source]:
    """Each document is its own unit of sync, hashed on its content."""
    for doc in docs:
        h = hashlib.sha256()
        h.update((doc.title or "").encode())
        for s in doc.sections:
            h.update(b"\0" + s.text.encode("utf-8", "surrogatepass"))
        yield Source(
            doc.source, f"{h.hexdigest()}:{fingerprint}", lambda d=doc: [d], display=doc.source
        )


def _has_text(docs: list[Document]) -> bool:
    return any(s.text.strip() for d in docs for s in d.sections)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KBError):
        return str(exc)
    if isinstance(exc, RecursionError):
        return "the file is nested too deeply to parse; flatten it or convert it to text"
    if isinstance(exc, MemoryError):
        return "the file needs too much memory to parse; split it into smaller files"
    return f"{type(exc).__name__}: {exc}"


_DONE = object()


def _prefetch(items: Iterator, depth: int = 16) -> Iterator:
    """Runs a generator in a background thread, `depth` items ahead of the consumer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("done", None))
        except BaseException as exc:  # re-raised in the consumer
            q.put(("error", exc))

    thread = threading.Thread(target=work, name="kb-ingest-loader", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()

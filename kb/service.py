"""The knowledge base: the one object the CLI and the HTTP API call for collections and search."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingest.chunking import Chunker
from ingest.pipeline import (
    Ingestor,
    IngestProgress,
    IngestReport,
    document_sources,
    folder_sources,
)
from kb.embedders import Embedder, load_embedder, runs_locally
from kb.errors import CollectionNotFound, DocumentNotFound, InvalidInput
from kb.retrieval import RetrievalOptions, Retriever
from kb.settings import Settings
from kb.store.collection import Collection, validate_name
from kb.types import Document, Passage

if TYPE_CHECKING:
    from ingest.ray_ingest import RayIngestOptions

WARM_QUERY = "warm-up"  # any text: the warm-up search only walks the path a query takes


class KnowledgeBase:
    """Collections in one data directory, with lazily loaded embedders shared between them."""

    def __init__(
        self, settings: Settings | None = None, embedders: dict[str, Embedder] | None = None
    ):
        """`embedders` may be shared between instances so a model is loaded once per process."""
        self.settings = settings or Settings()
        self._embedders: dict[str, Embedder] = embedders if embedders is not None else {}
        self._collections: dict[str, Collection] = {}
        self._lock = threading.RLock()
        self.retriever = Retriever(
            self.embedder_for,
            reranker=self._reranker(),
            concurrency=self.settings.search_concurrency,
        )

    # -- models ----------------------------------------------------------------------------

    def embedder_for(self, name: str) -> Embedder:
        with self._lock:
            if name not in self._embedders:
                self._embedders[name] = load_embedder(name, self.settings)
            return self._embedders[name]

    @property
    def embedder(self) -> Embedder:
        return self.embedder_for(self.settings.embedder)

    def _reranker(self):
        if not self.settings.reranker:
            return None
        from kb.rerank import CrossEncoderReranker

        return CrossEncoderReranker(self.settings.reranker)

    def chunker_for(self, embedder: Embedder) -> Chunker:
        """Chunks sized in the embedder's tokens. A size past the model's window is allowed:
        BM25 then sees the whole chunk while the dense vector covers its first window, which is
        how BEIR treats abstracts as units; the default (512) does so on purpose."""
        size = self.settings.chunk_size
        overlap = min(self.settings.chunk_overlap, size // 2)
        return Chunker(embedder.count_tokens, size, overlap, self.settings.drop_boilerplate)

    # -- collections -----------------------------------------------------------------------

    def _root(self, name: str) -> Path:
        return self.settings.collections_dir / validate_name(name)

    def _collection_options(self) -> dict[str, Any]:
        """How the settings open every collection."""
        return {
            "index_kind": self.settings.index_type,
            "exact_max": self.settings.exact_search_max,
            "mmap_bytes": self.settings.sqlite_mmap_mb << 20,
        }

    def collection(self, name: str | None = None) -> Collection:
        name = name or self.settings.default_collection
        with self._lock:
            col = self._collections.get(name)
            if col is None or not (col.root / "store.sqlite").exists():
                col = Collection.open(self._root(name), name, **self._collection_options())
                self._collections[name] = col
            return col

    def has_collection(self, name: str) -> bool:
        return (self._root(name) / "store.sqlite").exists()

    def create_collection(self, name: str, embedder: str | None = None) -> Collection:
        embedder_name = embedder or self.settings.embedder
        emb = self.embedder_for(embedder_name)
        with self._lock:
            if self.has_collection(name):
                col = self.collection(name)
                col.check_embedder(embedder_name, emb.dimension)
                return col
            col = Collection.create(
                self._root(name),
                name,
                embedder=embedder_name,
                dimension=emb.dimension,
                **self._collection_options(),
            )
            self._collections[name] = col
            return col

    def collection_names(self) -> list[str]:
        """The names of the collections on disk, without opening them."""
        root = self.settings.collections_dir
        if not root.exists():
            return []
        return sorted(p.name for p in root.iterdir() if (p / "store.sqlite").exists())

    def list_collections(self) -> list[dict[str, Any]]:
        return [self.collection(n).info() for n in self.collection_names()]

    def delete_collection(self, name: str) -> None:
        col = self.collection(name)
        with col.write_lock():
            with self._lock:
                self._collections.pop(name, None)
            col.close()
            shutil.rmtree(col.root)

    def export_collection(self, name: str, archive: str | Path) -> dict[str, Any]:
        from kb.store.backup import export_collection

        return export_collection(self.collection(name), Path(archive))

    def import_collection(
        self, archive: str | Path, name: str | None = None, *, force: bool = False
    ) -> dict[str, Any]:
        from kb.store.backup import import_collection

        manifest = import_collection(
            Path(archive), self.settings.collections_dir, name, force=force
        )
        with self._lock:
            self._collections.pop(manifest["collection"], None)
        return manifest

    # -- ingest ----------------------------------------------------------------------------

    def _writable(self, name: str, embedder: str | None) -> tuple[Collection, Embedder]:
        """The collection to write, created if new; a different embedder than its own is refused."""
        explicit = embedder or (
            self.settings.embedder if "embedder" in self.settings.model_fields_set else None
        )
        if self.has_collection(name):
            col = self.collection(name)
            emb = self.embedder_for(explicit or col.embedder)
            col.check_embedder(explicit or col.embedder, emb.dimension)
            return col, emb
        col = self.create_collection(name, explicit)
        return col, self.embedder_for(col.embedder)

    def ingest_path(
        self,
        path: str | Path,
        *,
        collection: str | None = None,
        prune: bool = False,
        progress: IngestProgress | None = None,
        embedder: str | None = None,
        jsonl_text_field: str | None = None,
        csv_text_field: str | None = None,
        wait: float = 0.0,
        ray: RayIngestOptions | None = None,
    ) -> IngestReport:
        """Sync a folder (or one file) into a collection: only new and changed files are embedded;
        with `ray`, they are parsed, chunked and embedded on a Ray cluster (ingest.ray_ingest)."""
        root = Path(path).expanduser()
        if not root.exists():
            raise InvalidInput(f"no such file or folder: {str(path)!r}; check the path")
        name = collection or self.settings.default_collection
        col, emb = self._writable(name, embedder)
        chunker = self.chunker_for(emb)
        options = {"jsonl_text_field": jsonl_text_field, "csv_text_field": csv_text_field}
        fingerprint = f"{chunker.fingerprint};{options}"
        with col.write_lock(wait):
            sources, files = folder_sources(
                root,
                loader_options=options,
                fingerprint=fingerprint,
                max_bytes=self.settings.max_file_bytes,
            )
            gone: list[str] = []
            if prune:
                prefix = os.path.abspath(root)
                present = {os.path.abspath(f) for f in files}
                gone = sorted(
                    o
                    for o in col.origins()
                    if (o == prefix or o.startswith(prefix.rstrip(os.sep) + os.sep))
                    and o not in present
                )
            ingestor = self._ingestor(col, emb, chunker, progress, ray)
            return ingestor.sync(sources, total=len(sources), prune_origins=gone)

    def ingest_files(
        self,
        paths: Iterable[str | Path],
        *,
        collection: str | None = None,
        progress: IngestProgress | None = None,
        wait: float = 0.0,
    ) -> IngestReport:
        """Sync some files (e.g. uploads) into a collection in one commit; same hashing as a folder."""
        name = collection or self.settings.default_collection
        col, emb = self._writable(name, None)
        chunker = self.chunker_for(emb)
        options = {"jsonl_text_field": None, "csv_text_field": None}
        fingerprint = f"{chunker.fingerprint};{options}"
        with col.write_lock(wait):
            sources = []
            for path in paths:
                found, _ = folder_sources(
                    Path(path),
                    loader_options=options,
                    fingerprint=fingerprint,
                    max_bytes=self.settings.max_file_bytes,
                )
                sources += found
            return self._ingestor(col, emb, chunker, progress).sync(sources, total=len(sources))

    def ingest_documents(
        self,
        docs: Iterable[Document],
        *,
        collection: str | None = None,
        progress: IngestProgress | None = None,
        embedder: str | None = None,
        wait: float = 0.0,
    ) -> IngestReport:
        """Sync documents given directly (uploads, BEIR corpora); each source is its own unit."""
        name = collection or self.settings.default_collection
        col, emb = self._writable(name, embedder)
        chunker = self.chunker_for(emb)
        docs = list(docs)
        with col.write_lock(wait):
            return self._ingestor(col, emb, chunker, progress).sync(
                document_sources(docs, chunker.fingerprint), total=len(docs)
            )

    def _ingestor(self, col, emb, chunker, progress, ray=None) -> Ingestor:
        kwargs = {
            "commit_every_chunks": self.settings.commit_every_chunks,
            "embed_batch_chunks": max(self.settings.embed_batch_size * 8, 512),
            "progress": progress,
        }
        if ray is not None:
            from ingest.ray_ingest import RayIngestor

            return RayIngestor(col, emb, chunker, settings=self.settings, options=ray, **kwargs)
        return Ingestor(col, emb, chunker, **kwargs)

    # -- documents -------------------------------------------------------------------------

    def list_documents(self, collection: str | None = None) -> list[dict[str, Any]]:
        return self.collection(collection).documents()

    def delete_document(
        self, collection: str | None, id_or_path: str, wait: float = 0.0
    ) -> list[str]:
        """Delete documents by id, source, or origin file; returns the ids deleted."""
        col = self.collection(collection)
        with col.write_lock(wait):
            ids = col.find_documents(id_or_path)
            if not ids:
                raise DocumentNotFound(
                    f"no document {id_or_path!r} in collection {col.name!r}: "
                    "list them with `kb documents list`"
                )
            col.commit(delete_doc_ids=ids)
        return ids

    def reindex(self, collection: str | None, index_kind: str, wait: float = 0.0) -> dict:
        """Rebuild a collection's dense index from its stored vectors as `index_kind` ("auto",
        "flat", "ivf", "ivf:nlist=1024,nprobe=32", "hnsw32", ...), kept as the collection's kind
        from then on; readers keep the old index until the new generation is committed."""
        col = self.collection(collection)
        started = time.perf_counter()
        with col.write_lock(wait):
            col.commit(index_kind=index_kind)
        dense = col.snapshot().dense
        return {
            "collection": col.name,
            "index": dense.kind,
            "search_params": dense.search_params,
            "index_kind": col.index_kind,
            "vectors": dense.ntotal,
            "memory_bytes": dense.memory_bytes(),
            "seconds": round(time.perf_counter() - started, 2),
        }

    # -- search ----------------------------------------------------------------------------

    def retrieval_options(self, method: str | None = None, **overrides) -> RetrievalOptions:
        s = self.settings
        opts = RetrievalOptions(
            method=method or s.retrieval_method,
            fusion=s.fusion,
            rrf_k=s.rrf_k,
            dense_weight=s.dense_weight,
            candidates=s.candidates,
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(opts, key, value)
        return opts

    def warm(self, collection: str) -> None:
        """Load a collection's indexes and its query encoder and run one search through them,
        so that its first real search pays for no lazy loading (the service's warm-up)."""
        snapshot = self.collection(collection).snapshot()
        if runs_locally(snapshot.embedder):
            self.search(WARM_QUERY, collection=collection, k=1)
            # and the batched path, which answers' extracts and support checks embed with
            self.embedder_for(snapshot.embedder).embed([WARM_QUERY, WARM_QUERY + " " + WARM_QUERY])
        else:  # a search would call the remote embedding API; building its client is enough
            self.embedder_for(snapshot.embedder)

    def search_limited(self, collection: str | None = None) -> bool:
        """Whether searches of the collection share the per-core limiter (KB_SEARCH_CONCURRENCY).
        Answers from memory, without a lock or I/O, so an event loop may ask: a collection
        not opened yet counts as limited (local embedders are the default)."""
        col = self._collections.get(collection or self.settings.default_collection)
        return col is None or self.retriever.limited(col)

    def search(
        self,
        query: str,
        *,
        collection: str | None = None,
        k: int = 10,
        method: str | None = None,
        source_glob: str | None = None,
        **overrides,
    ) -> list[Passage]:
        if not 1 <= k <= 1000:
            raise InvalidInput(f"k={k} is out of range: ask for between 1 and 1000 results")
        try:
            col = self.collection(collection)
        except CollectionNotFound:
            raise
        return self.retriever.search(
            col, query, k, self.retrieval_options(method, **overrides), source_glob
        )

"""A collection: SQLite rows (documents, chunks, vectors) plus a FAISS and a BM25 index.

Commit protocol: a writer builds the new FAISS and BM25 files under `gen/<N+1>/`, fsyncs
them, then makes them current in the same SQLite transaction that writes the chunk rows.
Readers open whatever generation SQLite names, so a crash leaves at worst an unreferenced
generation folder, which the next writer removes. SQLite also keeps every vector, so the
index files are derived data: if they are missing or damaged they are rebuilt from the rows.

A document has two names: `source`, the absolute path on disk (`path#record` for a record of
a table file), which keys sync and the document id, and `display`, what every reader shows
(search results, citations, listings): the path relative to the folder it was ingested from,
an upload by its file name. Clients never learn the server's folders.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kb.errors import (
    CollectionBusy,
    CollectionNotFound,
    EmbeddingMismatch,
    InvalidInput,
)
from kb.store.bm25 import BM25Index, OlderFormat, chunk_terms
from kb.store.index import VectorIndex, build_index, check_kind, rebuild, resolve_kind
from kb.types import Chunk

log = logging.getLogger("kb.store")

#: what reading a generation's index files raises when they are missing, cut short or damaged
_DAMAGED = (FileNotFoundError, RuntimeError, ValueError, OSError, EOFError)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL UNIQUE,
    origin TEXT NOT NULL,
    origin_hash TEXT NOT NULL,
    title TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    chars INTEGER NOT NULL,
    chunk_count INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    display TEXT
);
CREATE INDEX IF NOT EXISTS documents_origin ON documents(origin);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    doc_id TEXT NOT NULL REFERENCES documents(id),
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    page INTEGER,
    heading TEXT,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
"""


def validate_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise InvalidInput(
            f"invalid collection name {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def doc_id_for(source: str) -> str:
    return hashlib.sha1(source.encode("utf-8", "surrogateescape")).hexdigest()[:16]


@dataclass
class NewDocument:
    """A document ready to commit: its chunks and their vectors."""

    source: str
    origin: str
    origin_hash: str
    title: str | None
    metadata: dict[str, Any]
    chars: int
    chunks: list[Chunk]
    vectors: np.ndarray
    display: str = ""  # the source as shown to readers (default: `source`)


@dataclass
class ChunkRecord:
    chunk_id: int
    doc_id: str
    source: str  # the document's display source
    ordinal: int
    text: str
    start: int
    end: int
    page: int | None
    heading: str | None
    title: str | None


@dataclass
class Snapshot:
    """The indexes of one committed generation, as a reader holds them."""

    generation: int
    embedder: str
    dense: VectorIndex
    bm25: BM25Index
    loaded_at: float = field(default_factory=time.time)


class WriteLock:
    """An exclusive, non-blocking advisory lock on a collection (released when the process dies)."""

    def __init__(self, path: Path, name: str, wait: float = 0.0):
        self.path, self.name, self.wait = path, name, wait
        self._fd: int | None = None

    def __enter__(self) -> WriteLock:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip()
                    os.close(self._fd)
                    self._fd = None
                    raise CollectionBusy(
                        f"collection {self.name!r} is being written by another process "
                        f"(pid {holder or '?'}); wait for that ingest to finish and retry"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class Collection:
    """One named knowledge base on disk. Safe for many reader threads and one writer process."""

    def __init__(
        self,
        root: Path,
        name: str,
        *,
        index_kind: str = "auto",
        exact_max: int = 25_000,
        mmap_bytes: int = 1 << 30,
    ):
        self.name = validate_name(name)
        self.root = root
        self.default_index_kind = index_kind
        self.exact_max = exact_max
        self.mmap_bytes = mmap_bytes
        self._local = threading.local()
        self._snapshot: Snapshot | None = None
        self._bm25_written: tuple[int, BM25Index] | None = None  # (generation, index) last saved
        self._snapshot_lock = threading.Lock()
        self._schema_checked = False

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def create(cls, root: Path, name: str, *, embedder: str, dimension: int, **kw) -> Collection:
        validate_name(name)
        root.mkdir(parents=True, exist_ok=True)
        store = root / "store.sqlite"
        if not store.exists():
            # built aside and linked into place: a crash never leaves a store without its tables
            # (which every later open would trip over), and a racing creator keeps the first
            _remove_dead_creations(root)
            tmp = root / f".store-{os.getpid()}-{threading.get_ident()}.sqlite"
            db = sqlite3.connect(tmp, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
                now = str(time.time())
                meta = {"embedder": embedder, "dimension": str(dimension), "generation": "0"}
                meta |= {"next_chunk_id": "1", "created_at": now}
                db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
            finally:
                db.close()
            try:
                os.link(tmp, store)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
            _fsync_dir(root)
        return cls(root, name, **kw)

    @classmethod
    def open(cls, root: Path, name: str, **kw) -> Collection:
        validate_name(name)
        if not (root / "store.sqlite").exists():
            raise CollectionNotFound(
                f"no collection {name!r} in {root.parent}: run `kb ingest DIR --collection {name}` "
                "first, or list collections with `kb collections`"
            )
        return cls(root, name, **kw)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.root / "store.sqlite", timeout=60, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=60000")
            db.execute(f"PRAGMA mmap_size={int(self.mmap_bytes)}")
            self._local.db = db
            if not self._schema_checked:
                _add_display_sources(db, self.root.parent.parent / "uploads" / self.name)
                self._schema_checked = True
        return db

    def _tx(self):
        return _Transaction(self._db())

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- metadata --------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        return dict(self._db().execute("SELECT key, value FROM meta").fetchall())

    @property
    def embedder(self) -> str:
        return self.meta()["embedder"]

    @property
    def index_kind(self) -> str:
        """The collection's own index kind (set by `reindex`), else the settings' default."""
        row = self._db().execute("SELECT value FROM meta WHERE key='index_kind'").fetchone()
        return row[0] if row else self.default_index_kind

    @property
    def dimension(self) -> int:
        return int(self.meta()["dimension"])

    @property
    def generation(self) -> int:
        row = self._db().execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0])

    def check_embedder(self, embedder: str, dimension: int) -> None:
        meta = self.meta()
        if meta["embedder"] != embedder or int(meta["dimension"]) != dimension:
            raise EmbeddingMismatch(
                f"collection {self.name!r} was built with embedder {meta['embedder']} "
                f"({meta['dimension']} dims), not {embedder} ({dimension} dims); mixing vector "
                "spaces would break search. Use the collection's embedder (KB_EMBEDDER), ingest "
                "into a new collection, or re-index it with `kb finetune embeddings`"
            )

    def info(self) -> dict[str, Any]:
        db = self._db()
        meta = self.meta()
        docs = db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
        chunks = db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        snapshot = self._snapshot
        return {
            "name": self.name,
            "embedder": meta["embedder"],
            "dimension": int(meta["dimension"]),
            "generation": int(meta["generation"]),
            "documents": docs,
            "chunks": chunks,
            "index": snapshot.dense.kind if snapshot else None,
            "created_at": float(meta.get("created_at", 0)),
            "updated_at": float(meta.get("updated_at", meta.get("created_at", 0))),
        }

    # -- reading ---------------------------------------------------------------------------

    def documents(self) -> list[dict[str, Any]]:
        rows = self._db().execute(
            "SELECT id, COALESCE(display, source), source, origin, title, chars, chunk_count, "
            "created_at, updated_at, metadata FROM documents ORDER BY 2"
        )
        return [
            {
                "id": r[0],
                "source": r[1],
                "origin": _display_origin(r[1], r[2], r[3]),
                "title": r[4],
                "chars": r[5],
                "chunks": r[6],
                "created_at": r[7],
                "updated_at": r[8],
                "metadata": json.loads(r[9]),
            }
            for r in rows
        ]

    def origins(self) -> dict[str, str]:
        """origin -> content hash of what is stored for it."""
        return dict(self._db().execute("SELECT DISTINCT origin, origin_hash FROM documents"))

    def doc_ids_of_origin(self, origin: str) -> list[str]:
        rows = self._db().execute("SELECT id FROM documents WHERE origin=?", (origin,))
        return [r[0] for r in rows]

    def find_documents(self, id_or_path: str) -> list[str]:
        """Document ids matching an id, a source (as displayed or on disk), or an origin file
        (absolute or as given)."""
        db = self._db()
        candidates = {id_or_path}
        if not id_or_path.startswith(("upload:", "record:")):
            candidates.add(str(Path(id_or_path).expanduser().resolve()))
        ids: list[str] = []
        for c in candidates:
            ids += [
                r[0]
                for r in db.execute(
                    "SELECT id FROM documents WHERE id=? OR source=? OR origin=? OR display=?",
                    (c, c, c, c),
                )
            ]
        return sorted(set(ids))

    def chunks(self, ids: Iterable[int]) -> dict[int, ChunkRecord]:
        ids = [int(i) for i in ids]
        out: dict[int, ChunkRecord] = {}
        db = self._db()
        for lo in range(0, len(ids), 500):
            part = ids[lo : lo + 500]
            q = (
                "SELECT c.id, c.doc_id, COALESCE(d.display, d.source), c.ordinal, c.text, "
                "c.start, c.end, c.page, c.heading, d.title FROM chunks c "
                f"JOIN documents d ON d.id = c.doc_id WHERE c.id IN ({','.join('?' * len(part))})"
            )
            for r in db.execute(q, part):
                out[r[0]] = ChunkRecord(*r)
        return out

    def iter_chunks(self, batch: int = 1000) -> Iterator[ChunkRecord]:
        last = 0
        db = self._db()
        while True:
            rows = db.execute(
                "SELECT c.id, c.doc_id, COALESCE(d.display, d.source), c.ordinal, c.text, "
                "c.start, c.end, c.page, c.heading, d.title FROM chunks c "
                "JOIN documents d ON d.id = c.doc_id WHERE c.id > ? ORDER BY c.id LIMIT ?",
                (last, batch),
            ).fetchall()
            if not rows:
                return
            for r in rows:
                yield ChunkRecord(*r)
            last = rows[-1][0]

    def chunk_ids_for_sources(self, pattern: str) -> np.ndarray:
        """Ids of chunks whose displayed source matches a glob (`*` and `?`, as SQLite GLOB)."""
        rows = self._db().execute(
            "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.doc_id "
            "WHERE COALESCE(d.display, d.source) GLOB ?",
            (pattern,),
        )
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def vectors(self, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the stored chunks, all of them or those asked for."""
        db = self._db()
        dim = self.dimension
        if ids is None:
            rows = db.execute("SELECT id, vector FROM chunks ORDER BY id").fetchall()
        else:
            rows = []
            id_list = [int(i) for i in ids]
            for lo in range(0, len(id_list), 500):
                part = id_list[lo : lo + 500]
                rows += db.execute(
                    f"SELECT id, vector FROM chunks WHERE id IN ({','.join('?' * len(part))})", part
                ).fetchall()
        out_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(-1, dim)
        return out_ids, vecs

    @property
    def loaded_snapshot(self) -> Snapshot | None:
        """The snapshot last loaded, if any, without checking for a newer generation (no I/O)."""
        return self._snapshot

    def snapshot(self) -> Snapshot:
        """The current generation's indexes, reloaded when a writer has committed a newer one."""
        gen = self.generation
        snap = self._snapshot
        if snap is not None and snap.generation == gen:
            return snap
        with self._snapshot_lock:
            snap = self._snapshot
            if snap is not None and snap.generation == self.generation:
                return snap
            self._snapshot = self._load_snapshot()
            return self._snapshot

    def _load_snapshot(self) -> Snapshot:
        for _ in range(5):
            meta = self.meta()
            gen = int(meta["generation"])
            folder = self.root / "gen" / str(gen)
            try:
                if gen == 0:
                    dense = build_index(int(meta["dimension"]), 0, "flat")
                    bm25 = BM25Index([])
                else:
                    dense = VectorIndex.load(folder / "dense.faiss")
                    bm25 = self._bm25_for_snapshot(gen, folder / "bm25")
                return Snapshot(gen, meta["embedder"], dense, bm25)
            except _DAMAGED:
                if self.generation != gen:
                    continue  # a writer moved on while we read; read the new one
                return self._rebuilt_snapshot(gen, meta)
        raise RuntimeError(f"collection {self.name!r} kept changing while being opened")

    def _bm25_for_snapshot(self, gen: int, folder: Path) -> BM25Index:
        """Generation `gen`'s BM25: the index this process saved for it (not a second copy), its
        files, or for a generation of an older kb's format (a bm25s index) one built from the
        rows and saved beside it, so that only the first reader pays for it."""
        written = self._bm25_written
        if written is not None and written[0] == gen:
            return written[1]
        try:
            return BM25Index.load(folder)
        except OlderFormat:
            bm25 = self._bm25_from_rows()
            if self.generation != gen:
                raise RuntimeError("the rows moved on while BM25 was rebuilt") from None
            try:
                bm25.add_to(folder)
            except OSError as exc:  # a read-only data folder: every reader rebuilds it
                log.warning("could not save BM25 for %s in the current format: %s", self.name, exc)
            return bm25

    def _rebuilt_snapshot(self, gen: int, meta: dict[str, str]) -> Snapshot:
        """Index files of the current generation are missing or damaged: derive them from SQLite."""
        ids, vecs = self.vectors()
        dense = rebuild(
            int(meta["dimension"]), ids, vecs, kind=self.index_kind, exact_max=self.exact_max
        )
        bm25 = self._bm25_from_rows()
        return Snapshot(gen, meta["embedder"], dense, bm25)

    def _bm25_from_rows(self) -> BM25Index:
        """BM25 over every stored chunk, tokenised again (index files missing, damaged or of an
        older kb's format)."""
        ids: list[int] = []
        texts: list[str] = []
        titles: list[str | None] = []
        for cid, text, title in self._db().execute(
            "SELECT c.id, c.text, d.title FROM chunks c JOIN documents d ON d.id=c.doc_id ORDER BY c.id"
        ):
            ids.append(cid)
            texts.append(text)
            titles.append(title)
        return BM25Index.build(np.asarray(ids, dtype=np.int64), texts, titles)

    def _bm25_of(self, gen: int) -> BM25Index:
        """Generation `gen`'s BM25, for the next commit to extend: the one this writer saved
        last, the loaded snapshot's, the files, or (failing those) rebuilt from the rows."""
        written = self._bm25_written
        if written is not None and written[0] == gen:
            return written[1]
        snap = self._snapshot
        if snap is not None and snap.generation == gen:
            return snap.bm25
        if gen == 0:
            return BM25Index([])
        try:
            return BM25Index.load(self.root / "gen" / str(gen) / "bm25")
        except _DAMAGED:
            return self._bm25_from_rows()

    # -- writing ---------------------------------------------------------------------------

    def write_lock(self, wait: float = 0.0) -> WriteLock:
        return WriteLock(self.root / "write.lock", self.name, wait)

    def commit(
        self,
        *,
        add: list[NewDocument] = (),
        delete_doc_ids: Iterable[str] = (),
        embedder: str | None = None,
        replace_all_vectors: tuple[np.ndarray, np.ndarray] | None = None,
        index_kind: str | None = None,
        meta: dict[str, str] | None = None,
    ) -> int:
        """Apply deletions and additions as one new generation; returns its number.

        The caller holds `write_lock()`. Documents in `add` whose source exists already
        replace it. `replace_all_vectors` (ids, vectors) with `embedder` re-indexes the whole
        collection under a new embedding model in the same atomic step. `index_kind` ("auto",
        "flat", "ivf:nlist=1024", ...) rebuilds the dense index as that kind and keeps it as the
        collection's own kind from then on. `meta` keys are stored with the rows (the
        ingest's boilerplate counts).
        """
        rewrite_vectors = replace_all_vectors is not None
        if index_kind is not None:
            check_kind(index_kind)  # refuses a malformed kind before any work
            if replace_all_vectors is None:
                replace_all_vectors = self.vectors()
                embedder = self.embedder
        db = self._db()
        current = self.meta()  # not `meta`: that names the keys this commit stores
        gen = int(current["generation"])
        new_gen = gen + 1
        dim = (
            int(current["dimension"])
            if replace_all_vectors is None
            else replace_all_vectors[1].shape[1]
        )
        self._remove_orphan_generations(keep=gen)

        delete = set(delete_doc_ids)
        for doc in add:
            delete.add(doc_id_for(doc.source))
        removed_chunks = self._chunk_ids_of(delete)

        next_id = int(current["next_chunk_id"])
        new_rows = []
        new_ids_all: list[int] = []
        new_vecs: list[np.ndarray] = []
        for doc in add:
            if len(doc.chunks) != len(doc.vectors):
                raise ValueError("each chunk needs exactly one vector")
            ids = list(range(next_id, next_id + len(doc.chunks)))
            next_id += len(doc.chunks)
            new_rows.append((doc, ids))
            new_ids_all += ids
            if len(ids):
                new_vecs.append(np.ascontiguousarray(doc.vectors, dtype=np.float32))
        add_ids = np.asarray(new_ids_all, dtype=np.int64)
        add_vecs = np.concatenate(new_vecs) if new_vecs else np.zeros((0, dim), np.float32)

        # 1. the new generation's files
        folder = self.root / "gen" / str(new_gen)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        if replace_all_vectors is not None:
            dense = rebuild(
                dim,
                replace_all_vectors[0],
                replace_all_vectors[1],
                kind=index_kind or self.index_kind,
                exact_max=self.exact_max,
            )
        else:
            dense = self._next_dense(gen, current, removed_chunks, add_ids, add_vecs)
        dense.save(folder / "dense.faiss")
        terms = [
            chunk.terms if chunk.terms is not None else chunk_terms(chunk.text, doc.title)
            for doc, _ in new_rows
            for chunk in doc.chunks
        ]
        bm25 = self._bm25_of(gen).updated(f"g{new_gen}", removed_chunks, add_ids, terms)
        bm25.save(folder / "bm25")
        _fsync_dir(folder)
        _fsync_dir(folder.parent)

        # 2. rows and the generation switch, in one transaction
        now = time.time()
        with self._tx():
            for start in range(0, len(delete), 500):
                part = sorted(delete)[start : start + 500]
                marks = ",".join("?" * len(part))
                db.execute(f"DELETE FROM chunks WHERE doc_id IN ({marks})", part)
                db.execute(f"DELETE FROM documents WHERE id IN ({marks})", part)
            for doc, ids in new_rows:
                did = doc_id_for(doc.source)
                db.execute(
                    "INSERT INTO documents (id, source, origin, origin_hash, title, metadata, "
                    "chars, chunk_count, created_at, updated_at, display) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        did,
                        doc.source,
                        doc.origin,
                        doc.origin_hash,
                        doc.title,
                        json.dumps(doc.metadata, default=str),
                        doc.chars,
                        len(doc.chunks),
                        now,
                        now,
                        doc.display or doc.source,
                    ),
                )
                db.executemany(
                    "INSERT INTO chunks VALUES (?,?,?,?,?,?,?,?,?)",
                    [
                        (
                            cid,
                            did,
                            c.ordinal,
                            c.text,
                            c.start,
                            c.end,
                            c.page,
                            c.heading,
                            np.ascontiguousarray(v, dtype=np.float32).tobytes(),
                        )
                        for cid, c, v in zip(ids, doc.chunks, doc.vectors, strict=True)
                    ],
                )
            if rewrite_vectors:
                db.executemany(
                    "UPDATE chunks SET vector=? WHERE id=?",
                    [
                        (np.ascontiguousarray(v, dtype=np.float32).tobytes(), int(i))
                        for i, v in zip(*replace_all_vectors, strict=True)
                    ],
                )
                db.execute("UPDATE meta SET value=? WHERE key='embedder'", (embedder,))
                db.execute("UPDATE meta SET value=? WHERE key='dimension'", (str(dim),))
            if index_kind is not None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('index_kind', ?)", (index_kind,))
            db.execute("UPDATE meta SET value=? WHERE key='generation'", (str(new_gen),))
            db.execute("UPDATE meta SET value=? WHERE key='next_chunk_id'", (str(next_id),))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('updated_at', ?)", (str(now),))
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", (meta or {}).items())
        self._bm25_written = (new_gen, bm25)
        self._remove_orphan_generations(keep=new_gen, also_keep=gen)
        return new_gen

    def _chunk_ids_of(self, doc_ids: set[str]) -> np.ndarray:
        out: list[int] = []
        ids = sorted(doc_ids)
        for lo in range(0, len(ids), 500):
            part = ids[lo : lo + 500]
            out += [
                r[0]
                for r in self._db().execute(
                    f"SELECT id FROM chunks WHERE doc_id IN ({','.join('?' * len(part))})", part
                )
            ]
        return np.asarray(out, dtype=np.int64)

    def _next_dense(
        self, gen, meta, removed: np.ndarray, add_ids: np.ndarray, add_vecs: np.ndarray
    ) -> VectorIndex:
        """The writer's own copy of the index with this commit applied (readers keep theirs)."""
        dim = int(meta["dimension"])
        total = (
            self._db().execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
            - len(removed)
            + len(add_ids)
        )
        current = None
        if gen > 0:
            try:
                current = VectorIndex.load(self.root / "gen" / str(gen) / "dense.faiss")
            except (FileNotFoundError, RuntimeError, OSError):
                current = None
        wanted = resolve_kind(self.index_kind, total, self.exact_max).family
        if current is not None and _kind_family(current.kind) == wanted:
            try:
                if len(removed):
                    current.remove(removed)
                if len(add_ids):
                    current.add(add_ids, add_vecs)
                return current
            except Exception:  # an index type that cannot remove: rebuild below
                pass
        ids, vecs = self.vectors()
        keep = ~np.isin(ids, removed)
        ids = np.concatenate([ids[keep], add_ids])
        vecs = np.concatenate([vecs[keep], add_vecs]) if len(add_ids) else vecs[keep]
        return rebuild(dim, ids, vecs, kind=self.index_kind, exact_max=self.exact_max)

    def _remove_orphan_generations(self, keep: int, also_keep: int | None = None) -> None:
        gens = self.root / "gen"
        if not gens.exists():
            return
        for child in gens.iterdir():
            if child.name not in {str(keep), str(also_keep)}:
                shutil.rmtree(child, ignore_errors=True)

    def drop(self) -> None:
        self.close()
        shutil.rmtree(self.root)


def _display_origin(display: str, source: str, origin: str) -> str:
    """The origin as shown: the display source without the record suffix (`#row=3`) that the
    source adds to its origin."""
    if source.startswith(origin) and display.endswith(source[len(origin) :]):
        return display[: len(display) - (len(source) - len(origin))]
    return display


def derived_displays(rows: Iterable[tuple[str, str, str]], uploads: Path) -> dict[str, str]:
    """Display sources for (id, source, origin) rows stored without one: an upload by its file
    name, another file relative to the deepest folder that holds all of them (the folder that
    was ingested, when it was one), a document given directly by its source as it is."""
    rows = list(rows)
    prefix = os.path.abspath(uploads) + os.sep
    files = {o for _, _, o in rows if os.path.isabs(o) and not o.startswith(prefix)}
    base = os.path.commonpath([os.path.dirname(o) for o in files]) if files else ""
    shown = {}
    for doc_id, source, origin in rows:
        if not os.path.isabs(origin):
            shown[doc_id] = source
            continue
        name = origin[len(prefix) :] if origin.startswith(prefix) else os.path.relpath(origin, base)
        shown[doc_id] = name + source[len(origin) :] if source.startswith(origin) else name
    return shown


def _add_display_sources(db: sqlite3.Connection, uploads: Path) -> None:
    """Give a store written before display sources existed its column, filled in once."""
    if any(r[1] == "display" for r in db.execute("PRAGMA table_info(documents)")):
        return
    with _Transaction(db):
        if any(r[1] == "display" for r in db.execute("PRAGMA table_info(documents)")):
            return  # another connection added it meanwhile
        db.execute("ALTER TABLE documents ADD COLUMN display TEXT")
        rows = db.execute("SELECT id, source, origin FROM documents").fetchall()
        shown = derived_displays(rows, uploads)
        db.executemany(
            "UPDATE documents SET display=? WHERE id=?", [(d, i) for i, d in shown.items()]
        )
    log.info("added display sources to %d documents of %s", len(shown), uploads.name)


def _kind_family(kind: str) -> str:
    return re.match(r"[a-z]+", kind).group(0) if kind else ""


def _remove_dead_creations(root: Path) -> None:
    """Half-made stores (`.store-PID-...`) left by creators that were killed."""
    for path in root.glob(".store-*"):
        try:
            os.kill(int(path.name.split("-")[1]), 0)
        except (ProcessLookupError, ValueError, IndexError):
            path.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, another user's


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, *_) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")

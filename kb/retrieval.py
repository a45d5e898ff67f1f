"""Retrieval over one collection: dense (FAISS), BM25, and their fusion (RRF or weighted)."""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from kb.embedders import Embedder, runs_locally
from kb.errors import InvalidInput
from kb.store.collection import Collection, Snapshot
from kb.types import Passage

METHODS = ("dense", "bm25", "hybrid")
FUSIONS = ("rrf", "weighted")
# a filter that leaves at most this many chunks is searched exactly over those chunks' vectors
EXACT_FILTER_MAX = 20_000


@dataclass
class RetrievalOptions:
    """How one search runs; its defaults are the settings' (`KnowledgeBase.retrieval_options`)."""

    method: str
    fusion: str
    rrf_k: int
    dense_weight: float
    candidates: int

    def check(self) -> None:
        if self.method not in METHODS:
            raise InvalidInput(
                f"unknown retrieval method {self.method!r}: use one of {', '.join(METHODS)}"
            )
        if self.fusion not in FUSIONS:
            raise InvalidInput(f"unknown fusion {self.fusion!r}: use one of {', '.join(FUSIONS)}")
        if not 0.0 <= self.dense_weight <= 1.0:
            raise InvalidInput(f"dense_weight {self.dense_weight} must be between 0 and 1")


class FairLimiter:
    """At most `slots` holders at once; the others wait and are let in first come, first served.

    A freed slot passes straight to the oldest waiter, so a newcomer cannot overtake it (a
    threading.Semaphore lets it). `slots=0` admits everyone."""

    def __init__(self, slots: int):
        self.slots = slots
        self._free = slots
        self._lock = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()

    def __enter__(self) -> FairLimiter:
        if not self.slots:
            return self
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return self
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        turn.acquire()  # released by the holder that hands us its slot
        return self

    def __exit__(self, *exc) -> None:
        if not self.slots:
            return
        with self._lock:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._free += 1


class Retriever:
    """Runs one query against a collection snapshot; every passage carries its dense cosine.

    Concurrent searches pass a FairLimiter of `concurrency` slots (default: the core count),
    unless the collection's embedder is a remote API."""

    def __init__(
        self,
        embedder_for: Callable[[str], Embedder],
        reranker=None,
        concurrency: int | None = None,
    ):
        self._embedder_for = embedder_for
        self.reranker = reranker
        self.limiter = FairLimiter((os.cpu_count() or 1) if concurrency is None else concurrency)

    def search(
        self,
        collection: Collection,
        query: str,
        k: int,
        options: RetrievalOptions,
        source_glob: str | None = None,
    ) -> list[Passage]:
        options.check()
        snap = collection.snapshot()
        embedder = self._embedder_for(snap.embedder)
        with self.limiter if runs_locally(snap.embedder) else nullcontext():
            return self._search(collection, snap, embedder, query, k, options, source_glob)

    def limited(self, collection: Collection) -> bool:
        """Whether a search of the collection waits for a limiter slot: there is a limit, and
        its queries are embedded here rather than by a remote API. Loads nothing, so an event
        loop may ask."""
        snap = collection.loaded_snapshot  # no I/O; a search loads it if it is not loaded yet
        return bool(self.limiter.slots) and (snap is None or runs_locally(snap.embedder))

    def _search(
        self,
        collection: Collection,
        snap: Snapshot,
        embedder: Embedder,
        query: str,
        k: int,
        options: RetrievalOptions,
        source_glob: str | None,
    ) -> list[Passage]:
        if not query or not query.strip():
            raise InvalidInput("the query is empty: send some text to search for")
        allowed = collection.chunk_ids_for_sources(source_glob) if source_glob else None
        if allowed is not None and not len(allowed):
            return []
        pool = max(k, options.candidates)
        qvec = None
        dense: list[tuple[int, float]] = []
        lexical: list[tuple[int, float]] = []
        if options.method in ("dense", "hybrid"):
            qvec = embedder.embed_query(query)
            dense = self._dense(collection, snap, qvec, pool, allowed)
        if options.method in ("bm25", "hybrid"):
            lexical = snap.bm25.search(query, pool, allowed)

        if options.method == "dense":
            ranked = dense
        elif options.method == "bm25":
            ranked = lexical
        elif options.fusion == "rrf":
            ranked = rrf([dense, lexical], options.rrf_k)
        else:
            # BM25 lists only passages that hold a query term: a list shorter than the pool is
            # all of them, and every other passage scores 0 there
            floors = [None, 0.0 if len(lexical) < pool else None]
            weights = [options.dense_weight, 1 - options.dense_weight]
            ranked = weighted([dense, lexical], weights, floors)

        limit = pool if self.reranker else k
        ranked = ranked[:limit]
        dense_scores = dict(dense)
        bm25_scores = dict(lexical)
        if qvec is None:
            qvec = embedder.embed_query(query)
        missing = [cid for cid, _ in ranked if cid not in dense_scores]
        if missing:  # lexical-only hits still get a cosine, used for the relevance threshold
            ids, vecs = collection.vectors(np.asarray(missing, dtype=np.int64))
            dense_scores.update(zip(ids.tolist(), (vecs @ qvec).tolist(), strict=True))

        rows = collection.chunks([cid for cid, _ in ranked])
        passages = []
        for cid, score in ranked:
            row = rows.get(cid)
            if row is None:  # deleted by a commit after our snapshot was taken
                continue
            scores = {"dense": float(dense_scores.get(cid, 0.0))}
            if cid in bm25_scores:
                scores["bm25"] = float(bm25_scores[cid])
            passages.append(
                Passage(
                    chunk_id=cid,
                    doc_id=row.doc_id,
                    source=row.source,
                    text=row.text,
                    score=float(score),
                    start=row.start,
                    end=row.end,
                    ordinal=row.ordinal,
                    page=row.page,
                    heading=row.heading,
                    title=row.title,
                    scores=scores,
                )
            )
        if self.reranker and passages:
            passages = self.reranker.rerank(query, passages)
        return passages[:k]

    def _dense(
        self,
        collection: Collection,
        snap: Snapshot,
        qvec: np.ndarray,
        k: int,
        allowed: np.ndarray | None,
    ) -> list[tuple[int, float]]:
        if allowed is not None and len(allowed) <= EXACT_FILTER_MAX:
            ids, vecs = collection.vectors(allowed)
            if not len(ids):
                return []
            scores = vecs @ qvec
            top = np.argsort(-scores, kind="stable")[:k]
            return [(int(ids[i]), float(scores[i])) for i in top]
        want = k if allowed is None else min(snap.dense.ntotal, k * 20)
        if snap.dense.ntotal == 0:
            return []
        scores, ids = snap.dense.search(
            qvec[None, :].astype(np.float32), min(want, snap.dense.ntotal)
        )
        # tolist() first: converting numpy scalars one by one costs ~10x more, under the GIL
        hits = [(i, s) for s, i in zip(scores[0].tolist(), ids[0].tolist(), strict=True) if i >= 0]
        if allowed is not None:
            keep = set(allowed.tolist())
            hits = [h for h in hits if h[0] in keep]
        return hits[:k]


def rrf(rankings: list[list[tuple[int, float]]], k: int = 60) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: sum of 1 / (k + rank) over the lists an item appears in."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (item, _) in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda x: (-x[1], x[0]))


def weighted(
    rankings: list[list[tuple[int, float]]],
    weights: list[float],
    floors: list[float | None] | None = None,
) -> list[tuple[int, float]]:
    """Weighted sum of min-max normalised scores; an item missing from a list scores 0 there.

    A list's minimum is its lowest score, or its floor when given (the score of everything the
    list leaves out, when it leaves out only non-matches). A list whose scores are all equal
    (one hit) scores them 1: the best it has, not the worst."""
    fused: dict[int, float] = {}
    for i, (ranking, weight) in enumerate(zip(rankings, weights, strict=True)):
        if not ranking:
            continue
        values = np.array([s for _, s in ranking], dtype=np.float64)
        floor = floors[i] if floors else None
        lo = values.min() if floor is None else min(floor, values.min())
        hi = values.max()
        for item, score in ranking:
            norm = (score - lo) / (hi - lo) if hi > lo else 1.0
            fused[item] = fused.get(item, 0.0) + weight * norm
    return sorted(fused.items(), key=lambda x: (-x[1], x[0]))

"""The retrieval evaluation: run each query through `KnowledgeBase.search` with each method and
score the rankings against relevance judgements (a BEIR split, or a question file's sources)."""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kb.errors import InvalidInput
from kb.eval.answers import percentile, source_matches
from kb.eval.beir import TitleMode, beir_documents, default_collection_name, load_beir
from kb.eval.metrics import DEFAULT_METRICS, mean_scores, per_query_scores, ranked
from kb.eval.records import EvalRecord, new_eval_id, utc_now
from kb.types import Passage

if TYPE_CHECKING:
    from ingest.pipeline import IngestProgress
    from kb.service import KnowledgeBase

METHODS: tuple[str, ...] = ("dense", "bm25", "hybrid")
Progress = Callable[[str, int, int], None]


@dataclass
class RetrievalEvalSpec:
    """Either `beir` (a BEIR folder, ingested into `collection`) or `questions` (a JSONL file
    of {"question", "sources"} against an existing `collection`)."""

    beir: str | None = None
    split: str = "test"
    questions: str | None = None
    collection: str | None = None
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    k: int = 100  # passages asked of search per query
    max_queries: int | None = None  # a seeded random sample of the queries
    title_mode: TitleMode = "prepend"
    seed: int = 0
    name: str | None = None
    # the folder a question file's gold paths are relative to (see kb.eval.answers.source_matches)
    source_root: str | None = None

    def validate(self) -> None:
        if (self.beir is None) == (self.questions is None):
            raise InvalidInput(
                "pass either a BEIR folder (--beir DIR) or a question file (--questions FILE)"
            )
        if self.questions is not None and not self.collection:
            raise InvalidInput(
                f"--questions {self.questions} needs --collection NAME: the collection to search"
            )
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise InvalidInput(
                f"unknown retrieval methods {unknown or self.methods!r}: use some of {', '.join(METHODS)}"
            )
        if self.k < 1:
            raise InvalidInput(f"k={self.k}: ask for at least 1 passage per query")
        if self.max_queries is not None and self.max_queries < 1:
            raise InvalidInput(
                f"--max-queries {self.max_queries}: use a positive number or leave it out"
            )


@dataclass
class _Judged:
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    collection: str
    doc_key: Callable[[Passage, str], str]  # (passage, query id) -> the id the qrels use
    info: dict[str, Any]


def run_retrieval_eval(
    kb: KnowledgeBase,
    spec: RetrievalEvalSpec,
    *,
    context: dict[str, Any] | None = None,
    progress: Progress | None = None,
    ingest_progress: IngestProgress | None = None,
) -> EvalRecord:
    """Ingest (BEIR) or load the judgements, search every query with every method and score
    nDCG@10, Recall@1/5/10/100, MRR@10 and MAP@100; returns an unsaved record (save it with
    `kb.eval.records.save_eval`). `progress(stage, done, total)` reports the searches."""
    spec.validate()
    started = time.perf_counter()
    if spec.beir:
        judged = _judged_from_beir(kb, spec, ingest_progress)
    else:
        judged = _judged_from_questions(spec)
    qids = sorted(q for q, rels in judged.qrels.items() if any(g > 0 for g in rels.values()))
    if spec.max_queries is not None and spec.max_queries < len(qids):
        qids = sorted(random.Random(spec.seed).sample(qids, spec.max_queries))
    qrels = {qid: judged.qrels[qid] for qid in qids}

    metrics: dict[str, dict[str, float | None]] = {}
    per_method: dict[str, dict[str, dict[str, float]]] = {}
    runs: dict[str, dict[str, dict[str, float]]] = {}
    for method in spec.methods:
        run: dict[str, dict[str, float]] = {}
        latencies = []
        for done, qid in enumerate(qids):
            if progress:
                progress(f"search {method}", done, len(qids))
            t0 = time.perf_counter()
            passages = kb.search(
                judged.queries[qid], collection=judged.collection, k=spec.k, method=method
            )
            latencies.append(time.perf_counter() - t0)
            run[qid] = passages_to_run(passages, lambda p, q=qid: judged.doc_key(p, q))
        if progress:
            progress(f"search {method}", len(qids), len(qids))
        per_method[method] = per_query_scores(run, qrels, DEFAULT_METRICS)
        runs[method] = run
        metrics[method] = {
            **mean_scores(per_method[method], DEFAULT_METRICS),
            "latency_mean_s": sum(latencies) / len(latencies) if latencies else None,
            "latency_p50_s": percentile(latencies, 50),
            "latency_p95_s": percentile(latencies, 95),
        }

    rows = [
        {
            "id": qid,
            "query": judged.queries[qid],
            "relevant": {doc: g for doc, g in qrels[qid].items() if g > 0},
            "methods": {
                method: {**per_method[method][qid], "top": ranked(runs[method][qid])[:10]}
                for method in spec.methods
            },
        }
        for qid in qids
    ]
    ran_context = {**_collection_context(kb, judged.collection), **judged.info, **(context or {})}
    return EvalRecord(
        eval_id=new_eval_id("retrieval"),
        kind="retrieval",
        created_at=utc_now(),
        seed=spec.seed,
        spec={**asdict(spec), "collection": judged.collection, "query_count": len(qids)},
        context=ran_context,
        metrics=metrics,
        rows=rows,
        duration_s=time.perf_counter() - started,
        name=spec.name,
    )


def passages_to_run(
    passages: Sequence[Passage], doc_key: Callable[[Passage], str]
) -> dict[str, float]:
    """Collapse passages to documents: each document keeps its best passage score, in the
    order documents first appear."""
    scores: dict[str, float] = {}
    for passage in passages:
        doc = doc_key(passage)
        if doc not in scores or passage.score > scores[doc]:
            scores[doc] = float(passage.score)
    return scores


def distinct_sources(passages: Sequence[Passage]) -> list[str]:
    """The passages' document sources in rank order, each once."""
    return list(dict.fromkeys(p.source for p in passages))


def gold_rank(sources: Sequence[str], gold: Sequence[str], root: str | None = None) -> int | None:
    """1-based rank of the first source that matches a gold path, None if none does."""
    for rank, source in enumerate(sources, 1):
        if any(source_matches(source, g, root) for g in gold):
            return rank
    return None


def load_retrieval_questions(
    path: str | Path | Sequence[str | Path],
) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """Queries and qrels from JSONL lines {"id"?, "question", "sources": [paths or doc ids]};
    questions marked unanswerable have nothing to find and are left out."""
    from kb.eval.answers import load_questions

    questions = [q for q in load_questions(path) if not q.unanswerable]
    without = [q.id for q in questions if not q.sources]
    if without:
        raise InvalidInput(
            f'question {without[0]!r} in {path} has no "sources": a retrieval evaluation needs '
            "the gold source paths or doc ids of every question"
        )
    queries = {q.id: q.question for q in questions}
    qrels = {q.id: dict.fromkeys(q.sources, 1) for q in questions}
    return queries, qrels


def _judged_from_beir(
    kb: KnowledgeBase, spec: RetrievalEvalSpec, progress: IngestProgress | None
) -> _Judged:
    dataset = load_beir(spec.beir, spec.split)
    collection = spec.collection or default_collection_name(spec.beir)
    # incremental by content hash: a second run over the same corpus embeds nothing
    report = kb.ingest_documents(
        beir_documents(dataset.corpus, spec.title_mode), collection=collection, progress=progress
    )
    return _Judged(
        queries=dataset.queries,
        qrels=dataset.qrels,
        collection=collection,
        doc_key=lambda passage, _qid: passage.source,
        info={
            "dataset": dataset.name,
            "split": spec.split,
            "corpus_size": len(dataset.corpus),
            "ingest": _plain(report),
        },
    )


def _judged_from_questions(spec: RetrievalEvalSpec) -> _Judged:
    queries, qrels = load_retrieval_questions(spec.questions)

    def doc_key(passage: Passage, qid: str) -> str:
        # a passage counts for the gold source it matches (by path suffix), else as itself
        for gold in qrels[qid]:
            if source_matches(passage.source, gold, spec.source_root):
                return gold
        return passage.source

    return _Judged(queries, qrels, spec.collection, doc_key, {"questions": str(spec.questions)})


def _collection_context(kb: KnowledgeBase, collection: str) -> dict[str, Any]:
    """The collection's name, embedder, generation and counts, and the retrieval settings."""
    info = _plain(kb.collection(collection).info())
    settings = getattr(kb, "settings", None)
    context: dict[str, Any] = {
        "collection": collection,
        "collection_info": info,
        "embedder": info.get("embedder") if isinstance(info, dict) else None,
        "collection_generation": info.get("generation") if isinstance(info, dict) else None,
    }
    if settings is not None:
        context["retrieval_settings"] = {
            key: getattr(settings, key, None)
            for key in (
                "fusion",
                "rrf_k",
                "dense_weight",
                "candidates",
                "reranker",
                "chunk_size",
                "chunk_overlap",
            )
        }
    return context


def _plain(value: Any) -> Any:
    """A JSON-safe copy of a report object (dataclass, pydantic model or dict)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    elif hasattr(value, "model_dump"):
        value = value.model_dump()
    return json.loads(json.dumps(value, default=str))

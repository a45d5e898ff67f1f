"""BM25 in segments: scores equal to bm25s's, deletions and merges, files shared by hard link."""

from __future__ import annotations

import os
import random

import bm25s
import numpy as np
import pytest

from kb.store.bm25 import BM25Index, _stemmer, chunk_terms, query_terms
from kb.store.collection import Collection, NewDocument
from kb.types import Chunk

QUERIES = [
    "What do the keepers of the lighthouse trim at dusk?",
    "RUNNING runners ran; the runner's run-ups (and re-runs) — naïve café déjà vu",
    "a an the of I x 7 42 3.14 e-mail e_mail",
    "refill refills refilling REFILLED refill",
    "Ärzte über Straße ΑΒΓ δέλτα 東京 tokyo",
    "",
    "   \t\n",
]


def _tokens(texts: list[str]) -> list[list[str]]:
    return bm25s.tokenize(
        texts, stopwords="en", stemmer=_stemmer(), show_progress=False, return_ids=False
    )


@pytest.mark.parametrize("query", QUERIES)
def test_terms_are_bm25s_tokens(query):
    assert query_terms(query) == _tokens([query])[0]


def _corpus(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(150)] + [
        "lighthouse",
        "keeper",
        "keepers",
        "wick",
        "dusk",
        "runs",
        "running",
    ]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(0, 30))) for _ in range(n)]


SEARCHES = ["lighthouse keeper w3", "running w7 w7 w100", "dusk", "w149 w0 wick keepers"]


def test_scores_equal_bm25s_lucene():
    texts = _corpus(400)
    ours = BM25Index.build(np.arange(400), texts)
    reference = bm25s.BM25()  # method "lucene", k1 1.5, b 0.75: what kb computes
    reference.index(_tokens(texts), show_progress=False)
    for query in SEARCHES:
        terms = query_terms(query)
        assert np.allclose(ours.scores(terms), reference.get_scores(terms), rtol=1e-5, atol=1e-6)


def test_top_k_by_score_then_row():
    words = ["alpha", "beta", "gamma", "delta"]
    # row i holds alpha once and beta i % 3 times: many rows tie on the same score
    texts = [" ".join(["alpha"] + ["beta"] * (i % 3) + [words[2 + i % 2]]) for i in range(30)]
    index = BM25Index.build([1000 + i for i in range(30)], texts)
    reference = bm25s.BM25()
    reference.index(_tokens(texts), show_progress=False)
    scores = reference.get_scores(["alpha", "beta", "beta"])
    expected = sorted(range(30), key=lambda r: (-scores[r], r))
    for k in (1, 4, 10, 11, 29, 30, 50):
        hits = index.search("alpha beta beta", k)
        assert [cid - 1000 for cid, _ in hits] == expected[:k], k
        assert [s for _, s in hits] == pytest.approx([float(scores[r]) for r in expected[:k]])
    allowed = [1000 + i for i in range(0, 30, 2)]
    assert [cid for cid, _ in index.search("alpha beta beta", 5, allowed)] == [
        1000 + r for r in expected if r % 2 == 0
    ][:5]
    assert index.search("zeta", 5) == [] and index.search("the of", 5) == []


def test_many_commits_with_deletions_rank_as_one_index():
    """Segments added commit by commit, chunks deleted along the way: the same scores, ranking,
    document frequencies and vocabulary as one index built from the live chunks."""
    texts = _corpus(600, seed=11)
    rng = random.Random(3)
    index, deleted = BM25Index([]), set()
    for step in range(12):
        lo, hi = step * 50, step * 50 + 50
        removed = rng.sample(sorted(set(range(lo)) - deleted), min(lo // 4, 12)) if lo else []
        deleted.update(removed)
        added = [chunk_terms(t, None) for t in texts[lo:hi]]
        index = index.updated(f"g{step}", np.array(removed), np.arange(lo, hi), added)
        assert index.segment_count <= 1 + (step + 1).bit_length()  # merged as a binary counter
    live = [i for i in range(600) if i not in deleted]
    whole = BM25Index.build(np.array(live), [texts[i] for i in live])
    assert index.ids.tolist() == live and index.size == len(live)
    assert index.segment_count > 1  # the comparison is between segments and one piece
    for query in SEARCHES:
        assert _same(index.search(query, 20), whole.search(query, 20))
    terms = sorted({t for i in range(600) for t in chunk_terms(texts[i], None)})
    assert index.document_frequencies(terms) == whole.document_frequencies(terms)
    assert not set(index.ids.tolist()) & deleted


def test_a_term_only_deleted_chunks_held_is_unknown():
    index = BM25Index.build([1, 2], ["the lighthouse keeper", "semolina and eggs"])
    assert index.respelled("semolena") == "semolina"
    index = index.updated("g1", np.array([2]), np.zeros(0, np.int64), [])
    assert index.document_frequencies(["semolina"]) == {"semolina": 0}
    assert index.respelled("semolena") is None
    assert index.search("semolina", 5) == []


def _same(hits: list[tuple[int, float]], expected: list[tuple[int, float]]) -> bool:
    return [c for c, _ in hits] == [c for c, _ in expected] and [s for _, s in hits] == (
        pytest.approx([s for _, s in expected])
    )


def _doc(name: str, texts: list[str], title: str | None = None) -> NewDocument:
    chunks = [Chunk(t, i, 0, len(t)) for i, t in enumerate(texts)]
    vectors = np.random.default_rng(len(name)).normal(size=(len(texts), 8)).astype(np.float32)
    return NewDocument(name, name, name, title, {}, 10, chunks, vectors)


def test_commits_add_segments_and_link_the_old_ones(tmp_path):
    """A commit writes only its own chunks' segment; the ones before are hard links to the
    previous generation's files. A fresh reader ranks as the writer does, and a generation in
    an older kb's format is rebuilt from the rows."""
    col = Collection.create(tmp_path / "c", "c", embedder="test", dimension=8)
    texts = _corpus(300, seed=5)
    with col.write_lock():
        col.commit(add=[_doc("a.txt", texts[:200], "Lighthouse")])
        col.commit(add=[_doc("b.txt", texts[200:260])])
    gen = col.generation
    first = col.root / "gen" / str(gen - 1) / "bm25" / f"g{gen - 1}" / "rows.npy"
    linked = col.root / "gen" / str(gen) / "bm25" / f"g{gen - 1}" / "rows.npy"
    assert os.path.samefile(first, linked)
    assert len(np.load(col.root / "gen" / str(gen) / "bm25" / f"g{gen}" / "ids.npy")) == 60

    with col.write_lock():  # b.txt replaced: its chunks deleted, a new segment for the new ones
        col.commit(add=[_doc("b.txt", texts[260:300])])
    reader = Collection.open(tmp_path / "c", "c")
    live_texts = [("Lighthouse\n" + t) for t in texts[:200]] + texts[260:300]
    whole = BM25Index.build(reader.snapshot().bm25.ids, live_texts)
    for query in [*SEARCHES, "lighthouse"]:
        assert _same(reader.snapshot().bm25.search(query, 10), whole.search(query, 10))

    folder = col.root / "gen" / str(col.generation) / "bm25"
    (folder / "segments.json").unlink()  # as an older kb left it: one bm25s index and its ids
    np.save(folder / "ids.npy", reader.snapshot().bm25.ids)
    stale = Collection.open(tmp_path / "c", "c")
    assert _same(stale.snapshot().bm25.search("lighthouse", 10), whole.search("lighthouse", 10))
    assert (folder / "segments.json").exists()  # saved beside the old files by the first reader
    upgraded = Collection.open(tmp_path / "c", "c")
    upgraded._bm25_from_rows = None  # the next reader loads the saved segments, builds nothing
    assert _same(upgraded.snapshot().bm25.search("lighthouse", 10), whole.search("lighthouse", 10))
    with stale.write_lock():
        stale.commit(add=[_doc("c.txt", ["a keeper trims the wick"])])
    assert Collection.open(tmp_path / "c", "c").snapshot().bm25.search("wick", 1)[0][1] > 0

"""The vector index layer on real FAISS: kinds, persistence, removal, recall and threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import pytest

from kb.errors import Conflict, InvalidInput, Unavailable
from kb.store.index import (
    VectorIndex,
    build_index,
    parse_kind,
    rebuild,
    recall_at_k,
    tune_nprobe,
)

ROOT = Path(__file__).resolve().parents[1]
DIM = 32
KINDS = ["flat", "ivf", "ivf:nlist=16,sq=sq8", "ivf:flat", "hnsw", "hnsw:sq=sq8"]


@pytest.fixture(autouse=True, scope="module")
def one_openmp_thread():
    # on a busy shared machine OpenMP's spinning workers make FAISS several times slower
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered(n: int, dim: int = DIM, centres: int = 40, spread: float = 0.6, seed: int = 0):
    """Normalised points around fixed random centres, like embeddings of related passages;
    `seed` draws other points around the same centres (queries)."""
    c = np.random.default_rng(12345).standard_normal((centres, dim)).astype(np.float32)
    faiss.normalize_L2(c)
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, dim)).astype(np.float32) * np.float32(spread / np.sqrt(dim))
    x = c[rng.integers(0, centres, n)] + noise
    faiss.normalize_L2(x)
    return x


@pytest.fixture(scope="module")
def data():
    return clustered(3000), np.arange(3000, dtype=np.int64) * 10 + 7


def filled(kind: str, vectors: np.ndarray, ids: np.ndarray) -> VectorIndex:
    index = build_index(DIM, len(ids), kind, train_vectors=vectors)
    index.add(ids, vectors)
    return index


@pytest.mark.parametrize("kind", [*KINDS, "ivf:pq=8"])
def test_add_search_remove_round_trip(kind, data):
    vectors, ids = data
    index = filled(kind, vectors, ids)
    assert index.ntotal == len(ids) and index.dimension == DIM
    assert index.kind.startswith(kind.split(":")[0])

    scores, found = index.search(vectors[:20], 5)
    assert scores.shape == found.shape == (20, 5)
    assert scores.dtype == np.float32 and found.dtype == np.int64
    assert np.mean(found[:, 0] == ids[:20]) >= 0.9  # each vector finds itself
    assert np.all(scores[:, :-1] >= scores[:, 1:] - 1e-6)  # best first

    gone = ids[:10]
    if kind.startswith("hnsw"):
        assert not index.supports_remove
        with pytest.raises(Unavailable, match="rebuild"):
            index.remove(gone)
        return
    assert index.remove(np.concatenate([gone, [-5, 999_999_999]])) == 10
    assert index.ntotal == len(ids) - 10
    _, after = index.search(vectors[:10], 5)
    assert not np.isin(after, gone).any()


def test_missing_results_are_minus_one():
    index = build_index(DIM, 3, "flat")
    vectors = clustered(3)
    index.add(np.array([1, 2, 3]), vectors)
    _, found = index.search(vectors[:1], 5)
    assert sorted(found[0, :3]) == [1, 2, 3] and list(found[0, 3:]) == [-1, -1]


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_gives_identical_results(kind, data, tmp_path):
    vectors, ids = data
    index = filled(kind, vectors, ids)
    index.set_search_params(nprobe=7, ef_search=50)
    before = index.search(vectors[:50], 10)
    path = tmp_path / "gen1" / "dense.faiss"
    index.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["dense.faiss"]  # no temp file left
    for loaded in (VectorIndex.load(path), VectorIndex.load(path, mmap=True)):
        assert loaded.kind == index.kind and loaded.ntotal == index.ntotal
        assert loaded.search_params == index.search_params
        after = loaded.search(vectors[:50], 10)
        np.testing.assert_array_equal(after[1], before[1])
        np.testing.assert_array_equal(after[0], before[0])


def test_save_replaces_atomically_and_mmap_reader_keeps_its_view(data, tmp_path):
    vectors, ids = data
    path = tmp_path / "dense.faiss"
    filled("flat", vectors[:100], ids[:100]).save(path)
    reader = VectorIndex.load(path, mmap=True)
    filled("flat", vectors, ids).save(path)
    assert reader.ntotal == 100 and VectorIndex.load(path).ntotal == len(ids)
    assert reader.search(vectors[:3], 1)[1][:, 0].tolist() == ids[:3].tolist()


def test_mmap_index_is_read_only_until_copied(data, tmp_path):
    vectors, ids = data
    path = tmp_path / "dense.faiss"
    filled("ivf", vectors, ids).save(path)
    mapped = VectorIndex.load(path, mmap=True)
    with pytest.raises(Conflict, match="copy"):
        mapped.add(np.array([1]), vectors[:1])
    with pytest.raises(Conflict, match="copy"):
        mapped.remove(ids[:1])
    writable = mapped.copy()
    assert writable.remove(ids[:5]) == 5
    writable.add(np.array([1]), vectors[:1])
    assert writable.ntotal == len(ids) - 4 and mapped.ntotal == len(ids)


def test_copy_is_independent(data):
    vectors, ids = data
    index = filled("flat", vectors, ids)
    clone = index.copy()
    clone.remove(ids[:100])
    assert index.ntotal == len(ids) and clone.ntotal == len(ids) - 100


def test_auto_is_flat_under_threshold_and_ivf_over_it(data):
    vectors, _ = data
    assert build_index(DIM, 100, "auto", exact_max=100).kind == "flat"
    over = build_index(DIM, 101, "auto", exact_max=100, train_vectors=vectors)
    assert over.kind.startswith("ivf") and over.kind.endswith("sq_fp16")


def test_ivf_needs_training_vectors():
    with pytest.raises(InvalidInput, match="train_vectors"):
        build_index(DIM, 10_000, "ivf")


def test_nlist_follows_size_and_is_clamped_by_the_sample(data):
    vectors, _ = data
    assert build_index(DIM, 100, "ivf", train_vectors=vectors).kind == "ivf40,sq_fp16"  # 4*sqrt(N)
    assert build_index(DIM, 10**6, "ivf", train_vectors=vectors[:400]).kind == "ivf10,sq_fp16"


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("ivf:nlist=4096,sq=fp16", ("ivf", "fp16", 4096, None)),
        ("ivf4096,sq_fp16", ("ivf", "fp16", 4096, None)),
        ("ivf:pq=48", ("ivf", "pq", None, 48)),
        ("ivf1024,pq48", ("ivf", "pq", 1024, 48)),
        ("ivf:flat", ("ivf", "flat", None, None)),
        ("hnsw32,sq8", ("hnsw", "sq8", None, None)),
        ("flat", ("flat", "flat", None, None)),
    ],
)
def test_parse_kind(kind, expected):
    spec = parse_kind(kind)
    assert (spec.family, spec.encoding, spec.nlist, spec.pq_m) == expected


@pytest.mark.parametrize("kind", ["ivfx", "annoy", "ivf:nprobe=0", "ivf:sq=fp8", "flat:nlist=3"])
def test_bad_kinds_name_the_problem(kind):
    with pytest.raises(InvalidInput, match="index kind"):
        parse_kind(kind)


def test_bad_shapes_are_rejected(data):
    vectors, ids = data
    index = build_index(DIM, 10, "flat")
    with pytest.raises(InvalidInput, match="32-dimensional"):
        index.add(ids[:2], np.zeros((2, 16), dtype=np.float32))
    with pytest.raises(InvalidInput, match="one id per vector"):
        index.add(ids[:3], vectors[:2])


def test_rebuild_builds_from_all_vectors():
    vectors = clustered(5000)
    ids = np.arange(5000, dtype=np.int64) + 1
    index = rebuild(DIM, ids, vectors, kind="auto", exact_max=1000)
    assert index.kind.startswith("ivf") and index.ntotal == 5000
    assert rebuild(DIM, ids[:500], vectors[:500], kind="ivf").kind == "flat"  # too few to train
    assert rebuild(DIM, ids[:0], vectors[:0]).ntotal == 0


def test_ivf_recall_on_clustered_data():
    vectors = clustered(20_000, centres=200, spread=0.9)
    queries = clustered(200, centres=200, spread=0.9, seed=1)
    exact = filled("flat", vectors, np.arange(len(vectors)))
    truth = exact.search(queries, 10)[1]
    ivf = rebuild(DIM, np.arange(len(vectors)), vectors, kind="ivf")
    assert recall_at_k(ivf.search(queries, 10)[1], truth) >= 0.95  # default nprobe
    ivf.set_search_params(nprobe=1)
    assert recall_at_k(ivf.search(queries, 10)[1], truth) < 0.95  # the knob matters
    chosen = tune_nprobe(ivf, queries, truth, target=0.95)
    assert ivf.search_params["nprobe"] == chosen
    assert recall_at_k(ivf.search(queries, 10)[1], truth) >= 0.95


def test_memory_bytes_tracks_the_codes(data):
    vectors, ids = data
    flat = filled("flat", vectors, ids)
    ivf = filled("ivf", vectors, ids)
    assert flat.memory_bytes() >= len(ids) * DIM * 4
    assert len(ids) * DIM * 2 <= ivf.memory_bytes() < flat.memory_bytes()
    serialised = len(faiss.serialize_index(ivf._index))
    assert abs(ivf.memory_bytes() - serialised) / serialised < 0.1


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_concurrent_searches_equal_sequential(kind, data):
    vectors, ids = data
    index = filled(kind, vectors, ids)
    queries = clustered(64, seed=3)
    sequential = [index.search(queries[i : i + 1], 10) for i in range(len(queries))]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda i: index.search(queries[i : i + 1], 10), range(64)))
    for (s1, i1), (s2, i2) in zip(sequential, concurrent, strict=True):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(s1, s2)


def test_scale_benchmark_tiny_writes_its_report(tmp_path):
    out = tmp_path / "scale.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--tiny", "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    report = json.loads(out.read_text())
    assert {"n", "dim", "queries", "data", "indexes", "threads", "targets"} <= report.keys()
    assert report["n"] == 20_000 and report["data"]["source"] == "synthetic-clusters"
    kinds = {r["kind"].split(",")[0].rstrip("0123456789") for r in report["indexes"]}
    assert kinds == {"flat", "ivf", "hnsw"}
    for result in report["indexes"]:
        assert {"build_seconds", "index_bytes", "rss_delta_bytes", "settings"} <= result.keys()
        for row in result["settings"]:
            assert {"recall_at_10", "p50_ms", "p95_ms", "p99_ms", "batch_qps"} <= row.keys()
            assert 0 <= row["recall_at_10"] <= 1
    exact = next(r for r in report["indexes"] if r["kind"] == "flat")
    assert exact["settings"][0]["recall_at_10"] > 0.999


def _document(n: int, vectors: np.ndarray):
    from kb.store.collection import NewDocument
    from kb.types import Chunk

    chunks = [Chunk(f"passage {n}-{i}", i, 0, 10) for i in range(len(vectors))]
    return NewDocument(f"doc{n}.txt", f"doc{n}.txt", f"h{n}", None, {}, 10, chunks, vectors)


def test_reindex_changes_a_collections_index_kind_and_keeps_it(data, tmp_path):
    from kb.store.collection import Collection

    vectors, _ = data
    col = Collection.create(tmp_path / "c", "c", embedder="test", dimension=DIM)
    with col.write_lock():
        col.commit(add=[_document(i, vectors[i * 500 : (i + 1) * 500]) for i in range(5)])
    flat = col.snapshot().dense
    assert flat.kind == "flat"
    gen = col.generation

    with col.write_lock(), pytest.raises(InvalidInput, match="unknown index kind"):
        col.commit(index_kind="annoy")
    assert col.generation == gen and col.snapshot().dense.kind == "flat"

    with col.write_lock():
        col.commit(index_kind="ivf:nlist=16,nprobe=16")
    ivf = col.snapshot().dense
    assert ivf.kind.startswith("ivf16") and ivf.ntotal == 2500
    _, exact = flat.search(vectors[:50], 1)
    _, approx = ivf.search(vectors[:50], 1)
    assert (exact == approx).all()  # nprobe = nlist: every list is scanned
    stored_ids, stored = col.vectors()
    assert stored.shape == (2500, DIM)  # the stored vectors are the source, left as they were

    # a later write and a fresh open keep the collection's own kind, not the default "auto"
    with col.write_lock():
        col.commit(add=[_document(9, vectors[2500:2600])])
    assert col.snapshot().dense.kind.startswith("ivf16")
    again = Collection.open(tmp_path / "c", "c", index_kind="auto")
    assert again.index_kind == "ivf:nlist=16,nprobe=16"
    assert again.snapshot().dense.kind.startswith("ivf16") and again.snapshot().dense.ntotal == 2600

    with col.write_lock():
        col.commit(index_kind="auto")
    assert col.snapshot().dense.kind == "flat"


def test_memory_mapped_reads_see_every_commit(data, tmp_path):
    """Readers map the SQLite file (KB_SQLITE_MMAP_MB); rows written after a reader opened, by
    another connection, still read back the same as through plain reads."""
    from kb.store.collection import Collection

    vectors, _ = data
    writer = Collection.create(tmp_path / "c", "c", embedder="test", dimension=DIM)
    mapped = Collection.open(tmp_path / "c", "c", mmap_bytes=64 << 20)
    plain = Collection.open(tmp_path / "c", "c", mmap_bytes=0)
    assert mapped._db().execute("PRAGMA mmap_size").fetchone()[0] == 64 << 20
    assert plain._db().execute("PRAGMA mmap_size").fetchone()[0] == 0
    for n in range(3):
        with writer.write_lock():
            writer.commit(add=[_document(n, vectors[n * 200 : (n + 1) * 200])])
        ids, _ = plain.vectors()
        assert len(ids) == 200 * (n + 1)
        assert mapped.chunks(ids.tolist()) == plain.chunks(ids.tolist())
        mapped_ids, mapped_vectors = mapped.vectors(ids)
        assert (mapped_ids == ids).all() and np.array_equal(mapped_vectors, plain.vectors(ids)[1])

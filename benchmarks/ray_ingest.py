"""Ingest on Ray against a local ingest, and the single writer's commit rate.

    .venv/bin/python benchmarks/ray_ingest.py                    # 2,000 SciFact abstracts
    .venv/bin/python benchmarks/ray_ingest.py --limit 200 --reps 1 --out /tmp/r.json

The documents are written as one text file each (the judged ones first, so that every test
query keeps its answers) and ingested with `KnowledgeBase.ingest_path`, the code of `kb ingest`:
  local  the default pipeline (loader thread + embedder in this process);
  ray    `--ray` on a Ray instance of `--workers` CPUs started beforehand (as a cluster is
         there before an ingest), `--workers` Ray Data workers; the timing includes the workers'
         start and model loading, and the light first pass that boilerplate dropping needs.
The legs alternate (local, ray, ray, local, ...) in one process with the embedder loaded
beforehand for the local leg; the ratio is local seconds / ray seconds per pair, the median.
Then both collections are compared: chunks, vectors (largest difference), and the top 10 of
every test query by hybrid and dense search.

Commit rate: the chunks and vectors of the local collection committed again into fresh
collections through `Collection.commit`, the writer alone (no parsing or embedding), in commits
of `--commit-chunks` chunks, on top of `--commit-base` chunks already stored (copies of the same
rows): once with the chunks' BM25 terms made beforehand, as the loader thread or the Ray
workers make them, once with the writer tokenising them itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("KB_EMBED_QUERY_RUNTIME", "torch")  # the same query vectors for both

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ingest import cpu_model, select_documents  # noqa: E402
from ingest.pipeline import IngestProgress  # noqa: E402
from ingest.ray_ingest import RayIngestOptions  # noqa: E402
from kb.embedders import Embedder  # noqa: E402
from kb.eval.beir import load_beir  # noqa: E402
from kb.service import KnowledgeBase  # noqa: E402
from kb.settings import Settings  # noqa: E402
from kb.store.bm25 import chunk_terms  # noqa: E402
from kb.store.collection import Collection, NewDocument  # noqa: E402
from kb.types import Chunk  # noqa: E402

SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
COLLECTION = "scifact"


class FirstEmbedded(IngestProgress):
    """When the first embedded chunks reached the driver (the Ray leg's start-up cost)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first: float | None = None

    def chunks_embedded(self, n: int) -> None:
        if self.first is None:
            self.first = time.perf_counter() - self.started


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import ray

    data = load_beir(args.data, "test")
    docs = select_documents(data, args.limit)
    work = Path(tempfile.mkdtemp(prefix="kb-bench-ray-"))
    folder = work / "files"
    folder.mkdir()
    for doc in docs:
        (folder / f"{doc.source}.txt").write_text(doc.text, encoding="utf-8")
    doc_ids = {d.source for d in docs}
    queries = {q: data.queries[q] for q in data.qrels if any(d in doc_ids for d in data.qrels[q])}

    embedders: dict[str, Embedder] = {}
    KnowledgeBase(Settings(data_dir=work / "probe"), embedders=embedders).embedder  # noqa: B018
    t = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="WARNING")
    ray_init_s = time.perf_counter() - t
    options = RayIngestOptions(ray_workers=args.workers, ray_batch_files=args.batch_files)

    runs: dict[str, list[dict]] = {"local": [], "ray": []}
    order = [
        leg for rep in range(args.reps) for leg in (("local", "ray"), ("ray", "local"))[rep % 2]
    ]
    for n, leg in enumerate(order):
        kb = KnowledgeBase(Settings(data_dir=work / f"{leg}-{n}"), embedders=embedders)
        progress = FirstEmbedded()
        t = time.perf_counter()
        report = kb.ingest_path(
            folder, collection=COLLECTION, progress=progress, ray=options if leg == "ray" else None
        )
        seconds = time.perf_counter() - t
        runs[leg].append(
            {
                "data_dir": str(work / f"{leg}-{n}"),
                "seconds": round(seconds, 2),
                "first_chunks_s": round(progress.first or 0.0, 2),
                "chunks": report.chunks_embedded,
                "added": report.added,
                "failed": len(report.failed),
                "load_average": os.getloadavg()[0],
            }
        )
        print(f"{leg}: {seconds:.1f} s, {report.chunks_embedded} chunks", flush=True)
    ray.shutdown()

    pairs = list(zip(runs["local"], runs["ray"], strict=True))
    ratio = statistics.median(local["seconds"] / r["seconds"] for local, r in pairs)
    chunks = runs["local"][0]["chunks"]
    local_kb = KnowledgeBase(Settings(data_dir=runs["local"][0]["data_dir"]), embedders=embedders)
    ray_kb = KnowledgeBase(Settings(data_dir=runs["ray"][0]["data_dir"]), embedders=embedders)
    equality = compare(local_kb, ray_kb, queries)
    commit = commit_rates(local_kb.collection(COLLECTION), work, args)
    index = index_memory(local_kb.collection(COLLECTION), args)
    embedding = embed_rate(local_kb, args)
    store_bytes = (Path(runs["local"][0]["data_dir"]) / "collections" / COLLECTION).glob(
        "store.sqlite*"
    )

    result = {
        "benchmark": "ray_ingest",
        "data": "../shared/data/scifact",
        "documents": len(docs),
        "chunks": chunks,
        "queries": len(queries),
        "workers": args.workers,
        "batch_files": args.batch_files,
        "reps": args.reps,
        "order": order,
        "ray_init_seconds": round(ray_init_s, 2),
        "local": runs["local"],
        "ray": runs["ray"],
        "local_docs_per_s": round(
            len(docs) / statistics.median(r["seconds"] for r in runs["local"]), 2
        ),
        "ray_docs_per_s": round(
            len(docs) / statistics.median(r["seconds"] for r in runs["ray"]), 2
        ),
        "ratio_ray_to_local_throughput": round(ratio, 3),
        "target_ratio": 0.85,
        "equality": equality,
        "commit": commit,
        "target_commit_chunks_per_s": 5000,
        "index_memory": index,
        "embedding_one_thread": embedding,
        "store_bytes_per_chunk": round(sum(p.stat().st_size for p in store_bytes) / chunks),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": cpu_model(),
            "python": platform.python_version(),
        },
        "command": "python benchmarks/ray_ingest.py " + " ".join(argv or sys.argv[1:]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {k: result[k] for k in ("ratio_ray_to_local_throughput", "equality", "commit")},
            indent=2,
        )
    )
    return result


def compare(a: KnowledgeBase, b: KnowledgeBase, queries: dict[str, str]) -> dict:
    """Chunks, vectors and search results of two collections built from the same files."""
    ca, cb = a.collection(COLLECTION), b.collection(COLLECTION)
    rows_a, rows_b = list(ca.iter_chunks()), list(cb.iter_chunks())
    ids_a, vecs_a = ca.vectors()
    ids_b, vecs_b = cb.vectors()
    same_ids = bool(np.array_equal(ids_a, ids_b))
    out = {
        "chunks_equal": rows_a == rows_b,
        "chunk_count": [len(rows_a), len(rows_b)],
        "vector_max_abs_diff": float(np.abs(vecs_a - vecs_b).max()) if same_ids else None,
        "vector_min_cosine": float((vecs_a * vecs_b).sum(axis=1).min()) if same_ids else None,
    }
    for method in ("hybrid", "dense"):
        same = 0
        for text in queries.values():
            top_a = [
                (p.source, p.start)
                for p in a.search(text, collection=COLLECTION, k=10, method=method)
            ]
            top_b = [
                (p.source, p.start)
                for p in b.search(text, collection=COLLECTION, k=10, method=method)
            ]
            same += top_a == top_b
        out[f"identical_top10_{method}"] = same
    return out


def commit_rates(source: Collection, work: Path, args) -> list[dict]:
    """Seconds and chunks/s of `Collection.commit` alone, with the stored chunks and vectors:
    the documents in commits of `--commit-chunks`, on top of each `--commit-base` chunks
    (copies of the same rows, stored in one commit beforehand). Each base is measured twice:
    the chunks carrying their BM25 terms, as an ingest's loader thread or Ray workers hand them
    over (tokenised before the clock starts), then without, the writer tokenising them."""
    docs = stored_documents(source)
    total = sum(len(d.chunks) for d in docs)
    results = []
    for base in args.commit_base:
        col = Collection.create(
            work / "commit" / f"base-{base}",
            "commit",
            embedder=source.embedder,
            dimension=source.dimension,
        )
        copies = -(-base // total) if base else 0
        if copies:
            col.commit(add=[d for n in range(copies) for d in renamed(docs, f"base{n}")])
        stored = copies * total
        for tokenised_by in ("workers", "writer"):
            lo = 0
            while lo < len(docs):
                part, chunks = [], 0
                while lo < len(docs) and (
                    not part or chunks + len(docs[lo].chunks) <= args.commit_chunks
                ):
                    part.append(docs[lo])
                    chunks += len(docs[lo].chunks)
                    lo += 1
                part = renamed(part, f"new-{tokenised_by}")
                for doc in part:
                    for chunk in doc.chunks:
                        chunk.terms = (
                            chunk_terms(chunk.text, doc.title)
                            if tokenised_by == "workers"
                            else None
                        )
                t, cpu = time.perf_counter(), time.process_time()
                col.commit(add=part)
                seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
                results.append(
                    {
                        "stored_before": stored,
                        "chunks": chunks,
                        "tokenised_by": tokenised_by,
                        "seconds": round(seconds, 3),
                        "cpu_seconds": round(cpu, 3),
                        "chunks_per_s": round(chunks / seconds, 1),
                        "chunks_per_cpu_s": round(chunks / cpu, 1),
                        "bm25_segments": col.snapshot().bm25.segment_count,
                        "load_average": os.getloadavg()[0],
                    }
                )
                print(
                    f"commit of {chunks} on {stored} chunks, tokenised by the {tokenised_by}: "
                    f"{seconds:.2f} s",
                    flush=True,
                )
                stored += chunks
    return results


def embed_rate(kb: KnowledgeBase, args) -> dict:
    """Chunks per second and per CPU-second of the embedder on one torch thread (a Ray
    worker's share: one CPU), over `--embed-chunks` stored chunks as a local ingest embeds them."""
    import torch

    from ingest.pipeline import embed_input

    rows = list(kb.collection(COLLECTION).iter_chunks())[: args.embed_chunks]
    texts = [
        embed_input(Chunk(r.text, r.ordinal, r.start, r.end, r.page, r.heading, r.title))
        for r in rows
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t, cpu = time.perf_counter(), time.process_time()
        kb.embedder.embed(texts)
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    finally:
        torch.set_num_threads(threads)
    return {
        "chunks": len(texts),
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "chunks_per_s": round(len(texts) / seconds, 1),
        "chunks_per_cpu_s": round(len(texts) / cpu, 1),
        "load_average": os.getloadavg()[0],
    }


def index_memory(source: Collection, args) -> dict:
    """Bytes per vector and recall@10 (against exact search) of compressed IVF indexes over
    `--index-vectors` vectors synthesized from the stored ones (each a stored vector moved
    towards the difference of two others, normalised), queried with 500 more of them."""
    from kb.store.index import rebuild

    _, base = source.vectors()
    rng = np.random.default_rng(0)
    n = args.index_vectors + 500

    def mix(count: int) -> np.ndarray:
        pick = lambda: base[rng.integers(0, len(base), count)]  # noqa: E731
        v = pick() + 0.5 * (pick() - pick())
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    vectors = np.concatenate([mix(min(50_000, n - lo)) for lo in range(0, n, 50_000)])
    stored, queries = vectors[:-500], vectors[-500:]
    ids = np.arange(len(stored), dtype=np.int64)
    exact = rebuild(base.shape[1], ids, stored, kind="flat")
    _, truth = exact.search(queries, 10)
    rows = []
    for kind in args.index_kinds:
        t = time.perf_counter()
        index = rebuild(base.shape[1], ids, stored, kind=kind)
        build = time.perf_counter() - t
        _, found = index.search(queries, 10)
        recall = np.mean([len(set(f) & set(g)) / 10 for f, g in zip(found, truth, strict=True)])
        rows.append(
            {
                "kind": index.kind,
                "search_params": index.search_params,
                "bytes_per_vector": round(index.memory_bytes() / len(stored), 1),
                "recall_at_10": round(float(recall), 3),
                "build_seconds": round(build, 1),
            }
        )
        print(
            f"{index.kind}: {rows[-1]['bytes_per_vector']} B/vector, recall {recall:.3f}",
            flush=True,
        )
    return {"vectors": len(stored), "queries": len(queries), "kinds": rows}


def stored_documents(col: Collection) -> list[NewDocument]:
    by_doc: dict[str, list] = {}
    for row in col.iter_chunks():
        by_doc.setdefault(row.doc_id, []).append(row)
    ids, vecs = col.vectors()
    position = {int(i): n for n, i in enumerate(ids)}
    docs = []
    for rows in by_doc.values():
        chunks = [
            Chunk(r.text, r.ordinal, r.start, r.end, r.page, r.heading, r.title) for r in rows
        ]
        docs.append(
            NewDocument(
                source=rows[0].source,
                origin=rows[0].source,
                origin_hash="bench",
                title=rows[0].title,
                metadata={},
                chars=max(r.end for r in rows),
                chunks=chunks,
                vectors=vecs[[position[r.chunk_id] for r in rows]],
            )
        )
    return docs


def renamed(docs: list[NewDocument], prefix: str) -> list[NewDocument]:
    return [
        NewDocument(
            **{
                **d.__dict__,
                "source": f"{prefix}/{d.source}",
                "origin": f"{prefix}/{d.origin}",
                "chunks": [replace(c) for c in d.chunks],
            }
        )
        for d in docs
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=SCIFACT, help="BEIR folder (SciFact).")
    p.add_argument("--limit", type=int, default=2000, help="Documents to ingest.")
    p.add_argument("--workers", type=int, default=2, help="Ray workers (and the instance's CPUs).")
    p.add_argument("--batch-files", type=int, default=128, help="Files per Ray Data batch.")
    p.add_argument("--reps", type=int, default=1, help="Local/Ray pairs, alternating order.")
    p.add_argument(
        "--commit-chunks",
        type=int,
        default=20_000,
        help="Most chunks per measured commit (default: KB_COMMIT_EVERY_CHUNKS's default).",
    )
    p.add_argument(
        "--commit-base",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[0, 50_000],
        help="Chunks already stored before the measured commits, comma-separated.",
    )
    p.add_argument("--embed-chunks", type=int, default=512, help="Chunks for the embedding rate.")
    p.add_argument("--index-vectors", type=int, default=200_000, help="Vectors for index memory.")
    p.add_argument(
        "--index-kinds",
        type=lambda s: s.split(";"),
        default=["ivf:sq=fp16", "ivf:sq=sq8", "ivf:pq=48", "ivf:pq=24"],
        help="Index kinds to measure, ';'-separated.",
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ray_ingest.json"))
    return p.parse_args(argv)


if __name__ == "__main__":
    main()

"""Ingest on Ray against a local ingest, and the single writer's commit rate.

    .venv/bin/python benchmarks/ray_ingest.py                    # 2,000 SciFact abstracts
    .venv/bin/python benchmarks/ray_ingest.py --limit 200 --reps 1 --out /tmp/r.json

The documents are written as one text file each (the judged ones first, so that every test
query keeps its answers) and ingested with `KnowledgeBase.ingest_path`, the code of `kb ingest`,
each leg into a collection of its own in one data folder:
  local     the default pipeline (loader thread + embedder in this process, loaded beforehand,
            as a running process has it);
  ray-cold  `--ray` on a Ray instance of `--workers` CPUs started beforehand (as a cluster is
            there before an ingest), `--workers` workers started for this ingest: the timing
            includes their start and model loading, and the light first pass that boilerplate
            dropping needs;
  ray-warm  `--ray` again, taking the workers the cold leg kept (`--ray-keep-workers`), as a
            second ingest with the same settings does.
Each rep runs local, cold, warm (then cold, warm, local) in one process; a leg's ratio is local
seconds / its seconds per rep, the median. Both Ray collections are compared with the local
one: chunks, vectors (largest difference), and the top 10 of every test query by hybrid and
dense search. Then small syncs (`--sync-files` new files) in the three ways, once per rep.

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
import sqlite3
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
from ingest.ray_ingest import RayIngestOptions, stop_kept_workers  # noqa: E402
from kb.embedders import Embedder  # noqa: E402
from kb.eval.beir import load_beir  # noqa: E402
from kb.service import KnowledgeBase  # noqa: E402
from kb.settings import Settings  # noqa: E402
from kb.store.bm25 import chunk_terms  # noqa: E402
from kb.store.collection import Collection, NewDocument  # noqa: E402
from kb.types import Chunk  # noqa: E402

SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
LEGS = ("local", "ray-cold", "ray-warm")
KEEP_S = 600.0  # --ray-keep-workers of the Ray legs: the warm leg takes the cold leg's workers


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
    data_dir = work / "data"
    kb = KnowledgeBase(Settings(data_dir=data_dir), embedders=embedders)
    kb.embedder  # noqa: B018  (loaded before the local legs, as a running process has it)
    t = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="WARNING")
    ray_init_s = time.perf_counter() - t
    options = RayIngestOptions(
        ray_workers=args.workers, ray_batch_files=args.batch_files, ray_keep_workers=KEEP_S
    )

    runs: dict[str, list[dict]] = {leg: [] for leg in LEGS}
    # a warm leg follows a cold one, whose workers it keeps; the local leg goes first or last
    swapped = ("ray-cold", "ray-warm", "local")
    order = [leg for rep in range(args.reps) for leg in (LEGS if rep % 2 == 0 else swapped)]
    for n, leg in enumerate(order):
        if leg == "ray-cold":
            stop_kept_workers(ray)
        progress = FirstEmbedded()
        t = time.perf_counter()
        report = kb.ingest_path(
            folder,
            collection=f"{leg}-{n}",
            progress=progress,
            ray=None if leg == "local" else options,
        )
        seconds = time.perf_counter() - t
        runs[leg].append(
            {
                "collection": f"{leg}-{n}",
                "seconds": round(seconds, 2),
                "first_chunks_s": round(progress.first or 0.0, 2),
                "chunks": report.chunks_embedded,
                "added": report.added,
                "failed": len(report.failed),
                "load_average": os.getloadavg()[0],
            }
        )
        print(f"{leg}: {seconds:.1f} s, {report.chunks_embedded} chunks", flush=True)
    syncs = small_syncs(kb, ray, docs, work, options, args)
    stop_kept_workers(ray)
    ray.shutdown()

    ratios = {
        leg: round(
            statistics.median(
                local["seconds"] / r["seconds"]
                for local, r in zip(runs["local"], runs[leg], strict=True)
            ),
            3,
        )
        for leg in ("ray-cold", "ray-warm")
    }
    chunks = runs["local"][0]["chunks"]
    local_col = kb.collection(runs["local"][0]["collection"])
    equality = {
        leg: compare(kb, runs["local"][0]["collection"], runs[leg][0]["collection"], queries)
        for leg in ("ray-cold", "ray-warm")
    }
    commit = commit_rates(local_col, work, args)
    index = index_memory(local_col, args)
    embedding = embed_rate(kb, local_col, args)
    store_bytes = sqlite_bytes(data_dir / "collections" / runs["local"][0]["collection"])

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
        "runs": runs,
        "docs_per_s": {
            leg: round(len(docs) / statistics.median(r["seconds"] for r in runs[leg]), 2)
            for leg in LEGS
        },
        "ratio_to_local_throughput": ratios,
        "small_syncs": syncs,
        "target_ratio": 0.85,
        "equality": equality,
        "commit": commit,
        "target_commit_chunks_per_s": 5000,
        "index_memory": index,
        "embedding_one_thread": embedding,
        "store_bytes_per_chunk": round(store_bytes / chunks),
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
            {k: result[k] for k in ("ratio_to_local_throughput", "equality", "commit")},
            indent=2,
        )
    )
    return result


def small_syncs(kb: KnowledgeBase, ray, docs, work: Path, options, args) -> list[dict]:
    """Seconds of a sync of `--sync-files` new files into a collection, locally, on Ray with
    workers started for it, and on Ray with the workers an earlier ingest kept."""
    rows = []
    for rep in range(args.reps):
        folder = work / f"sync-{rep}"
        folder.mkdir()
        for doc in docs[rep * args.sync_files : (rep + 1) * args.sync_files]:
            (folder / f"{doc.source}.txt").write_text(doc.text, encoding="utf-8")
        for leg in LEGS:
            if leg == "ray-cold":
                stop_kept_workers(ray)
            t = time.perf_counter()
            report = kb.ingest_path(
                folder, collection=f"sync-{leg}-{rep}", ray=None if leg == "local" else options
            )
            rows.append(
                {
                    "leg": leg,
                    "files": report.added,
                    "seconds": round(time.perf_counter() - t, 2),
                }
            )
            print(f"sync of {report.added} files, {leg}: {rows[-1]['seconds']} s", flush=True)
    return rows


def sqlite_bytes(folder: Path) -> int:
    """The size of a collection's SQLite store as committed (pages in use, the write-ahead
    log's included, which the file's size alone would miss or count twice)."""
    db = sqlite3.connect(f"file:{folder / 'store.sqlite'}?mode=ro", uri=True)
    try:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        return int(pages * db.execute("PRAGMA page_size").fetchone()[0])
    finally:
        db.close()


def compare(kb: KnowledgeBase, a: str, b: str, queries: dict[str, str]) -> dict:
    """Chunks, vectors and search results of two collections built from the same files."""
    ca, cb = kb.collection(a), kb.collection(b)
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
                (p.source, p.start) for p in kb.search(text, collection=a, k=10, method=method)
            ]
            top_b = [
                (p.source, p.start) for p in kb.search(text, collection=b, k=10, method=method)
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


def embed_rate(kb: KnowledgeBase, col: Collection, args) -> dict:
    """Chunks per second and per CPU-second of the embedder on one torch thread (a Ray
    worker's share: one CPU), over `--embed-chunks` stored chunks as a local ingest embeds them."""
    import torch

    from ingest.pipeline import embed_input

    rows = list(col.iter_chunks())[: args.embed_chunks]
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
    p.add_argument("--batch-files", type=int, default=128, help="--ray-batch-files.")
    p.add_argument("--reps", type=int, default=1, help="Reps of the three legs, alternating order.")
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
    p.add_argument("--sync-files", type=int, default=20, help="Files of the small syncs.")
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

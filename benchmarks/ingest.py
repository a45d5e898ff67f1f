"""Ingestion throughput: kb ingesting SciFact next to a plain sentence-transformers encode.

    .venv/bin/python benchmarks/ingest.py                       # all 5,183 SciFact abstracts
    .venv/bin/python benchmarks/ingest.py --limit 1000          # the test-judged docs + others
    .venv/bin/python benchmarks/ingest.py --limit 30 --lever-chunks 16 --reps 1 --out /tmp/i.json

Headline, in one process with the models loaded beforehand, alternating repetitions:
  plain  `SentenceTransformer(path).encode(chunk_texts)`: float32, default settings, timing the
         encode alone, of the exact texts kb embeds (kb's chunks, title-prefixed);
  kb     `KnowledgeBase.ingest_documents` into a fresh data dir with the default settings and
         each KB_EMBED_DTYPE of --kb-dtypes (torch bfloat16, ONNX Runtime int8): chunking,
         embedding, SQLite rows, FAISS and BM25 files, the generation commit.
Both report documents/s, chunks/s and tokens/s (model input tokens after truncation, special
tokens included), and kb / plain as a ratio, of wall-clock seconds and of the process's CPU
seconds (on a shared machine the second is the steadier).

Quality: SciFact test nDCG@10 (kb.eval.metrics) with exact search, a document scored by its best
chunk, for the plain float32 vectors, each kb leg's stored vectors (its queries embedded by the
same embedder) and each alternative numeric setting of --quality.
With --limit N the corpus is the documents judged relevant for the test queries plus the first
other documents up to N, so every judged query keeps its answers.

Levers: embedding rate of a random sample of the chunks (--lever-chunks) for each setting, each
repetition measuring every setting once, as a ratio to plain float32 in the same repetition;
plus kb ingest of a slice of documents with and without parsing overlapped with embedding.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# idle OpenMP/ORT workers that spin steal the core from the other thread (and other processes)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ingest.pipeline import Ingestor, document_sources, embed_input  # noqa: E402
from kb.embedders import Embedder, normalize  # noqa: E402
from kb.eval.beir import beir_documents, load_beir  # noqa: E402
from kb.eval.metrics import evaluate  # noqa: E402
from kb.service import KnowledgeBase  # noqa: E402
from kb.settings import Settings  # noqa: E402
from kb.types import Document  # noqa: E402

SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
NDCG_TOLERANCE = 0.005


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch
    from sentence_transformers import SentenceTransformer

    from kb.embedders.sentence_transformers import bundled_minilm_path

    model_path = bundled_minilm_path()
    data = load_beir(args.data, "test")
    docs = select_documents(data, args.limit)
    doc_ids = {d.source for d in docs}
    qrels = {
        q: {d: g for d, g in rels.items() if d in doc_ids}
        for q, rels in data.qrels.items()
        if any(d in doc_ids for d in rels)
    }
    queries = {q: data.queries[q] for q in qrels}

    work = Path(tempfile.mkdtemp(prefix="kb-bench-ingest-"))
    default_settings = Settings(data_dir=work / "default")
    dtypes = [d.strip() for d in args.kb_dtypes.split(",") if d.strip()]
    # one embedder cache per precision: the cache is keyed by the embedder's name alone
    kb_embedders: dict[str, dict[str, Embedder]] = {d: {} for d in dtypes}
    embedders: dict[str, Embedder] = {}
    for dtype in dtypes:  # each loaded (and exported, for int8) before any timing
        probe = KnowledgeBase(
            leg_settings(dtype, work / f"probe-{dtype}"), embedders=kb_embedders[dtype]
        )
        embedders[dtype] = probe.embedder
    chunker = KnowledgeBase(default_settings).chunker_for(embedders[dtypes[0]])
    chunks = [(d.source, embed_input(c)) for d in docs for c in chunker.split(d)]
    texts = [t for _, t in chunks]
    plain = SentenceTransformer(model_path, device="cpu")
    tokens = count_model_tokens(plain, texts)
    print(f"{len(docs)} documents, {len(texts)} chunks, {tokens} model tokens", flush=True)

    # -- headline: plain float32 encode vs kb ingest at each precision, alternating -------------
    plain_s: list[float] = []
    kb_s: dict[str, list[float]] = {d: [] for d in dtypes}
    # CPU seconds of this process (all its threads): on a shared machine the wall clock also
    # measures how much of the cores the others left, the CPU time the work done
    plain_cpu: list[float] = []
    kb_cpu: dict[str, list[float]] = {d: [] for d in dtypes}
    plain_vecs = None
    kb_vecs: dict[str, tuple[np.ndarray, list[str]]] = {}
    for rep in range(args.reps):
        gc.collect()
        t, c = time.perf_counter(), time.process_time()
        vecs = plain.encode(texts)
        plain_s.append(time.perf_counter() - t)
        plain_cpu.append(time.process_time() - c)
        plain_vecs = plain_vecs if plain_vecs is not None else normalize(np.asarray(vecs))
        line = f"rep {rep + 1}: plain {plain_s[-1]:.1f}s"
        for dtype in dtypes:
            settings = leg_settings(dtype, work / f"kb-{dtype}-{rep}")
            kb = KnowledgeBase(settings, embedders=kb_embedders[dtype])
            gc.collect()
            t, c = time.perf_counter(), time.process_time()
            report = kb.ingest_documents(docs, collection="scifact")
            kb_s[dtype].append(time.perf_counter() - t)
            kb_cpu[dtype].append(time.process_time() - c)
            if dtype not in kb_vecs:
                kb_vecs[dtype] = stored_vectors(kb, "scifact")
            line += f", kb {dtype} {kb_s[dtype][-1]:.1f}s ({report.chunks_embedded} chunks)"
        print(line, f"load {os.getloadavg()[0]:.1f}", flush=True)

    headline = {
        "plain": rates(statistics.median(plain_s), len(docs), len(texts), tokens),
        "plain_seconds": plain_s,
        "plain_cpu_seconds": plain_cpu,
        "kb": {},
    }
    for dtype in dtypes:
        row = rates(statistics.median(kb_s[dtype]), len(docs), len(texts), tokens)
        row["seconds_each"] = kb_s[dtype]
        row["ratio"] = round(
            statistics.median(p / k for p, k in zip(plain_s, kb_s[dtype], strict=True)), 3
        )
        row["cpu_seconds_each"] = kb_cpu[dtype]
        row["cpu_ratio"] = round(
            statistics.median(p / k for p, k in zip(plain_cpu, kb_cpu[dtype], strict=True)), 3
        )
        row["embedder"] = embedder_label(embedders[dtype])
        headline["kb"][dtype] = row

    # -- quality -----------------------------------------------------------------------------
    chunk_docs = [s for s, _ in chunks]
    quality = {
        "float32 (plain encode)": ndcg(
            plain_vecs, chunk_docs, plain_query_fn(plain), queries, qrels
        ),
    }
    for dtype in dtypes:
        vecs, vec_docs = kb_vecs[dtype]
        label = f"kb ingest ({embedder_label(embedders[dtype])})"
        quality[label] = ndcg(vecs, vec_docs, embedders[dtype].embed, queries, qrels)
    alternatives = quality_alternatives(model_path, work, args.quality)
    for label, make in alternatives.items():
        emb = make()
        quality[label] = ndcg(emb.embed(texts), chunk_docs, emb.embed, queries, qrels)
        del emb
        gc.collect()
    base_ndcg = quality["float32 (plain encode)"]
    quality_rows = [
        {"setting": k, "ndcg@10": round(v, 4), "delta": round(v - base_ndcg, 4)}
        for k, v in quality.items()
    ]

    # -- levers ------------------------------------------------------------------------------
    rng = random.Random(args.seed)
    sample = rng.sample(texts, min(args.lever_chunks, len(texts)))
    levers = lever_rows(model_path, plain, sample, work, args.reps) if args.lever_chunks else []
    if args.overlap_docs:
        levers += overlap_rows(
            default_settings, docs[: args.overlap_docs], args.reps, kb_embedders[dtypes[0]]
        )

    report_json = {
        "benchmark": "ingest",
        "data": str(args.data),
        "documents": len(docs),
        "chunks": len(texts),
        "tokens": tokens,
        "queries": len(queries),
        "reps": args.reps,
        "kb_settings": {
            "embed_dtypes": dtypes,
            "default_embed_dtype": default_settings.embed_dtype,
            "embed_batch_size": default_settings.embed_batch_size,
            "chunk_size": default_settings.chunk_size,
        },
        "headline": headline,
        "target_ratio": 2.5,
        "quality": quality_rows,
        "ndcg_tolerance": NDCG_TOLERANCE,
        "levers": levers,
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
    }
    print_tables(report_json)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report_json, indent=2))
    print(f"wrote {args.out}")
    return report_json


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=SCIFACT, help="a BEIR folder (default SciFact)")
    p.add_argument("--limit", type=int, help="at most N documents (judged ones first)")
    p.add_argument("--reps", type=int, default=2, help="alternating repetitions of each timing")
    p.add_argument(
        "--kb-dtypes",
        default="bfloat16,int8",
        help="comma list of KB_EMBED_DTYPE values, each a kb ingest leg in every repetition; "
        "DTYPE@N also sets KB_EMBED_BATCH_SIZE=N",
    )
    p.add_argument(
        "--lever-chunks", type=int, default=384, help="chunks in the lever sample (0: none)"
    )
    p.add_argument(
        "--overlap-docs", type=int, default=300, help="documents in the overlap row (0: none)"
    )
    p.add_argument(
        "--quality",
        default="bfloat16-max128",
        help="comma list of settings whose nDCG to compute besides float32 and kb's default: "
        "float32, bfloat16, int8, bfloat16-max128 (empty for none)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ingest.json")
    return p.parse_args(argv)


def leg_settings(leg: str, data_dir: Path) -> Settings:
    """Settings of a kb leg: "int8" is KB_EMBED_DTYPE=int8, "int8@32" also KB_EMBED_BATCH_SIZE=32."""
    dtype, _, batch = leg.partition("@")
    data_dir.mkdir(parents=True)
    # one cache for every leg, so the ONNX export is made once
    shared = data_dir.parent / "cache"
    shared.mkdir(exist_ok=True)
    (data_dir / "cache").symlink_to(shared, target_is_directory=True)
    extra = {"embed_batch_size": int(batch)} if batch else {}
    return Settings(data_dir=data_dir, embed_dtype=dtype, **extra)


def cpu_model() -> dict:
    """The CPU's model name and whether it has AMX: bfloat16 and int8 speeds turn on it."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor(), "amx": None}
    model = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), ""
    )
    flags = next(
        (ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []
    )
    return {"model": model, "amx": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags}


def select_documents(data, limit: int | None) -> list[Document]:
    """All documents, or the judged ones first and then others in corpus order, up to limit."""
    docs = list(beir_documents(data.corpus, "prepend"))
    if limit is None or limit >= len(docs):
        return docs
    judged = {d for rels in data.qrels.values() for d in rels}
    first = [d for d in docs if d.source in judged]
    rest = [d for d in docs if d.source not in judged]
    return (first + rest)[:limit]


def count_model_tokens(model, texts: list[str]) -> int:
    """Tokens the model sees: with [CLS]/[SEP], truncated at its max_seq_length."""
    enc = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)
    return int(sum(len(ids) for ids in enc["input_ids"]))


def rates(seconds: float, docs: int, chunks: int, tokens: int) -> dict[str, float]:
    return {
        "seconds": round(seconds, 2),
        "docs_per_s": round(docs / seconds, 2),
        "chunks_per_s": round(chunks / seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
    }


def stored_vectors(kb: KnowledgeBase, name: str) -> tuple[np.ndarray, list[str]]:
    """Every chunk vector of a collection with the BEIR id of its document."""
    col = kb.collection(name)
    ids, vecs = col.vectors()
    source_of = {row.chunk_id: row.source for row in col.iter_chunks()}
    return vecs, [source_of[int(i)] for i in ids]


def plain_query_fn(model) -> Callable[[list[str]], np.ndarray]:
    return lambda qs: normalize(np.asarray(model.encode(qs)))


def ndcg(
    chunk_vecs: np.ndarray,
    chunk_docs: list[str],
    embed_queries: Callable[[list[str]], np.ndarray],
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
) -> float:
    """Test nDCG@10 of exact cosine search, a document scoring its best chunk's cosine."""
    qids = list(queries)
    qvecs = np.asarray(embed_queries([queries[q] for q in qids]), dtype=np.float32)
    scores = qvecs @ np.asarray(chunk_vecs, dtype=np.float32).T
    doc_index: dict[str, int] = {}
    col = np.array([doc_index.setdefault(d, len(doc_index)) for d in chunk_docs])
    per_doc = np.full((len(qids), len(doc_index)), -np.inf, dtype=np.float32)
    np.maximum.at(per_doc, (slice(None), col), scores)
    names = list(doc_index)
    run = {}
    for qi, q in enumerate(qids):
        top = np.argsort(-per_doc[qi])[:100]
        run[q] = {names[j]: float(per_doc[qi, j]) for j in top}
    return evaluate(run, qrels, ["ndcg@10"])["ndcg@10"]


def embedder_label(emb: Embedder) -> str:
    runtime = "onnxruntime" if type(emb).__name__ == "OnnxEmbedder" else "torch"
    return f"{getattr(emb, 'dtype', '?')}, {runtime}, batch {emb.batch_size}"


def quality_alternatives(model_path: str, work: Path, names: str) -> dict[str, Callable]:
    from kb.embedders.onnx import OnnxEmbedder
    from kb.embedders.sentence_transformers import SentenceTransformerEmbedder

    def torch_emb(dtype: str, max_len: int | None = None):
        def make():
            emb = SentenceTransformerEmbedder(model_path, dtype=dtype)
            if max_len:
                emb._model.max_seq_length = max_len
            return emb

        return make

    known = {
        "float32": ("float32, torch", torch_emb("float32")),
        "bfloat16": ("bfloat16, torch", torch_emb("bfloat16")),
        "int8": (
            "int8, onnxruntime",
            lambda: OnnxEmbedder(model_path, cache_dir=work / "cache", dtype="int8"),
        ),
        "bfloat16-max128": ("bfloat16, max_seq_length 128", torch_emb("bfloat16", 128)),
    }
    out = {}
    for name in filter(None, (n.strip() for n in names.split(","))):
        if name not in known:
            raise SystemExit(f"unknown --quality setting {name!r}: use some of {', '.join(known)}")
        label, make = known[name]
        out[label] = make
    return out


def lever_rows(model_path: str, plain, sample: list[str], work: Path, reps: int) -> list[dict]:
    """Embedding rate of each setting on the same sample, alternating, as a ratio to plain."""
    import torch

    from kb.embedders.onnx import OnnxEmbedder
    from kb.embedders.sentence_transformers import SentenceTransformerEmbedder

    fp32 = SentenceTransformerEmbedder(model_path, dtype="float32", batch_size=64)
    bf16 = SentenceTransformerEmbedder(model_path, dtype="bfloat16", batch_size=64)
    bf16_128 = SentenceTransformerEmbedder(model_path, dtype="bfloat16", batch_size=64)
    bf16_128._model.max_seq_length = 128
    ort = {
        (dtype, pad): OnnxEmbedder(
            model_path, cache_dir=work / "cache", dtype=dtype, pad_to_multiple_of=pad
        )
        for dtype, pad in (("float32", 8), ("int8", 8), ("int8", 0))
    }
    ort_1t = OnnxEmbedder(model_path, cache_dir=work / "cache", dtype="int8", threads=1)
    threads = torch.get_num_threads()

    def batched(emb: Embedder, size: int) -> Callable[[], object]:
        def run():
            emb.batch_size, old = size, emb.batch_size
            try:
                return emb.embed(sample)
            finally:
                emb.batch_size = old

        return run

    def one_thread(fn: Callable[[], object]) -> Callable[[], object]:
        def run():
            torch.set_num_threads(1)
            try:
                return fn()
            finally:
                torch.set_num_threads(threads)

        return run

    def unsorted() -> None:  # batches of 32 in corpus order: each padded to its longest text
        for lo in range(0, len(sample), 32):
            plain.encode(sample[lo : lo + 32], batch_size=32)

    settings: list[tuple[str, str, Callable[[], object]]] = [
        ("baseline", "plain ST float32, batch 32 (sorts by length)", lambda: plain.encode(sample)),
        ("sorting", "plain ST float32, batch 32, unsorted", unsorted),
        ("batch", "kb torch float32, batch 64", batched(fp32, 64)),
        ("bfloat16", "kb torch bfloat16, batch 64", batched(bf16, 64)),
        ("batch", "kb torch bfloat16, batch 16", batched(bf16, 16)),
        ("batch", "kb torch bfloat16, batch 128", batched(bf16, 128)),
        ("threads", "kb torch bfloat16, batch 64, 1 thread", one_thread(batched(bf16, 64))),
        ("max_seq_length", "kb torch bfloat16, max_seq_length 128", batched(bf16_128, 64)),
        ("onnx", "onnxruntime float32, pad to 8", batched(ort[("float32", 8)], 64)),
        ("onnx int8", "onnxruntime int8, pad to 8", batched(ort[("int8", 8)], 64)),
        ("padding", "onnxruntime int8, no pad multiple", batched(ort[("int8", 0)], 64)),
        ("threads", "onnxruntime int8, pad to 8, 1 thread", batched(ort_1t, 64)),
        ("batch", "onnxruntime int8, pad to 8, batch 128", batched(ort[("int8", 8)], 128)),
    ]
    for _, _, fn in settings[:1] + settings[3:4] + settings[9:10]:
        fn()  # warm-up: first calls allocate and pick kernels
    seconds: dict[int, list[float]] = {i: [] for i in range(len(settings))}
    for _ in range(reps):
        for i, (_, _, fn) in enumerate(settings):
            t = time.perf_counter()
            fn()
            seconds[i].append(time.perf_counter() - t)
    rows = []
    for i, (lever, label, _) in enumerate(settings):
        ratio = statistics.median(b / s for b, s in zip(seconds[0], seconds[i], strict=True))
        rows.append(
            {
                "lever": lever,
                "setting": label,
                "chunks_per_s": round(len(sample) / statistics.median(seconds[i]), 2),
                "ratio_vs_plain": round(ratio, 3),
                "seconds": [round(s, 3) for s in seconds[i]],
            }
        )
    return rows


def overlap_rows(
    settings: Settings, docs: list[Document], reps: int, embedders: dict[str, Embedder]
) -> list[dict]:
    """kb ingest of the same documents with parsing in a prefetch thread and without."""
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for rep in range(reps):
        for prefetch in (False, True):
            folder = settings.data_dir / f"overlap-{rep}-{prefetch}"
            kb = KnowledgeBase(
                settings.model_copy(update={"data_dir": folder}), embedders=embedders
            )
            col = kb.create_collection("overlap")
            emb = kb.embedder_for(col.embedder)
            chunker = kb.chunker_for(emb)
            ingestor = Ingestor(col, emb, chunker, prefetch=prefetch)
            t = time.perf_counter()
            with col.write_lock():
                ingestor.sync(document_sources(docs, chunker.fingerprint), total=len(docs))
            seconds[prefetch].append(time.perf_counter() - t)
    base = seconds[False]
    return [
        {
            "lever": "overlap",
            "setting": f"kb ingest of {len(docs)} docs, parsing {how}",
            "docs_per_s": round(len(docs) / statistics.median(seconds[prefetch]), 2),
            "ratio_vs_serial": round(
                statistics.median(b / s for b, s in zip(base, seconds[prefetch], strict=True)), 3
            ),
            "seconds": [round(s, 3) for s in seconds[prefetch]],
        }
        for prefetch, how in ((False, "in the same thread"), (True, "overlapped (prefetch thread)"))
    ]


def print_tables(r: dict) -> None:
    h = r["headline"]
    print(f"\nIngest: {r['documents']} docs, {r['chunks']} chunks, {r['tokens']} tokens")
    print(f"{'':24} {'seconds':>9} {'docs/s':>9} {'chunks/s':>9} {'tokens/s':>10} {'ratio':>6}")
    rows = [("plain ST encode fp32", h["plain"])]
    rows += [(f"kb ingest, {dtype}", x) for dtype, x in h["kb"].items()]
    for label, x in rows:
        print(
            f"{label:24} {x['seconds']:>9.1f} {x['docs_per_s']:>9.1f} "
            f"{x['chunks_per_s']:>9.1f} {x['tokens_per_s']:>10.0f} {x.get('ratio', 1.0):>5.2f}x"
            f"  CPU {x.get('cpu_ratio', 1.0):.2f}x"
        )
    print(f"target: kb / plain >= {r['target_ratio']}x")
    print(f"\nSciFact test nDCG@10 ({r['queries']} queries), exact search")
    for q in r["quality"]:
        print(f"  {q['setting']:44} {q['ndcg@10']:.4f}  {q['delta']:+.4f}")
    print(f"\nLevers ({r['reps']} alternating reps)")
    print(f"  {'lever':15} {'setting':46} {'rate':>9} {'ratio':>7}")
    for row in r["levers"]:
        rate = row.get("chunks_per_s", row.get("docs_per_s"))
        unit = "ch/s" if "chunks_per_s" in row else "doc/s"
        ratio = row.get("ratio_vs_plain", row.get("ratio_vs_serial"))
        print(f"  {row['lever']:15} {row['setting']:46} {rate:>6.1f}{unit:>5} {ratio:>6.2f}x")


if __name__ == "__main__":
    main()

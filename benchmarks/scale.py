"""Scale benchmark for kb.store.index: build time, memory, recall@10 and latency at 1M vectors.

    .venv/bin/python benchmarks/scale.py                # 1,000,000 x 384, SciFact-derived data
    .venv/bin/python benchmarks/scale.py --tiny --out /tmp/scale.json   # seconds, synthetic

Data (default, "scifact-mixture"):
  1. Base vectors: SciFact abstracts (corpus.jsonl) split into sentences (regex on .!? followed by
     whitespace, sentences over 20 characters), a seeded random sample embedded with the bundled
     all-MiniLM-L6-v2 (kb.embedders "minilm", bfloat16) for about --embed-seconds (the rate is
     measured on a first batch and the sample sized to fit).
  2. Queries: the first --queries SciFact queries (queries.jsonl), embedded with the same model.
  3. Each of the --n database vectors is a noisy local mixture of real embeddings
     (--mixture walk, the default):
       v = normalise(w_1 e_1 + w_2 e_2 + w_3 e_3 + sigma * z)
     with e_1 a random base vector, e_2 a random one of e_1's 10 nearest base neighbours, e_3 one
     of e_2's (a short walk on the neighbour graph), w ~ Dirichlet(1, 1, 1), and
     z = sum_{r=1..4} (e_a_r - e_b_r) / sqrt(8) for random base vectors a_r, b_r, i.e. noise with
     the covariance of the real embeddings (anisotropic, like real text), sigma = --sigma (0.5).
     --mixture pair is the clumpier variant v = normalise((1 - t) e_1 + t e_2 + sigma z),
     t ~ U(0, 0.5): with ~200 vectors per base sentence at 1M, half or more of a query's top 10
     then derive from one sentence (near-duplicate clumps), which is hard for HNSW.
  Uniform random vectors would be unrealistically hard for IVF; this keeps the cluster structure
  and spectrum of real sentence embeddings. The JSON records how close queries come to the
  synthetic data and to the real sentences (mean top-1 / top-10 cosine) and the share of each
  query's exact top 10 that derives from the same base sentence as its top 1 (clumpiness) as
  realism checks.

Data (--synthetic, implied by --tiny): 2*sqrt(n) Gaussian cluster centres on the sphere, points =
centre + isotropic noise, queries drawn the same way; no model needed.

Ground truth: exact top-10 by brute-force inner product (faiss.knn, IndexFlatIP in query batches).
Indexes: flat (exact), IVF with fp16 codes at several nprobe, HNSW (M=32) with SQ8 codes at several
ef_search when its estimated size fits 1 GB. For each: train and add time, index bytes
(VectorIndex.memory_bytes) and RSS delta, recall@10, single-query latency p50/p95/p99 (one query
per call, one OpenMP thread, as the service searches) and batch throughput (all queries in one
call, all cores). A thread study compares single-query latency with 1 vs all OpenMP threads and
throughput with 1 vs 2 concurrent searching threads. Results: a table on stdout and JSON at --out.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import re
import sys
import threading
import time
from pathlib import Path

# OpenMP workers that spin while waiting made FAISS 4x slower on this busy 2-core machine;
# must be set before FAISS loads its OpenMP runtime
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kb.store.index import (  # noqa: E402
    HNSW_M,
    VectorIndex,
    build_index,
    default_train_size,
    omp_threads,
    recall_at_k,
    resolve_kind,
    tune_nprobe,
)

SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
K = 10
GB = 1 << 30


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    if args.synthetic:
        data, queries, data_info, sources = synthetic_data(args.n, args.dim, args.queries, rng)
    else:
        data, queries, data_info, sources = scifact_data(args, rng)
    print(
        f"data: {data.shape[0]:,} x {data.shape[1]}, {len(queries)} queries "
        f"({data_info['source']}), {time.perf_counter() - started:.0f}s",
        flush=True,
    )

    t0 = time.perf_counter()
    truth = exact_top_k(queries, data, K)
    gt_seconds = time.perf_counter() - t0
    # clumpiness: how much of a query's exact top 10 derives from its top 1's sentence / centre
    data_info["top10_same_source_share"] = float(np.mean(sources[truth] == sources[truth[:, :1]]))
    del sources
    data_info["queries_top1_cosine_mean"] = float(
        faiss.knn(queries, data, 1, metric=faiss.METRIC_INNER_PRODUCT)[0].mean()
    )

    results = []
    thread_study = None
    for kind in args.kinds:
        result, index = run_kind(kind, data, queries, truth, args, rng)
        results.append(result)
        if kind == "ivf" and index is not None:
            thread_study = study_threads(index, queries, args)
        del index
        release_memory()

    report = {
        "benchmark": "scale",
        "n": int(data.shape[0]),
        "dim": int(data.shape[1]),
        "queries": len(queries),
        "k": K,
        "tiny": args.tiny,
        "data": data_info,
        "ground_truth": {"method": "faiss.knn brute-force inner product", "seconds": gt_seconds},
        "indexes": results,
        "threads": thread_study,
        "targets": {"recall_at_10": 0.95, "p50_ms": 5.0, "index_bytes": GB},
        "machine": {
            "cpus": os.cpu_count(),
            "faiss": faiss.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "load_average_at_end": os.getloadavg(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "omp_max_threads": faiss.omp_get_max_threads(),
        },
        "total_seconds": time.perf_counter() - started,
    }
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="database vectors")
    p.add_argument("--dim", type=int, default=384, help="dimension (real data: the model's, 384)")
    p.add_argument("--queries", type=int, default=1000, help="queries (SciFact has 1,109)")
    p.add_argument("--tiny", action="store_true", help="n=20000, 50 queries, synthetic: seconds")
    p.add_argument("--synthetic", action="store_true", help="clustered Gaussian data, no model")
    p.add_argument("--kinds", default="flat,ivf,hnsw", help="comma list of flat, ivf, hnsw")
    p.add_argument("--nprobe", default="16,32,64,128", help="IVF nprobe values to sweep")
    p.add_argument("--ef-search", default="32,64,128,256", help="HNSW ef_search values to sweep")
    p.add_argument(
        "--latency-queries", type=int, default=1000, help="single queries timed per setting"
    )
    p.add_argument(
        "--flat-latency-queries", type=int, default=200, help="the same for exact search"
    )
    p.add_argument(
        "--embed-seconds", type=float, default=150, help="time budget for base sentences"
    )
    p.add_argument("--sigma", type=float, default=0.5, help="noise scale of the mixtures")
    p.add_argument(
        "--mixture", choices=sorted(MIXTURE_METHODS), default="walk", help="how vectors are mixed"
    )
    p.add_argument("--cache", type=Path, help="npz to reuse embeddings between runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    args = p.parse_args(argv)
    if args.tiny:
        args.n, args.queries, args.synthetic = 20_000, 50, True
        args.latency_queries = args.flat_latency_queries = 50
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    args.nprobe = [int(v) for v in args.nprobe.split(",")]
    args.ef_search = [int(v) for v in args.ef_search.split(",")]
    return args


# -- data -------------------------------------------------------------------------------------


def synthetic_data(n: int, dim: int, n_queries: int, rng: np.random.Generator):
    n_centres = max(2, int(2 * math.sqrt(n)))
    centres = normalised(rng.standard_normal((n_centres, dim), dtype=np.float32))
    spread = 0.8  # noise norm relative to the unit centre: neighbours share a cluster loosely

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        noise = rng.standard_normal((count, dim), dtype=np.float32) * (spread / math.sqrt(dim))
        which = rng.integers(0, n_centres, count)
        return normalised(centres[which] + noise), which

    info = {
        "source": "synthetic-clusters",
        "method": f"{n_centres} Gaussian centres on the unit sphere; point = normalise(centre + "
        f"N(0, ({spread}^2/dim) I)); queries drawn the same way",
    }
    data, sources = draw(n)
    return data, draw(n_queries)[0], info, sources


def scifact_data(args: argparse.Namespace, rng: np.random.Generator):
    base, queries, embed_info = scifact_embeddings(args, rng)
    if base.shape[1] != args.dim:
        sys.exit(
            f"--dim {args.dim} does not match the embedding model ({base.shape[1]}); "
            "drop --dim or add --synthetic"
        )
    t0 = time.perf_counter()
    data, sources = mix(base, args.n, args.sigma, rng, args.mixture)
    info = {
        "source": "scifact-mixture",
        "mixture": args.mixture,
        "method": MIXTURE_METHODS[args.mixture],
        "sigma": args.sigma,
        "base_sentences": len(base),
        "queries_source": "SciFact queries.jsonl (first N), all-MiniLM-L6-v2",
        "synthesis_seconds": time.perf_counter() - t0,
        **embed_info,
    }
    top, _ = faiss.knn(queries, base, K, metric=faiss.METRIC_INNER_PRODUCT)
    info["queries_top1_cosine_mean_real_sentences"] = float(top[:, 0].mean())
    info["queries_top10_cosine_mean_real_sentences"] = float(top[:, K - 1].mean())
    cos_to_base = np.einsum("ij,ij->i", data[:2000], base[sources[:2000]])
    info["mean_cosine_to_source_sentence"] = float(cos_to_base.mean())
    return data, queries, info, sources


def scifact_embeddings(args: argparse.Namespace, rng: np.random.Generator):
    if args.cache and args.cache.exists():
        saved = np.load(args.cache, allow_pickle=False)
        info = json.loads(str(saved["info"]))
        return saved["base"], saved["queries"][: args.queries], info
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from kb.embedders import load_embedder
    from kb.settings import Settings

    sentences = scifact_sentences()
    with open(SCIFACT / "queries.jsonl") as f:
        queries = [json.loads(line)["text"] for line in f][: args.queries]
    embedder = load_embedder("minilm", Settings())
    order = rng.permutation(len(sentences))
    probe = [sentences[i] for i in order[:256]]
    t0 = time.perf_counter()
    probe_vectors = embedder.embed(probe)
    rate = len(probe) / (time.perf_counter() - t0)
    count = min(len(sentences), max(len(probe), int(rate * args.embed_seconds)))
    print(
        f"embedding: {rate:.0f} sentences/s; embedding {count:,} of {len(sentences):,}", flush=True
    )
    t0 = time.perf_counter()
    rest = embedder.embed([sentences[i] for i in order[len(probe) : count]])
    base = np.concatenate([probe_vectors, rest])
    base_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    query_vectors = embedder.embed(queries)
    info = {
        "embedder": embedder.model_id,
        "embed_dtype": getattr(embedder, "dtype", None),
        "sentences_available": len(sentences),
        "embed_rate_per_s": rate,
        "embed_base_seconds": base_seconds,
        "embed_queries_seconds": time.perf_counter() - t0,
    }
    if args.cache:
        np.savez(args.cache, base=base, queries=query_vectors, info=json.dumps(info))
    return base, query_vectors, info


def scifact_sentences() -> list[str]:
    sentences = []
    with open(SCIFACT / "corpus.jsonl") as f:
        for line in f:
            text = json.loads(line)["text"]
            sentences += [s for s in re.split(r"(?<=[.!?])\s+", text) if len(s) > 20]
    return sentences


MIXTURE_METHODS = {
    "walk": "v = normalise(w1 e1 + w2 e2 + w3 e3 + sigma z); e1 a random real SciFact sentence "
    "embedding, e2 one of e1's 10 nearest real neighbours, e3 one of e2's, w ~ Dirichlet(1,1,1), "
    "z = sum_{r=1..4}(e_a - e_b)/sqrt(8) over random real embeddings (data covariance)",
    "pair": "v = normalise((1-t) e1 + t e2 + sigma z); e1 a random real SciFact sentence "
    "embedding, e2 one of its 10 nearest real neighbours, t ~ U(0, 0.5), z = "
    "sum_{r=1..4}(e_a - e_b)/sqrt(8) over random real embeddings (data covariance)",
}


def mix(base: np.ndarray, n: int, sigma: float, rng: np.random.Generator, mixture: str = "walk"):
    """n noisy local mixtures of the rows of `base` (see the module docstring), and their e1."""
    m, dim = base.shape
    _, neighbours = faiss.knn(base, base, 11, metric=faiss.METRIC_INNER_PRODUCT)
    neighbours = neighbours[:, 1:]
    out = np.empty((n, dim), dtype=np.float32)
    sources = rng.integers(0, m, n)
    for lo in range(0, n, 50_000):
        size = min(n, lo + 50_000) - lo
        i = sources[lo : lo + size]
        if mixture == "pair":
            t = rng.uniform(0, 0.5, (size, 1)).astype(np.float32)
            weights, steps = np.hstack([1 - t, t]), 2
        else:
            weights, steps = rng.dirichlet(np.ones(3), size).astype(np.float32), 3
        v = weights[:, :1] * base[i]
        for step in range(1, steps):
            i = neighbours[i, rng.integers(0, neighbours.shape[1], size)]
            v += weights[:, step : step + 1] * base[i]
        z = np.zeros((size, dim), dtype=np.float32)
        for _ in range(4):
            z += base[rng.integers(0, m, size)] - base[rng.integers(0, m, size)]
        out[lo : lo + size] = normalised(v + (sigma / math.sqrt(8)) * z)
    return out, sources


def normalised(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    faiss.normalize_L2(x)
    return x


# -- measurement ------------------------------------------------------------------------------


def exact_top_k(queries: np.ndarray, data: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((len(queries), k), dtype=np.int64)
    for lo in range(0, len(queries), 256):
        _, out[lo : lo + 256] = faiss.knn(
            queries[lo : lo + 256], data, k, metric=faiss.METRIC_INNER_PRODUCT
        )
    return out


def run_kind(kind, data, queries, truth, args, rng):
    """Build one index kind over `data` and measure it; returns (result, index or None)."""
    n, dim = data.shape
    spec = resolve_kind("hnsw:sq=sq8" if kind == "hnsw" else kind, n)
    if kind == "hnsw":
        kind = f"hnsw:m={HNSW_M},sq=sq8"
        estimate = n * (dim + 2 * HNSW_M * 4 + 8 + 48)
        if estimate > GB:
            print(f"{kind}: skipped, about {estimate / GB:.2f} GB > 1 GB", flush=True)
            return {"kind": kind, "skipped": f"estimated {estimate} bytes > 1 GB"}, None
    print(f"{kind}: building", flush=True)
    release_memory()
    rss_before = rss_bytes()
    t0 = time.perf_counter()
    train = None
    if spec.needs_training:
        pick = rng.choice(n, size=min(n, default_train_size(n, spec)), replace=False)
        train = data[np.sort(pick)]
    index = build_index(dim, n, kind, train_vectors=train)
    train_seconds = time.perf_counter() - t0
    del train
    t0 = time.perf_counter()
    ids = np.arange(n, dtype=np.int64)
    for lo in range(0, n, 100_000):
        index.add(ids[lo : lo + 100_000], data[lo : lo + 100_000])
    add_seconds = time.perf_counter() - t0
    release_memory()
    result = {
        "kind": index.kind,
        "train_seconds": train_seconds,
        "add_seconds": add_seconds,
        "build_seconds": train_seconds + add_seconds,
        "index_bytes": index.memory_bytes(),
        "rss_delta_bytes": rss_bytes() - rss_before,
        "default_params": index.search_params,
        "settings": [],
    }
    print(
        f"{index.kind}: built in {train_seconds:.1f}s train + {add_seconds:.1f}s add, "
        f"{result['index_bytes'] / 1e6:.0f} MB",
        flush=True,
    )
    if index.kind == "flat":
        sweep = [{}]
        latency_queries = args.flat_latency_queries
    elif "nprobe" in index.search_params:
        sweep = [{"nprobe": v} for v in args.nprobe]
        latency_queries = args.latency_queries
    else:
        sweep = [{"ef_search": v} for v in args.ef_search]
        latency_queries = args.latency_queries
    default = dict(index.search_params)
    for params in sweep:
        index.set_search_params(**params)
        result["settings"].append(measure(index, queries, truth, latency_queries) | params)
        row = result["settings"][-1]
        print(
            f"  {params or 'exact'}: recall@10 {row['recall_at_10']:.4f}, "
            f"p50 {row['p50_ms']:.2f} ms, batch {row['batch_qps']:.0f} q/s",
            flush=True,
        )
    if "nprobe" in default:
        result["nprobe_for_recall_0.95"] = tune_nprobe(index, queries, truth, target=0.95)
    index.set_search_params(**default)
    if default and default not in [{k: s[k] for k in default} for s in result["settings"]]:
        result["settings"].append(
            measure(index, queries, truth, latency_queries) | default | {"default": True}
        )
    return result, index


def measure(
    index: VectorIndex, queries: np.ndarray, truth: np.ndarray, latency_queries: int
) -> dict:
    t0 = time.perf_counter()
    _, found = index.search(queries, K)  # batch: all cores
    batch_seconds = time.perf_counter() - t0
    latencies = single_query_latencies(index, queries[:latency_queries])
    return {
        "recall_at_10": recall_at_k(found, truth),
        "p50_ms": float(np.percentile(latencies, 50) * 1e3),
        "p95_ms": float(np.percentile(latencies, 95) * 1e3),
        "p99_ms": float(np.percentile(latencies, 99) * 1e3),
        "latency_queries": len(latencies),
        "batch_qps": len(queries) / batch_seconds,
    }


def single_query_latencies(index: VectorIndex, queries: np.ndarray) -> np.ndarray:
    index.search(queries[:5], K)  # warm caches
    out = np.empty(len(queries))
    for i in range(len(queries)):
        t0 = time.perf_counter()
        index.search(queries[i : i + 1], K)
        out[i] = time.perf_counter() - t0
    return out


def study_threads(index: VectorIndex, queries: np.ndarray, args) -> dict:
    """Single-query latency with 1 vs all OpenMP threads; QPS with 1 vs 2 searching threads."""
    sample = queries[: min(len(queries), args.latency_queries)]
    all_threads = os.cpu_count() or 1

    def forced(n_omp: int) -> np.ndarray:
        out = np.empty(len(sample))
        for i in range(len(sample)):
            t0 = time.perf_counter()
            with omp_threads(n_omp):
                index._index.search(sample[i : i + 1], K)  # bypass search()'s own thread choice
            out[i] = time.perf_counter() - t0
        return out

    one, many = forced(1), forced(all_threads)

    def concurrent_qps(workers: int) -> float:
        def work(part):
            for i in part:
                index.search(sample[i : i + 1], K)

        threads = [
            threading.Thread(target=work, args=(range(w, len(sample), workers),))
            for w in range(workers)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return len(sample) / (time.perf_counter() - t0)

    return {
        "index": index.kind,
        "params": index.search_params,
        "single_query_p50_ms_omp1": float(np.median(one) * 1e3),
        f"single_query_p50_ms_omp{all_threads}": float(np.median(many) * 1e3),
        "qps_1_thread": concurrent_qps(1),
        "qps_2_threads": concurrent_qps(2),
        "note": "measured side by side in one run; the machine is shared, so compare ratios",
    }


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def release_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError):  # hand freed heap pages back so RSS deltas mean something
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def print_table(report: dict) -> None:
    print(
        f"\n{report['n']:,} x {report['dim']} ({report['data']['source']}), "
        f"{report['queries']} queries, recall@{K} vs exact"
    )
    header = f"{'index':18} {'params':16} {'recall':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'batch q/s':>9} {'MB':>6} {'build s':>8}"
    print(header)
    print("-" * len(header))
    for result in report["indexes"]:
        if "skipped" in result:
            print(f"{result['kind']:18} skipped: {result['skipped']}")
            continue
        for row in result["settings"]:
            params = (
                ",".join(f"{k}={row[k]}" for k in ("nprobe", "ef_search") if k in row) or "exact"
            )
            print(
                f"{result['kind']:18} {params:16} {row['recall_at_10']:7.4f} {row['p50_ms']:7.2f} "
                f"{row['p95_ms']:7.2f} {row['p99_ms']:7.2f} {row['batch_qps']:9.0f} "
                f"{result['index_bytes'] / 1e6:6.0f} {result['build_seconds']:8.1f}"
            )
    if report["threads"]:
        print(
            "threads:",
            {k: round(v, 2) if isinstance(v, float) else v for k, v in report["threads"].items()},
        )


if __name__ == "__main__":
    main()

"""Query latency over HTTP: /search and /query (rag, generation skipped) at 1, 8 and 32 clients.

    .venv/bin/python benchmarks/query.py                 # 100,000 chunks, cached after one build
    .venv/bin/python benchmarks/query.py --tiny --out /tmp/query.json       # seconds to a minute

Collection (built once into benchmarks/.cache/query-<chunks>/, reused while it exists):
  real documents: the SciFact corpus (5,183 abstracts, title + text) and the 20 Newsgroups
  messages of ../shared/data/newsgroups (1,986 files, through kb's own loaders), chunked by kb's
  chunker; then synthesized variants of those documents (each chunk's sentences shuffled, seeded)
  until there are --chunks chunks. A seeded sample of the real chunks is embedded with kb's
  default embedder for at most --embed-seconds (the rate is recorded); every other chunk gets a
  vector of the same distribution, normalise(e_a + (e_b - e_c) / 2) from embedded vectors (its
  own original's as e_a where that was embedded). Latency depends on the index sizes (FAISS,
  BM25, SQLite rows), which are real; the synthesized vectors only spare hours of embedding.

Server: `uvicorn` serving `api.app.create_app` in a subprocess (so the load generator does not
share its GIL), on the cached data dir, with the default settings (hybrid retrieval; the dense
index is what KB_INDEX_TYPE=auto picks for the size, rebuilt first if the cache holds another).
Client: N workers in a closed loop over the SciFact claims (1,109 distinct), after a warm-up,
each on one keep-alive connection speaking HTTP/1.1 over asyncio streams (--client httpx for
httpx.AsyncClient, which spent 1.4 ms of client CPU per request against 0.2 ms, on a machine
where client and server share 2 cores). Per cell: p50/p95/p99 latency, throughput, and the CPU
milliseconds the server process and the load generator each spent per request. The matrix runs with the query
cache off (KB_EMBED_QUERY_CACHE=0), so every request embeds its query as a new one would.
Levers (8 clients, /search): the httpx client, uvicorn on its pure-Python h11 + asyncio instead
of httptools + uvloop, queries embedded by float32 ONNX or by torch instead of int8 ONNX, 20
repeated queries with the query cache off and on, searches not held to one per core
(KB_SEARCH_CONCURRENCY=0) or given one slot more than cores, SQLite rows read by read() calls
instead of a memory map (KB_SQLITE_MMAP_MB=0), one thread per library (OMP_NUM_THREADS=1), the
anyio thread pool capped, and exact search (a flat index) instead of IVF.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared" / "data"
CACHE = ROOT / "benchmarks" / ".cache"
COLLECTION = "bench"
TARGET_P99_MS = 30.0
#: the matrix measures distinct queries: with the cache, a claim seen in an earlier cell is free
NO_CACHE = {"KB_EMBED_QUERY_CACHE": "0"}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.serve:
        return serve(args)
    started = time.perf_counter()
    data_dir, build = build_collection(args)
    build["index"] = set_index(data_dir, "auto")
    queries = load_queries()
    endpoints = ("search", "query")
    cells = []
    with server(data_dir, NO_CACHE) as srv:
        warm_up(srv.url, queries, args.warmup)
        for endpoint in endpoints:
            for clients in args.clients:
                cells.append(
                    measure(srv, endpoint, clients, queries, args.requests, client=args.client)
                )
                print_cell(cells[-1])
    levers = [] if args.no_levers else lever_cells(args, data_dir, queries)
    report = {
        "benchmark": "query",
        "collection": build,
        "clients": args.clients,
        "requests_per_cell": args.requests,
        "target": {"endpoint": "search", "clients": 8, "p99_ms": TARGET_P99_MS},
        "cells": cells,
        "levers": levers,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
            "python": platform.python_version(),
        },
    }
    print_tables(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--chunks", type=int, default=100_000, help="chunks in the collection")
    p.add_argument("--embed-seconds", type=float, default=300, help="budget to embed real chunks")
    p.add_argument("--real-docs", type=int, help="a seeded sample of the real documents")
    p.add_argument("--clients", default="1,8,32", help="comma list of concurrent clients")
    p.add_argument(
        "--requests",
        type=int,
        default=1000,
        help="requests per cell (at least 4/client); p99 is then the 10th slowest",
    )
    p.add_argument("--warmup", type=int, default=20, help="requests before measuring")
    p.add_argument("--no-levers", action="store_true", help="only the endpoint x clients matrix")
    p.add_argument("--tiny", action="store_true", help="2,000 chunks, few requests, no levers")
    p.add_argument("--data-dir", type=Path, help="use this data dir instead of the cache")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "query.json")
    p.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--max-threads", type=int, help=argparse.SUPPRESS)
    p.add_argument("--plain-http", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--client",
        default="raw",
        choices=["raw", "httpx"],
        help="load generator: raw asyncio HTTP/1.1 (default, least client CPU) or httpx",
    )
    args = p.parse_args(argv)
    if args.tiny:
        args.chunks, args.embed_seconds, args.requests, args.warmup = 2000, 5, 16, 4
        args.real_docs = 150
        args.clients, args.no_levers = "1,4", True
    args.clients = [int(c) for c in str(args.clients).split(",") if c]
    return args


# -- the collection ----------------------------------------------------------------------------


def set_index(data_dir: Path, kind: str) -> dict:
    """Rebuild the collection's dense index as `kind` (what `kb reindex --index KIND` does) when
    it is not that already; a cached collection built under other defaults is brought in line."""
    from kb.service import KnowledgeBase
    from kb.settings import Settings
    from kb.store.index import resolve_kind

    kb = KnowledgeBase(Settings(data_dir=data_dir))
    col = kb.collection(COLLECTION)
    dense = col.snapshot().dense
    wanted = resolve_kind(kind, dense.ntotal, kb.settings.exact_search_max).family
    if col.index_kind == kind and dense.kind.startswith(wanted):
        return {"kind": dense.kind, **dense.search_params, "rebuilt_seconds": None}
    result = kb.reindex(COLLECTION, kind)
    print(f"index: {result['index']} {result['search_params']} in {result['seconds']} s")
    return {
        "kind": result["index"],
        **result["search_params"],
        "rebuilt_seconds": result["seconds"],
    }


def build_collection(args: argparse.Namespace) -> tuple[Path, dict]:
    """The cached data dir with COLLECTION of about args.chunks chunks; built when missing."""
    import numpy as np

    from kb.service import KnowledgeBase
    from kb.settings import Settings
    from kb.store.collection import NewDocument

    data_dir = args.data_dir or CACHE / f"query-{args.chunks}"
    done = data_dir / "build.json"
    if done.exists():
        return data_dir, json.loads(done.read_text())
    started = time.perf_counter()
    kb = KnowledgeBase(Settings(data_dir=data_dir))
    if kb.has_collection(COLLECTION):
        kb.delete_collection(COLLECTION)  # a build that died half way
    embedder = kb.embedder
    chunker = kb.chunker_for(embedder)
    docs = real_documents()
    if args.real_docs and args.real_docs < len(docs):
        docs = random.Random(1).sample(docs, args.real_docs)
    real = [(d, chunker.split(d)) for d in docs]
    real = [(d, cs) for d, cs in real if cs]
    chunked_s = time.perf_counter() - started
    flat = [(di, ci) for di, (_, cs) in enumerate(real) for ci in range(len(cs))]
    rng = random.Random(0)
    order = flat[:]
    rng.shuffle(order)

    from ingest.pipeline import embed_input

    vectors: dict[tuple[int, int], np.ndarray] = {}
    t = time.perf_counter()
    for lo in range(0, len(order), 256):
        if time.perf_counter() - t > args.embed_seconds and len(vectors) >= 64:
            break
        part = order[lo : lo + 256]
        vecs = embedder.embed([embed_input(real[di][1][ci]) for di, ci in part])
        vectors.update(zip(part, vecs, strict=True))
    embed_s = time.perf_counter() - t
    pool = np.stack(list(vectors.values()))
    nrng = np.random.default_rng(0)

    def synthesized(original: tuple[int, int]) -> np.ndarray:
        a, b, c = nrng.integers(0, len(pool), 3)
        base = vectors.get(original, pool[a])
        v = base + (pool[b] - pool[c]) / 2
        return (v / np.linalg.norm(v)).astype(np.float32)

    add: list[NewDocument] = []
    total = 0
    variant = 0
    while total < args.chunks:
        for di, (doc, chunks) in enumerate(real):
            if total >= args.chunks:
                break
            if variant == 0:
                texts = [c.text for c in chunks]
                vecs = [vectors.get((di, ci)) for ci in range(len(chunks))]
                vecs = [v if v is not None else synthesized((di, ci)) for ci, v in enumerate(vecs)]
                source = doc.source
            else:
                texts = [shuffle_sentences(c.text, rng) for c in chunks]
                vecs = [synthesized((di, ci)) for ci in range(len(chunks))]
                source = f"variant-{variant}/{doc.source}"
            new_chunks = [
                type(c)(**{**c.__dict__, "text": text})
                for c, text in zip(chunks, texts, strict=True)
            ]
            add.append(
                NewDocument(
                    source=source,
                    origin=source,
                    origin_hash=hashlib.sha256(source.encode()).hexdigest(),
                    title=doc.title,
                    metadata={"variant": variant},
                    chars=sum(len(x) for x in texts),
                    chunks=new_chunks,
                    vectors=np.stack(vecs),
                )
            )
            total += len(chunks)
        variant += 1
    col = kb.create_collection(COLLECTION)
    t = time.perf_counter()
    with col.write_lock():
        col.commit(add=add)
    commit_s = time.perf_counter() - t
    info = {
        "data_dir": str(data_dir),
        "collection": COLLECTION,
        "documents": len(add),
        "chunks": total,
        "real_documents": len(real),
        "real_chunks": len(flat),
        "embedded_chunks": len(vectors),
        "embedder": f"{type(embedder).__name__} {getattr(embedder, 'dtype', '')}".strip(),
        "embed_chunks_per_s": round(len(vectors) / embed_s, 2),
        "chunk_seconds": round(chunked_s, 1),
        "commit_seconds": round(commit_s, 1),
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    done.write_text(json.dumps(info, indent=2))
    print(f"built {data_dir}: {json.dumps(info)}", flush=True)
    return data_dir, info


def real_documents():
    from ingest.loaders import load_file
    from kb.eval.beir import beir_documents, load_beir

    docs = list(beir_documents(load_beir(SHARED / "scifact", "test").corpus, "prepend"))
    for path in sorted((SHARED / "newsgroups").rglob("*")):
        if path.is_file():
            try:
                docs += load_file(path)
            except Exception as exc:  # a bad message is skipped, as an ingest would
                print(f"skipped {path}: {exc}", file=sys.stderr)
    return docs


def shuffle_sentences(text: str, rng: random.Random) -> str:
    parts = re.split(r"(?<=[.!?])\s+", text)
    rng.shuffle(parts)
    return " ".join(parts)


def load_queries() -> list[str]:
    with (SHARED / "scifact" / "queries.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


# -- the server --------------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> dict:
    """The --serve child: uvicorn on create_app over the data dir, optionally a smaller pool."""
    from contextlib import asynccontextmanager

    import anyio.to_thread
    import uvicorn

    from api.app import create_app
    from kb.settings import Settings

    app = create_app(Settings(data_dir=args.data_dir, default_collection=COLLECTION), warm=False)
    if args.max_threads:
        inner = app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(a):
            anyio.to_thread.current_default_thread_limiter().total_tokens = args.max_threads
            async with inner(a) as state:
                yield state

        app.router.lifespan_context = lifespan
    plain = {"http": "h11", "loop": "asyncio"} if args.plain_http else {}
    uvicorn.run(app, host="127.0.0.1", port=args.serve, log_level="warning", **plain)
    return {}


@dataclass
class Server:
    """A running benchmark server: its URL and process, whose CPU time each cell reads."""

    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def server(
    data_dir: Path,
    env: dict[str, str] | None = None,
    max_threads: int | None = None,
    plain_http: bool = False,
):
    """uvicorn in a subprocess; `plain_http` makes it use h11 and asyncio (its pure-Python
    fallbacks) instead of httptools and uvloop."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, __file__, "--serve", str(port), "--data-dir", str(data_dir)]
    if max_threads:
        cmd += ["--max-threads", str(max_threads)]
    if plain_http:
        cmd += ["--plain-http"]
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the benchmark server exited with {proc.returncode}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the benchmark server did not start in 300 s")
            time.sleep(0.5)
        yield Server(url, proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def request_body(endpoint: str, query: str) -> dict:
    if endpoint == "search":
        return {"query": query, "k": 10}
    return {"question": query, "mode": "rag", "k": 5, "generate": False}


def warm_up(url: str, queries: list[str], n: int) -> None:
    import httpx

    with httpx.Client(timeout=300) as client:
        for i in range(n):
            for endpoint in ("search", "query"):
                r = client.post(f"{url}/{endpoint}", json=request_body(endpoint, queries[-1 - i]))
                r.raise_for_status()


def measure(
    srv: Server,
    endpoint: str,
    clients: int,
    queries: list[str],
    requests: int,
    *,
    label: str = "",
    client: str = "raw",
) -> dict:
    """`requests` requests (at least 4 per client) by `clients` closed-loop workers, with the
    CPU time the server and the load generator each spent per request."""
    total = max(requests, 4 * clients)
    load = _load_raw if client == "raw" else _load_httpx
    server_cpu, client_cpu = srv.cpu_seconds(), time.process_time()
    latencies, errors, wall, extra = asyncio.run(load(srv.url, endpoint, clients, queries, total))
    server_cpu, client_cpu = srv.cpu_seconds() - server_cpu, time.process_time() - client_cpu
    ms = sorted(x * 1000 for x in latencies)
    done = max(1, len(ms))
    return {
        "label": label or "default",
        "endpoint": endpoint,
        "clients": clients,
        "requests": len(ms),
        "errors": errors,
        "p50_ms": round(percentile(ms, 50), 1),
        "p95_ms": round(percentile(ms, 95), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "mean_ms": round(statistics.fmean(ms), 1) if ms else None,
        "throughput_rps": round(len(ms) / wall, 2),
        "client": client,
        "server_cpu_ms_per_request": round(server_cpu * 1000 / done, 2),
        "client_cpu_ms_per_request": round(client_cpu * 1000 / done, 2),
        **extra,
    }


class _Tally:
    """What the workers of one cell saw: latencies, errors, server-side timings, finish reasons."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.latencies: list[float] = []
        self.server_s: list[float] = []
        self.finish: dict[str, int] = {}  # /query: "skipped" (generate=false) or "not_covered"
        self.errors = 0

    def record(self, seconds: float, status: int, payload: bytes) -> None:
        self.latencies.append(seconds)
        if status != 200:
            self.errors += 1
            return
        answer = json.loads(payload)
        timings = answer.get("timings", {})
        self.server_s.append(timings.get("search", timings.get("total", 0.0)))
        if self.endpoint == "query":
            reason = str(answer.get("finish_reason"))
            self.finish[reason] = self.finish.get(reason, 0) + 1

    def result(self, wall: float):
        inside = sorted(x * 1000 for x in self.server_s)
        extra = {"server_p50_ms": round(percentile(inside, 50), 1)} if inside else {}
        if self.finish:
            extra["finish_reasons"] = self.finish
        return self.latencies, self.errors, wall, extra


async def _load_httpx(url: str, endpoint: str, clients: int, queries: list[str], total: int):
    import httpx

    tally, counter = _Tally(endpoint), iter(range(total))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            body = request_body(endpoint, queries[i % len(queries)])
            t = time.perf_counter()
            r = await client.post(f"{url}/{endpoint}", json=body)
            tally.record(time.perf_counter() - t, r.status_code, r.content)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        t = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        return tally.result(time.perf_counter() - t)


async def _load_raw(url: str, endpoint: str, clients: int, queries: list[str], total: int):
    """Closed-loop workers, one keep-alive connection each, speaking HTTP/1.1 over asyncio
    streams: about a tenth of httpx's client CPU per request, which on a 2-core machine would
    otherwise be taken from the server being measured."""
    host, port = url.removeprefix("http://").split(":")
    tally, counter = _Tally(endpoint), iter(range(total))
    head = f"POST /{endpoint} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for i in counter:
                body = json.dumps(request_body(endpoint, queries[i % len(queries)])).encode()
                t = time.perf_counter()
                writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                status, payload = await _read_response(reader)
                tally.record(time.perf_counter() - t, status, payload)
        finally:
            writer.close()

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return tally.result(time.perf_counter() - t)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length (all of kb's JSON ones)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    if length is None:
        raise RuntimeError(f"response without Content-Length: {lines[0]!r}")
    return status, await reader.readexactly(length)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, int(-(-q * len(sorted_values) // 100)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def lever_cells(args: argparse.Namespace, data_dir: Path, queries: list[str]) -> list[dict]:
    """/search at 8 clients under each setting, the default measured again first."""
    repeated = queries[:20]  # 20 distinct claims cycled: what a query cache could serve
    slots = (os.cpu_count() or 1) + 1
    configs = [
        {"label": "default (query cache off)"},
        {"label": "load generator httpx.AsyncClient, not raw HTTP", "client": "httpx"},
        {"label": "uvicorn on h11 + asyncio, not httptools + uvloop", "plain_http": True},
        {"label": "queries embedded by float32 ONNX, not int8", "runtime": "onnx"},
        {"label": "queries embedded by torch, not int8 ONNX", "runtime": "torch"},
        {"label": "20 repeated queries, query cache off", "queries": repeated},
        {"label": "20 repeated queries, query cache on (default)", "queries": repeated, "cache": 1},
        {
            "label": "searches not limited (KB_SEARCH_CONCURRENCY=0)",
            "env": {"KB_SEARCH_CONCURRENCY": "0"},
        },
        {
            "label": f"one search slot more than cores (KB_SEARCH_CONCURRENCY={slots})",
            "env": {"KB_SEARCH_CONCURRENCY": str(slots)},
        },
        {
            "label": "SQLite rows by read() calls, not mapped (KB_SQLITE_MMAP_MB=0)",
            "env": {"KB_SQLITE_MMAP_MB": "0"},
        },
        {"label": "OMP_NUM_THREADS=1", "env": {"OMP_NUM_THREADS": "1"}},
        {"label": "thread pool capped at 2", "max_threads": 2},
        {"label": "thread pool capped at 4", "max_threads": 4},
    ]
    cells = []
    for c in configs:
        env = {} if c.get("cache") else dict(NO_CACHE)
        env.update(c.get("env", {}))
        if "runtime" in c:
            env["KB_EMBED_QUERY_RUNTIME"] = c["runtime"]
        qs = c.get("queries", queries)
        client = c.get("client", args.client)
        with server(data_dir, env, c.get("max_threads"), c.get("plain_http", False)) as srv:
            warm_up(srv.url, qs, args.warmup)
            cells.append(
                measure(srv, "search", 8, qs, args.requests, label=c["label"], client=client)
            )
            print_cell(cells[-1])
    # exact search, as "auto" chose below KB_EXACT_SEARCH_MAX (200,000 before it was lowered)
    index = set_index(data_dir, "flat")
    with server(data_dir, NO_CACHE) as srv:
        warm_up(srv.url, queries, args.warmup)
        label = "exact search (flat index) instead of IVF"
        cells.append(
            measure(srv, "search", 8, queries, args.requests, label=label, client=args.client)
        )
        cells[-1]["index"] = index
        print_cell(cells[-1])
    set_index(data_dir, "auto")
    return cells


def print_cell(c: dict) -> None:
    print(
        f"{c['label'][:48]:48} /{c['endpoint']:6} {c['clients']:>3} clients  "
        f"p50 {c['p50_ms']:>7.1f}  p95 {c['p95_ms']:>7.1f}  p99 {c['p99_ms']:>7.1f} ms  "
        f"{c['throughput_rps']:>6.1f} req/s  cpu/req server {c['server_cpu_ms_per_request']:.1f} "
        f"client {c['client_cpu_ms_per_request']:.1f} ms  errors {c['errors']}",
        flush=True,
    )


def print_tables(r: dict) -> None:
    b = r["collection"]
    print(f"\nQuery latency: {b['chunks']} chunks in {b['documents']} documents over HTTP")
    print(
        f"{'endpoint':10} {'clients':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'req/s':>7} "
        f"{'server cpu/req':>14} {'client cpu/req':>14}"
    )
    for c in r["cells"]:
        print(
            f"/{c['endpoint']:9} {c['clients']:>7} {c['p50_ms']:>8.1f} {c['p95_ms']:>8.1f} "
            f"{c['p99_ms']:>8.1f} {c['throughput_rps']:>7.1f} "
            f"{c['server_cpu_ms_per_request']:>11.1f} ms {c['client_cpu_ms_per_request']:>11.1f} ms"
        )
    if r["levers"]:
        print("\nLevers (/search, 8 clients)")
        for c in r["levers"]:
            print(
                f"  {c['label'][:48]:48} p50 {c['p50_ms']:>7.1f}  p99 {c['p99_ms']:>7.1f} ms  "
                f"{c['throughput_rps']:>6.1f} req/s  cpu/req server "
                f"{c['server_cpu_ms_per_request']:.1f} client {c['client_cpu_ms_per_request']:.1f} ms"
            )


if __name__ == "__main__":
    main()

"""kb beside txtai and LlamaIndex on the same documents, one run, the same MiniLM model.

    pip install -e '.[peers]'                   # txtai, llama-index-core, its HF embeddings and FAISS store
    .venv/bin/python benchmarks/peers.py        # all of SciFact and the SQLite manual (long)
    .venv/bin/python benchmarks/peers.py --limit 1000 --manual-files 200 --queries 300

Each system runs in a subprocess of its own (so its peak RSS is its own), one task per
subprocess, the systems taking turns within each task. Every system reads the bundled
all-MiniLM-L6-v2 from its local folder (HF_HUB_OFFLINE=1) in its recommended local setup:

  kb          `KnowledgeBase` with the default settings (hybrid search, KB_EMBED_DTYPE's default).
  txtai       `Embeddings(path=MODEL, content=True)` (its FAISS default), `.index()` and
              `.search(q, 10)`; files through `Textractor(sections=True)` (HTML to Markdown
              sections with BeautifulSoup: no Tika or docling here).
  llamaindex  `VectorStoreIndex` over a `FaissVectorStore(IndexFlatL2)` with
              `HuggingFaceEmbedding(MODEL)`, the default `SentenceSplitter`, `as_retriever(
              similarity_top_k=10)`; files through `SimpleDirectoryReader`, which without
              llama-index-readers-file (its HTML readers; it cannot be installed beside kb's
              pinned packages) reads an HTML file as text, markup included. Core's
              HTMLNodeParser, a node per <p>, embedded about a node a second here.

SciFact (test split): ingest documents/s (documents in memory: title, blank line, abstract),
in-process query p50/p99 over the judged queries (after 5 warm-up queries), nDCG@10 by
kb.eval.metrics for all three (a document scores its best chunk), peak RSS.
SQLite manual (HTML files): end-to-end seconds from the files, with parsing (file to text and
chunks) timed apart from embedding and indexing. kb parses in a thread beside its embedder, so
its parse seconds overlap its embedding; the peers parse first, then embed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
MANUAL = ROOT.parent / "shared" / "data" / "sqlite-docs" / "html"
SYSTEMS = ("kb", "txtai", "llamaindex")
TARGETS = {"scifact_vs_txtai": 3.0, "scifact_vs_llamaindex": 2.0, "manual_vs_each": 2.0}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    tasks = [t for t in ("scifact", "manual") if t in args.tasks.split(",")]
    runs: dict[str, dict[str, list[dict]]] = {t: {s: [] for s in systems} for t in tasks}
    loads = [os.getloadavg()]
    for round_ in range(args.rounds):
        # every other round in reverse order, so a drift in the machine's load hits all alike
        order = systems if round_ % 2 == 0 else systems[::-1]
        for task in tasks:
            for system in order:
                print(f"round {round_ + 1}, {task}: {system} ...", flush=True)
                runs[task][system].append(run_worker(system, task, args))
                loads.append(os.getloadavg())
                print(f"  {summary(task, runs[task][system][-1])}", flush=True)
    results = {t: {s: combine(r) for s, r in by_system.items()} for t, by_system in runs.items()}
    report = {
        "benchmark": "peers",
        "scifact_documents": args.limit or "all",
        "manual_files": args.manual_files or "all",
        "rounds": args.rounds,
        "results": results,
        "ratios": ratios(runs),
        "targets": TARGETS,
        "load_average_between_legs": [[round(x, 2) for x in la] for la in loads],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": versions(),
    }
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help="comma list of kb,txtai,llamaindex; kb@DTYPE runs kb with KB_EMBED_DTYPE=DTYPE",
    )
    p.add_argument("--tasks", default="scifact,manual", help="comma list of scifact,manual")
    p.add_argument("--rounds", type=int, default=1, help="each system runs each task this often")
    p.add_argument("--limit", type=int, help="SciFact: at most N documents (judged ones first)")
    p.add_argument("--queries", type=int, help="SciFact: at most N judged test queries")
    p.add_argument("--manual-files", type=int, help="SQLite manual: the first N HTML files")
    p.add_argument("--scifact", type=Path, default=SCIFACT, help="a BEIR folder")
    p.add_argument("--manual", type=Path, default=MANUAL, help="a folder of HTML files")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "peers.json")
    p.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--task", choices=("scifact", "manual"), help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_worker(system: str, task: str, args: argparse.Namespace) -> dict:
    """One system, one task, in a fresh interpreter; its result or the reason it failed."""
    name, _, dtype = system.partition("@")
    with tempfile.TemporaryDirectory(prefix=f"kb-peers-{name}-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            name,
            "--task",
            task,
            "--result",
            str(result),
        ]
        for flag, value in (
            ("--limit", args.limit),
            ("--queries", args.queries),
            ("--manual-files", args.manual_files),
            ("--scifact", args.scifact),
            ("--manual", args.manual),
        ):
            if value is not None:
                cmd += [flag, str(value)]
        env = {**os.environ, "KB_PEERS_WORK": tmp}
        if dtype:
            env["KB_EMBED_DTYPE"] = dtype
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not result.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return {"error": " | ".join(tail) or f"exit status {done.returncode}"}
        return json.loads(result.read_text())


# -- the worker side -----------------------------------------------------------------------


def worker(args: argparse.Namespace) -> dict:
    from kb.embedders.sentence_transformers import bundled_minilm_path

    work = Path(os.environ.get("KB_PEERS_WORK") or tempfile.mkdtemp())
    system = SYSTEM_CLASSES[args.worker](bundled_minilm_path(), work)
    out = scifact_task(system, args) if args.task == "scifact" else manual_task(system, args)
    out["setup"] = system.setup
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    args.result.write_text(json.dumps(out))
    return out


def scifact_task(system, args: argparse.Namespace) -> dict:
    from kb.eval.beir import load_beir
    from kb.eval.metrics import evaluate

    data = load_beir(args.scifact, "test")
    docs = select_documents(data, args.limit)
    ids = {d for d, _ in docs}
    qrels = {
        q: {d: g for d, g in rels.items() if d in ids}
        for q, rels in data.qrels.items()
        if any(d in ids for d in rels)
    }
    qids = sorted(qrels)[: args.queries] if args.queries else sorted(qrels)
    qrels = {q: qrels[q] for q in qids}
    system.load_model()  # model loading is not ingest time for anyone
    started = time.perf_counter()
    system.index_texts(docs)
    seconds = time.perf_counter() - started
    for q in qids[:5]:
        system.search(data.queries[q], 10)
    latencies, run = [], {}
    for q in qids:
        t = time.perf_counter()
        hits = system.search(data.queries[q], 10)
        latencies.append((time.perf_counter() - t) * 1000)
        run[q] = hits
    return {
        "documents": len(docs),
        "queries": len(qids),
        "ingest_seconds": round(seconds, 2),
        "docs_per_s": round(len(docs) / seconds, 2),
        "query_ms_p50": round(statistics.median(latencies), 2),
        "query_ms_p99": round(percentile(latencies, 99), 2),
        "ndcg@10": round(evaluate(run, qrels, ["ndcg@10"])["ndcg@10"], 4),
        "load_average": os.getloadavg(),
    }


def manual_task(system, args: argparse.Namespace) -> dict:
    files = sorted(p for p in args.manual.rglob("*.html"))
    if args.manual_files:
        files = files[: args.manual_files]
    folder = Path(os.environ["KB_PEERS_WORK"]) / "manual"
    for f in files:  # a folder of copies (kb does not follow symbolic links)
        target = folder / f.relative_to(args.manual)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
    system.load_model()
    started = time.perf_counter()
    timing = system.index_folder(folder)
    seconds = time.perf_counter() - started
    return {
        "files": len(files),
        "chunks": timing["chunks"],
        "ingest_seconds": round(seconds, 2),
        "files_per_s": round(len(files) / seconds, 2),
        "chunks_per_s": round(timing["chunks"] / seconds, 2),
        "parse_seconds": round(timing["parse_seconds"], 2),
        "embed_index_seconds": round(timing["embed_seconds"], 2),
        "parse_overlapped": timing.get("overlapped", False),
        "embedder_waited_seconds": timing.get("embedder_waited_seconds"),
        "load_average": os.getloadavg(),
    }


def select_documents(data, limit: int | None) -> list[tuple[str, str]]:
    """(id, title + blank line + abstract) of every document, or of the judged ones first and
    others after, up to limit (the selection benchmarks/ingest.py makes)."""
    from kb.eval.beir import beir_documents

    docs = [(d.source, d.text) for d in beir_documents(data.corpus, "prepend")]
    if limit is None or limit >= len(docs):
        return docs
    judged = {d for rels in data.qrels.values() for d in rels}
    return ([d for d in docs if d[0] in judged] + [d for d in docs if d[0] not in judged])[:limit]


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def best_per_document(hits: list[str], k: int) -> dict[str, float]:
    """The first k distinct documents of a ranked list of chunks' documents, scored by rank
    (the systems' own scores differ in kind: LlamaIndex's FAISS store returns L2 distances)."""
    ranked: list[str] = []
    for doc in hits:
        if doc not in ranked:
            ranked.append(doc)
        if len(ranked) == k:
            break
    return {doc: float(k - i) for i, doc in enumerate(ranked)}


class KbSystem:
    setup = "KnowledgeBase, default settings (hybrid search); ingest_documents / ingest_path"

    def __init__(self, model: str, work: Path):
        from kb.service import KnowledgeBase
        from kb.settings import Settings

        self.settings = Settings(data_dir=work / "kb")
        self.kb = KnowledgeBase(self.settings)
        self.setup += f"; KB_EMBED_DTYPE={self.settings.embed_dtype}"

    def load_model(self) -> None:
        emb = self.kb.embedder
        emb.embed(["warm-up"])
        emb.embed_query("warm-up")

    def index_texts(self, docs: list[tuple[str, str]]) -> None:
        from kb.types import Document, Section

        documents = [Document(source=i, sections=[Section(text=t)], title=None) for i, t in docs]
        self.kb.ingest_documents(documents, collection="bench")
        self.kb.warm("bench")

    def search(self, query: str, k: int) -> dict[str, float]:
        hits = self.kb.search(query, collection="bench", k=3 * k)
        return best_per_document([p.source for p in hits], k)

    def index_folder(self, folder: Path) -> dict:
        report = self.kb.ingest_path(folder, collection="manual")
        return {
            "chunks": report.chunks_embedded,
            "parse_seconds": report.seconds_loading + report.seconds_chunking,
            "embed_seconds": report.seconds_embedding,
            "overlapped": True,
            "embedder_waited_seconds": report.seconds_waiting,
        }


class TxtaiSystem:
    setup = "txtai Embeddings(path=MiniLM folder, content=True), FAISS default; Textractor(sections=True)"

    def __init__(self, model: str, work: Path):
        self.model = model
        self.embeddings = None

    def load_model(self) -> None:
        from txtai import Embeddings

        self.embeddings = Embeddings(path=self.model, content=True)

    def index_texts(self, docs: list[tuple[str, str]]) -> None:
        self.embeddings.index(docs)

    def search(self, query: str, k: int) -> dict[str, float]:
        return best_per_document([r["id"] for r in self.embeddings.search(query, k)], k)

    def index_folder(self, folder: Path) -> dict:
        from txtai.pipeline import Textractor

        started = time.perf_counter()
        textractor = Textractor(sections=True)
        rows = []
        for path in sorted(folder.rglob("*.html")):
            for n, section in enumerate(textractor(str(path))):
                rows.append((f"{path.name}#{n}", section))
        parsed = time.perf_counter()
        self.embeddings.index(rows)
        return {
            "chunks": len(rows),
            "parse_seconds": parsed - started,
            "embed_seconds": time.perf_counter() - parsed,
        }


class LlamaIndexSystem:
    setup = (
        "LlamaIndex VectorStoreIndex, FaissVectorStore(IndexFlatL2), HuggingFaceEmbedding(MiniLM "
        "folder), default SentenceSplitter, retriever top 10; SimpleDirectoryReader"
    )

    def __init__(self, model: str, work: Path):
        self.model = model
        self.index = self.retriever = None

    def load_model(self) -> None:
        from llama_index.core import Settings
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding

        Settings.embed_model = HuggingFaceEmbedding(model_name=self.model, device="cpu")
        Settings.llm = None

    def _store(self):
        import faiss
        from llama_index.core import StorageContext
        from llama_index.vector_stores.faiss import FaissVectorStore

        store = FaissVectorStore(faiss_index=faiss.IndexFlatL2(384))
        return StorageContext.from_defaults(vector_store=store)

    def index_texts(self, docs: list[tuple[str, str]]) -> None:
        from llama_index.core import Document, VectorStoreIndex

        documents = [Document(text=t, id_=i) for i, t in docs]
        self.index = VectorStoreIndex.from_documents(documents, storage_context=self._store())
        self.retriever = self.index.as_retriever(similarity_top_k=10)

    def search(self, query: str, k: int) -> dict[str, float]:
        hits = self.retriever.retrieve(query)
        return best_per_document([h.node.ref_doc_id for h in hits], k)

    def index_folder(self, folder: Path) -> dict:
        from llama_index.core import SimpleDirectoryReader, VectorStoreIndex
        from llama_index.core.node_parser import SentenceSplitter

        started = time.perf_counter()
        documents = SimpleDirectoryReader(str(folder), recursive=True).load_data()
        nodes = SentenceSplitter().get_nodes_from_documents(documents)
        parsed = time.perf_counter()
        self.index = VectorStoreIndex(nodes, storage_context=self._store())
        return {
            "chunks": len(nodes),
            "parse_seconds": parsed - started,
            "embed_seconds": time.perf_counter() - parsed,
        }


SYSTEM_CLASSES = {"kb": KbSystem, "txtai": TxtaiSystem, "llamaindex": LlamaIndexSystem}


# -- reporting -----------------------------------------------------------------------------


def combine(rounds: list[dict]) -> dict:
    """One system's rounds: the median of each figure, and each round's ingest seconds."""
    failed = [r for r in rounds if "error" in r]
    if failed:
        return failed[0]
    out = dict(rounds[0])
    for key, value in rounds[0].items():
        values = [r[key] for r in rounds]
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if numeric and len(set(values)) > 1:
            out[key] = round(statistics.median(values), 4)
    out["ingest_seconds_each"] = [r["ingest_seconds"] for r in rounds]
    out.pop("load_average", None)
    return out


def ratios(runs: dict) -> dict:
    """kb's speed over each peer's, the median over rounds of the ratio within a round."""
    out = {}
    for task, by_system in runs.items():
        for kb in [s for s in by_system if s.split("@")[0] == "kb"]:
            for peer in ("txtai", "llamaindex"):
                pairs = list(zip(by_system[kb], by_system.get(peer, []), strict=False))
                pairs = [(a, b) for a, b in pairs if "error" not in a and "error" not in b]
                if pairs:
                    out[f"{task}_speed_{kb}_over_{peer}"] = round(
                        statistics.median(
                            b["ingest_seconds"] / a["ingest_seconds"] for a, b in pairs
                        ),
                        2,
                    )
    return out


def summary(task: str, r: dict) -> str:
    if "error" in r:
        return f"failed: {r['error']}"
    if task == "scifact":
        return (
            f"{r['docs_per_s']} docs/s, query p50 {r['query_ms_p50']} ms p99 {r['query_ms_p99']}"
            f" ms, nDCG@10 {r['ndcg@10']}, peak RSS {r['peak_rss_mib']} MiB"
        )
    return (
        f"{r['ingest_seconds']} s ({r['chunks']} chunks), parse {r['parse_seconds']} s, "
        f"embed+index {r['embed_index_seconds']} s, peak RSS {r['peak_rss_mib']} MiB"
    )


def print_table(report: dict) -> None:
    for task, rows in report["results"].items():
        for system, r in rows.items():
            print(f"{task:8} {system:11} {summary(task, r)}")
    for name, value in report["ratios"].items():
        print(f"{name}: {value}x")


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("txtai", "llama-index-core", "llama-index-embeddings-huggingface", "torch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


if __name__ == "__main__":
    main()

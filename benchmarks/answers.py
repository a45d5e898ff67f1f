"""Answers on the SQLite manual: retrieval and answer quality of every answering mode.

    .venv/bin/python benchmarks/answers.py                         # 40 + 5 questions, every mode
    .venv/bin/python benchmarks/answers.py --modes rag,extract --limit 10
    .venv/bin/python benchmarks/answers.py --retrieval-only --chunk-size 384

Data: ../shared/data/sqlite-docs (--dataset): html/ (766 pages of the SQLite 3.40.1 manual),
qa.jsonl (40 questions with gold pages and gold strings) and unanswerable.jsonl (5 questions
the manual does not answer): the held-out test set. --questions data/sqlite-dev reads the
development set (40 + 10 other questions over the same manual) that extract's scoring is tuned
on.

Ingest: html/ goes into a data dir of its own under --cache (benchmarks/.cache/answers/<key>),
where the key hashes the pages (paths, sizes, times), the ingest and embedder code (ingest/**.py,
kb/embedders/**.py) and the settings that shape chunks (chunk size and overlap, boilerplate,
embedder); a later run with the same key finds the collection there and embeds nothing.

Retrieval, once per question: the question searched with the configured method for 50
passages, folded into distinct pages in rank order; gold page first, a gold page in the top 5,
MRR@10. A page is gold when its path relative to html/ is one of the question's gold pages.

Answers, per mode (extract, rag, base, finetuned, rag+finetuned; a mode that cannot run, e.g.
finetuned without a registered fine-tuned model, is reported unavailable): the answer contains
a gold string (case-insensitive, whitespace-normalised) and has at most 80 words; median
answer length in words; a citation on a gold page; the share of answer sentences the support
check found in their passages; unanswerable questions answered "not covered"; answers that
cite a passage they were not given; seconds per answer (p50). Fine-tuned models are those
registered in --models-from (default: KB_DATA_DIR).

One table on stdout; JSON at --out (default benchmarks/results/answers.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kb.eval.answers import SUPPORT_POLICIES  # noqa: E402 - after the path is set

DATASET = ROOT.parent / "shared" / "data" / "sqlite-docs"
CACHE = ROOT / "benchmarks" / ".cache" / "answers"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "answers.json"
ALL_MODES = ("extract", "rag", "base", "finetuned", "rag+finetuned")
COLLECTION = "sqlite"
SEARCH_DEPTH = 50  # passages searched per question before folding them into pages
# the settings that decide what is stored; any other setting leaves the collection reusable
INGEST_SETTINGS = ("chunk_size", "chunk_overlap", "drop_boilerplate", "embedder", "embed_dtype")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", type=Path, default=DATASET, help="sqlite-docs folder")
    p.add_argument(
        "--questions",
        type=Path,
        default=None,
        help="folder with qa.jsonl and unanswerable.jsonl over the same manual (default: "
        "--dataset's test set; data/sqlite-dev is the development set to tune on)",
    )
    p.add_argument("--cache", type=Path, default=CACHE, help="where ingested data dirs are kept")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    p.add_argument("--modes", default=",".join(ALL_MODES), help="comma-separated answering modes")
    p.add_argument(
        "--limit", type=int, default=None, help="the first N questions of each question file"
    )
    p.add_argument("-k", "--k", type=int, default=5, help="passages given to grounded modes")
    p.add_argument(
        "--support-policy",
        choices=SUPPORT_POLICIES,
        default=None,
        help="support check policy of the grounded modes (default: the answering core's)",
    )
    p.add_argument("--retrieval-only", action="store_true", help="skip the answering modes")
    p.add_argument("--chunk-size", type=int, default=None, help="KB_CHUNK_SIZE for the ingest")
    p.add_argument(
        "--chunk-overlap", type=int, default=None, help="KB_CHUNK_OVERLAP for the ingest"
    )
    p.add_argument(
        "--drop-boilerplate",
        choices=("on", "off"),
        default=None,
        help="KB_DROP_BOILERPLATE for the ingest",
    )
    p.add_argument(
        "--models-from",
        type=Path,
        default=None,
        help="data dir whose registered fine-tuned models the finetuned modes use "
        "(default: KB_DATA_DIR)",
    )
    return p.parse_args(argv)


# -- data --------------------------------------------------------------------------------


def load_dataset(
    folder: Path, limit: int | None, questions_from: Path | None = None
) -> tuple[Path, list]:
    """The html/ folder and the questions (answerable first, then unanswerable)."""
    from kb.eval.answers import load_questions

    html = folder / "html"
    source = questions_from or folder
    files = [source / "qa.jsonl", source / "unanswerable.jsonl"]
    missing = [str(f) for f in [html, *files] if not f.exists()]
    if missing:
        raise SystemExit(
            f"{', '.join(missing)} missing: pass a sqlite-docs folder as --dataset and a "
            "folder holding qa.jsonl and unanswerable.jsonl as --questions"
        )
    questions = []
    for file in files:
        questions += load_questions(file)[:limit]
    return html.resolve(), questions


def settings_for(args: argparse.Namespace, data_dir: Path | None = None):
    from kb.settings import Settings

    overrides: dict[str, Any] = {}
    if args.chunk_size is not None:
        overrides["chunk_size"] = args.chunk_size
    if args.chunk_overlap is not None:
        overrides["chunk_overlap"] = args.chunk_overlap
    if args.drop_boilerplate is not None:
        overrides["drop_boilerplate"] = args.drop_boilerplate == "on"
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    return Settings(**overrides)


def cache_key(html: Path, settings) -> str:
    """Changes when the pages, the ingest code or a setting that shapes chunks changes."""
    h = hashlib.sha256()
    for path in sorted(html.rglob("*")):
        if path.is_file():
            stat = path.stat()
            h.update(f"{path.relative_to(html)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    code = [*(ROOT / "ingest").rglob("*.py"), *(ROOT / "kb" / "embedders").rglob("*.py")]
    for path in sorted(code):
        h.update(path.read_bytes())
    for name in INGEST_SETTINGS:
        h.update(f"{name}={getattr(settings, name, None)}\n".encode())
    return h.hexdigest()[:16]


def ingest(html: Path, settings) -> tuple[Any, dict[str, Any]]:
    """A KnowledgeBase whose collection holds html/ (embedding only what the cache lacks)."""
    from kb.service import KnowledgeBase

    kb = KnowledgeBase(settings)
    started = time.perf_counter()
    report = kb.ingest_path(html, collection=COLLECTION)
    seconds = time.perf_counter() - started
    info = kb.collection(COLLECTION).info()
    return kb, {
        "data_dir": str(settings.data_dir),
        "cached": report.chunks_embedded == 0,
        "seconds": round(seconds, 1),
        "documents": info.get("documents"),
        "chunks": info.get("chunks"),
        "report": report.to_dict(),
    }


# -- retrieval ---------------------------------------------------------------------------


def retrieval(kb, questions: list, html: Path) -> dict[str, Any]:
    """Gold-page rank of each answerable question among the distinct pages retrieved."""
    from kb.eval.answers import relative_source
    from kb.eval.retrieval import distinct_sources, gold_rank

    rows = {}
    for q in questions:
        if q.unanswerable:
            continue
        passages = kb.search(q.question, collection=COLLECTION, k=SEARCH_DEPTH)
        sources = distinct_sources(passages)
        rank = gold_rank(sources, q.sources, str(html))
        rows[q.id] = {
            "rank": rank,
            "top": [relative_source(s, str(html)) for s in sources[:5]],
            "gold": q.sources,
        }
    return {"summary": retrieval_summary(rows.values()), "questions": rows}


def retrieval_summary(rows) -> dict[str, float | None]:
    ranks = [r["rank"] for r in rows]
    if not ranks:
        return {"gold_first": None, "gold_top5": None, "mrr@10": None, "questions": 0}
    return {
        "gold_first": sum(r == 1 for r in ranks) / len(ranks),
        "gold_top5": sum(r is not None and r <= 5 for r in ranks) / len(ranks),
        "mrr@10": sum(1 / r for r in ranks if r is not None and r <= 10) / len(ranks),
        "questions": len(ranks),
    }


# -- answers -----------------------------------------------------------------------------


def answerer_for(kb, settings, models_from: Path | None):
    from kb.answering import Answerer
    from kb.generators import GeneratorRegistry
    from kb.models import ModelRegistry
    from kb.settings import Settings

    generators = GeneratorRegistry(settings)
    source = Settings(data_dir=models_from) if models_from else Settings()
    ModelRegistry(source).load_into(generators)
    return Answerer(kb, generators)


def run_modes(kb, settings, args, questions: list, html: Path):
    """The answer evaluation record over the modes the answering core knows."""
    from kb.answering import MODES
    from kb.eval.answers import AnswerEvalSpec, answerer_fn, run_answer_eval

    wanted = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = {m: f"unknown mode {m!r}: the answering core has {', '.join(MODES)}" for m in wanted}
    known = [m for m in wanted if m in MODES]
    for m in known:
        unknown.pop(m)
    if not known:
        return None, unknown
    answerer = answerer_for(kb, settings, args.models_from)
    answer_fn, context = answerer_fn(
        answerer, collection=COLLECTION, k=args.k, support=args.support_policy
    )
    spec = AnswerEvalSpec(
        questions=questions,
        modes=known,
        collection=COLLECTION,
        k=args.k,
        support=args.support_policy,
        source_root=str(html),
        name="sqlite-docs",
    )

    def progress(mode: str, done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            print(f"  {mode}: {done}/{total}", file=sys.stderr, flush=True)

    record = run_answer_eval(answer_fn, spec, context=context, progress=progress)
    return record, {**unknown, **record.errors}


# -- output ------------------------------------------------------------------------------

COLUMNS = (
    ("mode", None),
    ("gold 1st", "gold_first"),
    ("top 5", "gold_top5"),
    ("MRR@10", "mrr@10"),
    ("answer", "gold_answer_rate"),
    ("words p50", "answer_words_p50"),
    ("cites gold", "gold_citation_rate"),
    ("supported", "supported_share"),
    ("unans. n/c", "unanswerable_not_covered_rate"),
    ("stray cites", "stray_citation_rate"),
    ("s p50", "latency_p50_s"),
)


def table_rows(record, retrieval_figures: dict[str, Any]) -> list[dict]:
    """One row per mode that ran: its retrieval figures (grounded modes), answer metrics, and
    how often the support check kept, flagged, cut or replaced an answer."""
    from kb.answering import uses_retrieval

    if record is None:
        return []
    rows = []
    for mode, metrics in record.metrics.items():
        grounded = uses_retrieval(mode)
        actions = Counter(
            row["modes"][mode].get("support_action") or "none"
            for row in record.rows
            if "error" not in row["modes"][mode]
        )
        row = {"mode": mode, **(retrieval_figures if grounded else {}), **metrics}
        if not grounded:  # given no passages, its "[0]" is code, not a citation
            row["stray_citation_rate"] = None
        rows.append({**row, "support_actions": dict(sorted(actions.items()))})
    return rows


def fmt(value: Any, key: str | None) -> str:
    if value is None:
        return "-"
    if key in ("answer_words_p50",):
        return f"{value:.0f}"
    if key == "latency_p50_s":
        return f"{value:.2f}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def print_table(rows: list[dict], retrieval_figures: dict[str, Any], errors: dict[str, str]):
    header = [name for name, _ in COLUMNS]
    table = [header]
    table.append(["retrieval"] + [fmt(retrieval_figures.get(k), k) for _, k in COLUMNS[1:4]])
    table[-1] += ["-"] * (len(header) - len(table[-1]))
    for row in rows:
        table.append([row["mode"]] + [fmt(row.get(k), k) for _, k in COLUMNS[1:]])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for n, r in enumerate(table):
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))
    for mode, reason in errors.items():
        print(f"{mode}: unavailable ({reason})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    html, questions = load_dataset(args.dataset, args.limit, args.questions)
    key = cache_key(html, settings_for(args))
    settings = settings_for(args, (args.cache / key).resolve())
    print(f"ingesting {html} into {settings.data_dir}", file=sys.stderr, flush=True)
    kb, ingested = ingest(html, settings)
    print(
        f"  {ingested['documents']} pages, {ingested['chunks']} chunks, "
        f"{'cached' if ingested['cached'] else 'embedded'} in {ingested['seconds']}s",
        file=sys.stderr,
        flush=True,
    )
    found = retrieval(kb, questions, html)
    record, errors = (
        (None, {}) if args.retrieval_only else run_modes(kb, settings, args, questions, html)
    )
    rows = table_rows(record, found["summary"])
    report = {
        "benchmark": "answers",
        "dataset": str(args.dataset),
        "questions_from": str((args.questions or args.dataset).resolve()),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(time.perf_counter() - started, 1),
        "questions": {
            "answerable": sum(not q.unanswerable for q in questions),
            "unanswerable": sum(q.unanswerable for q in questions),
        },
        "settings": {
            "k": args.k,
            "support_policy": args.support_policy,
            "search_depth": SEARCH_DEPTH,
            "retrieval_method": settings.retrieval_method,
            **{name: getattr(settings, name, None) for name in INGEST_SETTINGS},
        },
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "ingest": {"cache_key": key, **ingested},
        "retrieval": found,
        "modes": rows,
        "unavailable": errors,
        "answers": record.rows if record else [],
        "context": record.context if record else {},
        "command": "benchmarks/answers.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(args.out)
    print_table(rows, found["summary"], errors)
    print(f"results: {args.out} ({report['duration_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

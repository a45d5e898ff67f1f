"""RAFT on the SQLite manual: does a model fine-tuned on RAFT examples answer rag questions better?

    .venv/bin/python benchmarks/raft.py                                 # prepare, train, score
    .venv/bin/python benchmarks/raft.py --max-train-examples 8 --limit 3   # a quick check
    .venv/bin/python benchmarks/raft.py --model raft-20260101-120000    # score a trained model

Data: ../shared/data/sqlite-docs (--dataset), ingested as benchmarks/answers.py ingests it, into
the same cached data dir (benchmarks/.cache/answers/<key>), so a collection either benchmark
built is reused without embedding anything.

Prepare: `kb finetune prepare --from-collection sqlite --recipe raft`: questions from the pages'
own structure (no generator), each shown with its oracle chunk among kb's search hits, split by
page. The 40 human questions of qa.jsonl are never read for training; with --hold-out-gold-pages
(the default) the pages they ask about are also kept out of every training prompt
(`exclude_sources`), so the model must learn to read passages, not remember the answers.

Train: `kb finetune run` (the local LoRA job) on the prepared data; the model is registered in
--work, apart from the answer benchmark's models. Score: rag, rag+finetuned and extract on the
40 answerable and 5 unanswerable questions with benchmarks/answers.py's metrics (gold string in
the answer, citation on a gold page, supported sentences, unanswerable answered not covered),
under the support policy `flag`, so that each mode is scored on its model's own answer.

One table on stdout; JSON at --out (default benchmarks/results/raft.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import answers  # noqa: E402 - after the path is set
from kb.cli.specs import add_spec_arguments, cli_build  # noqa: E402
from kb.errors import InvalidInput  # noqa: E402
from kb.finetune.options import FineTuneOptions, PrepareOptions, S  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "raft.json"
DEFAULT_WORK = ROOT / "benchmarks" / ".cache" / "raft"
MODES = "rag,rag+finetuned,extract"
# the recipe's options, sized for a training run of at most 45 minutes on 2 shared cores:
# the oracle and two distractors (median ~925 tokens on 512-token chunks; rag mode shows what
# fits in the 2,048-token window, three or four chunks), 380 examples trained once
PREPARE = {
    "distractors": 2,
    "no_oracle_share": 0.15,
    "max_examples": 400,
    "val_fraction": 0.05,
    "seed": 0,
}
# one example of two per step at lr 1e-3: 120 examples reached an eval loss of 0.31 where 60
# examples in 8 steps at 3e-4 reached 0.78, and answered as the targets do (a sentence and [n])
TRAIN = {
    "epochs": 1,
    "lr": 1e-3,
    "batch_size": 2,
    "grad_accumulation": 1,
    "max_seq_len": 2048,
    "max_train_examples": None,
    "r": 16,
    "alpha": 32,
    "lora_layers": 8,
    "dtype": "bfloat16",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", type=Path, default=answers.DATASET, help="sqlite-docs folder")
    p.add_argument("--cache", type=Path, default=answers.CACHE, help="ingested data dirs")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="a data dir whose sqlite collection is used as it is, nothing ingested (default: "
        "the answer benchmark's cache entry for the current ingest code and settings)",
    )
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="prepared data and models")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    p.add_argument("--modes", default=MODES, help="comma-separated answering modes")
    p.add_argument("--limit", type=int, default=None, help="the first N questions of each file")
    p.add_argument("-k", "--k", type=int, default=5, help="passages given to grounded modes")
    p.add_argument(
        "--support-policy",
        choices=answers.SUPPORT_POLICIES,
        default="flag",
        help="support check policy of the grounded modes; flag (the default here) scores each "
        "model's own answer, where fallback would score extract's answer in place of every "
        "answer with an unsupported sentence",
    )
    p.add_argument(
        "--hold-out-gold-pages",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the pages the questions ask about out of every training prompt",
    )
    p.add_argument(
        "--model", default=None, help="score this model registered in --work; skip training"
    )
    add_spec_arguments(p, PrepareOptions, PREPARE, PREPARE)
    add_spec_arguments(p, FineTuneOptions, TRAIN, TRAIN)
    args = p.parse_args(argv)
    try:  # the specs check every bound before anything runs
        prepare_options(args, [])
        options(args, FineTuneOptions, TRAIN)
    except InvalidInput as exc:
        p.error(str(exc))
    return args


def options(args: argparse.Namespace, spec: type[S], names: dict, **extra) -> S:
    """The spec built from the benchmark's flags for its fields in `names`, and `extra`."""
    return cli_build(spec, {**{k: getattr(args, k) for k in names}, **extra})


def prepare_options(args: argparse.Namespace, held_out: list[str]) -> PrepareOptions:
    return options(
        args,
        PrepareOptions,
        PREPARE,
        from_collection=answers.COLLECTION,
        recipe="raft",
        exclude_sources=held_out,
    )


def gold_pages(questions: list) -> list[str]:
    return sorted({page for q in questions if not q.unanswerable for page in q.sources})


def prepare(args, kb, settings, questions: list, folder: Path) -> dict[str, Any]:
    """The RAFT data in `folder`; what the manifest says of it."""
    from kb.finetune import prepare_dataset

    held_out = gold_pages(questions) if args.hold_out_gold_pages else []
    started = time.perf_counter()
    result = prepare_dataset(
        None, folder, options=prepare_options(args, held_out), settings=settings, kb=kb
    )
    if not result.ok:
        raise SystemExit(f"the prepared data has errors: {result.report.to_dict()['errors']}")
    source = result.manifest["source"]
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "counts": result.manifest["counts"],
        "no_oracle": source["no_oracle"],
        "questions_from": source["questions_from"],
        "split": source["split"],
        "held_out_pages": len(held_out),
        "tokens": result.report.token_stats,
    }


def train(args, work_settings, folder: Path) -> tuple[str, dict[str, Any]]:
    """Train through the job code of `kb finetune run`; the registered model and its figures."""
    from kb.finetune.backends import FineTuneSpec
    from kb.finetune.jobs import run_finetune
    from kb.jobs import JobManager
    from kb.models import ModelRegistry

    name = f"raft-{time.strftime('%Y%m%d-%H%M%S')}"
    chosen = options(args, FineTuneOptions, TRAIN, seed=args.seed, name=name)
    spec = FineTuneSpec(
        **chosen.to_dict(),
        train_file=str(folder / "train.jsonl"),
        validation_file=str(folder / "validation.jsonl"),
    )
    print(f"training {name}", file=sys.stderr, flush=True)
    record = run_finetune(
        JobManager(work_settings.jobs_dir), spec, work_settings, ModelRegistry(work_settings)
    )
    if record.state != "succeeded":
        raise SystemExit(f"training {record.state}: {record.error}")
    metrics = record.result["metrics"]
    return name, {
        "job": record.id,
        "seconds": metrics["train_seconds"],
        "examples": metrics["train_examples"],
        "examples_per_s": metrics["examples_per_s"],
        "train_loss": metrics["train_loss"],
        "eval_loss": metrics["eval_loss"],
    }


def registered_training(work_settings, name: str) -> dict[str, Any]:
    """What the registry recorded of a model trained earlier (scored with --model)."""
    from kb.models import ModelRegistry

    record = ModelRegistry(work_settings).get(name)
    metrics = record.metrics or {}
    return {
        "job": record.job_id,
        "seconds": metrics.get("train_seconds"),
        "examples": metrics.get("train_examples"),
        "examples_per_s": metrics.get("examples_per_s"),
        "train_loss": metrics.get("train_loss"),
        "eval_loss": metrics.get("eval_loss"),
        "params": record.params,
        "data": (record.dataset or {}).get("source"),
    }


def score(args, kb, settings, questions: list, html: Path, model: str):
    """benchmarks/answers.py's answer evaluation of the modes, rag+finetuned by `model`."""
    from kb.eval.answers import AnswerEvalSpec, answerer_fn, run_answer_eval

    answerer = answers.answerer_for(kb, settings, args.work)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    answer_fn, context = answerer_fn(
        answerer, collection=answers.COLLECTION, k=args.k, model=model, support=args.support_policy
    )
    spec = AnswerEvalSpec(
        questions=questions,
        modes=modes,
        collection=answers.COLLECTION,
        k=args.k,
        support=args.support_policy,
        source_root=str(html),
        name="sqlite-docs",
    )

    def progress(mode: str, done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            print(f"  {mode}: {done}/{total}", file=sys.stderr, flush=True)

    return run_answer_eval(answer_fn, spec, context=context, progress=progress)


def main(argv: list[str] | None = None) -> int:
    from kb.service import KnowledgeBase
    from kb.settings import Settings

    args = parse_args(argv)
    started = time.perf_counter()
    html, questions = answers.load_dataset(args.dataset, args.limit)
    ingest_args = answers.parse_args([])
    key = answers.cache_key(html, answers.settings_for(ingest_args))
    settings = answers.settings_for(ingest_args, (args.data_dir or args.cache / key).resolve())
    if args.data_dir:
        kb, ingested = KnowledgeBase(settings), {"data_dir": str(settings.data_dir)}
    else:
        print(f"ingesting {html} into {settings.data_dir}", file=sys.stderr, flush=True)
        kb, ingested = answers.ingest(html, settings)
    work_settings = Settings(data_dir=args.work.resolve())

    prepared = trained = None
    model = args.model
    if model is None:
        # the gold pages come from every question, whatever --limit scores
        all_questions = answers.load_dataset(args.dataset, None)[1]
        folder = args.work / "data" / key
        prepared = prepare(args, kb, settings, all_questions, folder)
        print(f"prepared {prepared['counts']}", file=sys.stderr, flush=True)
        model, trained = train(args, work_settings, folder)
    else:
        trained = registered_training(work_settings, model)

    found = answers.retrieval(kb, questions, html)
    record = score(args, kb, settings, questions, html, model)
    rows = answers.table_rows(record, found["summary"])
    report = {
        "benchmark": "raft",
        "dataset": str(args.dataset),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(time.perf_counter() - started, 1),
        "questions": {
            "answerable": sum(not q.unanswerable for q in questions),
            "unanswerable": sum(q.unanswerable for q in questions),
        },
        "model": model,
        "settings": {
            "k": args.k,
            "support_policy": args.support_policy,
            "hold_out_gold_pages": args.hold_out_gold_pages,
            "prepare": {k: getattr(args, k) for k in PREPARE},
            "train": {k: getattr(args, k) for k in TRAIN},
        },
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "ingest": {"cache_key": key, **ingested},
        "prepare": prepared,
        "training": trained,
        "retrieval": found["summary"],
        "modes": rows,
        "unavailable": record.errors,
        "answers": record.rows,
        "context": record.context,
        "command": "benchmarks/raft.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(args.out)
    answers.print_table(rows, found["summary"], record.errors)
    if trained:
        print(
            f"training: {trained['examples']} examples in {trained['seconds']:.0f}s, "
            f"eval loss {trained['eval_loss']}"
        )
    print(f"results: {args.out} ({report['duration_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

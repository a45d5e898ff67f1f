"""`kb eval retrieval|answers|list|show|compare`: a thin edge over kb.eval."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kb.answering import MODES
from kb.cli.common import BarProgress, CollectionOpt, JsonOpt, SupportOpt, console, print_json
from kb.settings import Settings

eval_app = typer.Typer(
    name="eval",
    help="Evaluate retrieval (BEIR metrics per search method) and answers (across modes).",
    no_args_is_help=True,
)

SeedOpt = Annotated[int, typer.Option(help="Random seed, recorded with the result.")]
NameOpt = Annotated[str | None, typer.Option(help="A label for this run, shown by `kb eval list`.")]
SourceRootOpt = Annotated[
    Path | None,
    typer.Option(
        help="The folder the gold paths are relative to (the folder ingested): a source then "
        "matches only by its path relative to it, so backup.html is not c3ref/backup.html "
        "(without it: by path suffix)."
    ),
]


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


class _SearchBars:
    """A progress bar per stage on stderr, driven by the runners' (stage, done, total) callback."""

    def __init__(self, enabled: bool):
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
        )
        self._tasks: dict[str, int] = {}

    def __enter__(self) -> _SearchBars:
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(stage, total=total)
        self._progress.update(self._tasks[stage], completed=done, total=total)


def _show_summary(record, folder: Path) -> None:
    from kb.eval.report import summary_table, title

    header, rows = summary_table(record)
    table = Table(title=title(record))
    for column in header:
        table.add_column(column, justify="left" if column == header[0] else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for group, message in record.errors.items():
        console.print(f"[yellow]{group} not run[/]: {message}", highlight=False)
    console.print(f"report: {folder / 'report.md'} (also report.html, chart.png)", highlight=False)


@eval_app.command("retrieval")
def retrieval(
    beir: Annotated[
        Path | None, typer.Option(help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/).")
    ] = None,
    split: Annotated[
        str, typer.Option(help="Qrels split of the BEIR folder: qrels/SPLIT.tsv.")
    ] = "test",
    questions: Annotated[
        list[Path] | None,
        typer.Option(
            help='JSONL of {"question", "sources"} against an existing --collection (repeat the '
            "option for more files; a folder stands for its *.jsonl files)."
        ),
    ] = None,
    methods: Annotated[
        str, typer.Option(help="Comma-separated search methods: dense, bm25, hybrid.")
    ] = "dense,bm25,hybrid",
    collection: Annotated[
        str | None,
        typer.Option("--collection", "-c", help="Collection (BEIR default: beir-<folder name>)."),
    ] = None,
    title_mode: Annotated[
        str,
        typer.Option(help="BEIR title handling: 'prepend' (title, blank line, text) or 'omit'."),
    ] = "prepend",
    max_queries: Annotated[
        int | None, typer.Option(help="Evaluate a seeded random sample of this many queries.")
    ] = None,
    k: Annotated[int, typer.Option("-k", help="Passages retrieved per query.")] = 100,
    source_root: SourceRootOpt = None,
    seed: SeedOpt = 0,
    name: NameOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Score nDCG@10, Recall@1/5/10/100, MRR@10 and MAP@100 for each search method."""
    from kb.eval.records import save_eval
    from kb.eval.retrieval import RetrievalEvalSpec, run_retrieval_eval
    from kb.service import KnowledgeBase

    spec = RetrievalEvalSpec(
        beir=str(beir) if beir else None,
        split=split,
        questions=[str(q) for q in questions] if questions else None,
        collection=collection,
        methods=_split(methods),
        k=k,
        max_queries=max_queries,
        title_mode=title_mode,
        seed=seed,
        name=name,
        source_root=str(source_root.resolve()) if source_root else None,
    )
    spec.validate()
    kb = KnowledgeBase(Settings())
    bars_on = console.is_terminal and not json_out
    with BarProgress(enabled=bars_on) as ingest_bars, _SearchBars(enabled=bars_on) as search_bars:
        record = run_retrieval_eval(kb, spec, progress=search_bars, ingest_progress=ingest_bars)
    folder = save_eval(kb.settings, record)
    _show_summary(record, folder)
    if json_out:
        print_json({"methods": record.metrics, "eval_id": record.eval_id})


@eval_app.command("answers")
def answers(
    questions: Annotated[
        list[Path],
        typer.Option(
            help='JSONL of {"id"?, "question", "answers"?, "label"?, "sources"?, '
            '"unanswerable"?} lines ("answer", "gold_pages" and "why" are read too); repeat the '
            "option for more files; a folder stands for its *.jsonl files.",
        ),
    ],
    modes: Annotated[
        str, typer.Option(help=f"Comma-separated modes: {', '.join(MODES)}.")
    ] = ",".join(MODES),
    collection: CollectionOpt = None,
    model: Annotated[
        str | None, typer.Option(help="Generator name (default: KB_DEFAULT_GENERATOR).")
    ] = None,
    k: Annotated[int, typer.Option("-k", help="Passages given to the RAG modes.")] = 5,
    support: SupportOpt = None,
    source_root: SourceRootOpt = None,
    seed: SeedOpt = 0,
    name: NameOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Answer every question in every mode; score gold answers (at most 80 words), EM/F1,
    citations, support, not-covered on unanswerable questions, latency."""
    from kb.answering import Answerer
    from kb.eval.answers import AnswerEvalSpec, answerer_fn, run_answer_eval
    from kb.eval.records import save_eval

    settings = Settings()
    spec = AnswerEvalSpec(
        questions=list(questions),
        modes=_split(modes),
        collection=collection,
        model=model,
        k=k,
        seed=seed,
        name=name,
        support=support,
        source_root=str(source_root.resolve()) if source_root else None,
    )
    spec.validate()
    answerer = Answerer.from_settings(settings)  # with the registered fine-tuned models
    answer_fn, context = answerer_fn(
        answerer, collection=collection, k=k, model=model, support=support
    )
    with _SearchBars(enabled=console.is_terminal and not json_out) as bars:
        record = run_answer_eval(answer_fn, spec, context=context, progress=bars)
    folder = save_eval(settings, record)
    _show_summary(record, folder)
    if json_out:
        print_json({"modes": record.metrics, "errors": record.errors, "eval_id": record.eval_id})


@eval_app.command("list")
def list_command(json_out: JsonOpt = False) -> None:
    """List saved evaluations, newest first."""
    from kb.eval.records import list_evals
    from kb.eval.report import format_value, metric_label

    summaries = list_evals(Settings())
    if json_out:
        print_json({"evals": [s.to_dict() for s in summaries]})
        return
    table = Table(title="evaluations")
    for column in ("id", "kind", "created", "name", "collection", "headline"):
        table.add_column(column)
    for s in summaries:
        headline_metric = "ndcg@10" if s.kind == "retrieval" else "f1"
        headline = ", ".join(
            f"{g} {metric_label(headline_metric)} {format_value(m.get(headline_metric))}"
            for g, m in s.metrics.items()
        )
        table.add_row(s.eval_id, s.kind, s.created_at, s.name or "", s.collection or "", headline)
    console.print(table)


@eval_app.command("show")
def show(
    eval_id: Annotated[str, typer.Argument(help="Evaluation id, from `kb eval list`.")],
    json_out: JsonOpt = False,
) -> None:
    """Show one evaluation's summary (the full record with --json)."""
    from kb.eval.records import eval_dir, load_eval

    settings = Settings()
    record = load_eval(settings, eval_id)
    if json_out:
        print_json(record.to_dict())
        return
    _show_summary(record, eval_dir(settings, eval_id))


@eval_app.command("compare")
def compare(
    a: Annotated[str, typer.Argument(help="The baseline evaluation id.")],
    b: Annotated[str, typer.Argument(help="The evaluation compared with it.")],
    json_out: JsonOpt = False,
) -> None:
    """Print the metric deltas B - A and what changed between the two runs."""
    from kb.eval.records import compare_evals, load_eval
    from kb.eval.report import format_value, metric_label

    settings = Settings()
    comparison = compare_evals(load_eval(settings, a), load_eval(settings, b))
    if json_out:
        print_json(comparison.to_dict())
        return
    table = Table(title=f"{b} vs {a}")
    for column in ("group", "metric", "A", "B", "B - A"):
        table.add_column(column, justify="left" if column in ("group", "metric") else "right")
    for d in comparison.deltas:
        delta = "–" if d.delta is None else f"{d.delta:+.4f}"
        table.add_row(
            d.group,
            metric_label(d.metric),
            format_value(d.a, d.metric),
            format_value(d.b, d.metric),
            delta,
        )
    console.print(table)
    for key, (before, after) in comparison.context_changes.items():
        console.print(f"[yellow]changed[/] {key}: {before} -> {after}", highlight=False)

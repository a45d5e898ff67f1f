"""`kb finetune prepare|validate`: a thin edge over kb.finetune."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kb.cli.common import CountBar, console, fail, print_json
from kb.errors import KBError
from kb.settings import Settings

finetune_app = typer.Typer(
    name="finetune",
    help="Fine-tuning: prepare training data from tables, folders or collections; validate it.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line.")]
MaxTokensOpt = Annotated[
    int, typer.Option(help="Token limit per example, counted with the model's tokenizer.")
]
TokenizerOpt = Annotated[
    str | None,
    typer.Option(help="Tokenizer folder or .gguf file (default: the bundled SmolLM2)."),
]


def _unescape(value: str) -> str:
    """Let `--separator '\\n\\n###\\n\\n'` mean newlines, as a shell cannot type them inline."""
    return value.replace("\\n", "\n").replace("\\t", "\t")


def _lines(lines: list[int]) -> str:
    shown = ", ".join(map(str, lines[:3]))
    return f"{shown} +{len(lines) - 3}" if len(lines) > 3 else shown or "-"


def _show_report(report: Any, title: str) -> None:
    status = "[green]ok[/]" if report.ok else "[red]errors[/]"
    console.print(
        f"[bold]{title}[/] {report.path}: {status}; {report.counts.get('examples', 0)} examples, "
        f"format {report.format}, task {report.task_type}",
        highlight=False,
    )
    if report.label_counts:
        labels = ", ".join(f"{k} {v}" for k, v in report.label_counts.items())
        console.print(f"  labels: {labels}", highlight=False)
    stats = report.token_stats
    if stats:
        console.print(
            f"  tokens ({stats['tokenizer']}): min {stats['min']}, median {stats['median']}, "
            f"p95 {stats['p95']}, max {stats['max']}, limit {stats['limit']}",
            highlight=False,
        )
    for note in report.notes:
        console.print(f"  note: {note}", highlight=False)
    if not report.errors and not report.warnings:
        return
    table = Table(show_lines=False)
    table.add_column("severity")
    table.add_column("code")
    table.add_column("lines", justify="right")
    table.add_column("message", overflow="fold")
    for severity, issues, style in (
        ("error", report.errors, "red"),
        ("warning", report.warnings, "yellow"),
    ):
        for issue in issues:
            table.add_row(f"[{style}]{severity}[/]", issue.code, _lines(issue.lines), issue.message)
    console.print(table)


def _fail(exc: KBError, json_out: bool) -> None:
    if json_out:
        print_json({"ok": False, "error": {"type": type(exc).__name__, "message": str(exc)}})
    fail(str(exc))


@finetune_app.command("prepare")
def prepare(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for train.jsonl, validation.jsonl, manifest.json.")
    ],
    source: Annotated[
        Path | None,
        typer.Argument(
            help="CSV/TSV/XLSX/JSON/JSONL file, or a folder with one sub-folder per label. "
            "Leave out with --from-collection."
        ),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format", help="'chat' (messages) or 'completion' (legacy prompt/completion)."
        ),
    ] = "chat",
    prompt_column: Annotated[
        str | None, typer.Option(help="Column with the prompt (default: prompt/input/question...).")
    ] = None,
    completion_column: Annotated[
        str | None,
        typer.Option(help="Column with the completion (default: completion/output/answer...)."),
    ] = None,
    system: Annotated[
        str | None, typer.Option(help="System message added to every example.")
    ] = None,
    template: Annotated[
        str | None,
        typer.Option(
            help="Prompt template filled from each row, e.g. 'Describe {name}, mention {type}'; "
            "for a labelled folder it may use {labels} (and {neighbours} with --neighbours) and "
            "must use {text}."
        ),
    ] = None,
    generate_with: Annotated[
        str | None, typer.Option(help="Configured generator that writes the completions.")
    ] = None,
    from_collection: Annotated[
        str | None,
        typer.Option(
            help="Make question/answer pairs from this collection's chunks (needs --generate-with)."
        ),
    ] = None,
    max_examples: Annotated[
        int | None, typer.Option(help="Use at most this many rows, files or generated pairs.")
    ] = None,
    val_fraction: Annotated[
        float, typer.Option(help="Share of examples held out in validation.jsonl.")
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Random seed of sampling and the split.")] = 0,
    text_budget: Annotated[
        int, typer.Option(help="Tokens of a folder example's text kept in its prompt.")
    ] = 512,
    keep_headers: Annotated[
        str,
        typer.Option(
            help="Comma-separated headers a mail or news example keeps, e.g. "
            "'subject,from,organization'."
        ),
    ] = "subject",
    neighbours: Annotated[
        int,
        typer.Option(
            help="Labelled folder: show the K labelled examples most like each text in its "
            "prompt (BM25 and dense retrieval fused); 0: none."
        ),
    ] = 0,
    neighbours_from: Annotated[
        Path | None,
        typer.Option(
            help="Labelled folder the neighbours come from (default: the source itself, each "
            "example leaving itself out); for a test split, the training folder."
        ),
    ] = None,
    neighbour_tokens: Annotated[
        int, typer.Option(help="Opening tokens shown of each neighbour.")
    ] = 16,
    neighbour_search: Annotated[
        str,
        typer.Option(
            help="What finds the neighbours: 'whole' (each whole text) or 'shown' (only the part "
            "its prompt shows, --text-budget tokens)."
        ),
    ] = "whole",
    neighbour_dropout: Annotated[
        float,
        typer.Option(
            help="Share of the prompts shown no neighbours, so that a model trained on them also "
            "learns to read the text alone (a share in [0, 1]; 1 hides them from every prompt, "
            "an evaluation split of the model's own reading)."
        ),
    ] = 0.0,
    header_labels: Annotated[
        str,
        typer.Option(
            help="Comma-separated message headers, e.g. 'from,subject': the neighbours end with "
            "a line per header counting the labels of the pool's messages with the same value "
            "(the sender's other messages; the rest of the thread, reply prefixes dropped). "
            "'quoted' counts the labels of the messages sent by the authors the text quotes "
            "(its 'a@b.c writes:' lines)."
        ),
    ] = "",
    separator: Annotated[
        str, typer.Option(help="Completion format: the separator ending every prompt.")
    ] = "\\n\\n###\\n\\n",
    stop: Annotated[
        str, typer.Option(help="Completion format: the stop sequence ending every completion.")
    ] = " END",
    max_new_tokens: Annotated[
        int, typer.Option(help="Token limit of each generated completion.")
    ] = 256,
    max_tokens: MaxTokensOpt = 2048,
    tokenizer: TokenizerOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Turn a table, a labelled folder or a collection into train/validation JSONL, then validate."""
    from kb.finetune import PrepareOptions, prepare_dataset

    options = PrepareOptions(
        format=fmt,  # type: ignore[arg-type]  # PrepareOptions.check names the allowed values
        prompt_column=prompt_column,
        completion_column=completion_column,
        system=system,
        template=template,
        generate_with=generate_with,
        from_collection=from_collection,
        max_examples=max_examples,
        val_fraction=val_fraction,
        seed=seed,
        text_budget=text_budget,
        keep_headers=tuple(h.strip() for h in keep_headers.split(",") if h.strip()),
        neighbours=neighbours,
        neighbours_from=str(neighbours_from) if neighbours_from else None,
        neighbour_tokens=neighbour_tokens,
        neighbour_search=neighbour_search,
        neighbour_dropout=neighbour_dropout,
        header_labels=tuple(h.strip() for h in header_labels.split(",") if h.strip()),
        separator=_unescape(separator),
        stop=_unescape(stop),
        max_new_tokens=max_new_tokens,
        max_tokens=max_tokens,
        tokenizer=tokenizer,
    )
    try:
        with CountBar("generating", enabled=console.is_terminal and not json_out) as bar:
            result = prepare_dataset(
                source, out, options=options, settings=Settings(), progress=bar
            )
    except KBError as exc:
        _fail(exc, json_out)
        return
    counts = result.manifest["counts"]
    console.print(
        f"wrote {counts['train']} training and {counts['validation']} validation examples to "
        f"{result.out_dir} ({counts['skipped']} inputs skipped)",
        highlight=False,
    )
    for item in result.skipped[:10]:
        console.print(f"  [yellow]skipped[/] {item.item}: {item.reason}", highlight=False)
    if len(result.skipped) > 10:
        console.print(f"  ... and {len(result.skipped) - 10} more (see manifest.json)")
    _show_report(result.report, "train")
    _show_report(result.validation_report, "validation")
    if json_out:
        print_json(result.to_dict())
    if not result.ok:
        raise typer.Exit(1)


@finetune_app.command("validate")
def validate(
    file: Annotated[Path, typer.Argument(help="JSONL file of chat or prompt/completion examples.")],
    eval_file: Annotated[
        Path | None,
        typer.Option(help="Held-out JSONL; training examples whose prompt is in it are reported."),
    ] = None,
    max_tokens: MaxTokensOpt = 2048,
    tokenizer: TokenizerOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Check a training file: format, duplicates, empty completions, length, task type, leakage.

    Exits 1 when there are errors, 0 when there are only warnings.
    """
    from kb.finetune import validate_file

    try:
        report = validate_file(
            file,
            eval_file=eval_file,
            max_tokens=max_tokens,
            tokenizer=tokenizer,
            settings=Settings(),
        )
    except KBError as exc:
        _fail(exc, json_out)
        return
    _show_report(report, "validate")
    if json_out:
        print_json(report.to_dict())
    if not report.ok:
        raise typer.Exit(1)


# training commands (run, jobs, status, cancel, embeddings) live in their own module
from kb.cli.finetune_jobs import register as _register_training  # noqa: E402

_register_training(finetune_app)

"""`kb finetune prepare|validate`: a thin edge over kb.finetune."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kb.cli.common import CountBar, JsonOpt, console, fail, print_json
from kb.cli.specs import cli_build, spec_options
from kb.errors import KBError
from kb.finetune.options import PrepareOptions, ValidateOptions
from kb.settings import Settings

finetune_app = typer.Typer(
    name="finetune",
    help="Fine-tuning: prepare training data from tables, folders or collections; validate it.",
    no_args_is_help=True,
)


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
    table.add_column(f"{report.unit}s", justify="right")
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
@spec_options(PrepareOptions)
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
    options: dict[str, Any] | None = None,
    json_out: JsonOpt = False,
) -> None:
    """Turn a table, a labelled folder or a collection into train/validation JSONL, then validate."""
    from kb.finetune import prepare_dataset

    try:
        spec = cli_build(PrepareOptions, options or {})
        with CountBar("generating", enabled=console.is_terminal and not json_out) as bar:
            result = prepare_dataset(source, out, options=spec, settings=Settings(), progress=bar)
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
@spec_options(ValidateOptions)
def validate(
    file: Annotated[
        Path,
        typer.Argument(
            help="JSONL file of chat or prompt/completion examples, or a CSV/TSV/XLSX/JSON table "
            "as `prepare` reads it (findings name its rows)."
        ),
    ],
    eval_file: Annotated[
        Path | None,
        typer.Option(help="Held-out data; training examples whose prompt is in it are reported."),
    ] = None,
    options: dict[str, Any] | None = None,
    json_out: JsonOpt = False,
) -> None:
    """Check training data: format, duplicates, empty completions, length, task type, leakage.

    Exits 1 when there are errors, 0 when there are only warnings.
    """
    from kb.finetune import validate_file

    try:
        spec = cli_build(ValidateOptions, options or {})
        report = validate_file(file, eval_file=eval_file, settings=Settings(), **spec.to_dict())
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

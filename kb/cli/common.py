"""Helpers shared by CLI commands: settings, JSON output, errors, progress bars."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ingest.pipeline import IngestProgress

console = Console(stderr=True)

# options that several commands take, declared once
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line.")]
CollectionOpt = Annotated[
    str | None,
    typer.Option(
        "--collection", "-c", help="Collection name (default: KB_DEFAULT_COLLECTION, 'default')."
    ),
]
MethodOpt = Annotated[
    str | None,
    typer.Option("--method", help="dense, bm25 or hybrid (default: KB_RETRIEVAL_METHOD)."),
]
SupportOpt = Annotated[
    str | None,
    typer.Option(
        "--support",
        help="What a grounded answer does with sentences its passages do not support: flag, "
        "drop, or fallback (to the extractive answer). Default: KB_SUPPORT_POLICY.",
    ),
]


def fail(message: str, code: int = 1) -> NoReturn:
    # escaped: a message may hold brackets, e.g. `pip install -e ".[ray]"`, that rich reads as markup
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    sys.exit(code)


def print_json(obj: Any) -> None:
    """Machine output: one JSON object on the last line of stdout."""
    sys.stdout.write(json.dumps(obj, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


class CountBar:
    """One progress bar on stderr, fed (done, total) by the core, e.g. while generating."""

    def __init__(self, label: str, enabled: bool):
        self._progress = Progress(
            TextColumn(label),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
        )
        self._task = self._progress.add_task(label, total=None)

    def __enter__(self) -> CountBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, done: int, total: int) -> None:
        self._progress.update(self._task, completed=done, total=total)


class BarProgress(IngestProgress):
    """Files and chunks progress bars on stderr."""

    def __init__(self, enabled: bool = True):
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
            transient=False,
        )
        self._files = self._progress.add_task("files", total=None)
        self._chunks = self._progress.add_task("chunks embedded", total=None)

    def __enter__(self) -> BarProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def start(self, files_total: int) -> None:
        self._progress.update(self._files, total=files_total)

    def file_done(self, path: str, status: str, error: str | None = None) -> None:
        if status != "removed":
            self._progress.advance(self._files)
        if error and status == "failed":
            self._progress.console.print(f"[red]failed[/] {path}: {error}", highlight=False)

    def chunks_embedded(self, n: int) -> None:
        self._progress.advance(self._chunks, n)

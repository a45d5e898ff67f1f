"""`kb finetune run|jobs|status|cancel|embeddings`: training commands of the finetune sub-app
(added to `finetune_app` by `register`, so kb/cli/finetune.py keeps the data commands)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kb.cli.common import JsonOpt, console, fail, print_json
from kb.cli.specs import cli_build, spec_options
from kb.errors import KBError
from kb.finetune.options import EmbeddingsOptions, FineTuneOptions
from kb.jobs import Cancelled, JobContext, JobRecord
from kb.settings import Settings


class _JobBar:
    """A progress bar on stderr fed from a running job's progress record."""

    def __init__(self, enabled: bool, unit_done: str, unit_total: str):
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
        )
        self._task = self._progress.add_task("starting", total=None, status="")
        self._keys = (unit_done, unit_total)
        self._ctx: JobContext | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def wrap(self, fn):
        """The job function, recording its context so the bar can read its progress; Ctrl-C
        cancels the job (its record ends as cancelled)."""

        def run(ctx: JobContext):
            self._ctx = ctx
            try:
                return fn(ctx)
            except KeyboardInterrupt:
                raise Cancelled() from None

        return run

    def __enter__(self) -> _JobBar:
        self._progress.start()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._update()
        self._progress.stop()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            self._update()

    def _update(self) -> None:
        if self._ctx is None:
            return
        p = dict(self._ctx.record.progress)
        done, total = (p.get(k) for k in self._keys)
        if done is None:
            done, total = p.get("done"), p.get("total")
        parts = []
        if p.get("epoch"):
            parts.append(f"epoch {p['epoch']}/{p.get('epochs', '?')}")
        for key, label in (("loss", "loss"), ("eval_loss", "eval"), ("remote_status", "")):
            if p.get(key) is not None:
                parts.append(f"{label} {p[key]}".strip())
        if p.get("eta_s") is not None:
            parts.append(f"ETA {p['eta_s']:.0f}s")
        self._progress.update(
            self._task,
            description=str(p.get("stage") or "training"),
            completed=done or 0,
            total=total,
            status=", ".join(parts),
        )


def _models_and_jobs(settings: Settings):
    from kb.jobs import JobManager
    from kb.models import ModelRegistry

    return ModelRegistry(settings), JobManager(settings.jobs_dir)


def _finish(record: JobRecord, json_out: bool) -> None:
    if json_out:
        print_json(record.to_dict())
    if record.state == "succeeded":
        result = record.result or {}
        console.print(
            f"[green]{record.id} succeeded[/]: model {result.get('model')}", highlight=False
        )
        return
    message = record.error or record.state
    if not json_out:
        fail(f"job {record.id} {record.state}: {message}")
    raise typer.Exit(1)


@spec_options(FineTuneOptions)
def run(
    data: Annotated[
        Path,
        typer.Argument(help="OUT_DIR of `kb finetune prepare`, or a train.jsonl file."),
    ],
    validation: Annotated[
        Path | None,
        typer.Option(help="Validation JSONL (default: validation.jsonl beside the training file)."),
    ] = None,
    options: dict[str, Any] | None = None,
    base_url: Annotated[
        str | None, typer.Option(help="openai: the API base URL (default: the generator's).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Fine-tune a model and register it; runs here with a progress bar (Ctrl-C cancels)."""
    from kb.finetune.backends import FineTuneSpec
    from kb.finetune.jobs import JOB_KIND, finetune_job, prepare_spec, resolve_training_files

    settings = Settings()
    models, jobs = _models_and_jobs(settings)
    try:
        chosen = cli_build(FineTuneOptions, options or {})
        train_file, validation_file = resolve_training_files(data, validation)
        spec = FineTuneSpec(
            **chosen.to_dict(),
            train_file=train_file,
            validation_file=validation_file,
            base_url=base_url,
        )
        prepare_spec(spec, settings, models)
    except KBError as exc:
        fail(str(exc))
    bar = _JobBar(console.is_terminal and not json_out, "examples", "total_examples")
    with bar:
        record = jobs.run_inline(
            JOB_KIND, spec.to_dict(), bar.wrap(finetune_job(spec, settings, models))
        )
    _finish(record, json_out)


@spec_options(EmbeddingsOptions)
def embeddings(options: dict[str, Any] | None = None, json_out: JsonOpt = False) -> None:
    """Fine-tune the collection's embedding model on query/passage pairs and re-index with it."""
    from kb.finetune.embeddings import (
        JOB_KIND,
        EmbeddingFineTuneSpec,
        check_embeddings_spec,
        embeddings_job,
    )
    from kb.service import KnowledgeBase

    settings = Settings()
    models, jobs = _models_and_jobs(settings)
    kb = KnowledgeBase(settings)
    try:
        spec = EmbeddingFineTuneSpec(**cli_build(EmbeddingsOptions, options or {}).to_dict())
        check_embeddings_spec(spec, kb, models)
    except KBError as exc:
        fail(str(exc))
    bar = _JobBar(console.is_terminal and not json_out, "step", "total_steps")
    with bar:
        record = jobs.run_inline(
            JOB_KIND, spec.to_dict(), bar.wrap(embeddings_job(kb, spec, models))
        )
    _finish(record, json_out)


def jobs(
    kind: Annotated[
        str | None, typer.Option(help="Only this kind: finetune or embeddings (default: both).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """List fine-tuning jobs, newest first."""
    from kb.finetune.jobs import read_job_records

    records = read_job_records(Settings().jobs_dir, kinds=[kind] if kind else None)
    if json_out:
        print_json({"jobs": [{**r.to_dict(), "events": []} for r in records]})
        return
    table = Table()
    for column in ("id", "state", "model", "progress", "created"):
        table.add_column(column)
    for r in records:
        model = (r.result or {}).get("model") or r.params.get("name") or r.params.get("out") or "-"
        p = r.progress
        progress = f"{p.get('step', '-')}/{p.get('total_steps', '-')} loss {p.get('loss', '-')}"
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at))
        table.add_row(r.id, r.state, str(model), progress, created)
    console.print(table)


def status(
    job_id: Annotated[str, typer.Argument(help="Job id, from `kb finetune jobs`.")],
    events: Annotated[int, typer.Option(help="Show this many of the latest events.")] = 10,
    json_out: JsonOpt = False,
) -> None:
    """Show one job: state, progress, latest events and result."""
    from kb.finetune.jobs import read_job_record

    try:
        record = read_job_record(Settings().jobs_dir, job_id)
    except KBError as exc:
        fail(str(exc))
    if json_out:
        print_json(record.to_dict())
        return
    console.print(f"[bold]{record.id}[/] ({record.kind}): {record.state}", highlight=False)
    if record.error:
        console.print(f"  error: {record.error}", highlight=False)
    for key, value in record.progress.items():
        console.print(f"  {key}: {value}", highlight=False)
    for event in record.events[-events:]:
        when = time.strftime("%H:%M:%S", time.localtime(event["time"]))
        console.print(f"  {when} {event['level']}: {event['message']}", highlight=False)
    if record.result and record.result.get("model"):
        console.print(f"  model: {record.result['model']}", highlight=False)


def cancel(job_id: Annotated[str, typer.Argument(help="Job id, from `kb finetune jobs`.")]) -> None:
    """Ask a queued or running job to stop (in this or another process, e.g. `kb serve`)."""
    from kb.finetune.jobs import request_cancel

    try:
        record = request_cancel(Settings().jobs_dir, job_id)
    except KBError as exc:
        fail(str(exc))
    console.print(f"cancel requested for {record.id}; it stops after its current step")


def register(app: typer.Typer) -> None:
    for fn, name in (
        (run, "run"),
        (embeddings, "embeddings"),
        (jobs, "jobs"),
        (status, "status"),
        (cancel, "cancel"),
    ):
        app.command(name)(fn)

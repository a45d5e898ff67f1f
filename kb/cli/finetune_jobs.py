"""`kb finetune run|jobs|status|cancel|embeddings`: training commands of the finetune sub-app
(added to `finetune_app` by `register`, so kb/cli/finetune.py keeps the data commands)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kb.cli.common import console, fail, print_json
from kb.errors import KBError
from kb.jobs import Cancelled, JobContext, JobRecord
from kb.settings import Settings

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line.")]


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


def run(
    data: Annotated[
        Path,
        typer.Argument(help="OUT_DIR of `kb finetune prepare`, or a train.jsonl file."),
    ],
    validation: Annotated[
        Path | None,
        typer.Option(help="Validation JSONL (default: validation.jsonl beside the training file)."),
    ] = None,
    backend: Annotated[
        str, typer.Option(help="'local' (LoRA on this machine) or 'openai'.")
    ] = "local",
    name: Annotated[
        str | None, typer.Option(help="Name of the registered model (default: derived).")
    ] = None,
    base_model: Annotated[
        str | None,
        typer.Option(help="Local: 'smollm2' or a model folder; openai: the remote model id."),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the training data.")] = 1,
    lr: Annotated[
        float | None,
        typer.Option(help="Learning rate (local default 2e-4; openai: the LR multiplier)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Examples per forward pass (local).")] = 4,
    grad_accumulation: Annotated[int, typer.Option(help="Batches per optimizer step.")] = 1,
    r: Annotated[int, typer.Option("--r", help="LoRA rank.")] = 8,
    alpha: Annotated[int, typer.Option(help="LoRA alpha (scaling = alpha / r).")] = 16,
    dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.05,
    token_dropout: Annotated[
        float,
        typer.Option(
            help="Local: share of prompt tokens left out of each training pass (word dropout; "
            "e.g. 0.25 for classifiers that latch onto single words). 0 = off."
        ),
    ] = 0.0,
    target_modules: Annotated[
        str | None,
        typer.Option(help="Comma-separated layer names, e.g. q_proj,v_proj (default: all linear)."),
    ] = None,
    lora_layers: Annotated[
        int | None, typer.Option(help="Adapt only the last N decoder layers (faster).")
    ] = None,
    max_examples: Annotated[
        int | None, typer.Option(help="Train on a seeded sample of this many examples.")
    ] = None,
    max_seq_len: Annotated[
        int, typer.Option(help="Tokens per example; longer ones are cut.")
    ] = 512,
    dtype: Annotated[
        str, typer.Option(help="float32, or bfloat16 (autocast; faster on CPUs with bf16).")
    ] = "float32",
    seed: Annotated[int, typer.Option(help="Random seed (sampling, shuffling, init).")] = 0,
    generator: Annotated[
        str | None,
        typer.Option(help="openai: configured generator whose base_url and api_key to use."),
    ] = None,
    base_url: Annotated[str | None, typer.Option(help="openai: the API base URL.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Fine-tune a model and register it; runs here with a progress bar (Ctrl-C cancels)."""
    from kb.finetune.backends import FineTuneSpec
    from kb.finetune.jobs import JOB_KIND, finetune_job, prepare_spec, resolve_training_files

    settings = Settings()
    models, jobs = _models_and_jobs(settings)
    try:
        train_file, validation_file = resolve_training_files(data, validation)
        spec = FineTuneSpec(
            train_file=train_file,
            validation_file=validation_file,
            name=name,
            backend=backend,
            base_model=base_model or "smollm2",
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            grad_accumulation=grad_accumulation,
            max_seq_len=max_seq_len,
            max_train_examples=max_examples,
            r=r,
            alpha=alpha,
            dropout=dropout,
            token_dropout=token_dropout,
            target_modules=[m.strip() for m in target_modules.split(",")]
            if target_modules
            else None,
            lora_layers=lora_layers,
            dtype=dtype,
            seed=seed,
            generator=generator,
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


def embeddings(
    collection: Annotated[
        str, typer.Option("--collection", "-c", help="Collection to train for and re-index.")
    ],
    beir: Annotated[
        Path | None, typer.Option(help="BEIR folder: queries.jsonl, corpus.jsonl, qrels/.")
    ] = None,
    split: Annotated[str, typer.Option(help="BEIR qrels split to train on.")] = "train",
    pairs: Annotated[
        Path | None,
        typer.Option(help="JSONL of {query, positive}, or prepare's Q/A data with chunk_ids."),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the pairs.")] = 1,
    hard_negatives: Annotated[
        int, typer.Option(help="Hard negatives mined from the collection per pair.")
    ] = 1,
    mine_method: Annotated[
        str, typer.Option(help="Mining search: dense, bm25 or hybrid.")
    ] = "hybrid",
    batch_size: Annotated[int, typer.Option(help="Pairs per batch (in-batch negatives).")] = 32,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 3e-5,
    max_pairs: Annotated[int | None, typer.Option(help="Train on a sample of this many.")] = None,
    dtype: Annotated[
        str, typer.Option(help="bfloat16 (autocast, faster) or float32.")
    ] = "bfloat16",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out: Annotated[
        str | None, typer.Option(help="Name of the saved model (default: <collection>-emb-<id>).")
    ] = None,
    base: Annotated[
        str | None,
        typer.Option(help="Embedder to start from, e.g. minilm (default: the collection's own)."),
    ] = None,
    reindex: Annotated[
        bool, typer.Option(help="Re-index the collection with the new model when done.")
    ] = True,
    json_out: JsonOpt = False,
) -> None:
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
    spec = EmbeddingFineTuneSpec(
        collection=collection,
        beir=str(beir) if beir else None,
        split=split,
        pairs=str(pairs) if pairs else None,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        hard_negatives=hard_negatives,
        mine_method=mine_method,
        max_pairs=max_pairs,
        dtype=dtype,
        out=out,
        base=base,
        reindex=reindex,
        seed=seed,
    )
    try:
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

"""Fine-tuning over HTTP: prepare and validate datasets, run training jobs (LoRA or a remote
API, and embedding fine-tuning), follow and cancel them; list and delete fine-tuned models.

Datasets prepared here live in `<data_dir>/finetune/<name>/`; server-side source files and
training files must lie inside KB_INGEST_ROOTS, as for folder ingest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from api.auth import Caller
from api.deps import JobsDep, KBDep, ModelsDep, Services, SettingsDep
from api.errors import ERROR_RESPONSES
from api.ingest_jobs import lane, resolve_ingest_path
from api.schemas import JobEvent, JobList, JobOut, Strict
from kb.errors import Conflict, InvalidInput, NotFound
from kb.finetune.options import (
    EmbeddingsOptions,
    FineTuneOptions,
    PrepareOptions,
    S,
    ValidateOptions,
    server_paths,
)
from kb.jobs import JobRecord
from kb.models import validate_model_name
from kb.settings import Settings

router = APIRouter(tags=["fine-tuning"], responses=ERROR_RESPONSES)

ACCEPTED = {202: {"description": "Accepted: the job runs in the background; poll its URL."}}
DATASETS_DIR = "finetune"
JOB_KINDS = ("finetune", "embeddings")


# -- schemas -------------------------------------------------------------------------------


class PrepareRequest(PrepareOptions):
    name: str = Field(
        description="Dataset name; files go to <data_dir>/finetune/NAME/ (replaced if present).",
        examples=["support-faq"],
    )
    source: str | None = Field(
        None,
        description="A table file or labelled folder on the server, inside KB_INGEST_ROOTS; "
        "leave out with from_collection.",
    )


class ValidateRequest(ValidateOptions):
    dataset: str | None = Field(None, description="A dataset prepared here (its train.jsonl).")
    path: str | None = Field(
        None,
        description="A JSONL file, or a CSV/TSV/XLSX/JSON table as prepare reads it, on the "
        "server in KB_INGEST_ROOTS.",
    )
    lines: list[str] | None = Field(
        None, max_length=100_000, description="JSONL content: one example per item."
    )


class FineTuneRequest(FineTuneOptions):
    dataset: str | None = Field(
        None, description="A dataset prepared here; its train and validation files are used."
    )
    train_file: str | None = Field(
        None, description="A JSONL training file on the server, in KB_INGEST_ROOTS."
    )
    validation_file: str | None = Field(
        None, description="A JSONL validation file on the server, in KB_INGEST_ROOTS."
    )


class FineTunedModelOut(BaseModel):
    name: str
    kind: str = Field(description="'finetuned' (a generator) or 'embedding'.")
    backend: str
    base_model: str
    adapter: str | None = None
    remote_model: str | None = None
    path: str | None = None
    dataset: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    job_id: str | None = None
    created_at: float


class FineTunedModelList(BaseModel):
    models: list[FineTunedModelOut]


class EventList(BaseModel):
    job_id: str
    state: str
    events: list[JobEvent]
    next_after: int = Field(description="Pass as `after` to get only newer events.")


# -- datasets ------------------------------------------------------------------------------


def _dataset_dir(settings: Settings, name: str) -> Path:
    try:
        validate_model_name(name)
    except InvalidInput:
        raise InvalidInput(
            f"invalid dataset name {name!r}: use 1-64 letters, digits, '_', '.' or '-'"
        ) from None
    return settings.data_dir / DATASETS_DIR / name


def _prepared(settings: Settings, name: str) -> Path:
    folder = _dataset_dir(settings, name)
    if not (folder / "train.jsonl").is_file():
        raise NotFound(
            f"no prepared dataset {name!r}: create it with POST /finetune/datasets/prepare"
        )
    return folder


def _on_server(spec: type[S], body: BaseModel, settings: Settings) -> S:
    """The command's options from a request body, each server path resolved inside
    KB_INGEST_ROOTS (a path outside them is refused)."""
    values = body.model_dump(include=set(spec.model_fields))
    for name in server_paths(spec):
        if values[name]:
            values[name] = str(resolve_ingest_path(values[name], settings.ingest_roots))
    return spec(**values)


@router.post("/finetune/datasets/prepare", summary="Prepare a fine-tuning dataset")
def prepare_dataset(
    body: PrepareRequest, settings: SettingsDep, kb: KBDep, request: Request, caller: Caller
) -> dict:
    """Build train/validation JSONL + manifest from a server-side table or labelled folder, or
    from a collection; the result includes both validation reports."""
    from kb.finetune import prepare_dataset as prepare

    caller.check(body.from_collection, "write")
    out = _dataset_dir(settings, body.name)
    source = resolve_ingest_path(body.source, settings.ingest_roots) if body.source else None
    options = _on_server(PrepareOptions, body, settings)
    services: Services = request.app.state.services
    result = prepare(
        source, out, options=options, settings=settings, kb=kb, generators=services.generators
    )
    return {"dataset": body.name, **result.to_dict()}


@router.post("/finetune/datasets/validate", summary="Validate fine-tuning data")
def validate_dataset(body: ValidateRequest, settings: SettingsDep, caller: Caller) -> dict:
    """Check a prepared dataset, a server-side file (JSONL, or a table by its rows), or JSONL
    lines sent in the body."""
    from kb.finetune import validate_file, validate_lines

    given = [x for x in (body.dataset, body.path, body.lines) if x is not None]
    if len(given) != 1:
        raise InvalidInput("send exactly one of 'dataset', 'path' or 'lines'")
    options = _on_server(ValidateOptions, body, settings)
    check = {"max_tokens": options.max_tokens, "tokenizer": options.tokenizer}
    if body.lines is not None:
        report = validate_lines(body.lines, source="<request>", settings=settings, **check)
    elif body.dataset is not None:
        folder = _prepared(settings, body.dataset)
        validation = folder / "validation.jsonl"
        report = validate_file(
            folder / "train.jsonl",
            eval_file=validation if validation.is_file() and validation.stat().st_size else None,
            settings=settings,
            **check,
        )
    else:
        path = resolve_ingest_path(body.path, settings.ingest_roots)
        report = validate_file(path, settings=settings, **options.to_dict())
    return report.to_dict()


# -- jobs ----------------------------------------------------------------------------------


def _accepted(path: str, summary: str):
    """A POST that queues a job: 202 with the job record, its URL in the Location header."""
    return router.post(
        path, status_code=202, response_model=JobOut, responses=ACCEPTED, summary=summary
    )


def _queued(response: Response, record: JobRecord) -> dict:
    response.headers["Location"] = f"/finetune/jobs/{record.id}"
    return record.to_dict()


@_accepted("/finetune/jobs", "Start a fine-tuning job")
def create_job(
    body: FineTuneRequest,
    response: Response,
    settings: SettingsDep,
    jobs: JobsDep,
    models: ModelsDep,
    caller: Caller,
) -> dict:
    """Train in the background (one training job at a time); on success the model is
    registered and usable at once (mode `finetuned`, `/v1` model list)."""
    from kb.finetune.backends import FineTuneSpec
    from kb.finetune.jobs import resolve_training_files, submit_finetune

    caller.check(None, "write")
    if (body.dataset is None) == (body.train_file is None):
        raise InvalidInput("send exactly one of 'dataset' (prepared here) or 'train_file'")
    if body.dataset is not None:
        train, validation = resolve_training_files(_prepared(settings, body.dataset), None)
    else:
        train_path = resolve_ingest_path(body.train_file, settings.ingest_roots)
        validation_path = (
            resolve_ingest_path(body.validation_file, settings.ingest_roots)
            if body.validation_file
            else None
        )
        train, validation = resolve_training_files(train_path, validation_path)
    options = _on_server(FineTuneOptions, body, settings)
    spec = FineTuneSpec(**options.to_dict(), train_file=train, validation_file=validation)
    return _queued(response, submit_finetune(jobs, spec, settings, models))


@_accepted("/finetune/embeddings", "Fine-tune a collection's embedding model")
def create_embeddings_job(
    body: EmbeddingsOptions,
    response: Response,
    settings: SettingsDep,
    kb: KBDep,
    jobs: JobsDep,
    models: ModelsDep,
    caller: Caller,
) -> dict:
    """Train the embedder on BEIR qrels or query/passage pairs, then re-index the collection
    atomically (searches use the old index until the swap)."""
    from kb.finetune.embeddings import (
        JOB_KIND,
        EmbeddingFineTuneSpec,
        check_embeddings_spec,
        embeddings_job,
    )

    caller.check(body.collection, "write")
    spec = EmbeddingFineTuneSpec(**_on_server(EmbeddingsOptions, body, settings).to_dict())
    check_embeddings_spec(spec, kb, models)
    record = jobs.submit(
        JOB_KIND,
        spec.to_dict(),
        embeddings_job(kb, spec, models),
        lane=lane(body.collection),  # after (and before) ingests of the same collection
    )
    return _queued(response, record)


def _job(jobs, job_id: str):
    record = jobs.get(job_id)
    if record.kind not in JOB_KINDS:
        raise NotFound(
            f"job {job_id!r} is a {record.kind} job, not a fine-tuning job: see /jobs/{job_id}"
        )
    return record


@router.get("/finetune/jobs", response_model=JobList, summary="List fine-tuning jobs")
def list_jobs(
    jobs: JobsDep,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict:
    records = [r for kind in JOB_KINDS for r in jobs.list(kind)]
    records.sort(key=lambda r: r.created_at, reverse=True)
    return {"jobs": [{**r.to_dict(), "events": []} for r in records[:limit]]}


@router.get("/finetune/jobs/{job_id}", response_model=JobOut, summary="Get a fine-tuning job")
def get_job(job_id: str, jobs: JobsDep, caller: Caller) -> dict:
    return _job(jobs, job_id).to_dict()


@router.get("/finetune/jobs/{job_id}/events", response_model=EventList, summary="A job's events")
def job_events(
    job_id: str,
    jobs: JobsDep,
    caller: Caller,
    after: Annotated[int, Query(ge=0, description="Skip the first AFTER events.")] = 0,
) -> dict:
    record = _job(jobs, job_id)
    events = list(record.events)
    return {
        "job_id": record.id,
        "state": record.state,
        "events": events[after:],
        "next_after": len(events),
    }


@router.post(
    "/finetune/jobs/{job_id}/cancel", response_model=JobOut, summary="Cancel a fine-tuning job"
)
def cancel_job(job_id: str, jobs: JobsDep, caller: Caller) -> dict:
    """Stop a queued or running job after its current step; a remote job is cancelled too."""
    caller.check(None, "write")
    _job(jobs, job_id)
    try:
        return jobs.cancel(job_id).to_dict()
    except InvalidInput as exc:
        raise Conflict(str(exc)) from None


# -- models --------------------------------------------------------------------------------


@router.get(
    "/models/finetuned", response_model=FineTunedModelList, summary="List fine-tuned models"
)
def list_finetuned(models: ModelsDep, caller: Caller) -> dict:
    """Fine-tuned generators and embedding models, newest first, with their data and metrics."""
    return {"models": [m.to_dict() for m in models.list()]}


class ClassifyRequest(Strict):
    texts: list[str] = Field(
        min_length=1,
        max_length=256,
        description="Texts to classify (a mail or news message may keep its headers).",
    )


class ClassifiedNeighbour(BaseModel):
    label: str
    source: str = Field(description="The labelled training file shown in the prompt.")


class ClassifiedText(BaseModel):
    label: str
    probabilities: dict[str, float] = Field(description="Every label's probability.")
    neighbours: list[ClassifiedNeighbour] = Field(
        description="The labelled examples the prompt showed, nearest first (none without "
        "neighbours)."
    )
    header_labels: dict[str, dict[str, int]] | None = Field(
        None,
        description="For a model prepared with header_labels: per header, how the training "
        "messages with this text's value are labelled (the counts its prompt showed).",
    )


class ClassifyResponse(BaseModel):
    model: str
    labels: list[str]
    results: list[ClassifiedText] = Field(description="One per text, in request order.")


@router.post(
    "/models/{name}/classify",
    response_model=ClassifyResponse,
    summary="Classify texts with a fine-tuned classifier",
)
def classify(
    name: str, body: ClassifyRequest, models: ModelsDep, request: Request, caller: Caller
) -> dict:
    """Label each text with a model trained on a labelled folder: its prompt is built as in
    training (template, headers, token budget, and the nearest labelled examples when it was
    prepared with `neighbours`), and each label's probability comes from its log-likelihood as
    the whole answer."""
    caller.check(None, "read")
    services: Services = request.app.state.services
    classifier = services.classifiers.get(models.get(name), services.generators, services.settings)
    results = classifier.classify(body.texts)
    return {
        "model": name,
        "labels": classifier.labels,
        "results": [r.to_dict() for r in results],
    }


@router.delete(
    "/models/{name}", response_model=FineTunedModelOut, summary="Delete a fine-tuned model"
)
def delete_model(name: str, models: ModelsDep, caller: Caller) -> dict:
    """Remove a fine-tuned model and its files; configured generators cannot be deleted here."""
    caller.check(None, "write")
    return models.delete(name).to_dict()

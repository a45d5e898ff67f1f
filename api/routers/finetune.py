"""Fine-tuning over HTTP: prepare and validate datasets, run training jobs (LoRA or a remote
API, and embedding fine-tuning), follow and cancel them; list and delete fine-tuned models.

Datasets prepared here live in `<data_dir>/finetune/<name>/`; server-side source files and
training files must lie inside KB_INGEST_ROOTS, as for folder ingest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from api.auth import Caller
from api.deps import JobsDep, KBDep, ModelsDep, Services, SettingsDep
from api.errors import ERROR_RESPONSES
from api.ingest_jobs import lane, resolve_ingest_path
from api.schemas import JobEvent, JobList, JobOut, Strict
from kb.errors import Conflict, InvalidInput, NotFound
from kb.models import validate_model_name
from kb.settings import Settings

router = APIRouter(tags=["fine-tuning"], responses=ERROR_RESPONSES)

ACCEPTED = {202: {"description": "Accepted: the job runs in the background; poll its URL."}}
DATASETS_DIR = "finetune"
JOB_KINDS = ("finetune", "embeddings")


# -- schemas -------------------------------------------------------------------------------


class PrepareRequest(Strict):
    name: str = Field(
        description="Dataset name; files go to <data_dir>/finetune/NAME/ (replaced if present).",
        examples=["support-faq"],
    )
    source: str | None = Field(
        None,
        description="A table file or labelled folder on the server, inside KB_INGEST_ROOTS; "
        "leave out with from_collection.",
    )
    format: Literal["chat", "completion"] = "chat"
    prompt_column: str | None = None
    completion_column: str | None = None
    system: str | None = Field(None, description="System message added to every example.")
    template: str | None = Field(None, description="Prompt template, e.g. 'Describe {name}'.")
    generate_with: str | None = Field(None, description="Generator that writes completions.")
    from_collection: str | None = Field(
        None, description="Make Q/A pairs from this collection's chunks (needs generate_with)."
    )
    max_examples: int | None = Field(None, ge=1)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
    text_budget: int = Field(512, ge=1, description="Tokens of a folder example's text kept.")
    keep_headers: list[str] = Field(
        ["subject"],
        max_length=32,
        description="Headers a mail or news example keeps, in order, e.g. subject, from.",
    )
    max_tokens: int = Field(2048, ge=1, description="Validation's per-example token limit.")
    neighbours: int = Field(
        0,
        ge=0,
        le=32,
        description="Labelled folder: show the K labelled examples most like each text in its "
        "prompt (BM25 and dense retrieval fused); 0: none.",
    )
    neighbours_from: str | None = Field(
        None,
        description="Their pool: a labelled folder on the server, in KB_INGEST_ROOTS (say the "
        "training folder, when preparing an evaluation split); default: the source itself.",
    )
    neighbour_tokens: int = Field(16, ge=1, description="Opening tokens shown of each neighbour.")
    neighbour_search: Literal["whole", "shown"] = Field(
        "whole",
        description="What finds the neighbours: each whole text, or only the part its prompt "
        "shows (text_budget tokens).",
    )
    neighbour_dropout: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of the prompts shown no neighbours, so that a model trained on them "
        "also learns to read the text alone; 1 hides them from every prompt (an evaluation "
        "split of the model's own reading).",
    )
    header_labels: list[str] = Field(
        [],
        max_length=8,
        description="Message headers, e.g. from, subject: the neighbours end with a line per "
        "header counting the labels of the pool's messages with the same value (the sender's "
        "other messages; the rest of the thread); quoted counts the labels of the messages "
        "sent by the authors the text quotes.",
    )


class ValidateRequest(Strict):
    dataset: str | None = Field(None, description="A dataset prepared here (its train.jsonl).")
    path: str | None = Field(None, description="A JSONL file on the server, in KB_INGEST_ROOTS.")
    lines: list[str] | None = Field(
        None, max_length=100_000, description="JSONL content: one example per item."
    )
    max_tokens: int = Field(2048, ge=1)


class FineTuneRequest(Strict):
    dataset: str | None = Field(
        None, description="A dataset prepared here; its train and validation files are used."
    )
    train_file: str | None = Field(
        None, description="A JSONL training file on the server, in KB_INGEST_ROOTS."
    )
    validation_file: str | None = None
    backend: Literal["local", "openai"] = "local"
    name: str | None = Field(None, description="Name of the registered model (default: derived).")
    base_model: str = Field(
        "smollm2", description="local: 'smollm2' or a model folder; openai: the remote model id."
    )
    epochs: int = Field(1, ge=1, le=100)
    lr: float | None = Field(None, gt=0, lt=1, description="local: 2e-4; openai: LR multiplier.")
    batch_size: int = Field(4, ge=1, le=512)
    grad_accumulation: int = Field(1, ge=1, le=1024)
    max_seq_len: int = Field(512, ge=16, le=32768)
    max_train_examples: int | None = Field(None, ge=1)
    r: int = Field(8, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(16, ge=1, le=4096)
    dropout: float = Field(0.05, ge=0, lt=1)
    token_dropout: float = Field(
        0.0,
        ge=0,
        le=0.5,
        description="local: share of prompt tokens left out of each training pass (0 = off).",
    )
    target_modules: list[str] | None = Field(None, description="Default: every linear layer.")
    lora_layers: int | None = Field(None, ge=1, description="Adapt only the last N layers.")
    dtype: Literal["float32", "bfloat16"] = "float32"
    seed: int = 0
    generator: str | None = Field(
        None, description="openai: configured generator whose base_url and api_key to use."
    )


class EmbeddingsRequest(Strict):
    collection: str = Field(description="Collection whose embedder is trained and re-indexed.")
    beir: str | None = Field(None, description="BEIR folder on the server, in KB_INGEST_ROOTS.")
    split: str = "train"
    pairs: str | None = Field(None, description="Pairs JSONL on the server, in KB_INGEST_ROOTS.")
    epochs: int = Field(1, ge=1, le=100)
    batch_size: int = Field(32, ge=2, le=4096)
    lr: float = Field(3e-5, gt=0, lt=1)
    hard_negatives: int = Field(1, ge=0, le=10)
    mine_method: Literal["dense", "bm25", "hybrid"] = "hybrid"
    dtype: Literal["float32", "bfloat16"] = "bfloat16"
    max_pairs: int | None = Field(None, ge=2)
    out: str | None = Field(None, description="Name of the saved model.")
    base: str | None = Field(
        None, description="Embedder to start from, e.g. 'minilm' (default: the collection's)."
    )
    reindex: bool = True
    seed: int = 0


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


@router.post("/finetune/datasets/prepare", summary="Prepare a fine-tuning dataset")
def prepare_dataset(
    body: PrepareRequest, settings: SettingsDep, kb: KBDep, request: Request, caller: Caller
) -> dict:
    """Build train/validation JSONL + manifest from a server-side table or labelled folder, or
    from a collection; the result includes both validation reports."""
    from kb.finetune import PrepareOptions
    from kb.finetune import prepare_dataset as prepare

    caller.check(body.from_collection, "write")
    out = _dataset_dir(settings, body.name)
    source = resolve_ingest_path(body.source, settings.ingest_roots) if body.source else None
    options = PrepareOptions(**body.model_dump(exclude={"name", "source"}))
    if body.neighbours_from:
        options.neighbours_from = str(
            resolve_ingest_path(body.neighbours_from, settings.ingest_roots)
        )
    services: Services = request.app.state.services
    result = prepare(
        source, out, options=options, settings=settings, kb=kb, generators=services.generators
    )
    return {"dataset": body.name, **result.to_dict()}


@router.post("/finetune/datasets/validate", summary="Validate fine-tuning data")
def validate_dataset(body: ValidateRequest, settings: SettingsDep, caller: Caller) -> dict:
    """Check a prepared dataset, a server-side file, or JSONL lines sent in the body."""
    from kb.finetune import validate_file, validate_lines

    given = [x for x in (body.dataset, body.path, body.lines) if x is not None]
    if len(given) != 1:
        raise InvalidInput("send exactly one of 'dataset', 'path' or 'lines'")
    if body.lines is not None:
        report = validate_lines(
            body.lines, source="<request>", max_tokens=body.max_tokens, settings=settings
        )
    elif body.dataset is not None:
        folder = _prepared(settings, body.dataset)
        validation = folder / "validation.jsonl"
        report = validate_file(
            folder / "train.jsonl",
            eval_file=validation if validation.is_file() and validation.stat().st_size else None,
            max_tokens=body.max_tokens,
            settings=settings,
        )
    else:
        path = resolve_ingest_path(body.path, settings.ingest_roots)
        report = validate_file(path, max_tokens=body.max_tokens, settings=settings)
    return report.to_dict()


# -- jobs ----------------------------------------------------------------------------------


@router.post(
    "/finetune/jobs",
    status_code=202,
    response_model=JobOut,
    responses=ACCEPTED,
    summary="Start a fine-tuning job",
)
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
    fields = body.model_dump(
        exclude={"dataset", "train_file", "validation_file", "max_train_examples"}
    )
    spec = FineTuneSpec(
        train_file=train,
        validation_file=validation,
        max_train_examples=body.max_train_examples,
        **fields,
    )
    record = submit_finetune(jobs, spec, settings, models)
    response.headers["Location"] = f"/finetune/jobs/{record.id}"
    return record.to_dict()


@router.post(
    "/finetune/embeddings",
    status_code=202,
    response_model=JobOut,
    responses=ACCEPTED,
    summary="Fine-tune a collection's embedding model",
)
def create_embeddings_job(
    body: EmbeddingsRequest,
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
    fields = body.model_dump()
    for key in ("beir", "pairs"):
        if fields[key]:
            fields[key] = str(resolve_ingest_path(fields[key], settings.ingest_roots))
    spec = EmbeddingFineTuneSpec(**fields)
    check_embeddings_spec(spec, kb, models)
    record = jobs.submit(
        JOB_KIND,
        spec.to_dict(),
        embeddings_job(kb, spec, models),
        lane=lane(body.collection),  # after (and before) ingests of the same collection
    )
    response.headers["Location"] = f"/finetune/jobs/{record.id}"
    return record.to_dict()


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
    both_views: bool = Field(
        False,
        description="Score each text with its labelled neighbours and without, adding the two "
        "readings' label log-likelihoods (a model trained with neighbour_dropout; about 1.8 "
        "times the time).",
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
    views: dict[str, dict[str, float]] | None = Field(
        None,
        description="With both_views: each reading's own probabilities, under `neighbours` and "
        "`alone`.",
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
    results = classifier.classify(body.texts, both_views=body.both_views)
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

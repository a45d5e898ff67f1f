"""Fine-tuning as a job: train with a backend, then register the model. The CLI runs it inline,
the HTTP API in the background; both get the same record, events and registered model."""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kb.errors import InvalidInput, JobNotFound
from kb.finetune.backends import FineTuneSpec, get_backend
from kb.jobs import FINISHED, JobContext, JobFn, JobManager, JobRecord
from kb.models import ModelRecord, ModelRegistry, dataset_info
from kb.settings import Settings

JOB_KIND = "finetune"
LANE = "finetune"  # one training run at a time: it uses every core
TRAIN_FILE = "train.jsonl"
VALIDATION_FILE = "validation.jsonl"


def resolve_training_files(
    path: str | Path, validation: str | Path | None = None
) -> tuple[str, str | None]:
    """(train file, validation file) from a `kb finetune prepare` folder or a train file; a
    folder's non-empty validation.jsonl is used unless `validation` is given."""
    source = Path(path).expanduser()
    if source.is_dir():
        train = source / TRAIN_FILE
        if not train.is_file():
            raise InvalidInput(
                f"folder {str(source)!r} has no {TRAIN_FILE}: pass the OUT_DIR of `kb finetune "
                "prepare` or a JSONL training file"
            )
        sibling = source / VALIDATION_FILE
        if validation is None and sibling.is_file() and sibling.stat().st_size > 0:
            validation = sibling
    elif source.is_file():
        train = source
    else:
        raise InvalidInput(
            f"no training data at {str(path)!r}: run `kb finetune prepare SOURCE OUT_DIR` first"
        )
    return str(train.resolve()), str(
        Path(validation).expanduser().resolve()
    ) if validation else None


def default_model_name(spec: FineTuneSpec, job_id: str) -> str:
    base = Path(spec.base_model).name if spec.backend == "local" else spec.base_model
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.") or "model"
    return f"{base[:40]}-ft-{job_id.rsplit('-', 1)[-1][:8]}"


def prepare_spec(spec: FineTuneSpec, settings: Settings, models: ModelRegistry) -> FineTuneSpec:
    """Check a spec before it is queued: options, backend, files and the model name."""
    get_backend(spec.backend, settings).check(spec)
    if spec.name:
        models.check_new_name(spec.name)
    return spec


def finetune_job(spec: FineTuneSpec, settings: Settings, models: ModelRegistry) -> JobFn:
    """The job function: train, then register the model (live in `models.generators` too)."""

    def run(ctx: JobContext) -> dict[str, Any]:
        backend = get_backend(spec.backend, settings)
        dataset = dataset_info(spec.train_file, spec.validation_file)
        ctx.event(f"training data {dataset['path']} (sha256 {dataset['sha256'][:12]})")
        with watch_cancel_marker(ctx, settings.jobs_dir):
            result = backend.run(ctx, spec)
        name = spec.name or default_model_name(spec, ctx.id)
        record = models.register(
            ModelRecord(
                name=name,
                backend=result.backend,
                base_model=result.base_model,
                remote_model=result.remote_model,
                base_url=result.base_url,
                credentials_from=spec.generator,
                dataset=dataset,
                metrics={k: v for k, v in result.metrics.items() if k != "history"},
                params=spec.to_dict(),
                job_id=ctx.id,
            ),
            adapter_from=result.adapter,
        )
        ctx.event(f"model {name!r} registered", model=name)
        return {**result.to_dict(), "model": name, "model_record": record.to_dict()}

    return run


def submit_finetune(
    manager: JobManager, spec: FineTuneSpec, settings: Settings, models: ModelRegistry
) -> JobRecord:
    """Check and queue a fine-tuning job in the background."""
    prepare_spec(spec, settings, models)
    return manager.submit(JOB_KIND, spec.to_dict(), finetune_job(spec, settings, models), lane=LANE)


def run_finetune(
    manager: JobManager, spec: FineTuneSpec, settings: Settings, models: ModelRegistry
) -> JobRecord:
    """Check and run a fine-tuning job in the calling thread (the CLI, benchmarks)."""
    prepare_spec(spec, settings, models)
    return manager.run_inline(JOB_KIND, spec.to_dict(), finetune_job(spec, settings, models))


# -- records and cancellation across processes ----------------------------------------------
# A job runs in one process (`kb serve`, or the CLI running it inline); another process reads
# its record file and asks it to stop through a marker file beside the record.


def cancel_marker(jobs_dir: Path, job_id: str) -> Path:
    return jobs_dir / f"{job_id}.cancel"


@contextlib.contextmanager
def watch_cancel_marker(ctx: JobContext, jobs_dir: Path, interval: float = 1.0) -> Iterator[None]:
    """While the block runs, a cancel marker written by another process cancels the job."""
    marker = cancel_marker(jobs_dir, ctx.id)
    done = threading.Event()

    def watch() -> None:
        while not done.wait(interval):
            if marker.exists():
                ctx.event("cancel requested from another process")
                ctx.cancel_requested.set()
                return

    thread = threading.Thread(target=watch, name=f"cancel-watch-{ctx.id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        marker.unlink(missing_ok=True)


def read_job_record(jobs_dir: Path, job_id: str) -> JobRecord:
    """A job's record as last saved, read without taking over its jobs folder."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", job_id or ""):
        raise InvalidInput(f"invalid job id {job_id!r}: list jobs with `kb finetune jobs`")
    path = jobs_dir / f"{job_id}.json"
    try:
        return JobRecord(**json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise JobNotFound(f"no job {job_id!r}: list jobs with `kb finetune jobs`") from None
    except (ValueError, TypeError) as exc:
        raise InvalidInput(
            f"the record of job {job_id!r} is damaged ({exc}): delete {path}"
        ) from exc


def read_job_records(jobs_dir: Path, kinds: list[str] | None = None) -> list[JobRecord]:
    """Fine-tuning job records (finetune and embeddings by default), newest first."""
    from kb.finetune.embeddings import JOB_KIND as EMBEDDINGS_KIND

    wanted = set(kinds or (JOB_KIND, EMBEDDINGS_KIND))
    records = []
    for path in jobs_dir.glob("*.json") if jobs_dir.is_dir() else []:
        try:
            record = JobRecord(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError, OSError):
            continue
        if record.kind in wanted:
            records.append(record)
    return sorted(records, key=lambda r: r.created_at, reverse=True)


def request_cancel(jobs_dir: Path, job_id: str, manager: JobManager | None = None) -> JobRecord:
    """Cancel a job run by `manager`, or by another process through the marker file."""
    if manager is not None:
        try:
            return manager.cancel(job_id)
        except JobNotFound:
            pass
    record = read_job_record(jobs_dir, job_id)
    if record.state in FINISHED:
        raise InvalidInput(
            f"job {job_id} already {record.state}; only queued or running jobs can be cancelled"
        )
    cancel_marker(jobs_dir, job_id).touch()
    return record

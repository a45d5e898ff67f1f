"""Background jobs of every kind (ingest, fine-tuning, ...): list, inspect, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.auth import Caller, Principal
from api.deps import JobsDep
from api.errors import ERROR_RESPONSES
from api.schemas import JobList, JobOut, JobState
from kb.errors import Conflict, InvalidInput
from kb.jobs import JobRecord

router = APIRouter(tags=["jobs"], responses=ERROR_RESPONSES)


def _visible(caller: Principal, record: JobRecord) -> bool:
    collection = record.params.get("collection")
    return collection is None or caller.allows(str(collection))


@router.get("/jobs", response_model=JobList, summary="List jobs")
def list_jobs(
    jobs: JobsDep,
    caller: Caller,
    kind: Annotated[str | None, Query(description="Only jobs of this kind, e.g. 'ingest'.")] = None,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict:
    records = [
        r for r in jobs.list(kind) if _visible(caller, r) and (state is None or r.state == state)
    ]
    return {"jobs": [{**r.to_dict(), "events": []} for r in records[:limit]]}


@router.get("/jobs/{job_id}", response_model=JobOut, summary="Get a job with its events")
def get_job(job_id: str, jobs: JobsDep, caller: Caller) -> dict:
    record = jobs.get(job_id)
    caller.check(record.params.get("collection"), "read")
    return record.to_dict()


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, summary="Cancel a job")
def cancel_job(job_id: str, jobs: JobsDep, caller: Caller) -> dict:
    """Ask a queued or running job to stop; it ends in state 'cancelled' shortly after."""
    record = jobs.get(job_id)
    caller.check(record.params.get("collection"), "write")
    try:
        return jobs.cancel(job_id).to_dict()
    except InvalidInput as exc:  # already finished: a clash with its state, not a bad request
        raise Conflict(str(exc)) from None

"""Background jobs (ingest, fine-tuning, evaluation) with persistent records.

A job record is a JSON file under `jobs/<id>.json`, rewritten atomically on every change, so
state, progress and events survive a restart. A job that was queued or running when the
process died is marked failed on the next start with a message saying so.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kb.errors import InvalidInput, JobNotFound, KBError
from kb.files import atomic_write

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
MAX_EVENTS = 500


@dataclass
class JobRecord:
    id: str
    kind: str  # "ingest" | "finetune" | "embeddings" | "eval" | ...
    params: dict[str, Any]
    state: str = "queued"
    progress: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Cancelled(Exception):
    """Raised inside a job's function when it notices a cancel request."""


class JobContext:
    """What a running job uses to report progress and notice cancellation."""

    def __init__(self, manager: JobManager, record: JobRecord):
        self._manager = manager
        self.record = record
        self.cancel_requested = threading.Event()

    @property
    def id(self) -> str:
        return self.record.id

    def event(self, message: str, level: str = "info", **data: Any) -> None:
        with self._manager._lock:
            self.record.events.append(
                {"time": time.time(), "level": level, "message": message, **data}
            )
            del self.record.events[:-MAX_EVENTS]
            self._manager._save(self.record)

    def progress(self, **values: Any) -> None:
        with self._manager._lock:
            self.record.progress.update(values)
            self._manager._save(self.record, throttle=True)

    def check_cancelled(self) -> None:
        if self.cancel_requested.is_set():
            raise Cancelled()


JobFn = Callable[[JobContext], dict[str, Any] | None]


class JobManager:
    """Runs jobs in a thread pool; one worker per `lane` key keeps e.g. writes to a collection in order."""

    def __init__(self, jobs_dir: Path, workers: int = 2):
        self.dir = jobs_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._records: dict[str, JobRecord] = {}
        self._contexts: dict[str, JobContext] = {}
        self._lanes: dict[str, threading.Lock] = {}
        self._last_save: dict[str, float] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kb-job")
        self._recover()

    def _recover(self) -> None:
        for path in sorted(self.dir.glob("*.json")):
            try:
                record = JobRecord(**json.loads(path.read_text()))
            except (ValueError, TypeError):
                continue  # a damaged record is skipped, not fatal
            if record.state in ("queued", "running"):
                record.state = "failed"
                record.error = (
                    "interrupted: the service stopped while this job ran; submit it again"
                )
                record.finished_at = time.time()
                self._save(record)
            self._records[record.id] = record

    def _save(self, record: JobRecord, throttle: bool = False) -> None:
        now = time.monotonic()
        if throttle and now - self._last_save.get(record.id, 0) < 0.5:
            return
        self._last_save[record.id] = now
        path = self.dir / f"{record.id}.json"
        atomic_write(path, json.dumps(record.to_dict(), default=str).encode("utf-8"))

    def submit(
        self, kind: str, params: dict[str, Any], fn: JobFn, *, lane: str | None = None
    ) -> JobRecord:
        record = JobRecord(id=f"{kind}-{uuid.uuid4().hex[:12]}", kind=kind, params=params)
        ctx = JobContext(self, record)
        with self._lock:
            self._records[record.id] = record
            self._contexts[record.id] = ctx
            self._save(record)
            lane_lock = self._lanes.setdefault(lane, threading.Lock()) if lane else None
        self._pool.submit(self._run, ctx, fn, lane_lock)
        return record

    def run_inline(self, kind: str, params: dict[str, Any], fn: JobFn) -> JobRecord:
        """Run a job in the calling thread (the CLI), with the same record keeping."""
        record = JobRecord(id=f"{kind}-{uuid.uuid4().hex[:12]}", kind=kind, params=params)
        ctx = JobContext(self, record)
        with self._lock:
            self._records[record.id] = record
            self._contexts[record.id] = ctx
            self._save(record)
        self._run(ctx, fn, None)
        return record

    def _run(self, ctx: JobContext, fn: JobFn, lane_lock: threading.Lock | None) -> None:
        record = ctx.record
        if lane_lock:
            lane_lock.acquire()
        try:
            with self._lock:
                if ctx.cancel_requested.is_set():
                    self._finish(record, "cancelled")
                    return
                record.state = "running"
                record.started_at = time.time()
                self._save(record)
            try:
                result = fn(ctx)
            except Cancelled:
                self._finish(record, "cancelled")
            except KBError as exc:
                self._finish(record, "failed", error=str(exc))
            except Exception as exc:  # a job must never take the service down
                ctx.event(
                    "".join(traceback.format_exception_only(type(exc), exc)).strip(), level="error"
                )
                self._finish(record, "failed", error=f"{type(exc).__name__}: {exc}")
            else:
                self._finish(
                    record,
                    "cancelled"
                    if ctx.cancel_requested.is_set() and result is None
                    else "succeeded",
                    result=result,
                )
        finally:
            if lane_lock:
                lane_lock.release()

    def _finish(
        self, record: JobRecord, state: str, *, error: str | None = None, result=None
    ) -> None:
        with self._lock:
            record.state = state
            record.error = error
            record.result = result
            record.finished_at = time.time()
            record.events.append(
                {"time": record.finished_at, "level": "info", "message": f"job {state}"}
            )
            self._save(record)
            self._contexts.pop(record.id, None)

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            record = self._records.get(job_id)
            if record is None:
                raise JobNotFound(f"no job {job_id!r}: list jobs to see their ids")
            return record

    def list(self, kind: str | None = None) -> list[JobRecord]:
        with self._lock:
            records = [r for r in self._records.values() if kind is None or r.kind == kind]
        return sorted(records, key=lambda r: r.created_at, reverse=True)

    def cancel(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        with self._lock:
            if record.state in FINISHED:
                raise InvalidInput(
                    f"job {job_id} already {record.state}; only queued or running jobs can be cancelled"
                )
            ctx = self._contexts.get(job_id)
            if ctx:
                ctx.cancel_requested.set()
            record.events.append(
                {"time": time.time(), "level": "info", "message": "cancel requested"}
            )
            self._save(record)
        return record

    def wait(self, job_id: str, timeout: float = 60.0) -> JobRecord:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.get(job_id)
            if record.state in FINISHED:
                return record
            time.sleep(0.05)
        return self.get(job_id)

    def shutdown(self) -> None:
        for ctx in list(self._contexts.values()):
            ctx.cancel_requested.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

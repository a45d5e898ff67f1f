"""Ingest as background jobs: the work, its progress reporting, and where uploads are kept.

Plain core calls (no FastAPI), so any edge can submit the same jobs. Jobs writing one
collection share the JobManager lane `collection:<name>` and so run one after another.

A job record names files as clients know them: a folder by the path the client sent, its files
relative to it, uploads by their file names; the server's own folders appear nowhere in it.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path
from typing import Any

from ingest.pipeline import IngestProgress
from kb.errors import InvalidInput, KBError, PermissionDenied
from kb.jobs import Cancelled, JobContext, JobFn, JobManager, JobRecord
from kb.service import KnowledgeBase

#: seconds an ingest job waits for another process (e.g. the CLI) writing the same collection
WRITER_WAIT_S = 300.0


def lane(collection: str) -> str:
    return f"collection:{collection}"


class JobIngestProgress(IngestProgress):
    """Reports an ingest into a job record and stops it when a cancel is requested."""

    def __init__(self, ctx: JobContext):
        self.ctx = ctx
        self.done = 0
        self.failed = 0
        self.skipped = 0
        self.chunks = 0

    def start(self, files_total: int) -> None:
        self.ctx.progress(
            files_total=files_total, files_done=0, chunks_embedded=0, failed=0, skipped=0
        )
        self.ctx.check_cancelled()

    def file_done(self, path: str, status: str, error: str | None = None) -> None:
        if status != "removed":
            self.done += 1
        if status == "failed":
            self.failed += 1
            self.ctx.event(f"failed {path}: {error}", level="warning", path=path)
        elif status == "skipped":
            self.skipped += 1
            self.ctx.event(f"skipped {path}: {error}", level="warning", path=path)
        self.ctx.progress(files_done=self.done, failed=self.failed, skipped=self.skipped)
        self.ctx.check_cancelled()

    def chunks_embedded(self, n: int) -> None:
        self.chunks += n
        self.ctx.progress(chunks_embedded=self.chunks)
        self.ctx.check_cancelled()

    def committed(self, generation: int) -> None:
        self.ctx.event(f"committed generation {generation}")


def resolve_ingest_path(path: str, roots: list[Path]) -> Path:
    """The real path of a server-side folder, which must lie inside one of the ingest roots."""
    if not roots:
        raise PermissionDenied(
            "server-side folder ingest is disabled: set KB_INGEST_ROOTS to the folders clients "
            "may ingest from (e.g. KB_INGEST_ROOTS='[\"/srv/docs\"]'), or upload the files to "
            "POST /collections/{name}/documents"
        )
    real_roots = [Path(r).expanduser().resolve() for r in roots]
    target = Path(path)
    try:
        resolved = (target if target.is_absolute() else real_roots[0] / target).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a too long name, a symlink loop, a NUL
        raise InvalidInput(f"path {path[:200]!r} cannot be used: {exc}; check the path") from None
    if not any(resolved == r or resolved.is_relative_to(r) for r in real_roots):
        allowed = ", ".join(str(r) for r in real_roots)
        raise PermissionDenied(
            f"path {path[:200]!r} is outside the folders this server ingests from ({allowed}): "
            "use a path inside one of them, or add its folder to KB_INGEST_ROOTS"
        )
    try:
        exists = resolved.exists()
    except OSError:
        exists = False
    if not exists:
        raise InvalidInput(f"no such file or folder on the server: {path[:200]!r}; check the path")
    return resolved


def submit_folder_ingest(
    jobs: JobManager,
    kb: KnowledgeBase,
    collection: str,
    path: Path,
    prune: bool,
    shown: str | None = None,
) -> JobRecord:
    """Ingest the server-side folder `path`, named `shown` (the path the client sent) in the
    job record."""
    shown = shown or path.name

    def run(ctx: JobContext) -> dict[str, Any]:
        report = kb.ingest_path(
            path,
            collection=collection,
            prune=prune,
            progress=JobIngestProgress(ctx),
            wait=WRITER_WAIT_S,
        )
        return report.to_dict()

    params = {"collection": collection, "path": shown, "prune": prune, "source": "folder"}
    return jobs.submit("ingest", params, _naming(path, shown, run), lane=lane(collection))


def submit_files_ingest(
    jobs: JobManager, kb: KnowledgeBase, collection: str, files: list[Path]
) -> JobRecord:
    def run(ctx: JobContext) -> dict[str, Any]:
        report = kb.ingest_files(
            files, collection=collection, progress=JobIngestProgress(ctx), wait=WRITER_WAIT_S
        )
        return report.to_dict()

    params = {"collection": collection, "files": [f.name for f in files], "source": "upload"}
    folder = files[0].parent if files else Path("/")
    return jobs.submit("ingest", params, _naming(folder, "", run), lane=lane(collection))


def _naming(folder: Path, shown: str, run: JobFn) -> JobFn:
    """`run`, its errors naming `folder` as `shown` (reports and events name files already as
    clients know them; an error raised past the ingest, say a full disk, may not)."""

    def named(ctx: JobContext) -> dict[str, Any] | None:
        try:
            return run(ctx)
        except Cancelled:
            raise
        except Exception as exc:
            message = str(exc)
            if str(folder) not in message:
                raise
            message = message.replace(str(folder) + os.sep, shown and shown.rstrip(os.sep) + os.sep)
            message = message.replace(str(folder), shown or ".")
            if isinstance(exc, KBError):
                raise type(exc)(message) from None
            raise KBError(f"{type(exc).__name__}: {message}") from None

    return named


def uploads_dir(data_dir: Path, collection: str) -> Path:
    return data_dir / "uploads" / collection


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str | None, taken: set[str]) -> str:
    """A file name that cannot leave its folder or hide: 'a/../b c.md' -> 'b_c.md'."""
    base = unicodedata.normalize("NFKD", os.path.basename((name or "").replace("\\", "/")))
    base = base.encode("ascii", "ignore").decode()
    base = _UNSAFE.sub("_", base).strip("._") or "upload"
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    stem, ext = stem[:120], ext[:16]
    candidate = f"{stem}.{ext}" if ext else stem
    n = 1
    while candidate in taken:  # two files of one request with the same name
        n += 1
        candidate = f"{stem}-{n}.{ext}" if ext else f"{stem}-{n}"
    taken.add(candidate)
    return candidate

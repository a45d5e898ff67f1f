"""Documents of a collection: list, delete, upload files, ingest a server-side folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from api.auth import Caller
from api.deps import JobsDep, KBDep, SettingsDep
from api.errors import ERROR_RESPONSES, ErrorResponse, PayloadTooLarge
from api.ingest_jobs import (
    resolve_ingest_path,
    safe_filename,
    submit_files_ingest,
    submit_folder_ingest,
    uploads_dir,
)
from api.schemas import DeleteResult, DocumentList, IngestRequest, JobOut
from kb.store.collection import validate_name

router = APIRouter(tags=["documents"], responses=ERROR_RESPONSES)

ACCEPTED = {
    202: {"model": JobOut, "description": "The ingest job, queued; poll GET /jobs/{id}"},
    413: {"model": ErrorResponse, "description": "Over KB_MAX_UPLOAD_BYTES or KB_MAX_UPLOAD_FILES"},
}
COPY_BLOCK = 1 << 20  # bytes per read while saving an upload


@router.get("/collections/{name}/documents", response_model=DocumentList, summary="List documents")
def list_documents(name: str, kb: KBDep, caller: Caller) -> dict:
    caller.check(name, "read")
    return {"collection": name, "documents": kb.list_documents(name)}


@router.delete(
    "/collections/{name}/documents/{doc_id:path}",
    response_model=DeleteResult,
    summary="Delete a document",
)
def delete_document(name: str, doc_id: str, kb: KBDep, caller: Caller) -> dict:
    """Delete by document id, source, or origin file path (every document of that file)."""
    caller.check(name, "write")
    # waits a little for a running ingest of the collection, then answers 409
    return {"collection": name, "deleted": kb.delete_document(name, doc_id, wait=30.0)}


@router.post(
    "/collections/{name}/documents",
    status_code=202,
    response_model=JobOut,
    responses=ACCEPTED,
    summary="Upload files and ingest them",
)
async def upload_documents(
    name: str,
    files: Annotated[list[UploadFile], File(description="One or more files to ingest.")],
    response: Response,
    kb: KBDep,
    jobs: JobsDep,
    settings: SettingsDep,
    caller: Caller,
) -> dict:
    """Save the files under the data folder and ingest them in a background job (202).

    A file uploaded again under the same name replaces the earlier version in the collection;
    documents and the job show uploads by their (made safe) file names.
    """
    validate_name(name)
    caller.check(name, "write")
    if len(files) > settings.max_upload_files:
        raise PayloadTooLarge(
            f"{len(files)} files in one upload is over the limit of {settings.max_upload_files} "
            "set by KB_MAX_UPLOAD_FILES; send them in several requests or raise the limit"
        )
    folder = uploads_dir(settings.data_dir, name)
    taken: set[str] = set()
    targets = [(f, folder / safe_filename(f.filename, taken)) for f in files]
    partials = [target.with_name(f".{target.name}.part") for _, target in targets]
    total = 0
    await run_in_threadpool(folder.mkdir, parents=True, exist_ok=True)
    try:
        for (upload, _), partial in zip(targets, partials, strict=True):
            with open(partial, "wb") as out:
                while block := await upload.read(COPY_BLOCK):
                    total += len(block)
                    if total > settings.max_upload_bytes:
                        raise PayloadTooLarge(
                            f"upload too large: over {settings.max_upload_bytes} bytes, the limit "
                            "set by KB_MAX_UPLOAD_BYTES; send fewer or smaller files per request"
                        )
                    await run_in_threadpool(out.write, block)
    except BaseException:
        for partial in partials:
            partial.unlink(missing_ok=True)
        raise
    # only a complete upload replaces earlier versions of its files
    saved: list[Path] = []
    for (_, target), partial in zip(targets, partials, strict=True):
        os.replace(partial, target)
        saved.append(target)
    record = submit_files_ingest(jobs, kb, name, saved)
    response.headers["Location"] = f"/jobs/{record.id}"
    return record.to_dict()


@router.post(
    "/collections/{name}/ingest",
    status_code=202,
    response_model=JobOut,
    responses=ACCEPTED,
    summary="Ingest a folder on the server",
)
def ingest_folder(
    name: str,
    body: IngestRequest,
    response: Response,
    kb: KBDep,
    jobs: JobsDep,
    settings: SettingsDep,
    caller: Caller,
) -> dict:
    """Sync a server-side folder inside KB_INGEST_ROOTS into the collection (202 + job).

    Symlinks are resolved first; a path outside every root is refused with 403. A relative
    path is taken relative to the first root. Documents are shown by their path relative to
    the folder, the job by the path as sent.
    """
    validate_name(name)
    caller.check(name, "write")
    path = resolve_ingest_path(body.path, settings.ingest_roots)
    record = submit_folder_ingest(jobs, kb, name, path, body.prune, shown=body.path)
    response.headers["Location"] = f"/jobs/{record.id}"
    return record.to_dict()

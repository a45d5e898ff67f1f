"""Domain errors -> HTTP status codes, in one JSON shape for every endpoint.

Every error body is `{"error": {"message", "type", "code", "param"}}`, the shape OpenAI's API
uses, so the `/v1` endpoints and the native ones read the same and the official `openai`
client shows our messages. Unexpected exceptions become a generic 500; tracebacks go to the
server log, never into a response.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from kb.errors import (
    BackendError,
    CollectionBusy,
    CollectionNotFound,
    Conflict,
    DocumentNotFound,
    EmbeddingMismatch,
    InvalidInput,
    JobNotFound,
    KBError,
    ModelNotFound,
    ModeUnavailable,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger("kb.api")

# most specific first: the first matching class decides
STATUS: list[tuple[type[KBError], int, str]] = [
    (CollectionNotFound, 404, "collection_not_found"),
    (DocumentNotFound, 404, "document_not_found"),
    (ModelNotFound, 404, "model_not_found"),
    (JobNotFound, 404, "job_not_found"),
    (NotFound, 404, "not_found"),
    (InvalidInput, 422, "invalid_input"),
    (CollectionBusy, 409, "collection_busy"),
    (EmbeddingMismatch, 409, "embedding_mismatch"),
    (Conflict, 409, "conflict"),
    # a mode that cannot run as configured: the request is fine, the server state is not
    (ModeUnavailable, 409, "mode_unavailable"),
    (Unavailable, 409, "unavailable"),
    (Unauthenticated, 401, "unauthenticated"),
    (PermissionDenied, 403, "permission_denied"),
    (BackendError, 502, "backend_error"),
]

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    422: "invalid_request_error",
    500: "server_error",
    502: "backend_error",
}


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


def error_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> dict:
    return {
        "error": {
            "message": message,
            "type": TYPES.get(status, "invalid_request_error" if status < 500 else "server_error"),
            "code": code,
            "param": param,
        }
    }


def error_response(
    status: int, message: str, code: str | None = None, param: str | None = None, headers=None
) -> JSONResponse:
    return JSONResponse(
        error_body(status, message, code, param), status_code=status, headers=headers
    )


def status_of(exc: KBError) -> tuple[int, str]:
    for cls, status, code in STATUS:
        if isinstance(exc, cls):
            return status, code
    return 400, "error"


class PayloadTooLarge(KBError):
    """An upload over the configured size or file count (HTTP 413)."""


def kb_error_response(exc: KBError) -> JSONResponse:
    if isinstance(exc, PayloadTooLarge):
        return error_response(413, str(exc), "payload_too_large")
    status, code = status_of(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    param = getattr(exc, "param", None)
    return error_response(status, str(exc), code, param, headers)


def _location(loc: tuple) -> str:
    if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
        kind, loc = loc[0], loc[1:]
        return ".".join(str(p) for p in loc) or f"request {kind}"
    return ".".join(str(p) for p in loc) or "request"


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One readable sentence per problem: 'k: Input should be less than or equal to 100 (got 500)'."""
    lines = []
    first = None
    for err in exc.errors():
        where = _location(tuple(err.get("loc", ())))
        first = first or where
        got = err.get("input")
        shown = "" if err.get("type") == "missing" or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{where}: {err.get('msg', 'invalid value')}{shown}")
    return "invalid request: " + "; ".join(lines)[:2000], first


def install(app: FastAPI) -> None:
    """Register the handlers that turn exceptions into error responses."""

    @app.exception_handler(KBError)
    async def _kb_error(request: Request, exc: KBError) -> JSONResponse:
        return kb_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return error_response(422, message, "invalid_input", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 400 and message == "There was an error parsing the body":
            message = (
                "the request body could not be parsed: send valid JSON with Content-Type "
                "application/json (uploads: multipart/form-data with `files` parts)"
            )
        elif exc.status_code == 404 and message == "Not Found":
            message = f"no endpoint {request.method} {request.url.path}: see /docs for the API"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}: see /docs"
        return error_response(exc.status_code, message, None, None, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            500,
            "internal error: the server failed to handle this request; see the server log",
            "internal_error",
        )


#: documented on every route, so generated clients know the error shape
ERROR_RESPONSES: dict[int | str, dict] = {
    400: {"model": ErrorResponse, "description": "The body could not be parsed"},
    401: {"model": ErrorResponse, "description": "Missing or unknown API key"},
    403: {"model": ErrorResponse, "description": "The API key does not allow this"},
    404: {"model": ErrorResponse, "description": "Not found"},
    409: {"model": ErrorResponse, "description": "Conflicts with the current state"},
    422: {"model": ErrorResponse, "description": "Invalid request"},
    500: {"model": ErrorResponse, "description": "Internal error"},
}

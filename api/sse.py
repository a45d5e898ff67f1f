"""Server-sent events: formatting, and starting a stream only once its first event is known.

The first event of an answer is computed before the response starts, so a bad request (unknown
mode, collection or model) still gets a proper 4xx status instead of an error inside a 200.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Generator, Iterator
from typing import Any

import anyio
from fastapi.responses import StreamingResponse

from api.errors import error_body, status_of
from kb.errors import KBError

log = logging.getLogger("kb.api")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_response_doc(description: str, events: list[str] | None = None) -> dict:
    """The OpenAPI `content` entry of a text/event-stream response: one schema per event."""
    event: dict[str, Any] = {"type": "string"}
    if events:
        event["enum"] = events
    return {
        "text/event-stream": {
            "schema": {
                "type": "object",
                "description": description,
                "required": ["data"],
                "properties": {
                    "event": event,
                    "data": {"type": "string", "description": "One line of JSON."},
                },
            }
        }
    }


def sse(data: Any, event: str | None = None) -> str:
    """One event; `data` is sent as one line of JSON (or as is, if a string)."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n"


def error_event_body(exc: BaseException) -> dict:
    if isinstance(exc, KBError):
        status, code = status_of(exc)
        return error_body(status, str(exc), code)
    log.error("error while streaming", exc_info=exc)
    return error_body(500, "internal error while streaming; see the server log", "internal_error")


def first_then_rest(events: Iterator) -> tuple[Any, Iterator]:
    """Pull the first item now (so its errors raise here), then the iterator of the rest."""
    first = next(events)
    return first, events


class ClosingStreamingResponse(StreamingResponse):
    """Closes its (sync) iterator when the response ends, however it ends.

    A client that hangs up leaves the iterator suspended; closing it at once, in a worker
    thread, runs its cleanup (stopping the model's generation) instead of leaving that to
    the garbage collector, which may run it on any thread.
    """

    def __init__(self, lines: Iterator[str], **kwargs: Any):
        super().__init__(lines, **kwargs)
        self._lines = lines

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._lines.close)


def stream_response(lines: Callable[[], Generator[str, None, None]]) -> StreamingResponse:
    return ClosingStreamingResponse(lines(), media_type="text/event-stream", headers=SSE_HEADERS)

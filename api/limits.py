"""Request size limit for multipart uploads, enforced while the body streams in.

FastAPI parses a multipart body (spooling files to disk) before any handler or dependency
runs, so the byte limit lives in ASGI middleware: a declared Content-Length over the limit is
refused at once, and a body that grows past it (chunked uploads) is cut off mid-stream.
"""

from __future__ import annotations

import contextlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response


class _TooLarge(Exception):
    pass


class UploadLimit:
    """Answers 413 to a multipart request whose body exceeds `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _refuse(self):
        return error_response(
            413,
            f"upload too large: the request body is over {self.max_bytes} bytes, the limit set "
            "by KB_MAX_UPLOAD_BYTES; send fewer or smaller files per request, or raise the limit",
            "payload_too_large",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_multipart(scope):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse()(scope, receive, send)
            return

        received = 0
        exceeded = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _TooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if exceeded:
                return  # the app's error for the cut-off body is replaced by our 413
            response_started = True
            await send(message)

        with contextlib.suppress(_TooLarge):
            await self.app(scope, limited_receive, guarded_send)
        if exceeded and not response_started:
            await self._refuse()(scope, receive, send)


def _is_multipart(scope: Scope) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            return value.lower().startswith(b"multipart/")
    return False

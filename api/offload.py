"""Blocking request work on a worker thread, with its JSON response encoded there too.

A plain `def` endpoint with a `response_model` costs two thread-pool hops per request in
FastAPI: one for the endpoint, a second to validate the returned dict against the model. An
`async def` endpoint that hands its work to starlette's `run_in_threadpool` (or `in_pool`) and
returns `model_response` makes one, and keeps the encoding off the event loop as well
(benchmarks/query.py).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from fastapi import Response
from pydantic import BaseModel

T = TypeVar("T")


async def in_pool(pool: Executor, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on a pool of the caller's own, e.g. one thread per search slot."""
    return await asyncio.get_running_loop().run_in_executor(
        pool, functools.partial(fn, *args, **kwargs)
    )


def model_response(model: type[BaseModel], payload: dict[str, Any]) -> Response:
    """`payload` validated as `model` and encoded as JSON, as FastAPI's response_model would."""
    body = model.model_validate(payload).model_dump_json()
    return Response(body, media_type="application/json")

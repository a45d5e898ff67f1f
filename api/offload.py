"""Blocking request work on a worker thread, with its JSON response encoded there too.

A plain `def` endpoint with a `response_model` costs two thread-pool hops per request in
FastAPI: one for the endpoint, a second to validate the returned dict against the model. An
`async def` endpoint that hands its work to `in_worker` and returns `model_response` makes one,
and keeps the encoding off the event loop as well (benchmarks/query.py).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from fastapi import Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

T = TypeVar("T")


async def in_worker(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on the thread pool, so the event loop keeps serving."""
    return await run_in_threadpool(fn, *args, **kwargs)


async def in_pool(pool: Executor, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on a pool of the caller's own, e.g. one thread per search slot."""
    return await asyncio.get_running_loop().run_in_executor(
        pool, functools.partial(fn, *args, **kwargs)
    )


def model_response(model: type[BaseModel], payload: dict[str, Any], status: int = 200) -> Response:
    """`payload` validated as `model` and encoded as JSON, as FastAPI's response_model would."""
    body = model.model_validate(payload).model_dump_json()
    return Response(body, status_code=status, media_type="application/json")

"""POST /search: passages with scores, text and source.

Searches run on a pool of their own with one thread per slot of the search limiter
(KB_SEARCH_CONCURRENCY), so waiting searches queue as futures on the event loop, first come
first served, and a thread that finishes one search takes the next at once. On the shared
thread pool each waiting search held a thread blocked on the limiter, and every hand-over woke
another thread (benchmarks/query.py). Searches of collections embedded by a remote API are not
limited, and run on the shared pool. A /query that retrieves without generating is a search
too, and uses the same pool (api/routers/query.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from api.auth import Caller
from api.deps import Services, ServicesDep
from api.errors import ERROR_RESPONSES
from api.offload import in_pool, model_response
from api.schemas import SearchRequest, SearchResponse
from kb.service import KnowledgeBase

router = APIRouter(tags=["search"], responses=ERROR_RESPONSES)

T = TypeVar("T")


def startup(services: Services) -> None:
    slots = services.kb.retriever.limiter.slots
    if slots:
        services.search_pool = ThreadPoolExecutor(slots, thread_name_prefix="kb-search")


def shutdown(services: Services) -> None:
    if pool := services.search_pool:
        services.search_pool = None
        pool.shutdown(wait=False, cancel_futures=True)


@router.post("/search", response_model=SearchResponse, summary="Search a collection")
async def search(body: SearchRequest, services: ServicesDep, caller: Caller) -> Response:
    """Retrieve the top `k` passages for a query (dense, BM25 or hybrid)."""
    kb = services.kb
    collection = body.collection or kb.settings.default_collection
    caller.check(collection, "read")
    return await on_search_threads(services, collection, _search, body, kb, collection)


async def on_search_threads(
    services: Services, collection: str, fn: Callable[..., T], /, *args: Any
) -> T:
    """`fn(*args)`, a search of `collection`, on the search threads when its searches take a
    limiter slot, else (no limit, or a remote embedder) on the shared thread pool."""
    pool = services.search_pool
    if pool is not None and services.kb.search_limited(collection):
        return await in_pool(pool, fn, *args)
    return await run_in_threadpool(fn, *args)


def _search(body: SearchRequest, kb: KnowledgeBase, collection: str) -> Response:
    started = time.perf_counter()
    passages = kb.search(
        body.query,
        collection=collection,
        k=body.k,
        method=body.method,
        source_glob=body.filters.source_glob,
    )
    payload = {
        "collection": collection,
        "method": body.method or kb.settings.retrieval_method,
        "results": [p.to_dict() for p in passages],
        "timings": {"search": round(time.perf_counter() - started, 4)},
    }
    return model_response(SearchResponse, payload)

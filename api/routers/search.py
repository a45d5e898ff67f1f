"""POST /search: passages with scores, text and source."""

from __future__ import annotations

import time

from fastapi import APIRouter

from api.auth import Caller
from api.deps import KBDep
from api.errors import ERROR_RESPONSES
from api.schemas import SearchRequest, SearchResponse

router = APIRouter(tags=["search"], responses=ERROR_RESPONSES)


@router.post("/search", response_model=SearchResponse, summary="Search a collection")
def search(body: SearchRequest, kb: KBDep, caller: Caller) -> dict:
    """Retrieve the top `k` passages for a query (dense, BM25 or hybrid)."""
    collection = body.collection or kb.settings.default_collection
    caller.check(collection, "read")
    started = time.perf_counter()
    passages = kb.search(
        body.query,
        collection=collection,
        k=body.k,
        method=body.method,
        source_glob=body.filters.source_glob,
    )
    return {
        "collection": collection,
        "method": body.method or kb.settings.retrieval_method,
        "results": [p.to_dict() for p in passages],
        "timings": {"search": round(time.perf_counter() - started, 4)},
    }

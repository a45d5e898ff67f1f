"""POST /search: passages with scores, text and source."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response

from api.auth import Caller
from api.deps import KBDep
from api.errors import ERROR_RESPONSES
from api.offload import in_worker, model_response
from api.schemas import SearchRequest, SearchResponse
from kb.service import KnowledgeBase

router = APIRouter(tags=["search"], responses=ERROR_RESPONSES)


@router.post("/search", response_model=SearchResponse, summary="Search a collection")
async def search(body: SearchRequest, kb: KBDep, caller: Caller) -> Response:
    """Retrieve the top `k` passages for a query (dense, BM25 or hybrid)."""
    collection = body.collection or kb.settings.default_collection
    caller.check(collection, "read")
    return await in_worker(_search, body, kb, collection)


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

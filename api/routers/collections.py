"""GET /collections and GET /collections/{name}."""

from __future__ import annotations

from fastapi import APIRouter

from api.auth import Caller
from api.deps import KBDep
from api.errors import ERROR_RESPONSES
from api.schemas import CollectionList, CollectionOut

router = APIRouter(tags=["collections"], responses=ERROR_RESPONSES)


@router.get("/collections", response_model=CollectionList, summary="List collections")
def list_collections(kb: KBDep, caller: Caller) -> dict:
    """The collections this caller's key may read, with document and chunk counts."""
    infos = [c for c in kb.list_collections() if caller.allows(c["name"])]
    return {"collections": infos, "default": kb.settings.default_collection}


@router.get("/collections/{name}", response_model=CollectionOut, summary="Describe a collection")
def get_collection(name: str, kb: KBDep, caller: Caller) -> dict:
    caller.check(name, "read")
    return kb.collection(name).info()

"""API keys: who is calling, and may they read or write this collection.

With no keys configured (KB_API_KEYS empty) every caller may do everything. Once keys exist,
every endpoint but the /health and /ready probes needs `Authorization: Bearer KEY` or
`X-API-Key: KEY`; a key may be limited to collections (glob patterns) and to reading (search, query, listings) as opposed to
writing (ingest, uploads, deletes, job submission and cancellation).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Annotated, Literal

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from kb.errors import PermissionDenied, Unauthenticated
from kb.settings import ApiKeySpec

Access = Literal["read", "write"]

_bearer = HTTPBearer(auto_error=False, description="An API key from KB_API_KEYS")
_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="An API key from KB_API_KEYS"
)


@dataclass
class Principal:
    """The caller: the collections it may use and whether it may write."""

    collections: list[str] = field(default_factory=lambda: ["*"])
    access: Access = "write"
    label: str = "anonymous"  # the key's last characters, for messages; never the whole key

    def allows(self, collection: str) -> bool:
        return any(fnmatchcase(collection, pattern) for pattern in self.collections)

    def check(self, collection: str | None, access: Access = "read") -> None:
        """Raise PermissionDenied unless this caller may `access` `collection` (None: any)."""
        if access == "write" and self.access != "write":
            raise PermissionDenied(
                f"API key {self.label} is read-only: writing needs a key with access 'write' "
                "in KB_API_KEYS"
            )
        if collection is not None and not self.allows(collection):
            raise PermissionDenied(
                f"API key {self.label} may not use collection {collection!r}: it is limited to "
                f"{', '.join(self.collections)}; use a key for that collection"
            )


OPEN = Principal()


def _match(keys: list[ApiKeySpec], sent: str) -> ApiKeySpec | None:
    found = None
    for spec in keys:
        # compare every key in constant time, so timing does not reveal which prefix matched
        if hmac.compare_digest(spec.key.encode(), sent.encode()):
            found = spec
    return found


async def authenticate(  # async: no thread-pool hop for a few comparisons
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_header)],
) -> Principal:
    """The caller's Principal; 401 when keys are configured and none (or an unknown one) is sent."""
    keys = request.app.state.services.settings.api_keys
    if not keys:
        return OPEN
    sent = api_key or (bearer.credentials if bearer else None)
    if not sent:
        raise Unauthenticated(
            "missing API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY` "
            "with a key from KB_API_KEYS"
        )
    spec = _match(keys, sent)
    if spec is None:
        raise Unauthenticated("unknown API key: send one of the keys configured in KB_API_KEYS")
    return Principal(
        collections=list(spec.collections), access=spec.access, label=f"…{spec.key[-4:]}"
    )


Caller = Annotated[Principal, Depends(authenticate)]

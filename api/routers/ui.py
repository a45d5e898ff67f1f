"""The web page: one HTML shell and its static files, served by the API itself.

The shell holds no data; every call it makes goes through the same API (and API keys) as any
other client, so access control is the API's.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse, Response

router = APIRouter(tags=["web page"], include_in_schema=False)

STATIC = files("api") / "static"
TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


@router.get("/", include_in_schema=False)
def root() -> RedirectResponse:
    return RedirectResponse("/ui")


@router.get("/ui", response_class=HTMLResponse)
def page() -> HTMLResponse:
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))


@router.get("/ui/static/{name}")
def static(name: str) -> Response:
    suffix = name[name.rfind(".") :] if "." in name else ""
    if "/" in name or name.startswith(".") or suffix not in TYPES:
        return Response("not found", status_code=404, media_type="text/plain")
    resource = STATIC / name
    if not resource.is_file():
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(
        resource.read_bytes(), media_type=TYPES[suffix], headers={"Cache-Control": "no-cache"}
    )

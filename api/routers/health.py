"""GET /health (liveness) and GET /ready (readiness): open to everyone, even with API keys."""

from __future__ import annotations

from importlib import metadata

from fastapi import APIRouter, Response

from api.deps import Services, ServicesDep
from api.schemas import Health

router = APIRouter(tags=["health"])


def version() -> str:
    """The installed kb package's version."""
    try:
        return metadata.version("kb")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@router.get("/health", response_model=Health, summary="Liveness, readiness and model status")
def health(services: ServicesDep) -> Health:
    """Always 200 while the process serves; `ready` says whether the start-up warm-up is done."""
    return _health(services)


@router.get(
    "/ready",
    response_model=Health,
    summary="Readiness: 503 until the warm-up has finished",
    responses={503: {"model": Health, "description": "Still loading; `loading` says what."}},
)
def ready(services: ServicesDep, response: Response) -> Health:
    """For a readiness probe: 200 once the indexes and the default model are loaded, so the
    first request routed here is as fast as later ones; 503 while they load."""
    body = _health(services)
    if not body.ready:
        response.status_code = 503
    return body


def _health(services: Services) -> Health:
    default = services.settings.default_generator
    loading = services.warmup.loading()
    return Health(
        version=version(),
        default_generator=default,
        generator_loaded=services.generators.is_loaded(default),
        ready=not loading,
        loading=loading,
    )

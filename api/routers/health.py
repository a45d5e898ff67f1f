"""GET /health: open to everyone, even when API keys are configured."""

from __future__ import annotations

from importlib import metadata

from fastapi import APIRouter

from api.deps import ServicesDep
from api.schemas import Health

router = APIRouter(tags=["health"])


def version() -> str:
    """The installed kb package's version."""
    try:
        return metadata.version("kb")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@router.get("/health", response_model=Health, summary="Liveness and model status")
def health(services: ServicesDep) -> Health:
    default = services.settings.default_generator
    return Health(
        version=version(),
        default_generator=default,
        generator_loaded=services.generators.is_loaded(default),
    )

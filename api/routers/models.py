"""GET /models: the registered generators (never their API keys) and which modes can run."""

from __future__ import annotations

from fastapi import APIRouter

from api.auth import Caller
from api.deps import AnswererDep, GeneratorsDep, SettingsDep
from api.errors import ERROR_RESPONSES
from api.schemas import GeneratorList

router = APIRouter(tags=["models"], responses=ERROR_RESPONSES)


@router.get("/models", response_model=GeneratorList, summary="List generation models")
def list_models(
    generators: GeneratorsDep, answerer: AnswererDep, settings: SettingsDep, caller: Caller
) -> dict:
    models = [
        {
            **spec.model_dump(exclude={"api_key"}),
            "loaded": generators.is_loaded(spec.name),
            "default": spec.name == settings.default_generator,
        }
        for spec in generators.specs()
    ]
    modes = [
        {"mode": mode, "available": reason is None, "reason": reason}
        for mode, reason in answerer.modes().items()
    ]
    return {"models": models, "default": settings.default_generator, "modes": modes}

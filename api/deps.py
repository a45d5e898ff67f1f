"""The shared objects a request handler gets injected, built once in the app's lifespan."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI, Request

from kb.answering import Answerer
from kb.generators import GeneratorRegistry
from kb.jobs import JobManager
from kb.models import ModelRegistry
from kb.service import KnowledgeBase
from kb.settings import Settings

if TYPE_CHECKING:
    from api.warmup import Warmup
    from kb.finetune.classify import ClassifierCache


@dataclass
class Services:
    """Everything the routers share (built by `api.app.build_services`)."""

    settings: Settings
    kb: KnowledgeBase
    generators: GeneratorRegistry
    models: ModelRegistry  # mirrors registered and deleted fine-tuned models into `generators`
    jobs: JobManager
    answerer: Answerer
    classifiers: ClassifierCache  # built per fine-tuned classifier on its first request
    warmup: Warmup
    search_pool: ThreadPoolExecutor | None = None  # /search's own threads (api/routers/search.py)


def app_services(app: FastAPI) -> Services:
    """The Services of a started app (inside its lifespan)."""
    return app.state.services


# The dependencies are `async def` although they only read app state: FastAPI runs a plain `def`
# dependency in the thread pool, one thread hop each, per request (benchmarks/query.py).


async def get_services(request: Request) -> Services:
    return request.app.state.services


async def get_settings(request: Request) -> Settings:
    return request.app.state.services.settings


async def get_kb(request: Request) -> KnowledgeBase:
    return request.app.state.services.kb


async def get_generators(request: Request) -> GeneratorRegistry:
    return request.app.state.services.generators


async def get_models(request: Request) -> ModelRegistry:
    return request.app.state.services.models


async def get_jobs(request: Request) -> JobManager:
    return request.app.state.services.jobs


async def get_answerer(request: Request) -> Answerer:
    return request.app.state.services.answerer


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
KBDep = Annotated[KnowledgeBase, Depends(get_kb)]
GeneratorsDep = Annotated[GeneratorRegistry, Depends(get_generators)]
ModelsDep = Annotated[ModelRegistry, Depends(get_models)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
AnswererDep = Annotated[Answerer, Depends(get_answerer)]

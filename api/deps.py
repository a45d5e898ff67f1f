"""The shared objects a request handler gets injected, built once in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request

from kb.answering import Answerer
from kb.generators import GeneratorRegistry
from kb.jobs import JobManager
from kb.service import KnowledgeBase
from kb.settings import Settings


@dataclass
class Services:
    """Everything the routers share; other routers keep their own objects in `extras`."""

    settings: Settings
    kb: KnowledgeBase
    generators: GeneratorRegistry
    jobs: JobManager
    answerer: Answerer
    extras: dict[str, Any] = field(default_factory=dict)


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


async def get_jobs(request: Request) -> JobManager:
    return request.app.state.services.jobs


async def get_answerer(request: Request) -> Answerer:
    return request.app.state.services.answerer


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
KBDep = Annotated[KnowledgeBase, Depends(get_kb)]
GeneratorsDep = Annotated[GeneratorRegistry, Depends(get_generators)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
AnswererDep = Annotated[Answerer, Depends(get_answerer)]

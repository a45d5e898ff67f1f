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


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_settings(request: Request) -> Settings:
    return get_services(request).settings


def get_kb(request: Request) -> KnowledgeBase:
    return get_services(request).kb


def get_generators(request: Request) -> GeneratorRegistry:
    return get_services(request).generators


def get_jobs(request: Request) -> JobManager:
    return get_services(request).jobs


def get_answerer(request: Request) -> Answerer:
    return get_services(request).answerer


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
KBDep = Annotated[KnowledgeBase, Depends(get_kb)]
GeneratorsDep = Annotated[GeneratorRegistry, Depends(get_generators)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
AnswererDep = Annotated[Answerer, Depends(get_answerer)]

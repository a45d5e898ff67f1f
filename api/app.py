"""The FastAPI app: a thin HTTP edge over KnowledgeBase, the generators, jobs and the Answerer.

    uvicorn --factory api.app:create_app      # or: kb serve

Routers are listed by module path in ROUTERS; a router module may also define
`startup(services)` and `shutdown(services)`, called in the app's lifespan (e.g. to start and
stop a thread pool of its own, kept in a field of Services).
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api import errors
from api.auth import authenticate
from api.deps import Services
from api.limits import UploadLimit
from api.routers.health import version
from kb.settings import Settings

#: open to every caller, even when API keys are configured
PUBLIC_ROUTERS = ["api.routers.health", "api.routers.ui"]
#: behind the API key check (when KB_API_KEYS is set)
ROUTERS = [
    "api.routers.search",
    "api.routers.query",
    "api.routers.collections",
    "api.routers.documents",
    "api.routers.jobs",
    "api.routers.models",
    "api.routers.openai_compat",
    "api.routers.finetune",
    "api.routers.evals",
]

DESCRIPTION = """\
RAG over your documents and fine-tuned local models, side by side.

Errors share one shape: `{"error": {"message", "type", "code", "param"}}`. With API keys
configured (KB_API_KEYS), send `Authorization: Bearer KEY` or `X-API-Key: KEY`.
"""


def build_services(settings: Settings) -> Services:
    """The core objects every request shares, stored fine-tuned models registered; nothing
    loads a model or an index here (the warm-up does, once started)."""
    from api.warmup import Warmup
    from kb.answering import Answerer
    from kb.finetune.classify import ClassifierCache
    from kb.jobs import JobManager
    from kb.models import build_generators
    from kb.service import KnowledgeBase

    kb = KnowledgeBase(settings)
    generators, models = build_generators(settings)
    answerer = Answerer(kb, generators)
    return Services(
        settings=settings,
        kb=kb,
        generators=generators,
        models=models,
        jobs=JobManager(settings.jobs_dir),
        answerer=answerer,
        classifiers=ClassifierCache(),
        warmup=Warmup(answerer),
    )


WARM_JOIN_SECONDS = 120  # a shutdown waits this long at most for a warm-up step in progress


def create_app(settings: Settings | None = None, *, warm: bool = True) -> FastAPI:
    """The API app; `warm` loads the collections' indexes, the embedder and the default local
    model in the background at startup (GET /ready answers 503 until it is done)."""
    settings = settings or Settings()
    public = [importlib.import_module(m) for m in PUBLIC_ROUTERS]
    guarded = [importlib.import_module(m) for m in ROUTERS]
    modules: list[ModuleType] = public + guarded

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings)
        app.state.services = services
        for module in modules:
            if hook := getattr(module, "startup", None):
                hook(services)
        if warm:
            services.warmup.start()
        try:
            yield
        finally:
            for module in reversed(modules):
                if hook := getattr(module, "shutdown", None):
                    hook(services)
            services.jobs.shutdown()
            # a process that exits while a thread is inside torch's model loading aborts
            # (SIGABRT, "terminate called without an active exception"): let it finish
            services.warmup.stop(WARM_JOIN_SECONDS)

    app = FastAPI(
        title="kb",
        summary="Self-hosted knowledge base",
        description=DESCRIPTION,
        version=version(),
        lifespan=lifespan,
    )
    errors.install(app)
    for module in public:
        app.include_router(module.router)
    for module in guarded:
        app.include_router(module.router, dependencies=[Depends(authenticate)])
    app.add_middleware(UploadLimit, max_bytes=settings.max_upload_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            expose_headers=["Location"],
        )
    return app

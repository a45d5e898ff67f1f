"""The FastAPI app: a thin HTTP edge over KnowledgeBase, the generators, jobs and the Answerer.

    uvicorn --factory api.app:create_app      # or: kb serve

Routers are listed by module path in ROUTERS; a router module may also define
`startup(services)` and `shutdown(services)`, called in the app's lifespan (e.g. to build and
register its own objects in `services.extras`).
"""

from __future__ import annotations

import importlib
import logging
import threading
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

log = logging.getLogger("kb.api")

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
    """The core objects every request shares; nothing loads a model here."""
    from kb.answering import Answerer
    from kb.generators import GeneratorRegistry
    from kb.jobs import JobManager
    from kb.service import KnowledgeBase

    kb = KnowledgeBase(settings)
    generators = GeneratorRegistry(settings)
    jobs = JobManager(settings.jobs_dir)
    return Services(
        settings=settings,
        kb=kb,
        generators=generators,
        jobs=jobs,
        answerer=Answerer(kb, generators),
    )


WARM_JOIN_SECONDS = 120  # a shutdown waits this long at most for a warm-up in progress


def _warm(services: Services) -> None:
    """Load the default generator (if local) and the embedder, so the first request is quick."""
    try:
        spec = next(
            (
                s
                for s in services.generators.specs()
                if s.name == services.settings.default_generator
            ),
            None,
        )
        if spec is not None and spec.backend == "local":
            services.generators.get(spec.name).load()
        services.kb.embedder  # noqa: B018 - loads the default embedder
    except Exception:  # warming is an optimisation; the first request reports real errors
        log.warning("warm-up failed; models will load on first use", exc_info=True)


def create_app(settings: Settings | None = None, *, warm: bool = True) -> FastAPI:
    """The API app; `warm` loads the default local model in the background at startup."""
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
        warming = None
        if warm:
            warming = threading.Thread(target=_warm, args=(services,), name="kb-warm", daemon=True)
            warming.start()
        try:
            yield
        finally:
            for module in reversed(modules):
                if hook := getattr(module, "shutdown", None):
                    hook(services)
            services.jobs.shutdown()
            if warming is not None and warming.is_alive():
                # a process that exits while a thread is inside torch's model loading aborts
                # (SIGABRT, "terminate called without an active exception"): let it finish
                log.info("waiting for the model warm-up to finish before shutting down")
                warming.join(WARM_JOIN_SECONDS)

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

"""`kb serve --ray`: the HTTP API as a Ray Serve deployment of N replicas over one data folder.

Each replica builds the same app as `kb serve` (`create_app`, lifespan and warm-up included)
inside its own process, so it holds its own KnowledgeBase over the shared data folder. Readers
already follow the writer: every search asks SQLite for the collection's generation and loads
the new indexes when a commit has moved it on, so each replica serves a newly committed
generation from its next search, without a restart. Ray Serve's proxy listens on the host and
port given and spreads requests over the replicas; every response names the replica that
answered in `X-KB-Replica`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ingest.ray_ingest import connect, require_ray

if TYPE_CHECKING:
    from fastapi import FastAPI

    from kb.settings import Settings

REPLICA_HEADER = "X-KB-Replica"
APP_NAME = "kb"


def replica_app(settings: Settings, warm: bool) -> FastAPI:
    """The API app of one replica, its responses tagged with the replica's id."""
    from ray import serve

    from api.app import create_app

    app = create_app(settings, warm=warm)
    replica = serve.get_replica_context().replica_id.unique_id

    @app.middleware("http")
    async def tag_replica(request, call_next):
        response = await call_next(request)
        response.headers[REPLICA_HEADER] = replica
        return response

    return app


def deployment(settings: Settings, *, replicas: int, cpus: float, warm: bool = True):
    """The bound Serve application: `replicas` copies of the API, each reserving `cpus`."""
    require_ray()
    from ray import serve

    # the replicas read no .env of their own, and their working folder is not ours
    settings = settings.model_copy(update={"data_dir": settings.data_dir.resolve()})

    def build() -> FastAPI:
        return replica_app(settings, warm)

    @serve.deployment(
        name="kb",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus},
        max_ongoing_requests=32,
    )
    @serve.ingress(build)
    class KBReplica:
        """One replica of the HTTP API."""

    return KBReplica.bind()


def serve_on_ray(
    settings: Settings,
    *,
    host: str,
    port: int,
    replicas: int,
    cpus: float,
    address: str | None = None,
    warm: bool = True,
    blocking: bool = True,
) -> None:
    """Start Serve's proxy on host:port and deploy the API; with `blocking`, until interrupted,
    then the application is deleted (and a Ray instance started here shut down)."""
    connection = connect(address)
    from ray import serve

    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(
            deployment(settings, replicas=replicas, cpus=cpus, warm=warm),
            name=APP_NAME,
            route_prefix="/",
            blocking=blocking,
        )
    except KeyboardInterrupt:
        pass
    finally:
        if blocking:
            serve.delete(APP_NAME)
            connection.close()

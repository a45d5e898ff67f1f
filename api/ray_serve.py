"""`kb serve --ray`: the HTTP API as a Ray Serve deployment of N replicas over one data folder.

Each replica builds the same app as `kb serve` (`create_app`, lifespan and warm-up included)
inside its own process, so it holds its own KnowledgeBase over the shared data folder. Readers
already follow the writer: every search asks SQLite for the collection's generation and loads
the new indexes when a commit has moved it on, so each replica serves a newly committed
generation from its next search, without a restart. Ray Serve's proxy listens on the host and
port given and spreads requests over the replicas; every response names the replica that
answered in `X-KB-Replica`. The replicas run on the host of `kb serve --ray`, which holds the data
folder (docs/scaling.md: SQLite's readers share one host with the writer).
"""

from __future__ import annotations

import signal
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


def deployment(
    settings: Settings, *, replicas: int, cpus: float, warm: bool = True, node: str | None = None
):
    """The bound Serve application: `replicas` copies of the API, each reserving `cpus`, all on
    the node with IP address `node` when given."""
    require_ray()
    from ray import serve

    options: dict = {"num_cpus": cpus}
    if node is not None:
        # SQLite's write-ahead log, which lets readers run beside the writer, is shared through
        # memory by the processes of one host and does not work over a network filesystem
        options["resources"] = {f"node:{node}": 0.001}

    # the replicas read no .env of their own, and their working folder is not ours
    settings = settings.model_copy(update={"data_dir": settings.data_dir.resolve()})

    def build() -> FastAPI:
        return replica_app(settings, warm)

    @serve.deployment(
        name="kb",
        num_replicas=replicas,
        ray_actor_options=options,
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
    """Start Serve's proxy on host:port and deploy the API on this host's Ray node, the one
    that holds the data folder; with `blocking`, until interrupted, then the application is
    deleted (and a Ray instance started here shut down)."""
    connection = connect(address)
    from ray import serve
    from ray.util import get_node_ip_address

    if blocking:  # a service manager stops with SIGTERM: clean up as after Ctrl-C
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        serve.start(http_options={"host": host, "port": port})
        here = get_node_ip_address()
        serve.run(
            deployment(settings, replicas=replicas, cpus=cpus, warm=warm, node=here),
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


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt

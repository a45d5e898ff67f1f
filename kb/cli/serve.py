"""`kb serve` (the HTTP API) and `kb ask` (one question, streamed to the terminal)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from kb.cli.common import CollectionOpt, JsonOpt, MethodOpt, SupportOpt, console, print_json
from kb.settings import Settings


def serve(
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0 for every interface).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    warm: Annotated[
        bool,
        typer.Option(
            help="Load the collections' indexes, the embedder and the default local model in "
            "the background at startup (GET /ready answers 503 until they are loaded)."
        ),
    ] = True,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Serve as a Ray Serve deployment of --replicas copies over the same data folder "
            "(the 'ray' extra; a shared filesystem on a cluster).",
        ),
    ] = False,
    replicas: Annotated[
        int, typer.Option(min=1, help="Replicas of the API with --ray, each a process of its own.")
    ] = 2,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster for --ray, e.g. 'auto' or 'ray://HOST:10001'; default: "
            "RAY_ADDRESS, else a Ray instance started here."
        ),
    ] = None,
    ray_cpus: Annotated[
        float, typer.Option(min=0, help="CPUs each replica reserves with --ray.")
    ] = 1.0,
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs, OpenAI-compatible endpoints under /v1)."""
    settings = Settings()
    if ray or ray_address:
        from api.ray_serve import require_ray, serve_on_ray

        require_ray()
        _warn_open(settings, host, port)
        console.print(f"serving {replicas} replica(s) on Ray at http://{host}:{port}")
        serve_on_ray(
            settings,
            host=host,
            port=port,
            replicas=replicas,
            cpus=ray_cpus,
            address=ray_address,
            warm=warm,
        )
        return
    import uvicorn

    from api.app import create_app

    _warn_open(settings, host, port)
    uvicorn.run(create_app(settings, warm=warm), host=host, port=port, log_level=log_level)


def _warn_open(settings: Settings, host: str, port: int) -> None:
    if settings.api_keys and host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"serving on {host}:{port} with {len(settings.api_keys)} API key(s)")
    elif host not in ("127.0.0.1", "localhost", "::1"):
        console.print(
            f"[yellow]warning:[/] serving on {host} without API keys: anyone who can reach "
            "the port can read and write; set KB_API_KEYS",
            highlight=False,
        )


def ask(
    question: Annotated[str, typer.Argument(help="The question to answer.")],
    mode: Annotated[
        str,
        typer.Option(
            help="base, rag, extract (quotes, no model), finetuned, rag+finetuned, or compare "
            "(all side by side)."
        ),
    ] = "rag",
    support: SupportOpt = None,
    model: Annotated[
        str | None,
        typer.Option(help="Generator name (default: KB_DEFAULT_GENERATOR / latest fine-tuned)."),
    ] = None,
    collection: CollectionOpt = None,
    k: Annotated[int, typer.Option("-k", help="Passages to retrieve for the grounded modes.")] = 5,
    method: MethodOpt = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Most tokens to generate (default: the model's setting).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Answer a question: the answer streams to the terminal, then its numbered sources."""
    from kb.answering import Answerer, AnswerRequest

    answerer = Answerer.from_settings(Settings())
    request = AnswerRequest(
        question,
        mode=mode,
        collection=collection,
        k=k,
        model=model,
        method=method,
        max_new_tokens=max_new_tokens,
        support=support,
    )
    if json_out:
        print_json(answerer.answer(request).to_dict())
        return
    out = sys.stdout
    current = None
    for event in answerer.stream(request):
        if event.type == "passages":
            for item in event.data.get("unavailable", []):
                console.print(
                    f"[yellow]{item['mode']} unavailable:[/] {item['reason']}", highlight=False
                )
        elif event.type == "delta":
            if mode == "compare" and event.mode != current:
                out.write(("\n" if current else "") + f"== {event.mode} ==\n")
            current = event.mode
            out.write(event.text)
            out.flush()
        elif event.type == "result" or (event.type == "done" and mode != "compare"):
            _print_sources(event.result)


def _print_sources(result) -> None:
    out = sys.stdout
    out.write("\n")
    _print_support(result)
    cited = [c for c in result.citations if c.cited] or result.citations
    if cited:
        out.write("\nSources:\n")
        for c in cited:
            where = f"page {c.page}" if c.page else f"chars {c.start}-{c.end}"
            out.write(f"  [{c.n}] {c.source} ({where})\n")
    out.flush()
    t = result.timings
    name = result.model.name if result.model else "?"
    if not result.grounded:
        console.print("[dim]ungrounded: no passages, nothing checked this answer[/]")
    console.print(
        f"[dim]{result.mode} with {name}: {result.usage.completion_tokens} tokens, "
        f"{t.get('total', 0):.1f} s"
        + (f", first token {t['first_token']:.2f} s" if "first_token" in t else "")
        + "[/]",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(ask)


def _print_support(result) -> None:
    """What the support check found: unsupported sentences, removed citations, the action."""
    report = result.support
    if report is None:
        return
    unsupported = [s for s in report.sentences if s.claim and not s.supported]
    if report.action in ("fallback", "dropped") and unsupported:
        # the answer shown no longer holds them: say how many, not the model's whole text again
        claims = sum(1 for s in report.sentences if s.claim)
        done = "answered from the passages instead" if report.action == "fallback" else "removed"
        console.print(
            f"[yellow]{len(unsupported)} of {claims} sentences of the model's answer not supported"
            f" by the passages: {done}[/] [dim](--support flag shows them marked)[/]",
            highlight=False,
        )
    else:
        for s in unsupported:
            why = f" (not in passage: {', '.join(s.missing)})" if s.missing else ""
            console.print(f"[yellow]unsupported:[/] {s.text}{why}", highlight=False)
    if report.removed_citations:
        numbers = ", ".join(f"[{n}]" for n in report.removed_citations)
        console.print(f"[yellow]removed citations of passages not given:[/] {numbers}")
    if report.action in ("fallback", "dropped", "not_covered"):
        console.print(f"[dim]support check: {report.action} (policy {report.policy})[/]")

"""`kb models list|delete`: the registry of fine-tuned generation and embedding models."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from kb.cli.common import console, fail, print_json
from kb.errors import KBError
from kb.settings import Settings

models_app = typer.Typer(
    name="models",
    help="Fine-tuned models: list them, delete them.",
    no_args_is_help=True,
)


@models_app.command("list")
def list_models(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """List the configured generators and the registered fine-tuned models."""
    from kb.models import ModelRegistry

    settings = Settings()
    stored = ModelRegistry(settings).list()
    configured = [g.model_dump(exclude={"api_key"}) for g in settings.generators]
    if json_out:
        print_json({"generators": configured, "finetuned": [m.to_dict() for m in stored]})
        return
    table = Table(title="models")
    for column in ("name", "kind", "backend", "base", "metrics", "created"):
        table.add_column(column)
    for g in settings.generators:
        table.add_row(g.name, g.kind, g.backend, g.model, "-", "configured")
    for m in stored:
        shown = {k: m.metrics.get(k) for k in ("eval_loss", "accuracy", "train_loss")}
        metrics = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in shown.items()
            if v is not None
        )
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(m.created_at))
        table.add_row(m.name, m.kind, m.backend, m.base_model, metrics or "-", created)
    console.print(table)


@models_app.command("delete")
def delete_model(
    name: Annotated[str, typer.Argument(help="Name of a fine-tuned model (`kb models list`).")],
) -> None:
    """Delete a fine-tuned model and its adapter or weights."""
    from kb.models import ModelRegistry

    try:
        record = ModelRegistry(Settings()).delete(name)
    except KBError as exc:
        fail(str(exc))
    console.print(f"deleted {record.kind} model {record.name}", highlight=False)

"""Registers the sub-command groups that live in their own modules."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from kb.cli import serve
    from kb.cli.eval import eval_app
    from kb.cli.finetune import finetune_app
    from kb.cli.models import models_app

    serve.register(app)
    app.add_typer(finetune_app, name="finetune")
    app.add_typer(eval_app, name="eval")
    app.add_typer(models_app, name="models")

"""Registers the sub-command groups that live in their own modules."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from kb.cli import serve

    serve.register(app)
    from kb.cli.models import models_app

    app.add_typer(models_app)

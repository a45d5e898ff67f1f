"""The `kb` command line: a thin edge over kb.service, mirroring the HTTP API verb for verb."""

from __future__ import annotations

import os
import sys

# before torch or FAISS load OpenMP: idle threads sleep instead of spinning, which on shared
# cores made 2-thread FAISS work 4-8x slower (benchmarks/scale.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer

from kb.cli.common import console, fail
from kb.cli.core import register as register_core
from kb.errors import KBError

app = typer.Typer(
    name="kb",
    help="Self-hosted knowledge base: ingest folders, search, ask with RAG or a fine-tuned model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
register_core(app)


def _register_optional() -> None:
    """Sub-apps of the other verbs (finetune, eval, models, serve) register themselves here."""
    from kb.cli import sub_apps

    sub_apps.register(app)


_register_optional()


def main() -> None:
    try:
        app()
    except KBError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)

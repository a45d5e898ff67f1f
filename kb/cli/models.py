"""`kb models list|delete`: the registry of fine-tuned generation and embedding models."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kb.cli.common import CountBar, JsonOpt, console, fail, print_json
from kb.errors import InvalidInput, KBError
from kb.settings import Settings

models_app = typer.Typer(
    name="models",
    help="Fine-tuned models: list them, classify with them, delete them.",
    no_args_is_help=True,
)


@models_app.command("list")
def list_models(
    json_out: JsonOpt = False,
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


@models_app.command("classify")
def classify_command(
    name: Annotated[str, typer.Argument(help="A model fine-tuned on a labelled folder.")],
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Text files, or folders of them; in a folder whose sub-folders are named by the "
            "model's labels, each file's sub-folder is its true label and accuracy is reported."
        ),
    ],
    json_out: JsonOpt = False,
) -> None:
    """Label text files with a fine-tuned classifier, its prompts built as in its training."""
    from kb.finetune.classify import MAX_TEXTS, ClassifierCache
    from kb.finetune.sources import read_text_file
    from kb.generators import GeneratorRegistry
    from kb.models import ModelRegistry

    settings = Settings()
    try:
        registry = ModelRegistry(settings)
        generators = GeneratorRegistry(settings)
        registry.load_into(generators)
        classifier = ClassifierCache().get(registry.get(name), generators, settings)
        files, skipped = [], []
        for path, gold in _labelled_files(paths, classifier.labels):
            try:
                text = read_text_file(path)
                if not classifier.clean(text):
                    raise InvalidInput(
                        f"{str(path)!r} is empty"
                        + (" once mail headers are dropped" if text.strip() else "")
                    )
            except (OSError, InvalidInput) as exc:
                skipped.append({"path": str(path), "reason": str(exc)})
                continue
            files.append((path, gold, text))
        if not files:
            raise InvalidInput(
                f"none of the {len(skipped)} files could be read as text: pass text files"
            )
        rows = []
        with CountBar("classifying", enabled=console.is_terminal and not json_out) as bar:
            for lo in range(0, len(files), MAX_TEXTS):
                batch = files[lo : lo + MAX_TEXTS]
                results = classifier.classify(
                    [text for _, _, text in batch],
                    progress=lambda done, _, lo=lo: bar(lo + done, len(files)),
                )
                rows += [
                    {"path": str(p), "gold": gold, **r.to_dict()}
                    for (p, gold, _), r in zip(batch, results, strict=True)
                ]
    except KBError as exc:
        fail(str(exc))
        return
    judged = [r for r in rows if r["gold"] is not None]
    correct = sum(r["label"] == r["gold"] for r in judged)
    summary = {
        "model": name,
        "labels": classifier.labels,
        "texts": len(rows),
        "accuracy": correct / len(judged) if judged else None,
        "results": rows,
        "skipped": skipped,
    }
    if json_out:
        print_json(summary)
        return
    table = Table(title=f"{name}: {len(rows)} texts")
    for column in ("file", "label", "probability", "true label"):
        table.add_column(column)
    for r in rows:
        mark = "" if r["gold"] is None else (r["gold"] if r["gold"] != r["label"] else "=")
        table.add_row(r["path"], r["label"], f"{r['probabilities'][r['label']]:.3f}", mark)
    console.print(table)
    for item in skipped:
        console.print(f"skipped {item['path']}: {item['reason']}", highlight=False)
    if judged:
        console.print(f"accuracy {correct}/{len(judged)} = {correct / len(judged):.4f}")


def _labelled_files(paths: list[Path], labels: list[str]) -> list[tuple[Path, str | None]]:
    """Every file under `paths`, with its true label when it lies in a sub-folder named by one."""
    out: list[tuple[Path, str | None]] = []
    for path in paths:
        if path.is_file():
            out.append((path, None))
        elif path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                if any(part.startswith(".") for part in file.relative_to(path).parts):
                    continue
                parent = file.relative_to(path).parts[0] if file.parent != path else None
                out.append((file, parent if parent in labels else None))
        else:
            raise InvalidInput(f"no file or folder at {str(path)!r}: check the path")
    if not out:
        raise InvalidInput(f"no files under {', '.join(map(str, paths))}: pass text files")
    return out

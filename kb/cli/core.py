"""`kb ingest`, `kb search`, `kb documents ...`, `kb collections` and `kb reindex`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ingest.ray_ingest import RayIngestOptions
from kb.cli.common import (
    BarProgress,
    CollectionOpt,
    JsonOpt,
    MethodOpt,
    console,
    print_json,
)
from kb.cli.specs import cli_build, spec_options
from kb.settings import Settings


def knowledge_base():
    from kb.service import KnowledgeBase

    return KnowledgeBase(Settings())


@spec_options(RayIngestOptions)
def ingest(
    path: Annotated[Path, typer.Argument(help="Folder (or single file) to ingest.")],
    collection: CollectionOpt = None,
    prune: Annotated[
        bool, typer.Option("--prune", help="Remove documents whose files are gone from the folder.")
    ] = False,
    embedder: Annotated[
        str | None,
        typer.Option(
            help="Embedder: 'minilm', 'st:PATH' or 'openai:MODEL' (default: the collection's)."
        ),
    ] = None,
    text_field: Annotated[
        str | None, typer.Option(help="Field holding the text in .jsonl and .csv files.")
    ] = None,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for another writer of the collection to finish.")
    ] = 0.0,
    json_out: JsonOpt = False,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Parse, chunk and embed on a Ray cluster (the 'ray' extra; see --ray-address); "
            "this process stays the one writer.",
        ),
    ] = False,
    options: dict | None = None,
) -> None:
    """Ingest a folder: new and changed files are embedded, unchanged ones skipped."""
    on_ray = None
    if ray or (options or {}).get("ray_address"):
        from ingest.ray_ingest import require_ray

        require_ray()  # before any work: without the extra, say which to install
        on_ray = cli_build(RayIngestOptions, options or {})
    kb = knowledge_base()
    with BarProgress(enabled=console.is_terminal and not json_out) as progress:
        report = kb.ingest_path(
            path,
            collection=collection,
            prune=prune,
            progress=progress,
            embedder=embedder,
            jsonl_text_field=text_field,
            csv_text_field=text_field,
            wait=wait,
            ray=on_ray,
        )
    summary = report.to_dict()
    console.print(
        f"[bold]{report.collection}[/]: added {report.added}, updated {report.updated}, "
        f"unchanged {report.unchanged}, removed {report.removed}, failed {len(report.failed)}, "
        f"skipped {len(report.skipped)}; {report.chunks_embedded} chunks embedded in {report.seconds:.1f} s",
        highlight=False,
    )
    for item in report.failed:
        console.print(f"  [red]failed[/] {item['path']}: {item['error']}", highlight=False)
    for item in report.skipped:
        console.print(f"  [yellow]skipped[/] {item['path']}: {item['reason']}", highlight=False)
    if json_out:
        print_json(summary)


def search(
    query: Annotated[str, typer.Argument(help="What to search for.")],
    k: Annotated[int, typer.Option("-k", help="Number of passages.")] = 5,
    collection: CollectionOpt = None,
    source: Annotated[
        str | None, typer.Option("--source", help="Only sources matching this glob, e.g. '*.pdf'.")
    ] = None,
    method: MethodOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Search a collection and print the top passages with source, position and score."""
    kb = knowledge_base()
    passages = kb.search(query, collection=collection, k=k, method=method, source_glob=source)
    if json_out:
        print_json({"results": [p.to_dict() for p in passages]})
        return
    if not passages:
        console.print("no results")
    for i, p in enumerate(passages, 1):
        where = f"page {p.page}" if p.page else f"chars {p.start}-{p.end}"
        console.print(
            f"[bold]{i}.[/] [cyan]{p.source}[/] ({where}) score {p.score:.4f}", highlight=False
        )
        text = " ".join(p.text.split())
        console.print(f"   {text[:300]}{'…' if len(text) > 300 else ''}", highlight=False)


documents_app = typer.Typer(help="List and delete documents of a collection.", no_args_is_help=True)


@documents_app.command("list")
def documents_list(collection: CollectionOpt = None, json_out: JsonOpt = False) -> None:
    """List the documents of a collection."""
    docs = knowledge_base().list_documents(collection)
    if json_out:
        print_json({"documents": docs})
        return
    table = Table("id", "source", "title", "chunks")
    for d in docs:
        table.add_row(d["id"], d["source"], (d["title"] or "")[:40], str(d["chunks"]))
    console.print(table)


@documents_app.command("delete")
def documents_delete(
    id_or_path: Annotated[str, typer.Argument(help="Document id, source, or file path.")],
    collection: CollectionOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Delete a document (by id, or every document of a file path)."""
    ids = knowledge_base().delete_document(collection, id_or_path)
    console.print(f"deleted {len(ids)} document(s)")
    if json_out:
        print_json({"deleted": ids})


def collections(json_out: JsonOpt = False) -> None:
    """List the collections in the data directory."""
    infos = knowledge_base().list_collections()
    if json_out:
        print_json({"collections": infos})
        return
    table = Table("name", "documents", "chunks", "embedder", "generation")
    for c in infos:
        table.add_row(
            c["name"], str(c["documents"]), str(c["chunks"]), c["embedder"], str(c["generation"])
        )
    console.print(table)


def reindex(
    index: Annotated[
        str,
        typer.Option(
            "--index",
            help="auto (flat up to KB_EXACT_SEARCH_MAX vectors, then IVF), flat, ivf, "
            "'ivf:nlist=1024,nprobe=32', hnsw, ...",
        ),
    ] = "auto",
    collection: CollectionOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Rebuild a collection's vector index as another kind, from its stored vectors."""
    result = knowledge_base().reindex(collection, index)
    console.print(
        f"{result['collection']}: {result['vectors']} vectors in {result['index']} "
        f"{result['search_params'] or ''} ({result['memory_bytes'] / 2**20:.1f} MiB) "
        f"in {result['seconds']:.1f} s",
        highlight=False,
    )
    if json_out:
        print_json(result)


def export(
    archive: Annotated[Path, typer.Argument(help="Archive to write (.tar.gz).")],
    collection: CollectionOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Export a collection (store, vectors, indexes) to one archive."""
    kb = knowledge_base()
    manifest = kb.export_collection(collection or kb.settings.default_collection, archive)
    console.print(
        f"exported {manifest['collection']}: {manifest['documents']} documents, "
        f"{manifest['chunks']} chunks -> {archive}"
    )
    if json_out:
        print_json({k: v for k, v in manifest.items() if k != "files"})


def import_(
    archive: Annotated[Path, typer.Argument(help="Archive written by `kb export`.")],
    collection: Annotated[
        str | None, typer.Option("--collection", "-c", help="Import under this name.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing collection.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Import a collection exported by `kb export`."""
    manifest = knowledge_base().import_collection(archive, collection, force=force)
    console.print(f"imported {manifest['collection']}: {manifest['documents']} documents")
    if json_out:
        print_json({k: v for k, v in manifest.items() if k != "files"})


def register(app: typer.Typer) -> None:
    app.command()(export)
    app.command("import")(import_)
    app.command()(ingest)
    app.command()(search)
    app.command()(collections)
    app.command()(reindex)
    app.add_typer(documents_app, name="documents")

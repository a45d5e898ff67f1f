"""Export a collection to one archive and import it into any data directory.

The archive holds a consistent copy of the SQLite store (SQLite's online backup, so a running
ingest does not tear it), the index files of the generation that copy names, and a manifest
with checksums. Import checks everything into a temporary folder and then renames it into
place, so a failed import leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from kb.errors import Conflict, InvalidInput
from kb.store.collection import Collection, validate_name

FORMAT = "kb-collection/1"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def export_collection(col: Collection, archive: Path) -> dict[str, Any]:
    """Write `archive` (.tar.gz) with the collection as it is now; returns the manifest."""
    archive = Path(archive)
    with tempfile.TemporaryDirectory(
        dir=archive.parent if archive.parent.exists() else None
    ) as tmp:
        stage = Path(tmp) / "collection"
        stage.mkdir()
        dst = sqlite3.connect(stage / "store.sqlite")
        src = sqlite3.connect(col.root / "store.sqlite", timeout=60)
        try:
            src.backup(dst)
        finally:
            src.close()
        meta = dict(dst.execute("SELECT key, value FROM meta"))
        counts = {
            "documents": dst.execute("SELECT COUNT(*) FROM documents").fetchone()[0],
            "chunks": dst.execute("SELECT COUNT(*) FROM chunks").fetchone()[0],
        }
        dst.close()
        gen = meta["generation"]
        gen_dir = col.root / "gen" / gen
        if gen != "0" and gen_dir.exists():
            try:
                shutil.copytree(gen_dir, stage / "gen" / gen)
            except (FileNotFoundError, shutil.Error):
                shutil.rmtree(stage / "gen", ignore_errors=True)  # rebuilt from rows on import
        files = {
            str(p.relative_to(stage)): _sha256(p) for p in sorted(stage.rglob("*")) if p.is_file()
        }
        manifest = {
            "format": FORMAT,
            "collection": col.name,
            "embedder": meta["embedder"],
            "dimension": int(meta["dimension"]),
            "generation": int(gen),
            "exported_at": time.time(),
            **counts,
            "files": files,
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2))
        partial = archive.with_name(archive.name + ".partial")
        with tarfile.open(partial, "w:gz") as tar:
            tar.add(stage, arcname="collection")
        partial.replace(archive)
    return manifest


def import_collection(
    archive: Path, collections_dir: Path, name: str | None = None, *, force: bool = False
) -> dict[str, Any]:
    """Restore an exported collection (optionally under a new name); returns its manifest."""
    archive = Path(archive)
    if not archive.is_file():
        raise InvalidInput(f"no archive at {str(archive)!r}: pass a file written by `kb export`")
    collections_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=collections_dir, prefix=".import-") as tmp:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, filter="data")  # refuses absolute paths, links out, devices
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise InvalidInput(
                f"{archive} is not a readable kb export ({exc}); export it again"
            ) from exc
        stage = Path(tmp) / "collection"
        try:
            manifest = json.loads((stage / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise InvalidInput(
                f"{archive} has no valid manifest.json; is it a `kb export` archive?"
            ) from exc
        if manifest.get("format") != FORMAT:
            raise InvalidInput(
                f"{archive} has format {manifest.get('format')!r}; this kb reads {FORMAT}"
            )
        for rel, digest in manifest["files"].items():
            path = stage / rel
            if not path.is_file() or _sha256(path) != digest:
                raise InvalidInput(
                    f"{archive}: {rel} is missing or damaged (checksum mismatch); export it again"
                )
        db = sqlite3.connect(stage / "store.sqlite")
        ok = db.execute("PRAGMA integrity_check").fetchone()[0]
        db.close()
        if ok != "ok":
            raise InvalidInput(f"{archive}: the store fails SQLite's integrity check ({ok})")
        (stage / "manifest.json").unlink()
        target_name = validate_name(name or manifest["collection"])
        target = collections_dir / target_name
        if target.exists():
            if not force:
                raise Conflict(
                    f"collection {target_name!r} exists already: import under another name "
                    "(--collection NAME) or replace it with --force"
                )
            old = collections_dir / f".replaced-{target_name}-{int(time.time())}"
            target.rename(old)
            stage.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            stage.rename(target)
    manifest["collection"] = target_name
    return manifest

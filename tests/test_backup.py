"""Backup: `kb export` then `kb import` into a fresh data directory gives the same search
results; damaged archives are refused; replacing a collection needs --force."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest

from kb.errors import Conflict, InvalidInput
from tests.badfiles import make_good_corpus
from tests.reliability import run_kb, write_distinct_corpus

QUERIES = ["tok0004", "cobalt harbor pelican", "the end of tok0017", "walrus accountants"]
METHODS = ("dense", "bm25", "hybrid")


@pytest.fixture(scope="module")
def embedders() -> dict:
    return {}


def knowledge_base(data: Path, embedders: dict):
    from kb.service import KnowledgeBase
    from kb.settings import Settings

    return KnowledgeBase(Settings(data_dir=data), embedders=embedders)


def results(data: Path, embedders: dict, collection: str) -> dict:
    kb = knowledge_base(data, embedders)
    return {
        (q, m): [
            (p.chunk_id, p.source, p.score)
            for p in kb.search(q, collection=collection, k=8, method=m)
        ]
        for q in QUERIES
        for m in METHODS
    }


def assert_same(before: dict, after: dict) -> None:
    """Same chunk ids and sources in the same order, and the same scores."""
    for key, hits in before.items():
        assert [h[:2] for h in after[key]] == [h[:2] for h in hits], key
        assert [h[2] for h in after[key]] == pytest.approx([h[2] for h in hits], abs=1e-6), key


@pytest.fixture(scope="module")
def exported(tmp_path_factory, embedders) -> tuple[Path, Path, dict]:
    """A collection ingested, searched, and exported with the CLI: (data, archive, results)."""
    base = tmp_path_factory.mktemp("backup")
    docs = base / "docs"
    write_distinct_corpus(docs / "notes", 40)
    make_good_corpus(docs / "formats")
    data = base / "data"
    knowledge_base(data, embedders).ingest_path(docs, collection="docs")
    archive = base / "docs.tar.gz"
    done = run_kb(data, "export", str(archive), "-c", "docs", "--json", log=base / "export.log")
    assert done.returncode == 0, done.output[-2000:]
    assert done.result["collection"] == "docs" and done.result["documents"] > 40
    return data, archive, results(data, embedders, "docs")


def test_import_into_a_fresh_data_dir_searches_the_same(tmp_path, exported, embedders) -> None:
    _, archive, before = exported
    fresh = tmp_path / "fresh"
    done = run_kb(fresh, "import", str(archive), "--json", log=tmp_path / "import.log")
    assert done.returncode == 0, done.output[-2000:]
    assert all(before[key] for key in before)  # every query finds something to compare
    assert_same(before, results(fresh, embedders, "docs"))


def test_import_over_an_existing_collection_needs_force(tmp_path, exported, embedders) -> None:
    data, archive, before = exported
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    refused = run_kb(copy, "import", str(archive), log=tmp_path / "refused.log")
    message = " ".join(refused.output.split())
    assert refused.returncode != 0 and "exists already" in message and "--force" in message
    assert "Traceback" not in refused.output

    forced = run_kb(copy, "import", str(archive), "--force", "--json", log=tmp_path / "f.log")
    assert forced.returncode == 0, forced.output[-2000:]
    assert_same(before, results(copy, embedders, "docs"))
    leftovers = [p.name for p in (copy / "collections").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def damaged_archives(archive: Path, folder: Path) -> dict[str, Path]:
    """Truncated, garbage, and re-packed with one flipped byte in the store or the index."""
    folder.mkdir()
    out = {}
    data = archive.read_bytes()
    out["truncated"] = folder / "truncated.tar.gz"
    out["truncated"].write_bytes(data[: len(data) // 2])
    out["garbage"] = folder / "garbage.tar.gz"
    out["garbage"].write_bytes(b"not an archive at all\n" * 100)
    unpacked = folder / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    for name, pattern in (("store", "store.sqlite"), ("index", "gen/*/dense.faiss")):
        stage = folder / f"stage-{name}"
        shutil.copytree(unpacked, stage)
        target = next((stage / "collection").glob(pattern))
        raw = bytearray(target.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        target.write_bytes(bytes(raw))
        out[name] = folder / f"{name}.tar.gz"
        with tarfile.open(out[name], "w:gz") as tar:
            tar.add(stage / "collection", arcname="collection")
    return out


def test_damaged_archives_are_refused_and_leave_nothing(tmp_path, exported, embedders) -> None:
    _, archive, _ = exported
    fresh = tmp_path / "fresh"
    kb = knowledge_base(fresh, embedders)
    for what, bad in damaged_archives(archive, tmp_path / "bad").items():
        with pytest.raises(InvalidInput) as info:
            kb.import_collection(bad)
        message = str(info.value)
        assert str(bad) in message and ("export it again" in message or "kb export" in message)
        if what in ("store", "index"):
            assert "checksum" in message, message
        assert list((fresh / "collections").iterdir()) == [], what  # no partial import

    # the same refusal through the CLI: a clear message, no traceback
    bad = tmp_path / "bad" / "truncated.tar.gz"
    done = run_kb(fresh, "import", str(bad), log=tmp_path / "cli.log")
    assert done.returncode != 0 and "Traceback" not in done.output
    assert "not a readable kb export" in " ".join(done.output.split())

    kb.import_collection(archive, "restored")
    with pytest.raises(Conflict, match="--force"):
        kb.import_collection(archive, "restored")

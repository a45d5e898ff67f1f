"""Folder ingestion end to end through the `kb` CLI: real loaders, real model, real FAISS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.badfiles import make_bad_corpus, make_good_corpus

ROOT = Path(__file__).resolve().parents[1]
NEWSGROUPS = ROOT.parent / "shared" / "data" / "newsgroups"


def kb(data_dir: Path, *args: str, check: bool = True) -> dict:
    """Run the real `kb` command with --json and return the last line's object."""
    env = {**os.environ, "KB_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "kb", *args, "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kb {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else {"returncode": proc.returncode, "stderr": proc.stderr}


@pytest.fixture(scope="module")
def newsgroups_copy(tmp_path_factory) -> Path:
    """A writable copy of the newsgroups training split (1,192 messages)."""
    dest = tmp_path_factory.mktemp("ng") / "train"
    shutil.copytree(NEWSGROUPS / "train", dest)
    return dest


@pytest.fixture(scope="module")
def newsgroups_kb(tmp_path_factory, newsgroups_copy) -> tuple[Path, dict]:
    data = tmp_path_factory.mktemp("kbdata")
    return data, kb(data, "ingest", str(newsgroups_copy), "--collection", "news")


def test_mixed_folder_each_file_handled(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    good = make_good_corpus(docs)
    bad = make_bad_corpus(docs / "bad")
    data = tmp_path / "data"

    report = kb(data, "ingest", str(docs))

    failed = {Path(f["path"]).name: f["error"] for f in report["failed"]}
    skipped = {Path(f["path"]).name: f["reason"] for f in report["skipped"]}
    for name in good:
        assert name not in failed and name not in skipped, (name, failed.get(name), skipped.get(name))
    assert report["added"] == len(good)
    for name, problem in bad.items():
        if name in failed or name in skipped:
            continue
        # odd file names are valid text files; the symlink loop is not followed
        assert "name" in problem or "symlink" in problem or "loop" in problem, (name, problem)
    assert any("empty" in e for e in failed.values())
    assert any("binary" in r for r in skipped.values())
    assert any("encrypt" in e.lower() for e in failed.values())
    assert report["chunks_embedded"] > 0

    # every good file's phrase is found, and first, in its own file
    for name, info in good.items():
        phrase = info["phrase"]
        res = kb(data, "search", phrase, "-k", "3")["results"]
        assert res, f"nothing found for {phrase!r}"
        assert Path(res[0]["source"].split("#")[0]).name == name, (phrase, res[0]["source"])
        assert {"score", "text", "source", "chunk_id"} <= set(res[0])


def test_pdf_pages_and_offsets_kept(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    good = make_good_corpus(docs)
    pdf = next(n for n in good if n.endswith(".pdf"))
    data = tmp_path / "data"
    kb(data, "ingest", str(docs))
    res = kb(data, "search", good[pdf]["phrase"], "-k", "1", "--source", "*.pdf")["results"]
    assert res[0]["page"] == good[pdf].get("page", res[0]["page"]) and res[0]["page"] >= 1
    assert 0 <= res[0]["start"] < res[0]["end"]


def test_newsgroups_ingest_and_search(newsgroups_kb, newsgroups_copy):
    data, report = newsgroups_kb
    files = sum(1 for p in newsgroups_copy.rglob("*") if p.is_file())
    assert report["added"] + len(report["failed"]) + len(report["skipped"]) == files
    assert report["added"] >= files - 5
    assert report["chunks_embedded"] >= report["added"]

    # a phrase from a known message finds that message first
    target = newsgroups_copy / "rec.motorcycles" / sorted(os.listdir(newsgroups_copy / "rec.motorcycles"))[7]
    body = target.read_text(errors="replace").split("\n\n", 1)[1]
    sentence = next(line for line in body.splitlines() if len(line.split()) >= 8 and ">" not in line)
    res = kb(data, "search", sentence, "-k", "3", "--collection", "news")["results"]
    assert Path(res[0]["source"]) == target.resolve() or res[0]["source"] == str(target)


def test_reingest_unchanged_embeds_nothing(newsgroups_kb, newsgroups_copy):
    data, first = newsgroups_kb
    again = kb(data, "ingest", str(newsgroups_copy), "--collection", "news")
    assert again["chunks_embedded"] == 0
    assert again["added"] == again["updated"] == again["removed"] == 0
    assert again["unchanged"] == first["added"]


def test_edit_and_delete_then_prune(newsgroups_kb, newsgroups_copy):
    data, _ = newsgroups_kb
    autos = sorted((newsgroups_copy / "rec.autos").iterdir())
    edited, deleted = autos[0], autos[1]
    edited.write_text(edited.read_text(errors="replace") + "\nZebra carburettor quokka sentence added.\n")
    deleted.unlink()

    report = kb(data, "ingest", str(newsgroups_copy), "--collection", "news", "--prune")
    assert report["updated"] == 1
    assert report["removed"] == 1
    assert report["added"] == 0
    assert 0 < report["chunks_embedded"] < 20

    listed = kb(data, "documents", "list", "--collection", "news")["documents"]
    sources = {d["source"] for d in listed}
    assert str(deleted.resolve()) not in sources
    res = kb(data, "search", "zebra carburettor quokka", "-k", "1", "--collection", "news")["results"]
    assert res[0]["source"] == str(edited.resolve())


def test_documents_delete_and_errors(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Alpha document about lighthouses and their keepers.")
    (docs / "b.txt").write_text("Beta document about volcanoes and magma chambers.")
    data = tmp_path / "data"
    kb(data, "ingest", str(docs))
    deleted = kb(data, "documents", "delete", str(docs / "a.txt"))["deleted"]
    assert len(deleted) == 1
    listed = kb(data, "documents", "list")["documents"]
    assert [Path(d["source"]).name for d in listed] == ["b.txt"]

    missing = kb(data, "search", "volcano", "--collection", "nope", check=False)
    assert missing["returncode"] != 0 and "kb ingest" in missing["stderr"]
    other = kb(data, "ingest", str(docs), "--embedder", "st:/nonexistent/model", check=False)
    assert other["returncode"] != 0

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
from tests.conftest import require_shared_data

ROOT = Path(__file__).resolve().parents[1]
NEWSGROUPS = ROOT.parent / "shared" / "data" / "newsgroups"


def kb(data_dir: Path, *args: str, check: bool = True, **env_extra: str) -> dict:
    """Run the real `kb` command with --json and return the last line's object."""
    env = {**os.environ, "KB_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", **env_extra}
    proc = subprocess.run(
        [sys.executable, "-m", "kb", *args, "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"kb {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return (
        json.loads(lines[-1]) if lines else {"returncode": proc.returncode, "stderr": proc.stderr}
    )


@pytest.fixture(scope="module")
def embedders() -> dict:
    """Embedders shared by the in-process knowledge bases of this module (one model load)."""
    return {}


def search(embedders: dict, data_dir: Path, query: str, **kw) -> list[dict]:
    from kb.service import KnowledgeBase
    from kb.settings import Settings

    kb_ = KnowledgeBase(Settings(data_dir=data_dir), embedders=embedders)
    return [p.to_dict() for p in kb_.search(query, **kw)]


@pytest.fixture(scope="module")
def newsgroups_copy(tmp_path_factory) -> Path:
    """A writable copy of the newsgroups training split (1,192 messages)."""
    require_shared_data("newsgroups")
    dest = tmp_path_factory.mktemp("ng") / "train"
    shutil.copytree(NEWSGROUPS / "train", dest)
    return dest


@pytest.fixture(scope="module")
def newsgroups_kb(tmp_path_factory, newsgroups_copy) -> tuple[Path, dict]:
    data = tmp_path_factory.mktemp("kbdata")
    return data, kb(data, "ingest", str(newsgroups_copy), "--collection", "news")


@pytest.mark.slow
def test_mixed_folder_each_file_handled(tmp_path, embedders):
    docs = tmp_path / "docs"
    docs.mkdir()
    good = make_good_corpus(docs)
    bad = make_bad_corpus(docs / "bad")
    data = tmp_path / "data"

    report = kb(data, "ingest", str(docs), KB_MAX_FILE_BYTES=str(50 * 1024 * 1024))

    failed = {Path(f["path"]).name: f["error"] for f in report["failed"]}
    skipped = {Path(f["path"]).name: f["reason"] for f in report["skipped"]}
    for name in good:
        assert name not in failed and name not in skipped, (
            name,
            failed.get(name),
            skipped.get(name),
        )
    loads = [n for n, what in bad.items() if what.startswith("loads:")]
    assert report["added"] == len(good) + len(loads)
    for name, what in bad.items():
        base = Path(name).name
        expected = what.split(":", 1)[0]
        if expected == "LoaderError":
            assert base in failed and base not in skipped, (name, what)
            assert name.split("/")[-1] in failed[base] or "file" in failed[base]
        elif expected == "UnsupportedFile":
            assert base in skipped, (name, what)
        else:  # loads, or a symlink loop that is never followed
            assert base not in failed and base not in skipped, (name, what)
    assert "KB_MAX_FILE_BYTES" in failed["huge.txt"]
    assert "empty" in failed["empty.txt"]
    assert "binary" in skipped["junk.txt"]
    assert "encrypt" in failed["encrypted.pdf"].lower()
    assert "zip" in failed["bomb.docx"].lower() or "compress" in failed["bomb.docx"].lower()
    assert report["chunks_embedded"] > 0

    # every good file's phrase is found, and first, in its own file
    for name, info in good.items():
        phrase = info["phrase"]
        res = search(embedders, data, phrase, k=3)
        assert res, f"nothing found for {phrase!r}"
        assert Path(res[0]["source"].split("#")[0]).name == name, (phrase, res[0]["source"])
        assert {"score", "text", "source", "chunk_id"} <= set(res[0])

    # PDF chunks keep their page; offsets point into the document text
    pdf = next(n for n in good if n.endswith(".pdf"))
    for page, phrase in good[pdf]["pages"].items():
        res = search(embedders, data, phrase, k=1, source_glob="*.pdf")
        assert res[0]["page"] == page
        assert 0 <= res[0]["start"] < res[0]["end"]


@pytest.mark.slow
def test_newsgroups_ingest_and_search(newsgroups_kb, newsgroups_copy):
    data, report = newsgroups_kb
    files = sum(1 for p in newsgroups_copy.rglob("*") if p.is_file())
    assert report["added"] + len(report["failed"]) + len(report["skipped"]) == files
    assert report["added"] >= files - 5
    assert report["chunks_embedded"] >= report["added"]

    # a sentence that occurs in exactly one message finds that message first
    texts = {p: p.read_text(errors="replace") for p in newsgroups_copy.rglob("*") if p.is_file()}
    target, sentence = next(
        (path, line.strip())
        for path in sorted(newsgroups_copy.glob("rec.motorcycles/*"))[5:]
        for line in texts[path].split("\n\n", 1)[-1].splitlines()
        if len(line.split()) >= 8
        and ">" not in line
        and sum(line.strip() in t for t in texts.values()) == 1
    )
    res = kb(data, "search", sentence, "-k", "3", "--collection", "news")["results"]
    shown = target.relative_to(newsgroups_copy).as_posix()  # relative to the folder ingested
    assert res[0]["source"] == shown, (sentence, res[0]["source"])


@pytest.mark.slow
def test_kb_reindex_switches_the_index_kind_and_back(newsgroups_kb):
    data, _ = newsgroups_kb
    query = ["search", "loud pipes on a touring bike", "-k", "5", "--collection", "news"]
    before = [r["chunk_id"] for r in kb(data, *query, "--method", "dense")["results"]]

    ivf = kb(data, "reindex", "--index", "ivf:nlist=16,nprobe=16", "--collection", "news")
    assert ivf["index"].startswith("ivf16") and ivf["search_params"] == {"nprobe": 16}
    assert ivf["index_kind"] == "ivf:nlist=16,nprobe=16" and ivf["vectors"] > 1000
    # nprobe = nlist scans every list, so the answers are the exact ones
    assert [r["chunk_id"] for r in kb(data, *query, "--method", "dense")["results"]] == before

    bad = kb(data, "reindex", "--index", "annoy", "--collection", "news", check=False)
    assert "unknown index kind" in bad.get("stderr", "") + json.dumps(bad)

    flat = kb(data, "reindex", "--index", "auto", "--collection", "news")
    assert flat["index"] == "flat" and flat["search_params"] == {}


@pytest.mark.slow
def test_reingest_unchanged_embeds_nothing(newsgroups_kb, newsgroups_copy):
    data, first = newsgroups_kb
    again = kb(data, "ingest", str(newsgroups_copy), "--collection", "news")
    assert again["chunks_embedded"] == 0
    assert again["added"] == again["updated"] == again["removed"] == 0
    assert again["unchanged"] == first["added"]


@pytest.mark.slow
def test_edit_and_delete_then_prune(newsgroups_kb, newsgroups_copy, embedders):
    data, _ = newsgroups_kb
    autos = sorted((newsgroups_copy / "rec.autos").iterdir())
    edited, deleted = autos[0], autos[1]
    edited.write_text(
        edited.read_text(errors="replace") + "\nZebra carburettor quokka sentence added.\n"
    )
    deleted.unlink()

    report = kb(data, "ingest", str(newsgroups_copy), "--collection", "news", "--prune")
    assert report["updated"] == 1
    assert report["removed"] == 1
    assert report["added"] == 0
    assert 0 < report["chunks_embedded"] < 20

    listed = kb(data, "documents", "list", "--collection", "news")["documents"]
    sources = {d["source"] for d in listed}
    assert deleted.relative_to(newsgroups_copy).as_posix() not in sources
    # the edit is searchable: first by its words, and among the fused results
    edited_shown = edited.relative_to(newsgroups_copy).as_posix()
    res = search(embedders, data, "zebra carburettor quokka", k=1, collection="news", method="bm25")
    assert res[0]["source"] == edited_shown
    fused = search(embedders, data, "zebra carburettor quokka", k=5, collection="news")
    assert edited_shown in [r["source"] for r in fused]


@pytest.mark.slow
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


def test_collections_stored_with_absolute_sources_show_them_relative(tmp_path, embedders):
    """A collection written before display sources (its documents named by absolute path
    only) gets them derived on open, the same as a fresh ingest stores; sync is unchanged."""
    import sqlite3

    from kb.service import KnowledgeBase
    from kb.settings import Settings

    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.txt").write_text("Alpha document about lighthouses and their keepers.")
    (docs / "sub" / "rows.csv").write_text("text\nBeta row about volcanoes and magma chambers.\n")
    settings = Settings(data_dir=tmp_path / "data")
    upload = settings.data_dir / "uploads" / "default" / "memo.md"
    upload.parent.mkdir(parents=True)
    upload.write_text("Gamma memo about harbour cranes.")
    kb_ = KnowledgeBase(settings, embedders=embedders)
    kb_.ingest_path(docs)
    kb_.ingest_files([upload])
    fresh = kb_.list_documents()
    shown = sorted(d["source"] for d in fresh)
    assert shown[0] == "a.txt" and shown[1] == "memo.md" and shown[2].startswith("sub/rows.csv#")
    assert str(tmp_path) not in json.dumps(fresh)

    db = sqlite3.connect(settings.collections_dir / "default" / "store.sqlite")
    db.execute("ALTER TABLE documents DROP COLUMN display")  # as stored before
    db.commit()
    db.close()
    old = KnowledgeBase(settings, embedders=embedders)
    assert old.list_documents() == fresh
    hits = [p.to_dict() for p in old.search("volcanoes magma", k=3)]
    assert hits[0]["source"] == shown[2] and str(tmp_path) not in json.dumps(hits)

    again = old.ingest_path(docs)  # absolute paths still key the sync
    assert (again.unchanged, again.added, again.chunks_embedded) == (2, 0, 0)
    (docs / "a.txt").unlink()
    pruned = old.ingest_path(docs, prune=True)
    assert pruned.removed == 1
    assert sorted(d["source"] for d in old.list_documents()) == shown[1:]


# --- boilerplate: lines repeated across a collection's files -------------------------------

NAV = "Acme Docs Home\nProducts\nPricing and Plans\nContact Us\nSign in to your account"
FOOTER = "Copyright Acme Corporation. All rights reserved."
PAGES = {
    "kettles.html": "Copper kettles whistle when the water reaches a rolling boil.",
    "ferries.html": "Ferries to obsidian harbor leave at quarter past nine.",
    "herons.html": "The lighthouse keeper counts seventeen herons every dawn.",
    "glaciers.html": "Tangerine glacier surveys measure the blue crevasse.",
    "badgers.html": "Velvet badgers migrate across the cobalt meadow each spring.",
    "pelicans.html": "Silver pelicans recite the tide tables at noon.",
}


def site_page(body: str) -> str:
    """A page whose navigation and footer are plain divs, as many generated sites write them."""
    nav = "".join(f"<div>{line}</div>" for line in NAV.split("\n"))
    return (
        f"<html><head><title>{body.split()[1]}</title></head><body><div class='menu'>{nav}</div>"
        f"<h1>{body.split()[1].title()}</h1><p>{body}</p><p>{FOOTER}</p></body></html>"
    )


def test_line_counts_judge_by_share_of_files_and_survive_storage():
    from ingest.boilerplate import LineCounts
    from kb.types import Document, Section

    counts = LineCounts()
    for i, body in enumerate(PAGES.values()):
        counts.add([Document(f"p{i}", [Section(f"{NAV}\n\n{body}\n{FOOTER}")])])
    text = f"{NAV}\n\nA page of its own.\n\n{FOOTER}\n"
    spans = counts.kept_spans(text)
    assert [text[s:e].strip() for s, e in spans] == ["A page of its own."]
    # a lone short common line is kept: only runs of at least MIN_RUN_CHARS are dropped
    assert counts.kept_spans("Products\nsomething else") == [(0, len("Products\nsomething else"))]

    # stored and read back, the counts go on: one more file with the same nav is judged by all
    again = LineCounts.from_json(counts.to_json())
    assert again.files == len(PAGES) and again.counts == counts.counts
    again.add([Document("new", [Section(f"{NAV}\nNew text.")])])
    assert again.kept_spans(f"{NAV}\nNew text.") == [(len(NAV) + 1, len(NAV) + 1 + 9)]

    # under MIN_FILES nothing counts as boilerplate
    few = LineCounts()
    for i in range(3):
        few.add([Document(f"p{i}", [Section(NAV)])])
    assert few.kept_spans(NAV) == [(0, len(NAV))]


def test_chunk_offsets_point_at_the_text_around_dropped_lines():
    from ingest.boilerplate import LineCounts
    from ingest.chunking import Chunker
    from kb.types import Document, Section

    counts = LineCounts()
    for i in range(6):
        counts.add([Document(f"p{i}", [Section(f"{NAV}\nbody {i}\n{FOOTER}")])])
    words = " ".join(f"word{i}" for i in range(60))
    doc = Document(
        "d",
        [Section(f"Intro before.\n{NAV}\n{words}\n\n{FOOTER}"), Section(f"{NAV}\nSecond part.")],
    )
    chunker = Chunker(lambda t: len(t.split()), chunk_size=20, chunk_overlap=4)
    chunks = chunker.split(doc, counts)
    assert chunks and all(doc.text[c.start : c.end] == c.text for c in chunks)
    joined = " ".join(c.text for c in chunks)
    assert "Intro before." in joined and "word59" in joined and "Second part." in joined
    assert "Pricing and Plans" not in joined and "Copyright" not in joined
    # without counts every line is chunked
    plain = " ".join(c.text for c in chunker.split(doc))
    assert "Pricing and Plans" in plain and "Copyright" in plain


@pytest.mark.slow
def test_ingest_drops_navigation_repeated_across_files(tmp_path, embedders):
    from ingest.loaders import load_file

    site = tmp_path / "site"
    site.mkdir()
    for name, body in PAGES.items():
        (site / name).write_text(site_page(body))
    (site / "broken.html").write_bytes(b"\x00\x01\x02 binary \xff\xfe" * 200)
    data = tmp_path / "data"

    report = kb(data, "ingest", str(site))
    assert report["added"] == len(PAGES)
    assert [Path(f["path"]).name for f in report["failed"] + report["skipped"]] == ["broken.html"]

    # the navigation and the footer are stored nowhere; every page's own sentence is
    hits = search(embedders, data, "Pricing and Plans Sign in Copyright", k=20, method="bm25")
    assert all("Pricing" not in h["text"] and "Copyright" not in h["text"] for h in hits)
    for name, body in PAGES.items():
        found = search(embedders, data, body, k=1)[0]
        assert Path(found["source"]).name == name and body in found["text"]
        doc = load_file(site / name, max_bytes=1 << 20)[0]
        assert doc.text[found["start"] : found["end"]] == found["text"]

    # a later ingest of one new page is judged by the counts stored with the collection
    (site / "otters.html").write_text(site_page("Sea otters hold hands while they sleep."))
    later = kb(data, "ingest", str(site))
    assert later["added"] == 1 and later["unchanged"] == len(PAGES)
    otter = search(embedders, data, "sea otters hold hands", k=1, method="bm25")[0]
    assert Path(otter["source"]).name == "otters.html" and "Pricing" not in otter["text"]

    # with the setting off every line is kept
    kept = tmp_path / "kept"
    kb(kept, "ingest", str(site), KB_DROP_BOILERPLATE="false")
    nav_hits = search(embedders, kept, "Pricing and Plans", k=3, method="bm25")
    assert nav_hits and all("Pricing and Plans" in h["text"] for h in nav_hits)


def test_ingest_report_times_parsing_apart_from_embedding(tmp_path, embedders):
    from kb.service import KnowledgeBase
    from kb.settings import Settings

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        body = f"<p>{'Parsing runs beside the embedder. ' * 40}Page {i}.</p>"
        (docs / f"p{i}.html").write_text(f"<title>Page {i}</title><h1>Part {i}</h1>{body}")
    kb_ = KnowledgeBase(Settings(data_dir=tmp_path / "data"), embedders=embedders)
    report = kb_.ingest_path(docs, collection="timed")

    assert report.added == 6 and report.chunks_embedded >= 6
    assert report.seconds_loading > 0 and report.seconds_chunking > 0
    assert report.seconds_embedding > 0
    # the embedder's own time and its waits for parsed files both fall within the ingest
    assert report.seconds_embedding + report.seconds_waiting <= report.seconds
    assert report.to_dict()["seconds_loading"] == report.seconds_loading

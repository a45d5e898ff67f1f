"""Loaders on real files: one good file per format, and the bad corpus of broken/hostile input."""

from __future__ import annotations

import inspect
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from ingest.loaders import SUPPORTED_EXTENSIONS, get_loader, iter_files, load_file
from ingest.loaders.html import html_sections
from kb.errors import InvalidInput, LoaderError, UnsupportedFile
from tests.badfiles import (
    HUGE_BYTES,
    PHRASES,
    encrypted_pdf,
    make_bad_corpus,
    make_good_corpus,
    minimal_pdf,
)

NEWSGROUPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "newsgroups"
GOOD_NAMES = sorted({name.split("#")[0] for name in PHRASES})
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("good")
    return root, make_good_corpus(root)


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("bad")
    return root, make_bad_corpus(root)


def _holding(documents, phrase):
    found = [d for d in documents if phrase in d.text]
    assert len(found) == 1, f"{phrase!r} in {len(found)} documents"
    return found[0]


# --- good files -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_file_text_title_and_structure(good, name):
    root, corpus = good
    facts = corpus[name]
    documents = load_file(root / name)
    assert len(documents) == facts["documents"]
    document = _holding(documents, facts["phrase"])
    assert document.title == facts["title"]
    assert document.metadata["format"] == facts["format"]
    assert document.source == str(root / name) + facts.get("record", "")
    if "headings" in facts:
        assert [s.heading for s in document.sections] == facts["headings"]
    for page, phrase in facts.get("pages", {}).items():
        assert [s.page for s in document.sections if phrase in s.text] == [page]
    for secret in facts.get("absent", []):
        assert secret not in document.text
    if "table" in facts:
        assert facts["table"] in document.text
    for key, value in facts.get("metadata", {}).items():
        assert document.metadata[key] == value


def test_every_format_has_a_good_file(good):
    _, corpus = good
    assert {facts["format"] for facts in corpus.values()} >= {
        "text", "markdown", "rst", "html", "pdf", "docx", "csv", "jsonl", "email", "xlsx"
    }  # fmt: skip


def test_section_texts_are_normalised(good):
    root, corpus = good
    for name in corpus:
        for document in load_file(root / name):
            for section in document.sections:
                text = section.text
                assert text and text == text.strip()
                assert "\n\n\n" not in text and "\x00" not in text and " \n" not in text


@pytest.mark.parametrize("algorithm", ["RC4-128", "AES-256"])
def test_pdf_encrypted_with_an_empty_password_opens(tmp_path, algorithm):
    path = tmp_path / "permissions-only.pdf"
    pdf = minimal_pdf([["Restricted but readable."], ["Second page."]])
    path.write_bytes(encrypted_pdf(pdf, user_password="", algorithm=algorithm))
    (document,) = load_file(path)
    assert [(s.page, s.text) for s in document.sections] == [
        (1, "Restricted but readable."),
        (2, "Second page."),
    ]


def test_markdown_headings_inside_code_fences_do_not_split(good):
    root, _ = good
    (document,) = load_file(root / "guide.md")
    installation = next(s for s in document.sections if s.heading == "Installation")
    assert "# not a heading" in installation.text
    assert installation.text.startswith("Installation\n")  # the heading is kept in the text
    usage = next(s for s in document.sections if s.heading == "Usage")
    assert "Flags stay in the Usage section." in usage.text  # h4+ stays inline


def test_markdown_setext_headings_and_front_matter(tmp_path):
    path = tmp_path / "setext.md"
    path.write_text("---\ntitle: From Front Matter\n---\nIntro\n\nPart A\n------\n\nBody A.\n")
    (document,) = load_file(path)
    assert document.title == "From Front Matter"
    assert [s.heading for s in document.sections] == [None, "Part A"]
    assert "title:" not in document.text and "------" not in document.text


def test_html_keeps_table_rows_on_their_own_lines(good):
    root, _ = good
    (document,) = load_file(root / "page.html")
    assert "Boat Time\nGull 09:15" in document.text


def test_csv_named_text_column(good):
    root, _ = good
    documents = load_file(root / "catalog.csv", csv_text_field="description")
    assert [d.text for d in documents] == [
        "Heavy, with a lid.",
        f"Our {PHRASES['catalog.csv']}, they say.",
        "Light\nand cheap.",
    ]
    assert documents[1].metadata["id"] == "2" and documents[1].metadata["row"] == 2
    assert documents[1].title == "Emerald kettle"


def test_csv_unknown_text_column_lists_the_columns(good):
    root, _ = good
    with pytest.raises(LoaderError, match=r"no column 'summary'.*id, title, description"):
        load_file(root / "catalog.csv", csv_text_field="summary")


def test_csv_semicolon_dialect_is_sniffed(tmp_path):
    path = tmp_path / "semi.csv"
    path.write_text("name;note\nOtter;Floats on its back\nMole;Digs\n")
    documents = load_file(path)
    assert [d.text for d in documents] == [
        "name: Otter\nnote: Floats on its back",
        "name: Mole\nnote: Digs",
    ]


def test_jsonl_skips_bad_lines_and_keeps_scalar_metadata(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps({"body": "First body.", "title": "One", "score": 3, "tags": ["x"]}),
        "{broken",
        "",
        json.dumps(["not", "an", "object"]),
        json.dumps({"other": "no text field"}),
        json.dumps({"content": "Fifth line \u2028 keeps its separator."}),
    ]
    path.write_text("\n".join(lines) + "\n")
    documents = load_file(path)
    assert [d.source for d in documents] == [f"{path}#line=1", f"{path}#line=6"]
    assert documents[0].title == "One"
    assert documents[0].metadata["score"] == 3 and "tags" not in documents[0].metadata
    assert "\u2028" in documents[1].text


def test_jsonl_named_text_field(good):
    root, _ = good
    with pytest.raises(LoaderError, match=r"'summary'.*text field"):
        load_file(root / "records.jsonl", jsonl_text_field="summary")
    documents = load_file(root / "records.jsonl", jsonl_text_field="content")
    assert [d.text for d in documents] == ["Terns fly far."]


def test_extensionless_and_unknown_extensions_are_sniffed(tmp_path):
    (tmp_path / "README").write_text("Read me first.\n")
    (tmp_path / "server.log").write_text("12:00 started\n12:01 stopped\n")
    (tmp_path / "1993.news").write_text(
        "Path: a!b\nFrom: bob@example.org\nSubject: =?utf-8?q?Caf=C3=A9_news?=\n\nHello.\n"
    )
    assert load_file(tmp_path / "README")[0].metadata["format"] == "text"
    assert load_file(tmp_path / "server.log")[0].text == "12:00 started\n12:01 stopped"
    (message,) = load_file(tmp_path / "1993.news")
    assert (message.metadata["format"], message.title, message.text) == (
        "email",
        "Café news",
        "Hello.",
    )


def test_html_only_mail_uses_the_html_text(tmp_path):
    path = tmp_path / "note.eml"
    path.write_text(
        "From: a@example.org\nSubject: Html only\nContent-Type: text/html; charset=utf-8\n\n"
        "<html><body><nav>menu</nav><p>Visible paragraph.</p><script>x()</script></body></html>\n"
    )
    (document,) = load_file(path)
    assert document.text == "Visible paragraph."


def test_mail_without_body_keeps_its_subject_as_text(tmp_path):
    path = tmp_path / "101675"
    path.write_text("From: kurt@example.edu\nSubject: BRAKE ROTORS FOR SALE\nLines: 1\n\n\n")
    (document,) = load_file(path)
    assert (document.title, document.text) == ("BRAKE ROTORS FOR SALE", "BRAKE ROTORS FOR SALE")


@pytest.mark.skipif(not NEWSGROUPS.is_dir(), reason="shared newsgroups sample not present")
def test_every_newsgroups_message_loads_as_mail():
    files = list(iter_files(NEWSGROUPS))
    assert len(files) > 1000
    for path in files:
        (document,) = load_file(path)
        assert document.metadata["format"] == "email" and document.title, path


def test_byte_order_marks_are_honoured(tmp_path):
    (tmp_path / "bom8.txt").write_bytes(b"\xef\xbb\xbfUTF-8 with BOM \xe2\x9c\x93\n")
    (tmp_path / "bom16.txt").write_bytes("UTF-16 text ✓\n".encode("utf-16"))
    assert load_file(tmp_path / "bom8.txt")[0].text == "UTF-8 with BOM ✓"
    (utf16,) = load_file(tmp_path / "bom16.txt")
    assert utf16.text == "UTF-16 text ✓" and utf16.metadata["encoding"] == "utf-16"


def test_registry_lists_known_loaders_for_an_unknown_name():
    assert get_loader("pdf").extensions == (".pdf",)
    with pytest.raises(InvalidInput, match=r"unknown loader 'odt'.*docx.*pdf"):
        get_loader("odt")
    assert {".txt", ".md", ".rst", ".html", ".htm", ".pdf", ".docx", ".csv", ".jsonl"} <= (
        SUPPORTED_EXTENSIONS
    )


# --- bad files --------------------------------------------------------------------------------

BAD_EXPECTED = {
    "truncated.pdf": (LoaderError, "truncated or corrupt"),
    "encrypted.pdf": (LoaderError, "encrypted PDF"),
    "scanned.pdf": (LoaderError, "no extractable text (scanned?)"),
    "fake.pdf": (LoaderError, "cannot read PDF"),
    "bomb.docx": (LoaderError, "zip bomb suspected"),
    "lying-bomb.docx": (LoaderError, "declares 5,000 bytes but unpacks to more"),
    "junk.html": (UnsupportedFile, "binary data in a .html file"),
    "notazip.docx": (LoaderError, "not a valid .docx file"),
    "huge.txt": (LoaderError, "KB_MAX_FILE_BYTES"),
    "junk.txt": (UnsupportedFile, "binary data in a .txt file"),
    "blob": (UnsupportedFile, "binary data"),
    "picture.png": (UnsupportedFile, "unsupported file type .png"),
    "empty.txt": (LoaderError, "empty file"),
    "blank.md": (LoaderError, "empty file"),
    "broken.jsonl": (LoaderError, "no usable records"),
}


@pytest.fixture(scope="module")
def bad_loaded(bad) -> dict:
    """Each yielded bad-corpus file loaded once (max_bytes below huge.txt): documents or error."""
    root, _ = bad
    results: dict = {}
    for path in iter_files(root):
        try:
            results[path.relative_to(root).as_posix()] = load_file(path, max_bytes=50 * MiB)
        except LoaderError as exc:
            results[path.relative_to(root).as_posix()] = exc
    return results


@pytest.mark.parametrize("name", sorted(BAD_EXPECTED))
def test_bad_file_raises_a_named_error(bad, bad_loaded, name):
    root, _ = bad
    error, fragment = BAD_EXPECTED[name]
    raised = bad_loaded[name]
    assert type(raised) is error
    assert fragment in str(raised)
    assert str(root / name) in str(raised)  # names the bad file


def test_bad_corpus_outcomes_match_its_descriptions(bad, bad_loaded):
    _, corpus = bad
    for name, outcome in corpus.items():
        expected = outcome.split(":", 1)[0]
        if expected == "not yielded":
            assert name not in bad_loaded
        elif expected == "loads":
            assert isinstance(bad_loaded[name], list) and bad_loaded[name], name
        else:
            assert type(bad_loaded[name]).__name__ == expected, name


def test_huge_file_is_rejected_by_size_without_reading_it(bad):
    root, _ = bad
    path = root / "huge.txt"
    assert path.stat().st_size == HUGE_BYTES
    tracemalloc.start()
    try:
        with pytest.raises(LoaderError, match=r"104,857,600 bytes, over the 1,048,576-byte limit"):
            load_file(path, max_bytes=MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MiB


def test_big_text_file_within_the_limit_loads(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("line of text\n" * 200_000)  # 2.6 MB
    (document,) = load_file(path, max_bytes=3 * MiB)
    assert document.text.count("\n") == 199_999
    with pytest.raises(LoaderError, match="KB_MAX_FILE_BYTES"):
        load_file(path, max_bytes=2 * MiB)


def test_zip_bomb_is_refused_without_inflating(bad):
    root, _ = bad
    path = root / "bomb.docx"
    assert path.stat().st_size < MiB
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(LoaderError, match=r"'word/document.xml' unpacks .*ratio 1,0\d\d:1"):
            load_file(path)  # default limit: 128 MiB unpacked is allowed, the ratio is not
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1 and peak < 4 * MiB
    with pytest.raises(LoaderError, match=r"unpacks to 134,217,\d+ bytes"):
        load_file(path, max_bytes=MiB)  # a low limit trips the total-size check first


def test_zip_bomb_with_lying_headers_is_refused_without_inflating(bad):
    root, _ = bad
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(LoaderError, match=r"'word/document.xml' declares 5,000 bytes"):
            load_file(root / "lying-bomb.docx")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1 and peak < 4 * MiB  # python-docx would inflate 64 MiB


def test_long_repetitive_docx_is_not_mistaken_for_a_bomb(tmp_path):
    import docx

    document = docx.Document()
    document.add_heading("Repetitive Report", level=1)
    for i in range(1500):  # boilerplate rows compress past 100:1, yet this is a real document
        document.add_paragraph(f"Row {i}: " + "the same boilerplate sentence again. " * 20)
    document.save(tmp_path / "report.docx")
    started = time.perf_counter()
    (loaded,) = load_file(tmp_path / "report.docx")
    assert time.perf_counter() - started < 5  # reading styles per paragraph took ~3 ms each
    assert loaded.title == "Repetitive Report" and "Row 1499:" in loaded.text


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("Straße résumé\n", "latin-1"),  # charset-normalizer alone says cp1006
        ("Café crème brûlée, déjà vu.\n" * 20_000, "latin-1"),  # alone: cp1257
        ("“Quoted” — 5 € and ¿qué?\n", "cp1252"),
        ("Привет, как дела? Это тест кодировки.\n", "cp1251"),
        ("Zażółć gęślą jaźń. Łódź i Kraków.\n", "cp1250"),
        ("Ωmega ελληνικά κείμενο για δοκιμή\n", "cp1253"),
    ],
)
def test_legacy_encodings_are_guessed_right(tmp_path, text, encoding):
    path = tmp_path / "legacy.txt"
    path.write_bytes(text.encode(encoding))
    (document,) = load_file(path)
    assert document.text == text.strip()


def test_undeclared_8bit_mail_headers_are_decoded(tmp_path):
    path = tmp_path / "102030"
    path.write_bytes(
        b"From: Jos\xe9 <jose@example.org>\nNewsgroups: rec.food\n"
        b"Subject: Caf\xe9 cr\xe8me\n\nBody with caf\xe9.\n"
    )
    (document,) = load_file(path)
    assert document.title == "Café crème"
    assert document.metadata["from"] == "José <jose@example.org>"
    assert document.text == "Body with café."


def test_latin1_text_is_decoded_and_its_encoding_recorded(bad_loaded):
    (document,) = bad_loaded["latin1.txt"]
    assert document.text.startswith("Café crème brûlée à la française")
    assert "garçon, où est la forêt?" in document.text
    assert document.metadata["encoding"] in ("cp1252", "latin_1", "iso8859_15")


def test_deeply_nested_html_keeps_all_its_text(bad_loaded):
    (document,) = bad_loaded["deep.html"]
    assert document.text == "Shallow start.\n\nThe deepest sentence survives.\n\nShallow end."
    assert document.title == "Deep"


def test_html_walk_needs_no_recursion():
    markup = "<title>T</title><p>start</p>" + "<div>" * 5000 + "deep" + "</div>" * 5000
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 50)  # far below the nesting depth
    try:
        parsed = html_sections(markup + "<h2>End</h2><p>end</p>")
    finally:
        sys.setrecursionlimit(old_limit)
    assert [s.heading for s in parsed.sections] == [None, "End"]
    assert "start" in parsed.sections[0].text and "deep" in parsed.sections[0].text


def test_odd_file_names_load(bad):
    root, corpus = bad
    odd = [name for name, outcome in corpus.items() if "odd file name" in outcome]
    assert {"with spaces.txt", "ünïcødé 日本.txt", "-leading-dash.txt"} <= set(odd)
    for name in odd:
        (document,) = load_file(root / name)
        assert document.text == f"A file named {name!r} loads like any other."


def test_special_and_missing_paths(tmp_path):
    with pytest.raises(UnsupportedFile, match="not a regular file"):
        load_file(tmp_path)
    with pytest.raises(LoaderError, match=r"cannot read .*missing\.txt.*check the path"):
        load_file(tmp_path / "missing.txt")
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    with pytest.raises(UnsupportedFile, match="not a regular file"):
        load_file(fifo)  # must not block reading the pipe


# --- folder walk ------------------------------------------------------------------------------


def test_iter_files_is_sorted_and_complete(good):
    root, corpus = good
    files = list(iter_files(root))
    assert [p.name for p in files] == sorted(corpus)
    assert files == list(iter_files(root))


def test_iter_files_skips_hidden_specials_and_outside_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("outside the root")
    root = tmp_path / "root"
    (root / "b" / "c").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    (root / ".env").write_text("KEY=1")
    (root / "a.txt").write_text("a")
    (root / "b" / "c" / "deep.md").write_text("deep")
    (root / "b" / "z.bin").write_bytes(b"\x00\x01")
    (root / "link-out").symlink_to(outside, target_is_directory=True)
    (root / "file-out.txt").symlink_to(outside / "secret.txt")
    (root / "dangling.txt").symlink_to(root / "nothing.txt")
    (root / "self").symlink_to(root / "self")
    (root / "alias.txt").symlink_to(root / "a.txt")  # same file again: yielded once
    (root / "b" / "up").symlink_to("..", target_is_directory=True)
    os.mkfifo(root / "pipe")
    names = [p.relative_to(root).as_posix() for p in iter_files(root)]
    assert names == ["a.txt", "b/c/deep.md", "b/z.bin"]


def test_iter_files_survives_the_symlink_loop(bad):
    root, _ = bad
    files = [p.relative_to(root).as_posix() for p in iter_files(root)]
    assert files.count("loop/inside.txt") == 1
    assert not any(name.startswith("loop/up") for name in files)
    assert files == sorted(files, key=lambda n: n.split("/"))


def test_iter_files_on_a_file_or_a_missing_root(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("x")
    assert list(iter_files(path)) == [path]
    with pytest.raises(InvalidInput, match="no such folder"):
        list(iter_files(tmp_path / "nope"))

"""Fixture corpora for loader, ingest and reliability tests: one good file per format, many bad.

`make_good_corpus(dir)` returns {name: facts}; `make_bad_corpus(dir)` returns {name: outcome},
where each outcome string starts with what should happen to the file:
"LoaderError:", "UnsupportedFile:", "loads:" (the loader copes) or "not yielded:" (iter_files
skips it). Names are relative to `dir` and use "/" for sub-folders.
"""

from __future__ import annotations

import csv
import io
import json
import struct
import zipfile
from pathlib import Path
from typing import Any

HUGE_BYTES = 100 * 1024 * 1024
BOMB_BYTES = 128 * 1024 * 1024  # deflates ~1000:1 to ~130 KB, written in about half a second
LYING_BOMB_BYTES = 64 * 1024 * 1024
LYING_BOMB_DECLARED = 5_000  # what the lying headers claim word/document.xml unpacks to
DEEP_HTML_LEVELS = 100_000

# distinctive phrases: each appears in exactly one good file
PHRASES = {
    "notes.txt": "the periwinkle lighthouse keeper counts seventeen herons every dawn",
    "guide.md": "the saffron compiler folds marmalade loops into a single pass",
    "manual.rst": "the quokka telescope calibrates against moonlit basalt",
    "page.html": "ferries to obsidian harbor leave at quarter past nine",
    "report.pdf": "tangerine glacier surveys measure the blue crevasse",
    "report.pdf#2": "walrus accountants audit the tangerine glacier ledger",
    "memo.docx": "marzipan robots polish the copper kettles on thursdays",
    "memo.docx#table": "brass sprocket costs eleven florins",
    "54321": "velvet badgers migrate across the cobalt meadow each spring",
    "catalog.csv": "emerald kettles whistle in minor keys",
    "records.jsonl": "silver pelicans recite the tide tables at noon",
    "sheet.xlsx": "amber tortoises sort the library cards by colour",
}


def make_good_corpus(dir: Path) -> dict[str, dict[str, Any]]:
    """Write one valid file per supported format; return name -> expected facts.

    Facts: "phrase" (text found in the file), "title", "documents" (how many the loader
    returns), "format" (loader name), and where relevant "pages" ({page: phrase}),
    "headings" (section headings in order, None for text before the first heading),
    "absent" (strings that must not reach the text) and "record" (the "#row=N"/"#line=N"
    suffix of the document holding the phrase). For record formats "title" is that document's.
    """
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    facts: dict[str, dict[str, Any]] = {}

    (dir / "notes.txt").write_text(
        f"Field notes\n\nOn the north cape {PHRASES['notes.txt']}.\n\n\n\n\nThe end.\n",
        encoding="utf-8",
    )
    facts["notes.txt"] = {"format": "text", "title": None, "documents": 1}

    (dir / "guide.md").write_text(
        "Preface before any heading.\n\n"
        "# Saffron Compiler Guide\n\nAn introduction.\n\n"
        f"## Installation\n\nRun the installer; {PHRASES['guide.md']}.\n\n"
        "```sh\n# not a heading, a shell comment\nmake install\n```\n\n"
        "## Usage\n\nCall `saffron build`.\n\n#### Flags\n\nFlags stay in the Usage section.\n",
        encoding="utf-8",
    )
    facts["guide.md"] = {
        "format": "markdown",
        "title": "Saffron Compiler Guide",
        "documents": 1,
        "headings": [None, "Saffron Compiler Guide", "Installation", "Usage"],
    }

    (dir / "manual.rst").write_text(
        "=======================\nQuokka Telescope Manual\n=======================\n\n"
        "Welcome to the manual.\n\n"
        f"Calibration\n-----------\n\nAt dusk {PHRASES['manual.rst']}.\n\n"
        "Storage\n-------\n\nKeep it dry.\n",
        encoding="utf-8",
    )
    facts["manual.rst"] = {
        "format": "rst",
        "title": "Quokka Telescope Manual",
        "documents": 1,
        "headings": ["Quokka Telescope Manual", "Calibration", "Storage"],
    }

    (dir / "page.html").write_text(
        "<!DOCTYPE html><html><head><title>Obsidian Harbor Timetable</title>"
        "<style>body { color: STYLESECRET; }</style>"
        "<script>var token = 'SCRIPTSECRET';</script></head><body>"
        "<header>HEADERSECRET banner</header><nav><a href='/'>NAVSECRET home</a></nav>"
        "<h1>Timetable</h1><p>Welcome aboard.</p><!-- COMMENTSECRET -->"
        f"<h2>Morning ferries</h2><p>The {PHRASES['page.html'].replace('harbor', '<b>harbor</b>')}.</p>"
        "<table><tr><th>Boat</th><th>Time</th></tr><tr><td>Gull</td><td>09:15</td></tr></table>"
        "<aside>ASIDESECRET ad</aside><noscript>NOSCRIPTSECRET</noscript>"
        "<div hidden>HIDDENSECRET</div>"
        "<h2>Evening ferries</h2><p>None on Sundays.</p>"
        "<footer>FOOTERSECRET (c) 2024</footer></body></html>",
        encoding="utf-8",
    )
    facts["page.html"] = {
        "format": "html",
        "title": "Obsidian Harbor Timetable",
        "documents": 1,
        "headings": ["Timetable", "Morning ferries", "Evening ferries"],
        "absent": [
            f"{part}SECRET"
            for part in ("STYLE", "SCRIPT", "HEADER", "NAV", "COMMENT", "ASIDE", "NOSCRIPT")
        ]
        + ["HIDDENSECRET", "FOOTERSECRET"],
    }

    (dir / "report.pdf").write_bytes(
        minimal_pdf(
            [
                ["Tangerine Glacier Report", f"Our {PHRASES['report.pdf']}."],
                [f"Appendix: {PHRASES['report.pdf#2']}."],
            ],
            title="Tangerine Glacier Report",
        )
    )
    facts["report.pdf"] = {
        "format": "pdf",
        "title": "Tangerine Glacier Report",
        "documents": 1,
        "pages": {1: PHRASES["report.pdf"], 2: PHRASES["report.pdf#2"]},
    }

    _write_docx(dir / "memo.docx")
    facts["memo.docx"] = {
        "format": "docx",
        "title": "Marzipan Robotics Memo",
        "documents": 1,
        "headings": [None, "Workshop", "Budget"],
        "table": PHRASES["memo.docx#table"],
    }

    (dir / "54321").write_text(
        "From: Ada Lovelace <ada@example.org>\n"
        "Newsgroups: rec.animals.badgers\n"
        "Subject: Velvet Badger Migration\n"
        "Date: Tue, 6 Apr 1993 10:00:00 GMT\n"
        "Message-ID: <velvet-1@example.org>\n"
        "Lines: 3\n\n"
        f"Dear all,\n\nI saw that {PHRASES['54321']}.\n\n-- \nAda\n",
        encoding="utf-8",
    )
    facts["54321"] = {
        "format": "email",
        "title": "Velvet Badger Migration",
        "documents": 1,
        "metadata": {"from": "Ada Lovelace <ada@example.org>", "newsgroups": "rec.animals.badgers"},
    }

    with (dir / "catalog.csv").open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "title", "description"])
        writer.writerow(["1", "Copper pot", "Heavy, with a lid."])
        writer.writerow(["2", "Emerald kettle", f"Our {PHRASES['catalog.csv']}, they say."])
        writer.writerow(["3", "Tin cup", "Light\nand cheap."])
    facts["catalog.csv"] = {
        "format": "csv",
        "title": "Emerald kettle",
        "documents": 3,
        "record": "#row=2",
    }

    records = [
        {"id": 1, "title": "Gulls", "text": "Gulls steal chips.", "author": "Sam"},
        {"id": 2, "title": "Pelican Recital", "text": f"Hear how {PHRASES['records.jsonl']}."},
        {"id": 3, "content": "Terns fly far.", "tags": ["birds"]},
    ]
    (dir / "records.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records), encoding="utf-8"
    )
    facts["records.jsonl"] = {
        "format": "jsonl",
        "title": "Pelican Recital",
        "documents": 3,
        "record": "#line=2",
    }

    _write_xlsx(dir / "sheet.xlsx")
    facts["sheet.xlsx"] = {
        "format": "xlsx",
        "title": "Tortoise duties",
        "documents": 2,
        "record": "#sheet=Duties&row=2",
    }

    for name, info in facts.items():
        info.setdefault("phrase", PHRASES[name])
    return facts


def make_bad_corpus(dir: Path, *, huge_bytes: int = HUGE_BYTES) -> dict[str, str]:
    """Write broken, hostile and odd files; return name -> "<outcome>: <what is wrong>"."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    bad: dict[str, str] = {}
    good_pdf = minimal_pdf([["This PDF was fine until it was cut short."]] * 2)

    (dir / "truncated.pdf").write_bytes(good_pdf[: len(good_pdf) * 6 // 10])
    bad["truncated.pdf"] = "LoaderError: PDF cut off at 60%, no xref table or trailer"

    (dir / "encrypted.pdf").write_bytes(encrypted_pdf(good_pdf, user_password="kb-secret"))
    bad["encrypted.pdf"] = "LoaderError: PDF encrypted with a user password"

    (dir / "scanned.pdf").write_bytes(minimal_pdf([[]], drawing="72 72 200 200 re f"))
    bad["scanned.pdf"] = "LoaderError: PDF page with a drawing but no text layer"

    (dir / "fake.pdf").write_text("Just text wearing a .pdf extension.\n")
    bad["fake.pdf"] = "LoaderError: plain text with a .pdf extension"

    write_zip_bomb(dir / "bomb.docx", BOMB_BYTES)
    bad["bomb.docx"] = f"LoaderError: zip bomb posing as .docx ({BOMB_BYTES:,} zero bytes deflated)"

    write_zip_bomb(dir / "lying-bomb.docx", LYING_BOMB_BYTES, declared=LYING_BOMB_DECLARED)
    bad["lying-bomb.docx"] = (
        f"LoaderError: zip bomb posing as .docx whose headers declare {LYING_BOMB_DECLARED:,} "
        f"bytes for {LYING_BOMB_BYTES:,} zero bytes, so only inflating it shows the size"
    )

    (dir / "notazip.docx").write_text("Not a zip archive at all.\n")
    bad["notazip.docx"] = "LoaderError: plain text with a .docx extension"

    write_huge_text(dir / "huge.txt", huge_bytes)
    bad["huge.txt"] = (
        f"LoaderError: {huge_bytes:,}-byte text file, rejected by size when max_bytes "
        "(KB_MAX_FILE_BYTES) is set below that; tests set it lower"
    )

    (dir / "junk.txt").write_bytes(bytes(range(256)) * 64)
    bad["junk.txt"] = "UnsupportedFile: binary data with a .txt extension"

    (dir / "junk.html").write_bytes(bytes(range(256)) * 64)
    bad["junk.html"] = "UnsupportedFile: binary data with a .html extension"

    (dir / "blob").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(4096))
    bad["blob"] = "UnsupportedFile: binary data without an extension"

    (dir / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))
    bad["picture.png"] = "UnsupportedFile: binary file with an unsupported extension"

    (dir / "latin1.txt").write_bytes(LATIN1_TEXT.encode("latin-1"))
    bad["latin1.txt"] = "loads: latin-1 bytes that are not valid UTF-8, decoded by the fallback"

    (dir / "deep.html").write_text(deep_html(DEEP_HTML_LEVELS), encoding="utf-8")
    bad["deep.html"] = f"loads: {DEEP_HTML_LEVELS:,} nested <div>s, read without RecursionError"

    (dir / "empty.txt").write_bytes(b"")
    bad["empty.txt"] = "LoaderError: empty file"

    (dir / "blank.md").write_text("  \n\n\t\n")
    bad["blank.md"] = "LoaderError: empty file (whitespace only)"

    (dir / "broken.jsonl").write_text('{"text": "unterminated\n[1, 2]\nnot json\n')
    bad["broken.jsonl"] = "LoaderError: JSONL where no line is a usable record"

    (dir / "loop").mkdir(exist_ok=True)
    (dir / "loop" / "inside.txt").write_text("A file beside a symlink loop.\n")
    bad["loop/inside.txt"] = "loads: a file in a folder holding a symlink loop, yielded once"
    link = dir / "loop" / "up"
    if not link.is_symlink():
        link.symlink_to("..", target_is_directory=True)
    bad["loop/up"] = "not yielded: directory symlink to its own parent (a loop)"

    for name in ("with spaces.txt", "ünïcødé 日本.txt", "-leading-dash.txt", "new\nline.txt"):
        try:
            (dir / name).write_text(f"A file named {name!r} loads like any other.\n")
        except OSError:  # a filesystem that refuses the name
            continue
        bad[name] = "loads: odd file name (spaces, unicode, leading dash or newline)"
    return bad


LATIN1_TEXT = (
    "Café crème brûlée à la française, déjà vu.\n"
    "Les élèves ont étudié l'été dernier à Montréal; garçon, où est la forêt?\n"
)


def minimal_pdf(
    pages: list[list[str]], *, title: str | None = None, drawing: str | None = None
) -> bytes:
    """A hand-written PDF with one Helvetica text line per string and a correct xref table."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, lines in enumerate(pages):
        shown = " ".join(f"({_pdf_string(line)}) Tj T*" for line in lines)
        content = (f"BT /F1 12 Tf 72 720 Td 14 TL {shown} ET " if lines else "") + (drawing or "")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources "
            f"<< /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        body = content.encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(body), body))
    info = ""
    if title:
        objects.append(f"<< /Title ({_pdf_string(title)}) >>".encode("latin-1"))
        info = f" /Info {len(objects)} 0 R"
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, obj))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.writelines(b"%010d 00000 n \n" % offset for offset in offsets)
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{info} >>\n".encode())
    out.write(b"startxref\n%d\n%%%%EOF\n" % xref)
    return out.getvalue()


def _pdf_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def encrypted_pdf(pdf: bytes, *, user_password: str, algorithm: str = "RC4-128") -> bytes:
    """`pdf` encrypted by pypdf; RC4 needs no crypto package, AES needs `cryptography`."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password=user_password, owner_password="kb-owner", algorithm=algorithm)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def write_zip_bomb(path: Path, size: int, *, declared: int | None = None) -> None:
    """A .docx-shaped zip whose document.xml holds `size` zero bytes, streamed in 1 MiB.

    With `declared`, both zip headers claim that many unpacked bytes instead: a bomb that
    checks of the declared sizes alone let through.
    """
    chunk = bytes(1024 * 1024)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        with archive.open("word/document.xml", "w", force_zip64=declared is None) as member:
            for _ in range(size // len(chunk)):
                member.write(chunk)
    data = buffer.getvalue()
    if declared is not None:  # rewrite the size field of the local and the central header
        real, fake = struct.pack("<I", size), struct.pack("<I", declared)
        assert data.count(real) == 2, "the size must appear once in each header"
        data = data.replace(real, fake)
    path.write_bytes(data)


def write_huge_text(path: Path, size: int) -> None:
    """`size` bytes of text lines, written 1 MiB at a time."""
    line = b"All work and no play makes a very large text file.\n"
    chunk = line * (1024 * 1024 // len(line))
    with path.open("wb") as file:
        written = 0
        while written < size:
            piece = chunk[: size - written]
            file.write(piece)
            written += len(piece)


def deep_html(levels: int) -> str:
    return (
        "<html><head><title>Deep</title></head><body><p>Shallow start.</p>"
        + "<div>" * levels
        + "The deepest sentence survives."
        + "</div>" * levels
        + "<p>Shallow end.</p></body></html>"
    )


def _write_docx(path: Path) -> None:
    import docx

    document = docx.Document()
    document.add_heading("Marzipan Robotics Memo", level=0)  # the "Title" style
    document.add_paragraph("Circulated to the workshop staff.")
    document.add_heading("Workshop", level=1)
    document.add_paragraph(f"Every week {PHRASES['memo.docx']}.")
    document.add_heading("Budget", level=1)
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Part", "Note"
    table.cell(1, 0).text = "Sprocket"
    table.cell(1, 1).text = f"A {PHRASES['memo.docx#table']}."
    document.save(path)


def _write_xlsx(path: Path) -> None:
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "Duties"
    sheet.append(["title", "duty", "hours"])
    sheet.append(["Gull duties", "Gulls guard the pier.", 3])
    sheet.append(["Tortoise duties", f"The {PHRASES['sheet.xlsx']}.", 5])
    workbook.save(path)

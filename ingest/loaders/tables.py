"""Record-per-document formats: CSV/TSV rows, JSONL records and spreadsheet rows."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ingest.loaders.base import Loader, LoadOptions, make_document
from ingest.loaders.text import decode_text_file
from ingest.loaders.zipguard import check_zip
from kb.errors import LoaderError
from kb.types import Document, Section

log = logging.getLogger(__name__)

JSONL_TEXT_FIELDS = ("text", "content", "body")
_SNIFF_CHARS = 65536
_SCALARS = (str, int, float, bool, type(None))


class CsvLoader(Loader):
    """One document per data row, source "path#row=N" (N counts data rows from 1)."""

    name = "csv"
    extensions = (".csv", ".tsv")

    def load(self, path: Path, data: bytes, options: LoadOptions) -> list[Document]:
        text, encoding = decode_text_file(path, data)
        text = text.replace("\x00", "")
        # the default 128 KiB field limit would reject long text cells; the file is bounded anyway
        csv.field_size_limit(max(csv.field_size_limit(), options.max_bytes))
        reader = csv.reader(io.StringIO(text, newline=""), dialect=_dialect(path, text))
        records = _csv_records(path, reader)
        header = next(records, None)
        if header is None:
            raise LoaderError(f"empty file: {path} has no CSV rows; add rows or remove it")
        return rows_to_documents(
            path,
            [str(name) for name in header],
            records,
            text_field=options.csv_text_field,
            source=lambda n: f"{path}#row={n}",
            metadata={"format": self.name, "encoding": encoding},
        )


def _dialect(path: Path, text: str) -> type[csv.Dialect] | csv.Dialect:
    if path.suffix.lower() == ".tsv":
        return csv.excel_tab
    try:
        return csv.Sniffer().sniff(text[:_SNIFF_CHARS], delimiters=",;\t|")
    except csv.Error:
        return csv.excel


def _csv_records(path: Path, reader) -> Iterable[list[str]]:
    try:
        for record in reader:
            if any(value.strip() for value in record):
                yield record
    except csv.Error as exc:
        raise LoaderError(
            f"malformed CSV at line {reader.line_num} of {path}: {exc}; fix the quoting there"
        ) from exc


class XlsxLoader(Loader):
    """One document per data row of each sheet, source "path#sheet=NAME&row=N"."""

    name = "xlsx"
    extensions = (".xlsx",)

    def load(self, path: Path, data: bytes, options: LoadOptions) -> list[Document]:
        check_zip(path, data, max_bytes=options.max_bytes, kind=".xlsx")
        import openpyxl

        documents: list[Document] = []
        try:
            workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        except Exception as exc:  # openpyxl reports damage with many exception types
            raise LoaderError(
                f"cannot read .xlsx {path}: {type(exc).__name__}: {exc}; re-save it as .xlsx"
            ) from exc
        try:
            for sheet in workbook.worksheets:
                rows = (
                    ["" if v is None else str(v) for v in row]
                    for row in sheet.iter_rows(values_only=True)
                    if any(v is not None and str(v).strip() for v in row)
                )
                header = next(rows, None)
                if header is None:
                    continue
                documents += rows_to_documents(
                    path,
                    header,
                    rows,
                    text_field=options.csv_text_field,
                    source=lambda n, s=sheet.title: f"{path}#sheet={s}&row={n}",
                    metadata={"format": self.name, "sheet": sheet.title},
                    allow_empty=True,
                )
        finally:
            workbook.close()
        if not documents:
            raise LoaderError(f"no rows with text in {path}; add rows under a header row")
        return documents


def rows_to_documents(
    path: Path,
    header: list[str],
    rows: Iterable[list[str]],
    *,
    text_field: str | None,
    source,
    metadata: dict[str, Any],
    allow_empty: bool = False,
) -> list[Document]:
    """Rows to documents: the text column if named, else every column as "name: value" lines."""
    header = [name.strip() or f"column{i + 1}" for i, name in enumerate(header)]
    text_index = _column(path, header, text_field) if text_field else None
    title_index = next((i for i, n in enumerate(header) if n.lower() == "title"), None)
    documents = []
    for number, row in enumerate(rows, start=1):
        names = header + [f"column{i + 1}" for i in range(len(header), len(row))]
        values = [value.strip() for value in row]
        if text_index is None:
            text = "\n".join(f"{n}: {v}" for n, v in zip(names, values, strict=False) if v)
            extra = {}
        else:
            text = values[text_index] if text_index < len(values) else ""
            extra = {n: v for i, (n, v) in enumerate(zip(names, values, strict=False)) if v}
            extra.pop(names[text_index], None)
        title = (
            values[title_index] if title_index is not None and title_index < len(values) else None
        )
        document = make_document(
            source(number),
            [Section(text)],
            title=title,
            metadata={**extra, **metadata, "row": number},
        )
        if document is not None:
            documents.append(document)
    if not documents and not allow_empty:
        column = f"column {text_field!r}" if text_field else "any column"
        raise LoaderError(
            f"no rows with text in {column} of {path}; add rows or pick another column"
        )
    return documents


def _column(path: Path, header: list[str], field: str) -> int:
    lowered = [name.lower() for name in header]
    for candidates, wanted in ((header, field), (lowered, field.lower())):
        if wanted in candidates:
            return candidates.index(wanted)
    raise LoaderError(
        f"no column {field!r} in {path}; its columns are: {', '.join(header)}; set the CSV text "
        "field to one of them, or leave it unset to index every column"
    )


class JsonlLoader(Loader):
    """One document per JSON object line, source "path#line=N"; bad lines are skipped."""

    name = "jsonl"
    extensions = (".jsonl", ".ndjson")

    def load(self, path: Path, data: bytes, options: LoadOptions) -> list[Document]:
        text, encoding = decode_text_file(path, data)
        fields = (options.jsonl_text_field,) if options.jsonl_text_field else JSONL_TEXT_FIELDS
        documents: list[Document] = []
        problems = _Problems()
        # split on "\n" only: str.splitlines would also split at U+2028 inside JSON strings
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                problems.append(f"line {number}: invalid JSON ({exc})")
                continue
            if not isinstance(record, dict):
                problems.append(f"line {number}: a JSON {type(record).__name__}, not an object")
                continue
            field = next((f for f in fields if _text_value(record.get(f))), None)
            if field is None:
                problems.append(f"line {number}: no text in {' / '.join(map(repr, fields))}")
                continue
            title = record.get("title")
            metadata = {
                k: v
                for k, v in record.items()
                if k not in (field, "title") and isinstance(v, _SCALARS)
            }
            document = make_document(
                f"{path}#line={number}",
                [Section(_text_value(record[field]))],
                title=title if isinstance(title, str) else None,
                metadata={**metadata, "format": self.name, "encoding": encoding, "line": number},
            )
            if document is None:
                problems.append(f"line {number}: only whitespace in {field!r}")
                continue
            documents.append(document)
        if not documents:
            raise LoaderError(
                f"no usable records in {path}: {problems}; each line must be a JSON object with the "
                f"text in {' / '.join(map(repr, fields))}, or set the JSONL text field to the "
                "field that holds it"
            )
        if problems.count:
            log.warning("%s: skipped %d bad line(s): %s", path, problems.count, problems)
        return documents


class _Problems:
    """Counts bad lines but keeps only the first few messages, so memory stays bounded."""

    KEPT = 3

    def __init__(self) -> None:
        self.count = 0
        self.examples: list[str] = []

    def append(self, message: str) -> None:
        self.count += 1
        if len(self.examples) < self.KEPT:
            self.examples.append(message)

    def __str__(self) -> str:
        more = f"; ... ({self.count} bad lines in all)" if self.count > self.KEPT else ""
        return "; ".join(self.examples) + more


def _text_value(value: Any) -> str:
    """A string, or a list of strings joined by blank lines; anything else counts as no text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return "\n\n".join(value)
    return ""

"""Readers for fine-tuning sources: tables (CSV, TSV, XLSX, JSON, JSONL) and labelled folders."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kb.errors import InvalidInput
from kb.finetune.mail import DEFAULT_KEPT_HEADERS, clean_message, message_headers

TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".xlsx", ".xlsm", ".json", ".jsonl")
MAX_EXAMPLE_FILE_BYTES = 1_000_000  # a classification example is cut to a token budget anyway


@dataclass
class Skipped:
    """An input item that produced no example, and why."""

    item: str
    reason: str
    number: int | None = None  # a table's row, line or item number, as `Row.number` counts

    def to_dict(self) -> dict[str, str]:
        return {"item": self.item, "reason": self.reason}


@dataclass
class Row:
    number: int  # spreadsheet row (the header is row 1), JSONL line, or JSON list position
    values: dict[str, Any]


@dataclass
class Table:
    path: Path
    columns: list[str]
    rows: list[Row]
    unit: str  # what `Row.number` counts: "row", "line" or "item"
    skipped: list[Skipped] = field(default_factory=list)
    sheet: str | None = None  # a workbook's: the sheet read

    def where(self, number: int) -> str:
        sheet = f" (sheet {self.sheet})" if self.sheet else ""
        return f"{self.unit} {number} of {self.path.name}{sheet}"

    def skip(self, number: int, reason: str) -> Skipped:
        return Skipped(self.where(number), reason, number)


@dataclass
class LabelledText:
    label: str
    path: Path
    text: str
    headers: dict[str, str] = field(default_factory=dict)  # a message's, by lower-case name


def read_table(path: Path) -> Table:
    """Read a table-like file into rows of cleaned cell values; blank rows are dropped."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise InvalidInput(f"no file at {str(path)!r}: check the path")
    if suffix in (".csv", ".tsv", ".tab"):
        return _read_delimited(path, "\t" if suffix in (".tsv", ".tab") else None)
    if suffix in (".xlsx", ".xlsm"):
        return _read_xlsx(path)
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    raise InvalidInput(
        f"cannot read {path.name!r} as training data: use one of {', '.join(TABLE_SUFFIXES)}, "
        "or a folder with one sub-folder per label"
    )


def _read_text(path: Path, limit: int | None = None) -> str:
    with path.open("rb") as f:
        raw = f.read(limit) if limit else f.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_text_file(path: Path) -> str:
    """A text file as read for a classification example: utf-8 (latin-1 as a fallback), cut
    to MAX_EXAMPLE_FILE_BYTES; a binary file is an error."""
    text = _read_text(path, MAX_EXAMPLE_FILE_BYTES)
    if "\x00" in text[:8192]:
        raise InvalidInput(f"{str(path)!r} is a binary file: pass text files")
    return text


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    return value  # lists and objects (e.g. chat `messages`) stay structured


def _header(cells: list[Any]) -> list[str]:
    names: list[str] = []
    for i, cell in enumerate(cells):
        name = str(cell).strip() if cell not in (None, "") else f"column_{i + 1}"
        base, n = name, 2
        while name in names:
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    return names


def _rows_from_cells(path: Path, records: list[tuple[int, list[Any]]], unit: str) -> Table:
    records = [(n, cells) for n, cells in records if any(_cell(c) != "" for c in cells)]
    if not records:
        raise InvalidInput(
            f"{path.name!r} has no header row and no data: add a header row and rows"
        )
    _, header_cells = records[0]
    columns = _header(list(header_cells))
    rows = []
    for number, cells in records[1:]:
        values = {col: _cell(cells[i]) if i < len(cells) else "" for i, col in enumerate(columns)}
        rows.append(Row(number, values))
    return Table(path, columns, rows, unit)


def _read_delimited(path: Path, delimiter: str | None) -> Table:
    text = _read_text(path)
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text[:65536], delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        records = [(i, cells) for i, cells in enumerate(reader, start=1)]
    except csv.Error as exc:
        raise InvalidInput(
            f"{path.name!r} is not valid CSV near line {reader.line_num} ({exc}): "
            "check the quoting on that line"
        ) from exc
    return _rows_from_cells(path, records, "row")


def _read_xlsx(path: Path) -> Table:
    from openpyxl import load_workbook

    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises several unrelated types for broken files
        raise InvalidInput(
            f"{path.name!r} could not be opened as an Excel workbook ({exc}): save it as .xlsx"
        ) from exc
    try:
        sheet = workbook.active
        # numbered as the sheet numbers them: iter_rows starts at row 1, blank rows included
        records = [(i, list(r)) for i, r in enumerate(sheet.iter_rows(values_only=True), start=1)]
        title = sheet.title
    finally:
        workbook.close()
    table = _rows_from_cells(path, records, "row")
    table.sheet = title
    return table


def _object_rows(path: Path, items: list[tuple[int, Any]], unit: str) -> Table:
    columns: dict[str, None] = {}
    table = Table(path, [], [], unit)
    for number, item in items:
        if not isinstance(item, dict):
            table.skipped.append(table.skip(number, f"not a JSON object: {str(item)[:60]!r}"))
            continue
        columns.update(dict.fromkeys(str(k) for k in item))
        table.rows.append(Row(number, {str(k): _cell(v) for k, v in item.items()}))
    table.columns = list(columns)
    return table


def _read_jsonl(path: Path) -> Table:
    items, bad = [], []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            bad.append((number, f"not valid JSON ({exc.msg})"))
    table = _object_rows(path, items, "line")
    table.skipped[:0] = [table.skip(number, reason) for number, reason in bad]
    return table


def _read_json(path: Path) -> Table:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"{path.name!r} is not valid JSON (line {exc.lineno}: {exc.msg}): fix the file, or "
            "save one object per line as .jsonl"
        ) from exc
    if not isinstance(data, list):
        raise InvalidInput(
            f"{path.name!r} holds a JSON {type(data).__name__}, not a list of objects: "
            'write it as [{"prompt": ..., "completion": ...}, ...] or as JSONL'
        )
    return _object_rows(path, list(enumerate(data, start=1)), "item")


def read_labelled_folder(
    folder: Path, keep_headers: tuple[str, ...] = DEFAULT_KEPT_HEADERS
) -> tuple[list[str], list[LabelledText], list[Skipped]]:
    """Read a folder whose sub-folders are labels, one file one example; bad files are skipped.

    A file that is a mail or news message keeps only the headers named in `keep_headers`.
    """
    if not folder.is_dir():
        raise InvalidInput(f"no folder at {str(folder)!r}: check the path")
    labels = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(labels) < 2:
        raise InvalidInput(
            f"folder {str(folder)!r} has {len(labels)} label sub-folder(s) {labels}: a "
            "classification folder needs one sub-folder per label and at least two labels"
        )
    items, skipped = [], []
    for label in labels:
        files = sorted(
            p
            for p in (folder / label).rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.parts[-1:])
        )
        for path in files:
            with path.open("rb") as f:
                head = f.read(8192)
            if b"\x00" in head:
                skipped.append(Skipped(str(path), "binary file"))
                continue
            raw = _read_text(path, MAX_EXAMPLE_FILE_BYTES)
            text = clean_message(raw, keep_headers)
            if not text:
                skipped.append(Skipped(str(path), "empty file"))
                continue
            items.append(LabelledText(label, path, text, message_headers(raw)))
    return labels, items, skipped

"""Load a BEIR-format data set (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) and turn its
corpus into Documents whose source is the BEIR doc id."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kb.errors import InvalidInput
from kb.types import Document, Section

#: how a corpus record's title and text become the document text
TitleMode = Literal["prepend", "omit"]
TITLE_MODES: tuple[str, ...] = ("prepend", "omit")


@dataclass(frozen=True)
class BeirDoc:
    title: str
    text: str


@dataclass
class BeirDataset:
    """A BEIR split: the whole corpus, the queries judged in the split, and their qrels."""

    name: str
    corpus: dict[str, BeirDoc]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def load_beir(path: Path | str, split: str = "test") -> BeirDataset:
    """Read a BEIR folder; queries are limited to those judged in qrels/<split>.tsv."""
    root = Path(path)
    corpus_path, queries_path = root / "corpus.jsonl", root / "queries.jsonl"
    qrels_path = root / "qrels" / f"{split}.tsv"
    for needed in (corpus_path, queries_path, qrels_path):
        if not needed.is_file():
            raise InvalidInput(
                f"no {needed.relative_to(root)} in BEIR folder {root}: pass a folder with "
                "corpus.jsonl, queries.jsonl and qrels/<split>.tsv (see --split)"
            )
    corpus = {
        str(rec["_id"]): BeirDoc(rec.get("title") or "", rec.get("text") or "")
        for rec in _read_jsonl(corpus_path)
    }
    qrels = _read_qrels(qrels_path)
    all_queries = {str(rec["_id"]): rec["text"] for rec in _read_jsonl(queries_path)}
    missing = sorted(set(qrels) - set(all_queries))
    if missing:
        raise InvalidInput(
            f"{qrels_path} judges query ids missing from {queries_path}, e.g. {missing[0]!r}: "
            "use the queries.jsonl of the same BEIR data set"
        )
    queries = {qid: all_queries[qid] for qid in qrels}
    return BeirDataset(name=root.resolve().name, corpus=corpus, queries=queries, qrels=qrels)


def beir_documents(
    corpus: dict[str, BeirDoc], title_mode: TitleMode = "prepend"
) -> Iterator[Document]:
    """One Document per corpus record: source = the BEIR doc id; with "prepend" the text is
    title + blank line + text, with "omit" the text alone (the title is kept as Document.title)."""
    if title_mode not in TITLE_MODES:
        raise InvalidInput(
            f"unknown title mode {title_mode!r}: use one of {', '.join(TITLE_MODES)}"
        )
    for doc_id, doc in corpus.items():
        text = f"{doc.title}\n\n{doc.text}" if title_mode == "prepend" and doc.title else doc.text
        yield Document(
            source=doc_id,
            sections=[Section(text=text)],
            title=doc.title or None,
            metadata={"beir_id": doc_id},
        )


def default_collection_name(path: Path | str) -> str:
    """ "beir-scifact" for a folder named scifact: letters, digits, '-' and '_' only."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(path).resolve().name).strip("-").lower()
    return f"beir-{name or 'dataset'}"


def _read_jsonl(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInput(
                    f"{path}:{lineno} is not valid JSON ({exc.msg}): fix or remove the line"
                ) from exc
            if "_id" not in record:
                raise InvalidInput(f'{path}:{lineno} has no "_id": every BEIR record needs one')
            yield record


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            if lineno == 1 and fields[:1] == ["query-id"]:
                continue  # header line
            if not line.strip():
                continue
            try:
                qid, doc_id, grade = fields[0], fields[1], int(fields[2])
            except (IndexError, ValueError) as exc:
                raise InvalidInput(
                    f"{path}:{lineno} is {line.strip()!r}: a qrels line is "
                    "query-id<TAB>corpus-id<TAB>integer score"
                ) from exc
            qrels.setdefault(qid, {})[doc_id] = grade
    return qrels

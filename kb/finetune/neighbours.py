"""Labelled neighbours in classification prompts: retrieval-augmented fine-tuning data.

With `--neighbours K`, each prompt made from a labelled folder also shows the K labelled
examples most like its text, each as its label and its opening words. They are found the way a
collection search finds chunks: BM25 (bm25s, stemmed) and the configured embedder, fused by
reciprocal rank. The model then learns to weigh what the nearest labelled messages say against
its own reading, the way a nearest-neighbour classifier keys on rare shared words (a thread's
subject, a product name) that a small model does not pick up from a thousand examples.

With `--header-labels HEADER,...` the neighbours also end with a line per header counting the
labels of the pool's messages whose HEADER has the text's value: `from`, the sender's other
messages, is evidence a text's own words may not carry (who wrote it, which customer sent it);
`subject`, its reply prefixes dropped, is the rest of the thread. The name `quoted` is not a
header: it counts the labels of the pool's messages sent by the authors the text quotes (its
attribution lines, `a@b.c (Name) writes:`), whose replies sit in the same conversation.

The pool is the source itself (each example leaves itself out) or, for an evaluation split,
the training folder (`--neighbours-from`), so test prompts only ever show training labels.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kb.embedders.base import Embedder
from kb.errors import InvalidInput
from kb.files import atomic_write
from kb.finetune.sources import LabelledText, split_message
from kb.finetune.tokens import TokenCounter
from kb.retrieval import rrf
from kb.settings import Settings

#: each ranking (BM25, dense) contributes its best DEPTH_FACTOR * K candidates to the fusion
DEPTH_FACTOR = 2
_SPACE = re.compile(r"\s+")
_ADDRESS = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
#: a line that names whom a message quotes: "... writes:", "In article <id>, ...", "... said:"
_ATTRIBUTION = re.compile(
    r"\b(?:writes|wrote|says|said)\b|^[\s>|:]*in (?:a previous )?(?:article|message)\b",
    re.IGNORECASE,
)
#: the `--header-labels` name that counts the labels of the authors a message quotes
QUOTED = "quoted"
_REPLY = re.compile(r"^(?:\s*(?:re|fwd?|aw)\s*(?:\[\d+\])?\s*:)+", re.IGNORECASE)


class NeighbourPool:
    """Labelled examples indexed for neighbour search: dense vectors and BM25, built once."""

    def __init__(
        self,
        items: Sequence[LabelledText],
        texts: Sequence[str],
        counter: TokenCounter,
        neighbour_tokens: int,
        settings: Settings,
    ):
        from kb.embedders import load_embedder
        from kb.store.bm25 import BM25Index

        if not items:
            raise InvalidInput(
                "the neighbour pool is empty: --neighbours-from needs a folder of labelled files"
            )
        self.items = list(items)
        self.openings = openings(texts, counter, neighbour_tokens)
        self.embedder = load_embedder(settings.embedder, settings)
        self.vectors = pool_vectors(self.embedder, texts, settings.cache_dir / "neighbour-pools")
        self.bm25 = BM25Index.build(np.arange(len(self.items)), list(texts))
        self._row_of = {str(item.path.resolve()): i for i, item in enumerate(self.items)}
        self._by_value: dict[str, dict[str, list[int]]] = {}  # header -> value key -> rows
        self._index_lock = threading.Lock()

    def nearest(
        self,
        texts: Sequence[str],
        paths: Sequence[Path | None],
        k: int,
        vectors: np.ndarray | None = None,
    ) -> list[list[int]]:
        """For each text, the rows of its k nearest pool items, best first; the pool item read
        from the text's own file (when it has one) is never its neighbour. `vectors`: the
        texts' embeddings, when the caller has them already."""
        if vectors is None:
            vectors = self.embedder.embed(list(texts))
        depth = DEPTH_FACTOR * k
        out = []
        for text, path, vector in zip(texts, paths, vectors, strict=True):
            own = self._row_of.get(str(Path(path).resolve()), -1) if path is not None else -1
            similarity = self.vectors @ vector
            order = np.argsort(-similarity, kind="stable")[: depth + 1]
            dense = [(int(i), float(similarity[i])) for i in order if i != own][:depth]
            lexical = [(i, s) for i, s in self.bm25.search(text, depth + 1) if i != own][:depth]
            out.append([i for i, _ in rrf([lexical, dense])[:k]])
        return out

    def label_counts(
        self,
        named: Sequence[str],
        headers: Sequence[dict[str, str]],
        texts: Sequence[str],
        paths: Sequence[Path | None],
    ) -> dict[str, list[Counter[str]]]:
        """Per `--header-labels` name, each text's counts of pool labels: for a header, the
        pool items sharing the text's value of it (`headers`: each text's); for `quoted`, the
        pool items sent by the authors its attribution lines quote (`texts`). The item read
        from the text's own file (`paths`) is left out."""
        out = {}
        for header in named:
            if header == QUOTED:
                keys = [
                    quoted_senders(t, h.get("from")) for t, h in zip(texts, headers, strict=True)
                ]
                out[header] = self._labels("from", keys, paths)
            else:
                out[header] = self.same_header(header, [h.get(header) for h in headers], paths)
        return out

    def blocks(
        self, found: Sequence[Sequence[int]], counts: dict[str, list[Counter[str]]] | None = None
    ) -> list[str]:
        """Each text's `{neighbours}` text: one line per neighbour row, `label: opening words`;
        then a line per `label_counts` entry, in its order."""
        out = [
            "\n".join(f"{self.items[i].label}: {self.openings[i]}" for i in rows) for rows in found
        ]
        for header, per_text in (counts or {}).items():
            out = [f"{b}\n{header_line(header, c)}" for b, c in zip(out, per_text, strict=True)]
        return out

    def same_header(
        self, header: str, values: Sequence[str | None], paths: Sequence[Path | None]
    ) -> list[Counter[str]]:
        """For each header value, the labels of the pool items whose `header` has the same
        value (`header_key`), the item read from the text's own file left out."""
        return self._labels(header, [[header_key(v)] for v in values], paths)

    def _labels(
        self, header: str, keys: Sequence[Sequence[str | None]], paths: Sequence[Path | None]
    ) -> list[Counter[str]]:
        """For each text's `header_key`s, the labels of the pool items whose `header` has any
        one of them, the item read from the text's own file left out."""
        with self._index_lock:  # the service's classifier serves requests from threads
            index = self._by_value.get(header)
            if index is None:
                index = {}
                for row, item in enumerate(self.items):
                    key = header_key(item.headers.get(header))
                    if key is not None:
                        index.setdefault(key, []).append(row)
                self._by_value[header] = index
        out = []
        for wanted, path in zip(keys, paths, strict=True):
            own = self._row_of.get(str(Path(path).resolve()), -1) if path is not None else -1
            rows = {r for key in wanted for r in index.get(key, [])}  # never a None key
            out.append(Counter(self.items[r].label for r in rows if r != own))
        return out


def header_key(value: str | None) -> str | None:
    """What makes two header values the same: the mail address in it when it has one (a
    sender writes `Name <a@b.c>` in one message and `a@b.c (Name)` in the next), else the value
    without reply and forward prefixes (`Re: Re[2]: Fwd:`, so a thread's subjects match), case
    and runs of white space ignored; None for a missing or blank value."""
    if value is None:
        return None
    address = _ADDRESS.search(value)
    if address:
        return address.group(0).casefold()
    key = _SPACE.sub(" ", _REPLY.sub("", value)).strip().casefold()
    return key or None


def header_line(header: str, counts: Counter[str]) -> str:
    """A neighbours line of `--header-labels`: the labels of the pool's messages sharing the
    text's value of `header` (for `quoted`, sent by the authors it quotes), most common first,
    or `none`."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{label} {n}" for label, n in ranked) or "none"
    if header == QUOTED:
        return f"Labelled messages by the authors it quotes: {shown}"
    return f"Labelled messages with the same {header.title()}: {shown}"


def quoted_senders(text: str, sender: str | None = None) -> list[str]:
    """The mail addresses on a message's attribution lines (`In article <id>, a@b.c (Name)
    writes:`, `a@b.c wrote:`, `In a previous article, a@b.c says:`, at any quoting depth),
    case-folded, first seen first, the message's own `sender` (its From value) left out. Only
    the body is read when the text is a mail or news message."""
    _, body = split_message(text)
    own = header_key(sender)
    out: list[str] = []
    for line in (text if body is None else body).splitlines():
        if not _ATTRIBUTION.search(line):
            continue
        for address in _ADDRESS.findall(line):
            address = address.casefold()
            if address != own and address not in out:
                out.append(address)
    return out


def pool_vectors(embedder: Embedder, texts: Sequence[str], cache: Path) -> np.ndarray:
    """The pool's vectors, read from `cache` when the same embedder (same weights) has already
    embedded the same texts, so `kb models classify` does not embed its pool on every run."""
    key = hashlib.sha256(embedder.fingerprint().encode() + b"\0")
    for text in texts:
        key.update(text.encode("utf-8", "surrogatepass") + b"\0")
    path = cache / f"{key.hexdigest()[:32]}.npy"
    try:
        vectors = np.load(path, allow_pickle=False)
        if vectors.shape[0] == len(texts):
            return vectors
    except (OSError, ValueError):  # not cached yet, or a damaged file: embed again
        pass
    vectors = np.asarray(embedder.embed(list(texts)))
    buffer = io.BytesIO()
    np.save(buffer, vectors)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write(path, buffer.getvalue())
    except OSError:  # a read-only cache only costs the next run the embedding
        pass
    return vectors


def openings(texts: Sequence[str], counter: TokenCounter, tokens: int) -> list[str]:
    """Each text's first `tokens` tokens on one line (runs of white space made one space)."""
    return [_SPACE.sub(" ", t).strip() for t in counter.truncate(list(texts), tokens)]


def majority_label(labels: Sequence[str]) -> str:
    """The neighbours' vote: their most common label, a tie going to the nearest's (the first).
    The baseline a model trained on neighbours must beat: copying them."""
    counts = Counter(labels).most_common()
    return labels[0] if len(counts) > 1 and counts[0][1] == counts[1][1] else counts[0][0]


def check_pool_labels(pool_labels: Sequence[str], labels: Sequence[str], where: str) -> None:
    extra = sorted(set(pool_labels) - set(labels))
    if extra:
        raise InvalidInput(
            f"the neighbour folder {where!r} has labels {extra} that the source does not "
            f"(source labels: {', '.join(labels)}): point --neighbours-from at the training "
            "folder of the same task"
        )

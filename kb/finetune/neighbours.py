"""Labelled neighbours in classification prompts: retrieval-augmented fine-tuning data.

With `--neighbours K`, each prompt made from a labelled folder also shows the K labelled
examples most like its text, each as its label and its opening words. They are found the way a
collection search finds chunks: BM25 (kb.store.bm25, stemmed) and the configured embedder, fused by
reciprocal rank, each searching with the whole text. The model then learns to weigh what the
nearest labelled messages say against its own reading, the way a nearest-neighbour classifier
keys on rare shared words (a thread's subject, a product name) that a small model does not pick
up from a thousand examples.

With `--header-labels NAME,...` the neighbours also end with a line per header label
(`kb.finetune.mail`): how the pool's messages sharing the text's sender, thread or quoted
authors are labelled.

The pool is the source itself (each example leaves itself out) or, for an evaluation split,
the training folder (`--neighbours-from`), so test prompts only ever show training labels.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from kb.embedders.base import Embedder
from kb.errors import InvalidInput
from kb.files import atomic_write
from kb.finetune.mail import header_key, header_label
from kb.finetune.sources import LabelledText
from kb.finetune.tokens import TokenCounter
from kb.retrieval import rrf
from kb.settings import Settings

#: each ranking (BM25, dense) contributes its best DEPTH_FACTOR * K candidates to the fusion
DEPTH_FACTOR = 2
_SPACE = re.compile(r"\s+")


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
            own = self._own_row(path)
            similarity = self.vectors @ vector
            order = np.argsort(-similarity, kind="stable")[: depth + 1]
            dense = [(int(i), float(similarity[i])) for i in order if i != own][:depth]
            lexical = [(i, s) for i, s in self.bm25.search(text, depth + 1) if i != own][:depth]
            out.append([i for i, _ in rrf([lexical, dense])[:k]])
        return out

    def label_counts(
        self,
        named: Sequence[str],
        headers: Sequence[Mapping[str, str]],
        texts: Sequence[str],
        paths: Sequence[Path | None],
    ) -> dict[str, list[Counter[str]]]:
        """Per `--header-labels` name, each text's counts of the labels of the pool items its
        header label matches (`headers`: each text's message headers); the item read from the
        text's own file (`paths`) is left out."""
        out = {}
        for name in named:
            label = header_label(name)
            keys = [label.keys(t, h) for t, h in zip(texts, headers, strict=True)]
            index = self._index(label.index)
            counts = []
            for wanted, path in zip(keys, paths, strict=True):
                own = self._own_row(path)
                rows = {r for key in wanted for r in index.get(key, [])}
                counts.append(Counter(self.items[r].label for r in rows if r != own))
            out[name] = counts
        return out

    def blocks(
        self, found: Sequence[Sequence[int]], counts: dict[str, list[Counter[str]]] | None = None
    ) -> list[str]:
        """Each text's `{neighbours}` text: one line per neighbour row, `label: opening words`;
        then a line per `label_counts` entry, in its order."""
        out = [
            "\n".join(f"{self.items[i].label}: {self.openings[i]}" for i in rows) for rows in found
        ]
        for name, per_text in (counts or {}).items():
            line = header_label(name).line
            out = [f"{b}\n{line(c)}" for b, c in zip(out, per_text, strict=True)]
        return out

    def _own_row(self, path: Path | None) -> int:
        """The row of the pool item read from `path` (-1: none), so a text never counts itself."""
        return self._row_of.get(str(Path(path).resolve()), -1) if path is not None else -1

    def _index(self, header: str) -> dict[str, list[int]]:
        """The pool's rows by the `header_key` of their `header`, built on first use."""
        with self._index_lock:  # the service's classifier serves requests from threads
            index = self._by_value.get(header)
            if index is None:
                index = {}
                for row, item in enumerate(self.items):
                    key = header_key(item.headers.get(header))
                    if key is not None:
                        index.setdefault(key, []).append(row)
                self._by_value[header] = index
        return index


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

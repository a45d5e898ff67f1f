"""The embedder interface: subclasses implement `embed_batch`; batching and normalisation live here."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from itertools import groupby

import numpy as np


class Embedder(ABC):
    """Turns texts into L2-normalised float32 vectors."""

    #: stable identifier recorded with a collection, e.g. "st:all-MiniLM-L6-v2"
    model_id: str
    dimension: int
    batch_size: int = 64
    #: query vectors kept, least recently used dropped first; 0 disables (KB_EMBED_QUERY_CACHE)
    query_cache_size: int = 0

    @abstractmethod
    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Embed one batch; returns an array of shape (len(texts), dimension)."""

    def fingerprint(self) -> str:
        """What decides this embedder's vectors, for caches of them: the model id here;
        subclasses add what else changes the numbers (weights, precision, server)."""
        return self.model_id

    def count_tokens(self, text: str) -> int:
        """Token count used for chunking; subclasses with a tokenizer override this."""
        return len(text.split())

    def embed(
        self,
        texts: Sequence[str],
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed any number of texts in batches, sorted by length to keep padding low."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for idx, vecs in self._embed_batches(texts, self.padded_lengths(texts)):
            out[idx] = np.asarray(vecs, dtype=np.float32)
            if progress:
                progress(len(idx))
        return normalize(out)

    def _embed_batches(
        self, texts: Sequence[str], lengths: list[int] | None
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """Each batch's indexes and vectors, in any order; one after another here."""
        for idx in self._batches(texts, lengths):
            yield idx, self.embed_batch([texts[i] for i in idx])

    def padded_lengths(self, texts: Sequence[str]) -> list[int] | None:
        """The length each text is padded to in a batch, where that depends on the text alone
        (a tokenizer that pads to a multiple); None where it depends on the batch."""
        return None

    def _batches(self, texts: Sequence[str], lengths: list[int] | None) -> list[list[int]]:
        """Indexes of `texts` per batch, longest first to keep padding low. Where padded
        `lengths` are known, a batch holds one padded length only: in bfloat16 a text's vector
        moves with its padding (up to 1e-3), and not with its batch mates, so a text then has
        the same vector however a collection is batched, locally or on a cluster's workers
        (the torch embedder also fixes the thread count and a least batch size, which move it
        on some CPUs)."""
        if lengths is None:
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
            runs = [(None, order)]
        else:
            order = sorted(range(len(texts)), key=lambda i: -lengths[i])
            runs = [(n, list(run)) for n, run in groupby(order, key=lengths.__getitem__)]
        out = []
        for length, run in runs:
            size = self._batch_size(length)
            out += [run[lo : lo + size] for lo in range(0, len(run), size)]
        return out

    def _batch_size(self, length: int | None) -> int:
        """Texts per batch for texts of this padded length (None: lengths unknown)."""
        return self.batch_size

    def embed_query(self, text: str) -> np.ndarray:
        """One query's vector (read-only: it may be shared through the query cache)."""
        if self.query_cache_size <= 0:
            return self.query_vector(text)
        with _CACHE_LOCK:
            cache = self.__dict__.setdefault("_query_cache", OrderedDict())
            vec = cache.get(text)
            if vec is not None:
                cache.move_to_end(text)
                return vec
        vec = self.query_vector(text)
        vec.setflags(write=False)
        with _CACHE_LOCK:
            cache[text] = vec
            while len(cache) > self.query_cache_size:
                cache.popitem(last=False)
        return vec

    def embed_short(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of a few short texts (sentences) at query time, on the query path."""
        return np.stack([self.embed_query(t) for t in texts])

    def query_vector(self, text: str) -> np.ndarray:
        """One text's vector, uncached; a backend with a faster path for single texts overrides it."""
        return self.embed([text])[0]


_CACHE_LOCK = threading.Lock()  # guards every embedder's query cache; held for dict work only


def normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (vectors / norms).astype(np.float32, copy=False)

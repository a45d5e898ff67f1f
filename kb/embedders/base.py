"""The embedder interface: subclasses implement `embed_batch`; batching and normalisation live here."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np


class Embedder(ABC):
    """Turns texts into L2-normalised float32 vectors."""

    #: stable identifier recorded with a collection, e.g. "st:all-MiniLM-L6-v2"
    model_id: str
    dimension: int
    batch_size: int = 64

    @abstractmethod
    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Embed one batch; returns an array of shape (len(texts), dimension)."""

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
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo : lo + self.batch_size]
            vecs = np.asarray(self.embed_batch([texts[i] for i in idx]), dtype=np.float32)
            out[idx] = vecs
            if progress:
                progress(len(idx))
        return normalize(out)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


def normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (vectors / norms).astype(np.float32, copy=False)

"""BM25 over chunk texts with bm25s (stemmed, English stop words), saved beside the FAISS index."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

_STEMMER = None


def _stemmer():
    global _STEMMER
    if _STEMMER is None:
        import Stemmer

        _STEMMER = Stemmer.Stemmer("english")
    return _STEMMER


def tokenize(texts: list[str]):
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer(), show_progress=False)


class BM25Index:
    """A bm25s index plus the chunk id of each of its rows."""

    def __init__(self, model, ids: np.ndarray):
        self._model = model
        self.ids = ids

    @classmethod
    def build(cls, ids: np.ndarray, texts: list[str]) -> BM25Index:
        import bm25s

        model = bm25s.BM25()
        if texts:
            model.index(tokenize(texts), show_progress=False)
        return cls(model, np.asarray(ids, dtype=np.int64))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if len(self.ids):
            self._model.save(str(folder), show_progress=False)
        np.save(folder / "ids.npy", self.ids)
        (folder / "done.json").write_text(json.dumps({"n": int(len(self.ids))}))
        for path in folder.iterdir():
            _fsync(path)

    @classmethod
    def load(cls, folder: Path) -> BM25Index:
        import bm25s

        ids = np.load(folder / "ids.npy")
        model = bm25s.BM25.load(str(folder), show_progress=False) if len(ids) else bm25s.BM25()
        return cls(model, ids)

    def search(
        self, query: str, k: int, allowed: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        """Top k (chunk id, score) pairs with a positive score; `allowed` masks rows by chunk id."""
        if not len(self.ids):
            return []
        tokens = tokenize([query])
        if not len(tokens.ids[0]):
            return []
        mask = None
        if allowed is not None:
            mask = np.isin(self.ids, allowed).astype(np.float32)
        k = min(k, len(self.ids))
        # n_threads=0 scores in this thread; any other value starts a thread pool per call
        docs, scores = self._model.retrieve(
            tokens, k=k, show_progress=False, n_threads=0, weight_mask=mask
        )
        return [
            (int(self.ids[d]), float(s)) for d, s in zip(docs[0], scores[0], strict=True) if s > 0
        ]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

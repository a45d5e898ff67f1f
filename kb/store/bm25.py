"""BM25 over chunk texts with bm25s (stemmed, English stop words), saved beside the FAISS index."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

_STEMMER = None
_STOPWORDS: frozenset[str] | None = None
#: bm25s's token pattern (scikit-learn's): runs of two or more word characters
_TOKEN = re.compile(r"(?u)\b\w\w+\b")


def _stemmer():
    global _STEMMER
    if _STEMMER is None:
        import Stemmer

        _STEMMER = Stemmer.Stemmer("english")
    return _STEMMER


def tokenize(texts: list[str], *, return_ids: bool = True):
    """bm25s tokens (stemmed, English stop words dropped): ids for indexing, or the terms."""
    import bm25s

    return bm25s.tokenize(
        texts, stopwords="en", stemmer=_stemmer(), show_progress=False, return_ids=return_ids
    )


def query_terms(query: str) -> list[str]:
    """The terms of one query, as `tokenize` makes them (same pattern, stop words and stemmer).

    Done here rather than by bm25s.tokenize, whose per-call set-up (progress bars, a vocabulary
    for the batch) cost several times the work itself on a search's one short query."""
    global _STOPWORDS
    if _STOPWORDS is None:
        from bm25s.stopwords import STOPWORDS_EN

        _STOPWORDS = frozenset(STOPWORDS_EN)
    words = [w for w in _TOKEN.findall(query.lower()) if w not in _STOPWORDS]
    return _stemmer().stemWords(words) if words else []


#: unseen terms respelled: plain letters, 5 to 20 of them ("vec0" is one edit from too many
#: words, and a pasted hash is no typo)
_SPELLABLE = re.compile(r"[a-z]{5,20}")


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

    @property
    def size(self) -> int:
        return int(len(self.ids))

    def document_frequencies(self, terms: list[str]) -> dict[str, int]:
        """How many rows contain each (stemmed) term; 0 for a term the index never saw."""
        vocab = getattr(self._model, "vocab_dict", None) or {}
        indptr = self._model.scores.get("indptr") if len(self.ids) else None
        out = {}
        for term in terms:
            tid = vocab.get(term)
            out[term] = 0 if tid is None or indptr is None else int(indptr[tid + 1] - indptr[tid])
        return out

    def respelled(self, term: str) -> str | None:
        """The indexed term one edit (a letter added, dropped, changed or two swapped) away from
        an unseen `term` of 5-20 plain letters, the same first letter kept, the most frequent if
        several: "vaccum" -> "vacuum". None when the term is known, has digits or other
        characters (an identifier or a number is never a typo of another one), or has no such
        neighbour of 5-20 letters itself ("jsonb" names a format, not a typo of "json")."""
        vocab = getattr(self._model, "vocab_dict", None) or {}
        if term in vocab or not _SPELLABLE.fullmatch(term) or not len(self.ids):
            return None
        letters = "abcdefghijklmnopqrstuvwxyz"
        splits = [(term[:i], term[i:]) for i in range(1, len(term) + 1)]  # the first letter stays
        edits = {a + b[1:] for a, b in splits if b}
        edits |= {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
        edits |= {a + c + b[1:] for a, b in splits if b for c in letters}
        edits |= {a + c + b for a, b in splits for c in letters}
        known = [t for t in edits if t in vocab and _SPELLABLE.fullmatch(t)]
        if not known:
            return None
        freq = self.document_frequencies(known)
        return max(known, key=lambda t: (freq[t], t))

    def search(
        self, query: str, k: int, allowed: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        """Top k (chunk id, score) pairs with a positive score; `allowed` masks rows by chunk id.

        Scores come from bm25s; the top k are picked here among the rows that matched at all.
        bm25s's own selection runs argpartition over every row, and with the ties of the
        non-matching rows' zeros that took 8 ms of a 100,000-chunk search. Here the k-th best
        score is found by partitioning the matched rows' scores (values, not indices: ~30%
        faster than argpartition), and ties at that score go to the lowest rows.
        """
        if not len(self.ids):
            return []
        term_ids = self._model.get_tokens_ids(query_terms(query))
        if not term_ids:
            return []
        scores = self._model.get_scores_from_ids(term_ids)
        if allowed is not None:
            scores = np.where(np.isin(self.ids, allowed), scores, 0)
        rows = np.flatnonzero(scores > 0)
        if len(rows) > k:
            matched = scores[rows]
            kth = np.partition(matched, len(matched) - k)[len(matched) - k]
            above, tied = rows[matched > kth], rows[matched == kth]
            rows = np.concatenate([above, tied[: k - len(above)]])
        rows = rows[np.lexsort((rows, -scores[rows]))]  # by score, ties by row: deterministic
        return list(zip(self.ids[rows].tolist(), scores[rows].tolist(), strict=True))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""BM25 over chunk texts (stemmed, English stop words), kept in segments beside the FAISS index.

A commit adds one segment holding only its new chunks, tokenised by the ingest that made them
(`chunk_terms`, on the loader thread or the Ray workers) or here when they come without terms.
The previous generation's segments go into the new generation's folder as hard links, and a
deleted chunk stays in its segment, listed in the generation's `deleted.npy`, until a merge
leaves it out. Merges work on postings, never on text: after a commit, while the newest
segment holds at least as many live rows as the one before it the two are merged, so a
collection of n chunks committed in pieces of c holds about log2(n / c) segments and each row is
merged about as many times.

Scores are Lucene's BM25 as bm25s computes it (k1 1.5, b 0.75; idf log(1 + (N - df + 0.5) /
(df + 0.5))), from the statistics of the live rows of every segment together at query time:
their number, average length and each term's document frequency. A collection in many segments
with deletions therefore ranks as one indexed in one piece from the same chunks.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np

K1 = 1.5
B = 0.75
#: segment folders are written under the names in `segments.json`; this file says the format
FORMAT = "kb-bm25-segments/1"

_STEMMER = None
_STOPWORDS: frozenset[str] | None = None
_STEMS: dict[str, str] = {}  # word -> stem, shared by every tokenising call of the process
#: words the stem cache holds before it starts again (~150 bytes each)
STEM_CACHE = 200_000
#: bm25s's token pattern (scikit-learn's): runs of two or more word characters
_TOKEN = re.compile(r"(?u)\b\w\w+\b")


def _stemmer():
    global _STEMMER
    if _STEMMER is None:
        import Stemmer

        _STEMMER = Stemmer.Stemmer("english")
    return _STEMMER


def _stopwords() -> frozenset[str]:
    global _STOPWORDS
    if _STOPWORDS is None:
        from bm25s.stopwords import STOPWORDS_EN

        _STOPWORDS = frozenset(STOPWORDS_EN)
    return _STOPWORDS


def query_terms(query: str) -> list[str]:
    """The terms of a text as BM25 indexes and searches them: bm25s's token pattern on the
    lower-cased text, its English stop words dropped, the rest Snowball-stemmed."""
    stop = _stopwords()
    words = [w for w in _TOKEN.findall(query.lower()) if w not in stop]
    if not words:
        return []
    global _STEMS
    stems = _STEMS  # this call's own reference: another thread may start a new cache meanwhile
    new = [w for w in set(words) if w not in stems]
    if new:
        if len(stems) > STEM_CACHE:  # a stream of unique tokens (ids, hashes) must not grow it
            stems = _STEMS = {}
        stems.update(zip(new, _stemmer().stemWords(new), strict=True))
    return [stems[w] for w in words]


def chunk_terms(text: str, title: str | None) -> list[str]:
    """The BM25 terms of a stored chunk: its document's title, then its text."""
    return query_terms(f"{title}\n{text}" if title else text)


#: unseen terms respelled: plain letters, 5 to 20 of them ("vec0" is one edit from too many
#: words, and a pasted hash is no typo)
_SPELLABLE = re.compile(r"[a-z]{5,20}")


@dataclass
class _Segment:
    """Postings of some rows, by term: column t's rows are rows[indptr[t]:indptr[t + 1]], with
    their term frequencies in tfs. Immutable once made; `path` is where its files are, if saved."""

    name: str
    ids: np.ndarray  # int64 chunk id of each row, ascending
    lengths: np.ndarray  # int32 number of terms of each row
    terms: list[str]  # column -> term
    indptr: np.ndarray  # int64, len(terms) + 1
    rows: np.ndarray  # int32
    tfs: np.ndarray  # uint16
    #: folders holding its files, newest last (links are made from the newest that still exists)
    paths: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.vocab = {t: c for c, t in enumerate(self.terms)}

    FILES = ("ids", "lengths", "indptr", "rows", "tfs")

    @classmethod
    def from_terms(cls, name: str, ids: np.ndarray, term_lists: Sequence[list[str]]) -> _Segment:
        n = len(term_lists)
        lengths = np.fromiter(map(len, term_lists), dtype=np.int32, count=n)
        flat = list(chain.from_iterable(term_lists))
        vocab = {t: c for c, t in enumerate(dict.fromkeys(flat))}  # columns in order of appearance
        cols = np.fromiter(map(vocab.__getitem__, flat), dtype=np.int64, count=len(flat))
        rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
        keys, tfs = np.unique(cols * max(n, 1) + rows, return_counts=True)  # by column, then row
        return cls._from_sorted(
            name, ids, lengths, list(vocab), keys // max(n, 1), keys % max(n, 1), tfs
        )

    @classmethod
    def _from_sorted(cls, name, ids, lengths, terms, cols, rows, tfs) -> _Segment:
        indptr = np.zeros(len(terms) + 1, dtype=np.int64)
        np.cumsum(np.bincount(cols, minlength=len(terms)), out=indptr[1:])
        return cls(
            name,
            np.asarray(ids, dtype=np.int64),
            np.asarray(lengths, dtype=np.int32),
            terms,
            indptr,
            rows.astype(np.int32),
            np.minimum(tfs, 65535).astype(np.uint16),
        )

    @classmethod
    def merged(cls, name: str, parts: list[tuple[_Segment, np.ndarray | None]]) -> _Segment:
        """One segment of the live rows of `parts` ((segment, live mask or None), in id order);
        terms left without a live row are dropped."""
        vocab: dict[str, int] = {}
        put = vocab.setdefault
        ids, lengths, cols, rows, tfs = [], [], [], [], []
        offset = 0
        for seg, live in parts:
            keep = np.arange(len(seg.ids)) if live is None else np.flatnonzero(live)
            new_row = np.full(len(seg.ids), -1, dtype=np.int32)
            new_row[keep] = np.arange(len(keep)) + offset
            colmap = np.fromiter(
                (put(t, len(vocab)) for t in seg.terms), dtype=np.int32, count=len(seg.terms)
            )
            posting_col = np.repeat(colmap, np.diff(seg.indptr))
            posting_row = new_row[seg.rows]
            alive = posting_row >= 0
            cols.append(posting_col[alive])
            rows.append(posting_row[alive])
            tfs.append(seg.tfs[alive])
            ids.append(seg.ids[keep])
            lengths.append(seg.lengths[keep])
            offset += len(keep)
        col, row, tf = np.concatenate(cols), np.concatenate(rows), np.concatenate(tfs)
        # each part lists a column's rows ascending and the parts follow each other in row
        # order, so a stable sort by column alone leaves every column's rows ascending
        order = np.argsort(col, kind="stable")
        col, row, tf = col[order], row[order], tf[order]
        used = np.bincount(col, minlength=len(vocab)) > 0
        terms = [t for t, u in zip(vocab, used.tolist(), strict=True) if u]
        renumber = np.cumsum(used) - 1
        return cls._from_sorted(
            name, np.concatenate(ids), np.concatenate(lengths), terms, renumber[col], row, tf
        )

    def save(self, folder: Path) -> None:
        """The segment's files in `folder`: hard links to a saved copy where there is one."""
        if not any(p != folder and _linked(p, folder) for p in reversed(self.paths)):
            folder.mkdir(parents=True, exist_ok=True)
            for key in self.FILES:
                np.save(folder / f"{key}.npy", getattr(self, key))
            (folder / "terms.txt").write_text("\n".join(self.terms), encoding="utf-8")
            for path in folder.iterdir():
                _fsync(path)
        _fsync(folder)
        # the older folders stay listed: a commit that fails after this save leaves its folder
        # to be removed, and the next one links from the generation that stayed current
        self.paths = [*[p for p in self.paths if p != folder][-2:], folder]

    @classmethod
    def load(cls, folder: Path) -> _Segment:
        arrays = {key: np.load(folder / f"{key}.npy") for key in cls.FILES}
        text = (folder / "terms.txt").read_text(encoding="utf-8")
        terms = text.split("\n") if text else []
        if len(arrays["indptr"]) != len(terms) + 1 or len(arrays["ids"]) != len(arrays["lengths"]):
            raise ValueError(f"BM25 segment {folder} is inconsistent")
        return cls(folder.name, terms=terms, paths=[folder], **arrays)


def _linked(source: Path, folder: Path) -> bool:
    """Hard-link a saved segment's files into `folder`; False (and nothing left) if that fails."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name in [f"{k}.npy" for k in _Segment.FILES] + ["terms.txt"]:
            os.link(source / name, folder / name)
        return True
    except OSError:  # no hard links on this filesystem, or the source was removed
        if folder.is_dir():
            for path in folder.iterdir():
                path.unlink()
        return False


class OlderFormat(ValueError):
    """A generation's BM25 files were written by an older kb (one bm25s index)."""


class BM25Index:
    """BM25 over the live rows of a list of segments; `ids` are the live chunk ids, ascending."""

    def __init__(self, segments: list[_Segment], deleted: np.ndarray | None = None):
        self._segments = segments
        deleted = np.zeros(0, np.int64) if deleted is None else np.asarray(deleted, np.int64)
        present = np.concatenate([s.ids for s in segments]) if segments else np.zeros(0, np.int64)
        self._deleted = np.intersect1d(deleted, present)  # only ids a segment still holds
        self._live: list[np.ndarray | None] = [
            ~np.isin(s.ids, self._deleted) if len(self._deleted) else None for s in segments
        ]
        self._row_ids = present
        self._offsets = np.cumsum([0] + [len(s.ids) for s in segments])
        self.ids = present[np.concatenate(self._live)] if len(self._deleted) else present
        total = sum(
            int(s.lengths.sum() if live is None else s.lengths[live].sum())
            for s, live in zip(segments, self._live, strict=True)
        )
        self._avgdl = total / len(self.ids) if total else 1.0  # no terms at all: any will do
        self._tfc: list[np.ndarray] | None = None  # made by the first search, not by commits

    @classmethod
    def build(cls, ids, texts: list[str], titles: Iterable[str | None] | None = None) -> BM25Index:
        """One segment from texts (with their documents' titles, if given)."""
        titles = titles if titles is not None else [None] * len(texts)
        terms = [chunk_terms(t, title) for t, title in zip(texts, titles, strict=True)]
        return cls.from_terms(ids, terms)

    @classmethod
    def from_terms(cls, ids, term_lists: Sequence[list[str]], name: str = "s0") -> BM25Index:
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return cls([])
        return cls([_Segment.from_terms(name, ids, term_lists)])

    def updated(
        self, name: str, removed: np.ndarray, add_ids: np.ndarray, add_terms: Sequence[list[str]]
    ) -> BM25Index:
        """This index with the chunks `removed` deleted and a segment of new chunks (ids above
        every stored one) added, segments merged as the module says; self is left as it was."""
        segments = list(self._segments)
        if len(add_ids):
            segments.append(_Segment.from_terms(name, np.asarray(add_ids, np.int64), add_terms))
        deleted = np.union1d(self._deleted, np.asarray(removed, dtype=np.int64))
        live = [~np.isin(s.ids, deleted) if len(deleted) else None for s in segments]
        # a segment with no live row goes; one more than half dead is rewritten alone
        kept = [(s, m) for s, m in zip(segments, live, strict=True) if m is None or m.any()]
        kept = [
            (_Segment.merged(f"{name}-r{i}", [(s, m)]), None)
            if m is not None and m.sum() * 2 < len(m)
            else (s, m)
            for i, (s, m) in enumerate(kept)
        ]
        merges = 0
        while len(kept) > 1 and _live_rows(kept[-2]) <= _live_rows(kept[-1]):
            merges += 1
            kept[-2:] = [(_Segment.merged(f"{name}-m{merges}", kept[-2:]), None)]
        return BM25Index([s for s, _ in kept], deleted)

    def save(self, folder: Path) -> None:
        """The segments (hard-linked where saved before), the deleted ids and, last, done.json."""
        folder.mkdir(parents=True, exist_ok=True)
        for seg in self._segments:
            seg.save(folder / seg.name)
        np.save(folder / "deleted.npy", self._deleted)
        (folder / "segments.json").write_text(self._manifest())
        for name in ("deleted.npy", "segments.json"):
            _fsync(folder / name)
        (folder / "done.json").write_text(json.dumps({"n": self.size}))
        _fsync(folder / "done.json")
        _fsync(folder)

    def add_to(self, folder: Path) -> None:
        """Save into the folder of a committed generation that holds BM25 in an older format:
        segments under names of this process's own, then the manifest by an atomic rename, so
        a reader sees the old files or the new ones, each complete."""
        tag = f"p{os.getpid()}-{threading.get_ident()}"
        for n, seg in enumerate(self._segments):
            seg.name = f"{tag}-{n}"
            seg.save(folder / seg.name)
        for name, write in (
            ("deleted.npy", lambda f: np.save(f, self._deleted)),
            ("segments.json", lambda f: f.write(self._manifest().encode())),
        ):
            tmp = folder / f".{name}.{tag}"
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, folder / name)
        _fsync(folder)

    def _manifest(self) -> str:
        return json.dumps({"format": FORMAT, "segments": [s.name for s in self._segments]})

    @classmethod
    def load(cls, folder: Path) -> BM25Index:
        """The index saved in `folder`; ValueError for a folder in another format (an older
        kb's), FileNotFoundError for an incomplete one: the caller rebuilds from the rows."""
        if not (folder / "done.json").exists():
            raise FileNotFoundError(folder / "done.json")
        try:
            manifest = json.loads((folder / "segments.json").read_text())
        except FileNotFoundError:
            if (folder / "ids.npy").exists():  # bm25s's files and kb's row -> chunk id map
                raise OlderFormat(f"{folder}: BM25 files of an older format") from None
            raise
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{folder}: BM25 format {manifest.get('format')!r} is not {FORMAT}")
        segments = [_Segment.load(folder / name) for name in manifest["segments"]]
        return cls(segments, np.load(folder / "deleted.npy"))

    @property
    def size(self) -> int:
        return int(len(self.ids))

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    def document_frequencies(self, terms: Iterable[str]) -> dict[str, int]:
        """How many live rows contain each (stemmed) term; 0 for a term no live row holds."""
        out = {}
        for term in terms:
            df = 0
            for seg, live in zip(self._segments, self._live, strict=True):
                col = seg.vocab.get(term)
                if col is None:
                    continue
                lo, hi = seg.indptr[col], seg.indptr[col + 1]
                df += int(hi - lo) if live is None else int(live[seg.rows[lo:hi]].sum())
            out[term] = df
        return out

    def respelled(self, term: str) -> str | None:
        """The indexed term one edit (a letter added, dropped, changed or two swapped) away from
        an unseen `term` of 5-20 plain letters, the same first letter kept, the most frequent if
        several: "vaccum" -> "vacuum". None when the term is known, has digits or other
        characters (an identifier or a number is never a typo of another one), or has no such
        neighbour of 5-20 letters itself ("jsonb" names a format, not a typo of "json")."""
        if not _SPELLABLE.fullmatch(term) or not self.size:
            return None
        if self.document_frequencies([term])[term]:
            return None
        letters = "abcdefghijklmnopqrstuvwxyz"
        splits = [(term[:i], term[i:]) for i in range(1, len(term) + 1)]  # the first letter stays
        edits = {a + b[1:] for a, b in splits if b}
        edits |= {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
        edits |= {a + c + b[1:] for a, b in splits if b for c in letters}
        edits |= {a + c + b for a, b in splits for c in letters}
        seen = [
            t
            for t in edits
            if _SPELLABLE.fullmatch(t) and any(t in s.vocab for s in self._segments)
        ]
        freq = self.document_frequencies(seen)
        known = [t for t in seen if freq[t]]
        return max(known, key=lambda t: (freq[t], t)) if known else None

    def _term_frequency_parts(self) -> list[np.ndarray]:
        """Per segment and posting, tf / (tf + k1 (1 - b + b dl / avgdl)): what a posting adds
        to a score, over its term's idf. Made once per index, on its first search (two threads
        may both make it; the result is the same)."""
        if self._tfc is None:
            parts = []
            for seg in self._segments:
                norm = (K1 * (1 - B + B * seg.lengths / self._avgdl)).astype(np.float32)
                tf = seg.tfs.astype(np.float32)
                parts.append(tf / (norm[seg.rows] + tf))
            self._tfc = parts
        return self._tfc

    def scores(self, terms: list[str]) -> np.ndarray:
        """float32 BM25 score of every row (live or not; dead rows score 0) for query `terms`
        (repeats count again, as in bm25s)."""
        out = np.zeros(len(self._row_ids), dtype=np.float32)
        n = len(self.ids)
        df = self.document_frequencies(set(terms))
        tfcs = self._term_frequency_parts()
        for term in terms:
            if not df[term]:
                continue
            idf = np.float32(np.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5)))
            for seg, live, tfc, off in zip(
                self._segments, self._live, tfcs, self._offsets, strict=False
            ):
                col = seg.vocab.get(term)
                if col is None:
                    continue
                lo, hi = seg.indptr[col], seg.indptr[col + 1]
                rows, part = seg.rows[lo:hi], tfc[lo:hi]
                if live is not None:
                    alive = live[rows]
                    rows, part = rows[alive], part[alive]
                out[off + rows] += idf * part
        return out

    def search(
        self, query: str, k: int, allowed: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        """Top k (chunk id, score) pairs with a positive score; `allowed` masks rows by chunk id.

        The k-th best score is found by partitioning the matched rows' scores (values, not
        indices: ~30% faster than argpartition, and no sort of the many zeros), and ties at that
        score go to the lowest rows, so results are deterministic.
        """
        if not self.size:
            return []
        terms = query_terms(query)
        if not terms:
            return []
        scores = self.scores(terms)
        if allowed is not None:
            scores = np.where(np.isin(self._row_ids, allowed), scores, 0)
        rows = np.flatnonzero(scores > 0)
        if len(rows) > k:
            matched = scores[rows]
            kth = np.partition(matched, len(matched) - k)[len(matched) - k]
            above, tied = rows[matched > kth], rows[matched == kth]
            rows = np.concatenate([above, tied[: k - len(above)]])
        rows = rows[np.lexsort((rows, -scores[rows]))]  # by score, ties by row: deterministic
        return list(zip(self._row_ids[rows].tolist(), scores[rows].tolist(), strict=True))


def _live_rows(part: tuple[_Segment, np.ndarray | None]) -> int:
    seg, live = part
    return len(seg.ids) if live is None else int(live.sum())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

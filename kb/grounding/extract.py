"""Extractive answers: the passages' own sentences that best answer the question.

No generator runs. Each sentence of the given passages is scored against the question:
BM25-style term weights (inverse document frequencies from the collection's own index) and
the embedder's cosine, or the configured cross-encoder in its place. The best sentence
answers, with its neighbour when it is too short to stand alone, each quoted with its
citation and its character offsets into the source document.

The same scores decide whether the passages cover the question at all: not when the best
sentence matches it only loosely, nor when the question names a term that a collection big
enough to know ordinary words never uses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kb.grounding.evidence import terms
from kb.grounding.scorers import EmbeddingScorer
from kb.grounding.sentences import split_sentences, windows, word_count
from kb.types import Passage

#: sentences scored by the embedder (or re-ranker) after the lexical pre-selection; encoding
#: them is most of an extractive answer's time, and 12 found no more gold answers than 6
CANDIDATES = 6
#: a sentence's score: this share from the question's term weight it holds, the rest from the
#: embedder. Lexical-heavy because MiniLM ranks topical sentences above the ones that answer:
#: on the SQLite manual's 40 questions the top three sentences held a gold answer string for
#: 24-25 at 0.7 against 21-23 at 0.5 and 0.3 (docs/benchmarks.md)
LEXICAL_WEIGHT = 0.7
#: a best sentence shorter than this many words takes the next sentence of its passage too
MIN_WORDS = 8
#: the answer: the best sentences, at most this many words and sentences, each scoring at least
#: RELATIVE_FLOOR of the best one
MAX_WORDS = 70
MAX_SENTENCES = 3
RELATIVE_FLOOR = 0.6
#: a question term that a collection of at least this many chunks never uses names something
#: the documents do not cover ("vec0", "isolation_level"); a smaller collection's vocabulary
#: misses ordinary words, so there an unseen word says nothing
VOCABULARY_ROWS = 2000
#: sentences longer than this (table dumps, run-on text) are scored in pieces this long
MAX_SENTENCE_WORDS = 40
#: a question that asks for an amount, a size or a time wants a sentence with a number in it
_QUANTITY = re.compile(
    r"\b(?:how (?:many|much|big|large|long|often|old|small|far)|what (?:year|size|number)"
    r"|when\b|maximum|minimum|largest|smallest|default (?:size|value|limit))",
    re.IGNORECASE,
)
_HAS_NUMBER = re.compile(
    r"\d|\b(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|hundred"
    r"|thousand|million|billion)\b",
    re.IGNORECASE,
)
NUMBER_BONUS = 0.1
_WORD = re.compile(r"\w+")
#: a sentence's terms count fully, its previous sentence's at this weight ("It lays three
#: eggs" answers a question about the heron that the sentence before it names)
CONTEXT_WEIGHT = 0.5
#: question words (stemmed as BM25 stems them), which BM25's stop-word list keeps
QUESTION_WORDS = frozenset(
    [
        "how",
        "what",
        "which",
        "why",
        "when",
        "where",
        "who",
        "whom",
        "whose",
        "do",
        "doe",
        "did",
        "can",
        "could",
        "would",
        "should",
        "shall",
        "will",
        "may",
        "might",
        "must",
    ]
)


@dataclass
class Quote:
    """A sentence quoted from passage `n`; `start:end` index the source document's text."""

    text: str
    n: int
    chunk_id: int
    source: str
    start: int
    end: int
    page: int | None
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "passage": self.n,
            "chunk_id": self.chunk_id,
            "source": self.source,
            "start": self.start,
            "end": self.end,
            "page": self.page,
            "score": round(self.score, 4),
        }


@dataclass
class Extract:
    text: str
    quotes: list[Quote] = field(default_factory=list)
    score: float = 0.0  # the best sentence's score
    covered: bool = False
    #: question terms the collection never uses (checked in collections of VOCABULARY_ROWS+)
    unknown: list[str] = field(default_factory=list)


@dataclass
class _Candidate:
    n: int
    index: int  # sentence number within its passage
    text: str
    start: int  # offsets into the passage text
    end: int
    previous: str = ""  # the sentence before it in its passage
    following: _Candidate | None = None  # the sentence after it, when it is a candidate
    lexical: float = 0.0
    semantic: float = 0.0
    bonus: float = 0.0

    @property
    def score(self) -> float:
        return LEXICAL_WEIGHT * self.lexical + (1 - LEXICAL_WEIGHT) * self.semantic + self.bonus


class Extractor:
    """Builds extractive answers; `doc_freq(terms) -> (rows, {term: rows containing it})`."""

    def __init__(
        self,
        scorer: EmbeddingScorer,
        *,
        rerank: Callable[[list[tuple[str, str]]], Sequence[float]] | None = None,
        min_score: float = 0.3,
        ordinary: Callable[[str], bool] | None = None,
    ):
        self.scorer = scorer
        self.rerank = rerank
        self.min_score = min_score
        #: whether a word is ordinary language (the embedder's vocabulary holds it whole):
        #: such a word is neither a typo to correct nor, when the collection lacks it, a
        #: subject the documents miss ("occupy" is a paraphrase; "cloudflare" is a product)
        self.ordinary = ordinary or (lambda word: False)

    def rank(
        self,
        question: str,
        passages: Sequence[Passage],
        doc_freq: Callable[[list[str]], tuple[int, dict[str, int]]] | None = None,
        respell: Callable[[str, str], str | None] | None = None,
    ) -> tuple[list[_Candidate], list[str]]:
        """The shortlisted sentences, best first, and the question terms the collection lacks.
        `respell(term, word)` gives the collection's term that a misspelt question word meant
        ("vaccum" -> "vacuum"), so a typo neither reads as a subject the documents do not
        cover nor loses its match."""
        q_terms = sorted(terms(question) - QUESTION_WORDS)
        words = {w: terms(w) for w in set(_WORD.findall(question.lower()))}
        plain = {w for w in words if self.ordinary(w)}
        if respell is not None:
            q_terms = _respelled(words, plain, q_terms, respell)
        weights, unknown = _idf(q_terms, doc_freq)
        unknown = [t for t in unknown if any(t in ts for w, ts in words.items() if w not in plain)]
        total = sum(weights.values()) or 1.0
        candidates = self._candidates(passages)
        if not candidates or not q_terms:
            return [], unknown
        wants_number = bool(_QUANTITY.search(question))
        for c in candidates:
            found, before = terms(c.text), terms(c.previous)
            c.lexical = (
                sum(
                    w if t in found else CONTEXT_WEIGHT * w
                    for t, w in weights.items()
                    if t in found or t in before
                )
                / total
            )
            if wants_number and _HAS_NUMBER.search(c.text):
                c.bonus = NUMBER_BONUS
        # the best lexical matches, the top passages' sentences breaking ties
        shortlist = sorted(candidates, key=lambda c: (-c.lexical - c.bonus, c.n, c.index))
        shortlist = shortlist[:CANDIDATES]
        texts = [c.text for c in shortlist]
        if self.rerank is not None:
            raw = self.rerank([(question, t) for t in texts])
            semantic = [1.0 / (1.0 + math.exp(-float(s))) for s in raw]
        else:
            semantic = self.scorer.similarity([question], texts)[0].tolist()
        for c, s in zip(shortlist, semantic, strict=True):
            c.semantic = float(s)
        shortlist.sort(key=lambda c: (-c.score, c.n, c.index))
        for c in shortlist:
            c.following = next(
                (x for x in candidates if x.n == c.n and x.index == c.index + 1), None
            )
        return shortlist, unknown

    def answer(
        self,
        question: str,
        passages: Sequence[Passage],
        doc_freq: Callable[[list[str]], tuple[int, dict[str, int]]] | None = None,
        respell: Callable[[str, str], str | None] | None = None,
    ) -> Extract:
        ranked, unknown = self.rank(question, passages, doc_freq, respell)
        if not ranked:
            return Extract(text="", unknown=unknown)
        best = ranked[0]
        quotes = [_quote(c, passages[c.n - 1]) for c in _compose(ranked)]
        # a quote keeps its source's line breaks (its offsets index them); the answer reads as prose
        text = " ".join(f"{' '.join(q.text.split())} [{q.n}]" for q in quotes)
        covered = best.score - best.bonus >= self.min_score and not unknown
        return Extract(text, quotes, best.score, covered, unknown)

    def _candidates(self, passages: Sequence[Passage]) -> list[_Candidate]:
        """Every sentence worth quoting, once: a sentence repeated by overlapping chunks or
        copied across pages is kept from the best-ranked passage only."""
        out = []
        seen: set[str] = set()
        for n, p in enumerate(passages, 1):
            previous = p.title or ""
            pieces = [w for s in split_sentences(p.text) for w in windows(s, MAX_SENTENCE_WORDS)]
            for i, span in enumerate(pieces):
                key = " ".join(span.text.lower().split())
                if word_count(span.text) >= 3 and terms(span.text) and key not in seen:
                    seen.add(key)
                    out.append(_Candidate(n, i, span.text, span.start, span.end, previous))
                previous = span.text
        return out


def _compose(ranked: list[_Candidate]) -> list[_Candidate]:
    """The best sentences, best first, within MAX_WORDS; a short best one keeps its neighbour."""
    best = ranked[0]
    chosen: list[_Candidate] = []
    words = 0

    def take(c: _Candidate) -> None:
        nonlocal words
        fits = words + word_count(c.text) <= MAX_WORDS
        if c not in chosen and len(chosen) < MAX_SENTENCES and fits:
            chosen.append(c)
            words += word_count(c.text)

    take(best)
    if best.following and (word_count(best.text) < MIN_WORDS or best.text.rstrip().endswith(":")):
        take(best.following)
    for c in ranked[1:]:
        if c.score >= RELATIVE_FLOOR * best.score:
            take(c)
    return chosen


def _respelled(
    words: dict[str, set[str]],
    plain: set[str],
    q_terms: list[str],
    respell: Callable[[str, str], str | None],
) -> list[str]:
    out = set(q_terms)
    for word, word_terms in words.items():
        if word in plain:
            continue
        for term in word_terms & out:
            if (fixed := respell(term, word)) is not None:
                out.discard(term)
                out.add(fixed)
    return sorted(out)


def _idf(
    q_terms: list[str], doc_freq: Callable[[list[str]], tuple[int, dict[str, int]]] | None
) -> tuple[dict[str, float], list[str]]:
    """Each term's inverse document frequency, and the terms a big collection never uses."""
    if doc_freq is None:
        return dict.fromkeys(q_terms, 1.0), []
    rows, df = doc_freq(q_terms)
    unknown = [t for t in q_terms if df.get(t, 0) < 1] if rows >= VOCABULARY_ROWS else []
    # a term the collection never uses weighs as much as one it uses once: a paraphrase's
    # unseen word must not outweigh the rest of the question
    seen = {t: min(max(df.get(t, 0), 1), rows) for t in q_terms}
    weights = {t: math.log(1.0 + (rows - n + 0.5) / (n + 0.5)) for t, n in seen.items()}
    return weights, unknown


def _quote(c: _Candidate, p: Passage) -> Quote:
    return Quote(
        text=c.text,
        n=c.n,
        chunk_id=p.chunk_id,
        source=p.source,
        start=p.start + c.start,
        end=p.start + c.end,
        page=p.page,
        score=c.score,
    )

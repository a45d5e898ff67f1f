"""The support check: every sentence of a grounded answer scored against the passages given.

A sentence is a claim when it has content words and is not the not-covered sentence. A claim
is supported by passage n when (a) every number, identifier, name and quoted string in it
occurs in passage n, and (b) its score, half the share of its content terms found in passage
n and half the scorer's best match among the passage's sentences, reaches the threshold.
Citations to passages the model was not given are removed from the text and reported;
a supported claim cites the passage it rests on (the model's own citation when that one
supports it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kb.grounding.evidence import missing_tokens, normalise, strip_citations, terms
from kb.grounding.scorers import SupportScorer
from kb.grounding.sentences import Span, split_sentences
from kb.types import Passage

POLICIES = ("flag", "drop", "fallback")
_CITATION = re.compile(r"[ \t]*\[\s*(\d+(?:\s*[,;]\s*\d+)*)\s*\]")
#: passage windows scored per claim: its sentences and each pair of neighbours, this long at most
_WINDOW_CHARS = 1200


@dataclass
class SentenceSupport:
    """One sentence of an answer: where it is, whether it is a claim, and what backs it."""

    text: str
    start: int
    end: int
    claim: bool
    score: float | None = None
    passage: int | None = None  # the passage (numbered as in the prompt) it rests on
    supported: bool | None = None  # None: not a claim
    missing: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "start": self.start,
            "end": self.end,
            "claim": self.claim,
            "score": None if self.score is None else round(self.score, 4),
            "passage": self.passage,
            "supported": self.supported,
            "missing": self.missing,
        }


@dataclass
class SupportReport:
    """The check of one answer and what the policy did with it."""

    policy: str
    scorer: str
    threshold: float
    sentences: list[SentenceSupport] = field(default_factory=list)
    removed_citations: list[int] = field(default_factory=list)
    #: kept (all claims supported), flagged, dropped (some sentences removed), fallback
    #: (the extractive answer replaced it), not_covered (nothing supported was left), extract
    action: str = "kept"
    generated: str | None = None  # the model's own text, when the answer returned differs

    @property
    def claims(self) -> list[SentenceSupport]:
        return [s for s in self.sentences if s.claim]

    @property
    def supported_share(self) -> float | None:
        claims = self.claims
        return sum(bool(s.supported) for s in claims) / len(claims) if claims else None

    @property
    def all_supported(self) -> bool:
        return all(s.supported for s in self.claims)

    def to_dict(self) -> dict[str, Any]:
        share = self.supported_share
        return {
            "policy": self.policy,
            "scorer": self.scorer,
            "threshold": self.threshold,
            "action": self.action,
            "supported_share": None if share is None else round(share, 4),
            "sentences": [s.to_dict() for s in self.sentences],
            "removed_citations": self.removed_citations,
            "generated": self.generated,
        }


def remove_foreign_citations(answer: str, given: int) -> tuple[str, list[int]]:
    """`answer` without citations of passages outside 1..given, and the numbers removed."""
    removed: list[int] = []

    def keep(match: re.Match) -> str:
        numbers = [int(n) for n in re.split(r"\s*[,;]\s*", match.group(1))]
        ok = [n for n in numbers if 1 <= n <= given]
        removed.extend(n for n in numbers if not 1 <= n <= given)
        if not ok:
            return ""
        if len(ok) == len(numbers):
            return match.group()
        lead = match.group()[: len(match.group()) - len(match.group().lstrip())]
        return f"{lead}[{', '.join(map(str, ok))}]"

    cleaned = _CITATION.sub(keep, answer)
    return cleaned, sorted(set(removed))


def cited_in(sentence: str) -> list[int]:
    return [int(n) for g in _CITATION.findall(sentence) for n in re.split(r"\s*[,;]\s*", g)]


def is_not_covered(text: str, not_covered: str) -> bool:
    """Whether a sentence says the not-covered sentence (in the model's words, near enough)."""
    said, fixed = terms(text), terms(not_covered)
    return bool(fixed) and len(said & fixed) >= 0.75 * len(fixed) and len(said) <= 2 * len(fixed)


class SupportChecker:
    """Checks answers against their passages with one scorer and one threshold."""

    def __init__(self, scorer: SupportScorer, threshold: float):
        self.scorer = scorer
        self.threshold = threshold

    def check(
        self, answer: str, passages: Sequence[Passage], *, policy: str, not_covered: str
    ) -> tuple[str, SupportReport]:
        """The answer with its citations repaired, and the report (policy not yet applied)."""
        report = SupportReport(policy=policy, scorer=self.scorer.name, threshold=self.threshold)
        text, report.removed_citations = remove_foreign_citations(answer, len(passages))
        spans = split_sentences(text)
        sentences = [
            SentenceSupport(
                s.text,
                s.start,
                s.end,
                claim=bool(terms(s.text)) and not is_not_covered(s.text, not_covered),
            )
            for s in spans
        ]
        claims = [s for s in sentences if s.claim]
        if claims and passages:
            self._score(claims, passages)
        report.sentences = sentences
        text = _recite(text, spans, sentences)
        report.sentences = _respan(text, sentences)
        return text, report

    def _score(self, claims: list[SentenceSupport], passages: Sequence[Passage]) -> None:
        windows: list[str] = []
        owner: list[int] = []
        for i, p in enumerate(passages):
            for w in _windows(p.text):
                windows.append(w)
                owner.append(i)
        plain = [strip_citations(c.text).strip() for c in claims]
        sim = self.scorer.similarity(plain, windows)
        owner_arr = np.asarray(owner)
        for row, claim in enumerate(claims):
            claim_terms = terms(claim.text)
            cited = set(cited_in(claim.text))
            best: tuple[float, float, int, list[str]] | None = None
            for i, p in enumerate(passages):
                semantic = float(sim[row, owner_arr == i].max()) if (owner_arr == i).any() else 0.0
                lexical = len(claim_terms & terms(p.text)) / len(claim_terms)
                score = 0.5 * lexical + 0.5 * semantic
                missing = missing_tokens(claim.text, p.text)
                ok = not missing and score >= self.threshold
                # rank: supported first, the model's own citation among equals, then score
                key = (float(ok), float(ok and (i + 1) in cited), score, i)
                if best is None or key[:3] > (best[0], best[1], best[2]):
                    best = (key[0], key[1], score, i)
                    best_missing = missing
            assert best is not None
            claim.supported = bool(best[0])
            claim.score = best[2]
            claim.passage = best[3] + 1
            claim.missing = best_missing


def _windows(text: str) -> list[str]:
    spans = [s.text for s in split_sentences(text)] or [text]
    pairs = [f"{a} {b}" for a, b in zip(spans, spans[1:], strict=False)]
    return [w[:_WINDOW_CHARS] for w in [*spans, *pairs]]


def _recite(text: str, spans: list[Span], sentences: list[SentenceSupport]) -> str:
    """Each supported claim cites the passage it rests on (in place of other citations)."""
    out: list[str] = []
    cursor = 0
    for span, s in zip(spans, sentences, strict=True):
        out.append(text[cursor : span.start])
        body = span.text
        if s.claim and s.supported and s.passage not in cited_in(body):
            bare = _CITATION.sub("", body).rstrip()
            end = len(bare) - len(bare.rstrip(".!?:;"))
            body = f"{bare[: len(bare) - end]} [{s.passage}]{bare[len(bare) - end :]}"
        out.append(body)
        cursor = span.end
    out.append(text[cursor:])
    return "".join(out)


def _respan(text: str, sentences: list[SentenceSupport]) -> list[SentenceSupport]:
    """The sentences' text and offsets in the re-cited answer (same order, same count)."""
    spans = split_sentences(text)
    if len(spans) != len(sentences):  # a rewrite that changed the split: keep the old offsets
        return sentences
    for s, span in zip(sentences, spans, strict=True):
        s.text, s.start, s.end = span.text, span.start, span.end
    return sentences


def join_sentences(sentences: Sequence[SentenceSupport]) -> str:
    return " ".join(s.text for s in sentences).strip()


def normalised_equal(a: str, b: str) -> bool:
    return normalise(a) == normalise(b)

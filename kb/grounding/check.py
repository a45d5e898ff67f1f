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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kb.grounding.evidence import missing_tokens, strip_citations, terms
from kb.grounding.scorers import SupportScorer
from kb.grounding.sentences import split_sentences
from kb.types import Passage

POLICIES = ("flag", "drop", "fallback")
#: [1], [1, 2], [1][2], [1-3]: one citation group (ranges with a hyphen or an en dash)
_CITATION = re.compile(r"[ \t]*\[\s*(\d+(?:\s*(?:[,;]|[-\u2013])\s*\d+)*)\s*\]")
#: passage windows scored per claim: its sentences and each pair of neighbours, this long at most
_WINDOW_CHARS = 1200
#: a held-back citation that grows past this many characters is not a citation
_MAX_CITATION_CHARS = 24


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
    #: (the extractive answer replaced it), not_covered (nothing supported was left)
    action: str = "kept"
    generated: str | None = None  # the model's own text, when the answer returned differs
    #: the model's text with its citations repaired: what `sentences` offsets index (the answer
    #: itself when the action is kept or flagged)
    checked: str = ""
    #: supported claims / claims of the answer that went out (None: it makes no claim)
    answer_share: float | None = None

    @property
    def claims(self) -> list[SentenceSupport]:
        return [s for s in self.sentences if s.claim]

    @property
    def generated_share(self) -> float | None:
        """Supported claims / claims of the model's own text."""
        claims = self.claims
        return sum(bool(s.supported) for s in claims) / len(claims) if claims else None

    @property
    def all_supported(self) -> bool:
        return all(s.supported for s in self.claims)

    def to_dict(self) -> dict[str, Any]:
        def share(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        return {
            "policy": self.policy,
            "scorer": self.scorer,
            "threshold": self.threshold,
            "action": self.action,
            "supported_share": share(self.answer_share),
            "generated_share": share(self.generated_share),
            "sentences": [s.to_dict() for s in self.sentences],
            "checked": self.checked,
            "removed_citations": self.removed_citations,
            "generated": self.generated,
        }


def remove_foreign_citations(answer: str, given: int) -> tuple[str, list[int]]:
    """`answer` without citations of passages outside 1..given, and the numbers removed."""
    removed: list[int] = []

    def keep(match: re.Match) -> str:
        numbers = _numbers(match.group(1))
        ok = [n for n in numbers if 1 <= n <= given]
        removed.extend(n for n in numbers if not 1 <= n <= given)
        if not ok:
            return ""
        if len(ok) == len(numbers) and not re.search(r"[-\u2013]", match.group(1)):
            return match.group()
        lead = match.group()[: len(match.group()) - len(match.group().lstrip())]
        return f"{lead}[{', '.join(map(str, ok))}]"

    cleaned = _CITATION.sub(keep, answer)
    return cleaned, sorted(set(removed))


def _numbers(group: str) -> list[int]:
    """'1, 3-5' -> [1, 3, 4, 5] (a range of more than 20 is read as its two ends)."""
    out: list[int] = []
    for part in re.split(r"\s*[,;]\s*", group):
        ends = [int(n) for n in re.split(r"\s*[-\u2013]\s*", part)]
        lo, hi = ends[0], ends[-1]
        out += list(range(lo, hi + 1)) if 0 <= hi - lo <= 20 else ends
    return out


def cited_in(sentence: str) -> list[int]:
    return [n for g in _CITATION.findall(sentence) for n in _numbers(g)]


class CitationFilter:
    """Removes citations of passages outside 1..given from text that arrives in pieces (a
    live stream): a `[` is held back until its group closes, then passed on repaired."""

    def __init__(self, given: int):
        self.given = given
        self._held = ""

    def feed(self, piece: str) -> str:
        out: list[str] = []
        for ch in piece:
            if self._held:
                self._held += ch
                if ch == "]":
                    out.append(remove_foreign_citations(self._held, self.given)[0])
                    self._held = ""
                elif not re.fullmatch(r"\[[\d\s,;\-\u2013]*", self._held) or (
                    len(self._held) > _MAX_CITATION_CHARS
                ):
                    out.append(self._held)  # not a citation after all
                    self._held = ""
            elif ch == "[":
                self._held = ch
            else:
                out.append(ch)
        return "".join(out)

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


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
    ) -> SupportReport:
        """The check of one answer (the policy is applied by the caller): each sentence of the
        answer, its citations repaired (`report.checked`), with its score and passage."""
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
        elif claims:
            for c in claims:
                c.supported, c.score = False, 0.0
        report.checked = _recite(text, sentences)
        report.sentences = sentences
        return report

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
        semantic = np.zeros((len(claims), len(passages)), dtype=np.float32)
        for i in range(len(passages)):
            if (owner_arr == i).any():
                semantic[:, i] = sim[:, owner_arr == i].max(axis=1)
        for row, claim in enumerate(claims):
            cited = [n for n in cited_in(claim.text) if 1 <= n <= len(passages)]
            best = None
            for group, lexical, missing in _evidence(claim.text, passages):
                score = 0.5 * lexical + 0.5 * float(semantic[row, group].max())
                ok = not missing and score >= self.threshold
                # supported first; among supported, the passages the model cited; then score
                key = (ok, ok and all(i + 1 in cited for i in group), score)
                if best is None or key > best[0]:
                    best = (key, group, missing)
            assert best is not None
            (ok, _, score), group, missing = best
            claim.supported = ok
            claim.score = score
            claim.passage = group[0] + 1
            claim.missing = missing

    def refuted(self, sentence: str, passages: Sequence[Passage], not_covered: str) -> bool:
        """Whether `check` is sure to find this sentence unsupported, whatever its scorer says:
        for every passage (and the passages it cites together) a number, name or quoted string
        of it is missing, or so few of its content terms occur that even a perfect semantic
        half leaves it under the threshold. No model runs, so a generation can stop at the
        first such sentence."""
        if not terms(sentence) or is_not_covered(sentence, not_covered):
            return False
        if not passages:
            return True
        # the score `_score` computes, with the best semantic half a scorer can give (1.0)
        return not any(
            not missing and 0.5 * lexical + 0.5 * 1.0 >= self.threshold
            for _, lexical, missing in _evidence(sentence, passages)
        )


def _evidence(
    claim: str, passages: Sequence[Passage]
) -> Iterator[tuple[list[int], float, list[str]]]:
    """The evidence a claim may rest on, each with its lexical share and missing key tokens:
    each passage alone, then the passages it cites together (a sentence may join two facts,
    each from the passage it cites)."""
    claim_terms = terms(claim)
    cited = [n for n in cited_in(claim) if 1 <= n <= len(passages)]
    options = [([i], passages[i].text) for i in range(len(passages))]
    if len(set(cited)) > 1:
        group = sorted({n - 1 for n in cited})
        options.append((group, "\n".join(passages[i].text for i in group)))
    for group, evidence in options:
        lexical = len(claim_terms & terms(evidence)) / len(claim_terms)
        yield group, lexical, missing_tokens(claim, evidence)


def _windows(text: str) -> list[str]:
    spans = [s.text for s in split_sentences(text)] or [text]
    pairs = [f"{a} {b}" for a, b in zip(spans, spans[1:], strict=False)]
    return [w[:_WINDOW_CHARS] for w in [*spans, *pairs]]


def _recite(text: str, sentences: list[SentenceSupport]) -> str:
    """A supported claim cites the passage(s) it rests on; an unsupported one cites nothing
    (a citation the check refuted would vouch for it). Updates the sentences' text and
    offsets to the text returned."""
    out: list[str] = []
    cursor = 0
    at = 0
    for s in sentences:
        gap = text[cursor : s.start]
        out.append(gap)
        at += len(gap)
        body = s.text
        if s.claim and not s.supported:
            body = _CITATION.sub("", body).rstrip() or body
        elif s.claim and s.supported and s.passage not in cited_in(body):
            bare = _CITATION.sub("", body).rstrip()
            end = len(bare) - len(bare.rstrip(".!?:;"))
            body = f"{bare[: len(bare) - end]} [{s.passage}]{bare[len(bare) - end :]}"
        cursor = s.end
        s.text, s.start, s.end = body, at, at + len(body)
        out.append(body)
        at += len(body)
    out.append(text[cursor:])
    return "".join(out)


def join_sentences(sentences: Sequence[SentenceSupport]) -> str:
    return " ".join(s.text for s in sentences).strip()

"""Lexical evidence: the content terms of a text and the exact tokens a claim must find.

A sentence can read like its passage and still change the one thing that matters: a number,
an identifier, a name, a quoted string. Those must occur in the passage the sentence rests on.
"""

from __future__ import annotations

import re
from functools import lru_cache

from kb.store.bm25 import query_terms

_CITATION = re.compile(r"\[\s*\d+(?:\s*(?:[,;]|[-\u2013])\s*\d+)*\s*\]")
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d(?:[\d,_]*\d)?(?:\.\d+)*(?![\w])")
_QUOTED = re.compile(r"\"([^\"\n]{2,80})\"|“([^”\n]{2,80})”|`([^`\n]{1,80})`")
#: snake_case, camelCase, dotted.names, calls(), ALLCAPS (SQL keywords, constants), v2-style words
_IDENTIFIER = re.compile(
    r"\b(?:[A-Za-z]\w*_\w+|[a-z]+[A-Z]\w*|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+|[A-Za-z_]\w*\(\)"
    r"|[A-Z]{2,}[a-z]\w*|[A-Z]{2,}\d*\b|[A-Za-z]+\d+\w*)"
)
#: a capitalised word inside a sentence (not its first word): a name, a product, a place
_NAME = re.compile(r"(?<=[a-z,;:)]\s)[A-Z][a-z]+(?:\s+[A-Z][a-z]+)*")
#: capitalised words that are ordinary English in running text
_COMMON = frozenset(
    [
        "I",
        "A",
        "An",
        "The",
        "This",
        "That",
        "These",
        "Those",
        "It",
        "Its",
        "In",
        "On",
        "At",
        "For",
        "From",
        "With",
        "By",
        "Of",
        "To",
        "As",
        "Or",
        "And",
        "But",
        "If",
        "When",
        "Then",
        "There",
        "Here",
        "Yes",
        "No",
        "Not",
        "Note",
        "See",
        "Also",
        "However",
        "Use",
        "Using",
        "Sources",
        "Source",
        "Answer",
    ]
)


def strip_citations(text: str) -> str:
    return _CITATION.sub(" ", text)


@lru_cache(maxsize=4096)
def terms(text: str) -> frozenset[str]:
    """Stemmed content words, as BM25 sees them (stop words dropped)."""
    return frozenset(query_terms(strip_citations(text)))


def key_tokens(sentence: str) -> list[str]:
    """The numbers, identifiers, names and quoted strings of a sentence, in order, unique."""
    text = strip_citations(sentence)
    found: list[str] = []
    for match in _QUOTED.finditer(text):
        found.append(next(g for g in match.groups() if g))
    text_wo_quotes = _QUOTED.sub(" ", text)
    found += [m.group().rstrip(".") for m in _NUMBER.finditer(text_wo_quotes)]
    found += [m.group() for m in _IDENTIFIER.finditer(text_wo_quotes)]
    found += [m.group() for m in _NAME.finditer(text_wo_quotes) if m.group() not in _COMMON]
    out: list[str] = []
    seen: set[str] = set()
    for token in found:
        key = token.strip().lower()
        if key and key not in seen:
            seen.add(key)
            out.append(token.strip())
    return out


def normalise(text: str) -> str:
    """Lower case, one space between words, digit groups joined ("1,000" -> "1000")."""
    flat = " ".join(text.lower().split())
    return re.sub(r"(?<=\d)[,_](?=\d{3}\b)", "", flat)


def occurs(token: str, normalised_text: str) -> bool:
    """Whether `token` occurs in a text made by `normalise`, as a whole word or number."""
    needle = normalise(token)
    if not needle:
        return True
    if needle[0].isdigit() or needle[0] in "+-":
        return re.search(rf"(?<![\d.]){re.escape(needle)}(?![\d])", normalised_text) is not None
    pattern = rf"(?<!\w){re.escape(needle)}" + (r"(?!\w)" if needle[-1].isalnum() else "")
    return re.search(pattern, normalised_text) is not None


def missing_tokens(sentence: str, evidence_text: str) -> list[str]:
    """The key tokens of `sentence` that `evidence_text` does not contain."""
    haystack = normalise(evidence_text)
    return [t for t in key_tokens(sentence) if not occurs(t, haystack)]

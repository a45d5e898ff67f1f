"""Grounded answers: support checks of generated answers and extractive answers.

`check` scores each sentence of an answer against the passages the model was given;
`extract` answers with the passages' own sentences; `scorers` holds what judges support.
"""

from kb.grounding.check import POLICIES, SentenceSupport, SupportChecker, SupportReport
from kb.grounding.extract import Extract, Extractor, Quote
from kb.grounding.scorers import CrossEncoderScorer, EmbeddingScorer, SupportScorer, load_scorer

__all__ = [
    "POLICIES",
    "CrossEncoderScorer",
    "EmbeddingScorer",
    "Extract",
    "Extractor",
    "Quote",
    "SentenceSupport",
    "SupportChecker",
    "SupportReport",
    "SupportScorer",
    "load_scorer",
]

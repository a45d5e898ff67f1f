"""Support scorers: how well a piece of evidence backs a claim, from 0 to 1.

A scorer needs one method, `similarity(claims, evidence)`. What runs everywhere is the
collection's own embedder (cosine of the two texts); a cross-encoder or NLI model given by
path scores each pair directly and is the better judge where one is installed. Lexical
evidence (shared terms, exact numbers and names) is added on top by `kb.grounding.check`,
whatever the scorer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from kb.embedders.base import Embedder
from kb.errors import InvalidInput

SCORER_KINDS = ("embedder", "cross-encoder:<path>", "nli:<path>")
#: texts embedded in one call of the embedder's query path up to this many; more go through
#: its batched ingest path
_SHORT_LIMIT = 64


class SupportScorer(Protocol):
    name: str

    def similarity(self, claims: Sequence[str], evidence: Sequence[str]) -> np.ndarray:
        """Array (len(claims), len(evidence)) of scores in [0, 1]."""


class EmbeddingScorer:
    """Cosine similarity of the embedder's vectors, negative values read as 0."""

    name = "embedder"

    def __init__(self, embedder: Embedder):
        self.embedder = embedder

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.embedder.dimension), dtype=np.float32)
        if len(texts) <= _SHORT_LIMIT:
            return self.embedder.embed_short(list(texts))
        return self.embedder.embed(list(texts))

    def similarity(self, claims: Sequence[str], evidence: Sequence[str]) -> np.ndarray:
        if not claims or not evidence:
            return np.zeros((len(claims), len(evidence)), dtype=np.float32)
        if len(claims) == 1:  # a question: the query cache may already hold its vector
            first = self.embedder.embed_query(claims[0])[None, :]
            return np.clip(first @ self.vectors(evidence).T, 0.0, 1.0)
        both = self.vectors([*claims, *evidence])
        return np.clip(both[: len(claims)] @ both[len(claims) :].T, 0.0, 1.0)


class CrossEncoderScorer:
    """A local cross-encoder (one relevance logit, read through a sigmoid) or NLI model (the
    softmax probability of its entailment label), given by folder path."""

    def __init__(self, path: str, *, nli: bool):
        from pathlib import Path

        from kb.rerank import CrossEncoderReranker

        if not Path(path).is_dir():
            raise InvalidInput(
                f"support scorer model {path!r} is not a local folder; kb loads no weights from "
                "the network: set KB_SUPPORT_SCORER to 'nli:<folder>' or 'cross-encoder:<folder>' "
                "of an installed model, or to 'embedder'"
            )
        self.model = CrossEncoderReranker(path)
        self.nli = nli
        self.name = f"{'nli' if nli else 'cross-encoder'}:{path}"
        labels = self.model.label_names()  # loads the model: a bad one fails here, not mid-answer
        if nli and not any("entail" in name for name in labels):
            raise InvalidInput(
                f"support scorer {self.name!r} has labels {labels} and none is entailment: "
                "give an NLI model, or use cross-encoder:<folder> for a relevance model"
            )

    def similarity(self, claims: Sequence[str], evidence: Sequence[str]) -> np.ndarray:
        if not claims or not evidence:
            return np.zeros((len(claims), len(evidence)), dtype=np.float32)
        # the evidence is the premise, the claim the hypothesis
        pairs = [(e, c) for c in claims for e in evidence]
        raw = np.asarray(self.model.score_pairs(pairs), dtype=np.float64)
        if raw.ndim == 2 and raw.shape[1] > 1:
            labels = self.model.label_names()
            col = next((i for i, name in enumerate(labels) if "entail" in name), raw.shape[1] - 1)
            exp = np.exp(raw - raw.max(axis=1, keepdims=True))
            scores = exp[:, col] / exp.sum(axis=1)
        else:
            scores = 1.0 / (1.0 + np.exp(-raw.reshape(-1)))
        return scores.reshape(len(claims), len(evidence)).astype(np.float32)


def load_scorer(spec: str, embedder: Callable[[], Embedder]) -> SupportScorer:
    """'embedder', 'cross-encoder:<path>' or 'nli:<path>'; `embedder` gives the collection's."""
    kind, _, path = spec.partition(":")
    if spec == "embedder":
        return EmbeddingScorer(embedder())
    if kind in ("cross-encoder", "nli") and path:
        return CrossEncoderScorer(path, nli=kind == "nli")
    raise InvalidInput(
        f"unknown support scorer {spec!r}: set KB_SUPPORT_SCORER to one of {', '.join(SCORER_KINDS)}"
    )

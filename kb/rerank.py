"""Optional re-ranking stage: a cross-encoder scores (query, passage) pairs after fusion."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from kb.errors import InvalidInput
from kb.types import Passage


class CrossEncoderReranker:
    """Re-orders the fused candidates with a local sentence-transformers CrossEncoder."""

    def __init__(self, model: str, batch_size: int = 32):
        if not Path(model).exists():
            raise InvalidInput(
                f"re-ranker {model!r} is not a local folder; kb loads no weights from the "
                "network: set KB_RERANKER to the path of a cross-encoder model, or unset it"
            )
        self.model_path = model
        self.batch_size = batch_size
        self._model = None
        self._lock = threading.Lock()

    def _load(self):
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                from sentence_transformers import CrossEncoder

                self._model = CrossEncoder(self.model_path, device="cpu")
            return self._model

    def score_pairs(self, pairs: list[tuple[str, str]]):
        """The model's raw score (logits) for each (query, text) pair, shape (n, labels) or (n,)."""
        import torch

        model = self._load()
        return model.predict(
            pairs,
            batch_size=self.batch_size,
            show_progress_bar=False,
            activation_fn=torch.nn.Identity(),
        )

    def label_names(self) -> list[str]:
        config = self._load().model.config
        return [str(config.id2label.get(i, i)).lower() for i in range(config.num_labels)]

    def rerank(self, query: str, passages: list[Passage]) -> list[Passage]:
        pairs = [(query, f"{p.title}\n{p.text}" if p.title else p.text) for p in passages]
        scores = self.score_pairs(pairs)
        for p, s in zip(passages, scores, strict=True):
            p.scores["fused"] = p.score
            p.scores["rerank"] = float(s)
            p.score = float(s)
        return sorted(passages, key=lambda p: -p.score)

"""Embeddings from any OpenAI-compatible /v1/embeddings endpoint, through the official client."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kb.embedders.base import Embedder
from kb.errors import BackendError


class OpenAIEmbedder(Embedder):
    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        dimension: int | None = None,
        batch_size: int = 128,
        client=None,
    ):
        from openai import OpenAI

        self.model = model
        self.model_id = f"openai:{model}"
        self.batch_size = batch_size
        self._client = client or OpenAI(base_url=base_url, api_key=api_key or "unused")
        self.dimension = dimension or len(self.embed_batch(["dimension probe"])[0])

    def fingerprint(self) -> str:
        return f"{self.model_id}@{self._client.base_url}"

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        try:
            resp = self._client.embeddings.create(model=self.model, input=list(texts))
        except Exception as exc:  # the client raises many types; report one
            raise BackendError(
                f"embedding endpoint failed for model {self.model!r}: {exc}"
            ) from exc
        return np.asarray([d.embedding for d in resp.data], dtype=np.float32)

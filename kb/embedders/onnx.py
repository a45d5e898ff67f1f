"""A sentence-transformers model run by ONNX Runtime, optionally int8-quantized.

The model is exported once from its local folder (torch.onnx, with the mean pooling inside
the graph) and cached under `<cache_dir>/onnx/`; later loads read the cached file. The export
runs the attention in its eager form, whose plain graph ONNX Runtime's transformer optimizer
fuses into one Attention op per layer (with the embeddings' layer norm and the GELU, not the
residual layer norms: see UNFUSED); the fused graph is kept only when it gives the unfused
graph's outputs. Int8 uses dynamic quantization with per-channel weight scales, of the matrix
products and the fused attention's projections: per-tensor scales moved MiniLM's vectors too
far (mean cosine 0.946 to float32 against 0.994 per-channel on SciFact chunks).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kb.embedders.base import Embedder
from kb.errors import InvalidInput

#: bumped when the export or quantization recipe changes, so stale cached files are not reused
RECIPE = "3"
#: ONNX Runtime's CPU SkipLayerNormalization kernel takes ~4x the Add, Add and LayerNormalization
#: it replaces (42.7 against 11.5 us on one query's [1, 23, 384] tensor): kept unfused, at export
#: and at session load, the int8 query encoder spends 17-36% less CPU
#: (benchmarks/query_encoder.py). ORT ignores an
#: optimizer name it does not know, so a test checks the graph a session really runs.
UNFUSED = "SkipLayerNormFusion"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OnnxEmbedder(Embedder):
    """Embeds with ONNX Runtime; `dtype` is "int8" (dynamic quantization) or "float32"."""

    def __init__(
        self,
        model: str,
        *,
        cache_dir: Path,
        dtype: str = "int8",
        batch_size: int = 64,
        threads: int = 0,
        pad_to_multiple_of: int = 8,
        model_id: str | None = None,
    ):
        if dtype not in ("int8", "float32"):
            raise InvalidInput(f"ONNX embedder dtype {dtype!r}: use 'int8' or 'float32'")
        folder = Path(model)
        if not folder.is_dir():
            raise InvalidInput(
                f"embedding model {model!r} is not a local folder; kb loads no weights from the "
                "network: pass a path to a sentence-transformers model, or use 'minilm'"
            )
        config = _st_config(folder)
        self.path = model
        self.dtype = dtype
        self.batch_size = batch_size
        self.dimension = config["dimension"]
        self.max_seq_length = config["max_seq_length"]
        self.model_id = model_id or f"st:{folder.name}"
        self.onnx_path = exported_model(folder, Path(cache_dir), dtype)

        from tokenizers import Tokenizer

        base = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # two copies that are configured once and never changed again, so the ingest loader
        # thread (counting) and embedding threads can share them without a lock
        self._counter = Tokenizer.from_str(base.to_str())
        self._counter.no_truncation()
        self._counter.no_padding()
        self._encoder = Tokenizer.from_str(base.to_str())
        self._encoder.enable_truncation(self.max_seq_length)
        pad_id = config["pad_id"]
        self._encoder.enable_padding(
            pad_id=pad_id,
            pad_token=base.id_to_token(pad_id) or "[PAD]",
            pad_to_multiple_of=pad_to_multiple_of or None,
        )

        self._session = session(self.onnx_path, threads)
        self._inputs = [i.name for i in self._session.get_inputs()]

    def count_tokens(self, text: str) -> int:
        return len(self._counter.encode(text, add_special_tokens=False).ids)

    def fingerprint(self) -> str:
        exported = Path(self.onnx_path).stat()
        return f"{self.model_id}|onnx-{self.dtype}|{exported.st_size}:{exported.st_mtime_ns}"

    def query_vector(self, text: str) -> np.ndarray:
        """One text straight through the session: a search embeds one query per request, and
        the batching path's sorting, copies and batch encoding are per-request CPU there."""
        encoding = self._encoder.encode(text)
        feeds = {
            "input_ids": np.array([encoding.ids], dtype=np.int64),
            "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
        }
        vec = self._session.run(None, {name: feeds[name] for name in self._inputs})[0][0]
        norm = float(np.sqrt(vec @ vec))
        return (vec / norm if norm else vec).astype(np.float32, copy=False)

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        encodings = self._encoder.encode_batch(list(texts))
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return self._session.run(None, {name: feeds[name] for name in self._inputs})[0]


def session(path: Path, threads: int | None = None, *, optimized_to: Path | None = None):
    """An ONNX Runtime CPU session as kb runs every exported model: `threads` intra-op threads
    (None: ORT's default), no spinning, the graph optimizations less UNFUSED; `optimized_to`
    saves the graph the session runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # spinning workers steal the core from the ingest loader thread and other processes
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("optimization.disable_specified_optimizers", UNFUSED)
    if optimized_to is not None:
        options.optimized_model_filepath = str(optimized_to)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _st_config(folder: Path) -> dict:
    """Dimension, max length, pad id and pooling of a sentence-transformers folder, as written
    by sentence-transformers before 6 (`pooling_mode_mean_tokens`, `max_seq_length`) or since
    (`pooling_mode: "mean"`, the length in the tokenizer's `model_max_length`)."""
    modules = _read_json(folder / "modules.json", [])
    pooling = {}
    for module in modules:
        if module.get("type", "").endswith("Pooling"):
            pooling = _read_json(folder / module["path"] / "config.json", {})
    model_config = _read_json(folder / "config.json", {})
    st_config = _read_json(folder / "sentence_bert_config.json", {})
    if _pooling_modes(pooling) != {"mean"}:
        raise InvalidInput(
            f"embedding model {str(folder)!r} does not use mean pooling, which is all the ONNX "
            "embedder implements: set KB_EMBED_DTYPE=bfloat16 or float32 for this model"
        )
    tokenizer_limit = _read_json(folder / "tokenizer_config.json", {}).get("model_max_length")
    positions = int(model_config.get("max_position_embeddings", 512))
    if isinstance(tokenizer_limit, int) and tokenizer_limit <= 100_000:  # "no limit" is 1e30
        tokenizer_limit = min(tokenizer_limit, positions)  # as sentence-transformers reads it
    else:
        tokenizer_limit = None
    dimension = pooling.get("embedding_dimension") or pooling.get("word_embedding_dimension")
    return {
        "dimension": int(dimension or model_config["hidden_size"]),
        "max_seq_length": int(st_config.get("max_seq_length") or tokenizer_limit or positions),
        "pad_id": int(model_config.get("pad_token_id") or 0),
        "vocab_size": int(model_config.get("vocab_size") or 30000),
        # the attention fusion cannot always read these from the graph
        "num_heads": int(model_config.get("num_attention_heads") or 0),
        "hidden_size": int(model_config.get("hidden_size") or 0),
    }


def _pooling_modes(config: dict) -> set[str]:
    """The pooling modes a Pooling module's config turns on, in either format."""
    mode = config.get("pooling_mode")
    if isinstance(mode, str):
        return {mode}
    if isinstance(mode, list):
        return {str(m) for m in mode}
    prefix = "pooling_mode_"
    return {
        key[len(prefix) :].removesuffix("_tokens").removesuffix("_token")
        for key, on in config.items()
        if key.startswith(prefix) and on is True
    }


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default


def exported_model(folder: Path, cache_dir: Path, dtype: str) -> Path:
    """The cached ONNX file for a model folder and dtype, exported on first use."""
    import onnxruntime
    import torch

    h = hashlib.sha256(RECIPE.encode())
    h.update(f"{torch.__version__};{onnxruntime.__version__};{folder.resolve()}".encode())
    for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        stat = weights.stat()
        h.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    target = cache_dir / "onnx" / f"{folder.name}-{h.hexdigest()[:12]}"
    path = target / f"model.{dtype}.onnx"
    if path.exists():
        return path
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        exported = Path(tmp) / "exported.onnx"
        _export(folder, exported)
        fp32 = Path(tmp) / "model.float32.onnx"
        _fuse(exported, fp32, _st_config(folder))
        built = fp32
        if dtype == "int8":
            built = Path(tmp) / "model.int8.onnx"
            _quantize(fp32, built)
        os.replace(built, path)  # atomic: a concurrent loader sees the whole file or none
        if dtype == "int8" and not (target / "model.float32.onnx").exists():
            shutil.move(fp32, target / "model.float32.onnx")
    return path


def _export(folder: Path, out: Path) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    encoder = model[0].auto_model.eval()
    # SDPA exports a graph the optimizer cannot fuse (its mask arithmetic, IsNaN); a model
    # without an eager path exports as it is, unfused
    if hasattr(encoder, "set_attn_implementation"):
        with contextlib.suppress(ValueError, ImportError):
            encoder.set_attn_implementation("eager")

    class MeanPooled(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids):
            extra = {"token_type_ids": token_type_ids} if typed else {}
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, **extra
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    example = model.tokenizer(
        ["an example", "a longer example text"], padding=True, return_tensors="pt"
    )
    typed = "token_type_ids" in example  # BERT has segment ids, DistilBERT and others do not
    if not typed:
        example["token_type_ids"] = torch.zeros_like(example["input_ids"])
    dynamic = {name: {0: "batch", 1: "tokens"} for name in INPUTS}
    with torch.inference_mode():
        torch.onnx.export(
            MeanPooled(encoder),
            tuple(example[name] for name in INPUTS),
            str(out),
            input_names=list(INPUTS),
            output_names=["embedding"],
            dynamic_axes={**dynamic, "embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


def _fuse(exported: Path, out: Path, config: dict, *, skip_layer_norm: bool = False) -> None:
    """ONNX Runtime's BERT fusions (Attention, EmbedLayerNormalization, BiasGelu; not
    SkipLayerNormalization unless `skip_layer_norm`, which only the benchmark of UNFUSED asks
    for), kept only when the fused graph gives the exported graph's vectors: a model the
    patterns do not fit is written unfused."""
    import logging

    try:
        from onnxruntime.transformers.optimizer import optimize_model

        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        try:
            fused = optimize_model(
                str(exported),
                model_type="bert",
                num_heads=config["num_heads"],
                hidden_size=config["hidden_size"],
                opt_level=0,
                optimization_options=_fusions(skip_layer_norm),
            )
        finally:
            logging.getLogger().setLevel(quiet)
        if fused.get_fused_operator_statistics().get("Attention", 0) == 0:
            raise ValueError("no attention fused")
        fused.save_model_to_file(str(out))
        if _same_outputs(exported, out, vocab=config["vocab_size"]):
            return
    except Exception:  # noqa: BLE001 - any failure to fuse leaves the plain export
        pass
    out.unlink(missing_ok=True)
    shutil.copyfile(exported, out)


def _fusions(skip_layer_norm: bool = False):
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    options.enable_skip_layer_norm = skip_layer_norm  # off in kb's graphs: see UNFUSED
    return options


def _same_outputs(a: Path, b: Path, *, vocab: int, tolerance: float = 1e-3) -> bool:
    """Both graphs on a padded batch of random tokens give the same vectors."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, min(vocab, 20000), size=(3, 40), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1, 25:] = 0  # right padding, as the tokenizer pads
    mask[2, 7:] = 0
    ids[mask == 0] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    outputs = []
    for path in (a, b):
        loaded = session(path)
        names = [i.name for i in loaded.get_inputs()]
        outputs.append(loaded.run(None, {n: feeds[n] for n in names})[0])
    return bool(np.abs(outputs[0] - outputs[1]).max() < tolerance)


def _quantize(fp32: Path, out: Path) -> None:
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing" advice on every call
    try:
        quantize_dynamic(
            str(fp32),
            str(out),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Attention"],
            # the fused graph's contrib ops (Attention, BiasGelu, ...) defeat shape
            # inference, so the quantizer is told that unknown tensors are float32
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        logging.getLogger().setLevel(quiet)

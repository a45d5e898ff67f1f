"""Typed settings, read from KB_* environment variables and an optional .env file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class GeneratorSpec(BaseModel):
    """A named generation model: the bundled SmolLM2, any local HF/GGUF path, or a remote endpoint."""

    name: str
    backend: Literal["local", "openai"] = "local"
    kind: Literal["base", "finetuned"] = "base"  # which answer modes may use it
    # local: "smollm2" (bundled), a Hugging Face folder, or a .gguf file; openai: the remote model id
    model: str = "smollm2"
    adapter: str | None = None  # local LoRA adapter folder
    # local: what runs the weights. "auto" runs a GGUF model without adapter on llama.cpp when
    # llama-cpp-python is installed (it decodes SmolLM2 several times faster than transformers
    # on a CPU, benchmarks/generation.py) and anything else, or when it cannot load, on transformers
    runtime: Literal["auto", "llamacpp", "transformers"] = "auto"
    base_url: str | None = None  # openai backend: e.g. http://localhost:11434/v1
    api_key: str | None = None
    context_window: int = 2048
    max_new_tokens: int = 256
    temperature: float = 0.0


class ApiKeySpec(BaseModel):
    """An API key, optionally limited to some collections and to reading."""

    key: str
    collections: list[str] = Field(default_factory=lambda: ["*"])
    access: Literal["read", "write"] = "write"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KB_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    data_dir: Path = Path("./kb_data")
    default_collection: str = "default"

    # embeddings: "minilm" (bundled all-MiniLM-L6-v2), "st:<name-or-path>", "openai:<model>"
    embedder: str = "minilm"
    # 16: in torch bfloat16 on a CPU, batches of 16 embedded faster than 64 or 128 (2.0x against
    # 1.7x a plain float32 encode; docs/benchmarks.md, ingestion levers)
    embed_batch_size: int = 16
    # local models: bfloat16/float32 run in torch; int8 runs an ONNX Runtime export (cache_dir)
    embed_dtype: Literal["float32", "bfloat16", "int8"] = "bfloat16"
    embed_query_cache: int = 1024  # query vectors kept for repeated searches; 0 disables
    # torch-run models embed single queries through an ONNX Runtime export: "onnx-int8" is
    # per-channel int8 (about 3 ms less CPU a query than float32; SciFact nDCG@10 of hybrid
    # search within 0.004 of it, of dense search with a fine-tuned model 0.010 lower:
    # docs/benchmarks.md), "onnx" float32 (the same vectors as torch)
    embed_query_runtime: Literal["torch", "onnx", "onnx-int8"] = "onnx-int8"
    embed_base_url: str | None = None
    embed_api_key: str | None = None

    # tokens of the embedder's tokenizer. 512 measured best on SciFact and on the SQLite manual
    # against 250 and 384 (docs/benchmarks.md): an abstract or a manual's section stays whole;
    # BM25 reads all of a chunk, MiniLM's vector its first 256 tokens
    chunk_size: int = 512
    chunk_overlap: int = 32
    # leave out of the chunks the lines repeated across at least half of a collection's files
    # (navigation, footers, banners; ingest/boilerplate.py)
    drop_boilerplate: bool = True
    commit_every_chunks: int = 20_000  # a long ingest commits a generation this often

    # retrieval
    retrieval_method: Literal["dense", "bm25", "hybrid"] = "hybrid"
    # "weighted": the two methods' min-max normalised scores, half each. It keeps BM25's margin
    # when a phrase occurs in one passage only, which RRF's ranks throw away, and measured ahead
    # of RRF on SciFact and on the SQLite manual (docs/benchmarks.md); 0.5 is the untuned middle
    fusion: Literal["rrf", "weighted"] = "weighted"
    rrf_k: int = 60
    dense_weight: float = 0.5
    candidates: int = 100  # per-method candidates before fusion
    min_score: float = 0.2  # dense cosine under which a passage does not count as relevant
    # "auto", "flat", "ivf", "hnsw" or a kind with options, e.g. "ivf:nlist=1024,nprobe=32"
    index_type: str = "auto"
    # "auto" switches from exact search to IVF past this many vectors: exact search costs about
    # 0.05 ms per thousand 384-d vectors per query, IVF under 1 ms at recall@10 0.97 for a
    # million (docs/benchmarks.md, scale), and /search must stay fast under concurrent load
    exact_search_max: int = 25_000
    reranker: str | None = None  # a cross-encoder name or path; None disables re-ranking

    # grounded answers (kb.grounding): what a generated answer that its passages do not back
    # becomes. flag: marked per sentence; drop: unsupported sentences removed; fallback: the
    # extractive answer instead. fallback by default: the bundled 135M model often answers
    # fluently from outside its passages, and only a checked answer may go out as grounded
    support_policy: Literal["flag", "drop", "fallback"] = "fallback"
    # "embedder" (the collection's own, on CPU), "cross-encoder:<path>" or "nli:<path>"
    support_scorer: str = "embedder"
    # a claim's score (half term overlap, half the scorer) at which its passage backs it
    support_threshold: float = Field(0.6, ge=0.0, le=1.0)
    # the coverage gate of every grounded mode: the passages' best sentence must score this
    # (0.7 x its share of the question's IDF weight + 0.3 x cosine) or the answer is
    # not-covered without a model. The lowest answerable SQLite question scored 0.35
    extract_min_score: float = Field(0.3, ge=0.0, le=1.0)
    # searches run at once, the rest wait in arrival order; None: one per CPU core, 0: no limit.
    # More threads than cores only time-share the cores and stretch every search's latency
    search_concurrency: int | None = Field(None, ge=0)
    # readers map up to this much of a collection's SQLite file into memory (0: off): a search
    # reads its passages' scattered rows, and once they fall outside SQLite's own 2 MB page
    # cache a mapped row costs no read() call
    sqlite_mmap_mb: int = Field(1024, ge=0)

    # generation
    generators: list[GeneratorSpec] = Field(
        default_factory=lambda: [GeneratorSpec(name="smollm2", backend="local", model="smollm2")]
    )
    default_generator: str = "smollm2"

    # service
    api_keys: list[ApiKeySpec] = Field(default_factory=list)
    ingest_roots: list[Path] = Field(default_factory=list)
    cors_origins: list[str] = Field(default_factory=list)
    max_upload_bytes: int = 50 * 1024 * 1024
    max_upload_files: int = 100
    max_file_bytes: int = 200 * 1024 * 1024  # a loader refuses bigger files

    @property
    def collections_dir(self) -> Path:
        return self.data_dir / "collections"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def evals_dir(self) -> Path:
        return self.data_dir / "evals"

    @field_validator("support_scorer")
    @classmethod
    def _known_scorer(cls, value: str) -> str:
        kind, _, path = value.partition(":")
        if value != "embedder" and not (kind in ("cross-encoder", "nli") and path):
            raise ValueError(
                f"unknown support scorer {value!r}: use 'embedder', 'cross-encoder:<folder>' "
                "or 'nli:<folder>'"
            )
        return value

    @field_validator("index_type")
    @classmethod
    def _known_index_kind(cls, value: str) -> str:
        from kb.store.index import check_kind

        return check_kind(value)  # names the problem: unknown kind or option

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

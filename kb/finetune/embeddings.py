"""Fine-tune a collection's embedding model on (query, relevant passage) pairs, then re-index
the collection with it.

Pairs come from a BEIR folder's qrels (queries.jsonl + corpus.jsonl + qrels/<split>.tsv) or
from a JSONL file: the synthetic Q/A chat data of `kb finetune prepare --from-collection`
(question = the user turn, passage = the chunks named in `metadata.chunk_ids`) or plain
`{"query", "positive"}` records. Training uses MultipleNegativesRankingLoss: every other
passage in the batch is a negative, plus hard negatives mined from the collection itself (top
search hits for the query that are not relevant). The re-index embeds every chunk with the new
model under the collection's write lock and swaps the index in one commit; searches keep using
the old index until then.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from kb.errors import InvalidInput
from kb.finetune.options import EmbeddingsOptions
from kb.jobs import JobContext
from kb.models import ModelRecord, ModelRegistry, file_sha256

JOB_KIND = "embeddings"
MINE_POOL = 20  # search hits looked at per query when mining hard negatives
MAX_GRAD_NORM = 1.0
REINDEX_LOCK_WAIT = 300.0  # seconds to wait for another writer (an ingest) to finish


class EmbeddingFineTuneSpec(EmbeddingsOptions):
    """What to train the embedder on and how: the command's options and settings the edges
    leave at their defaults."""

    mini_batch_size: int = Field(16, ge=1, le=4096)  # sequences embedded at once: bounds memory
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    # non-relevant hits skipped before taking negatives (likely unjudged positives)
    mine_skip: int = Field(0, ge=0, le=MINE_POOL - 1)
    max_seq_len: int | None = Field(None, ge=8)  # default: the model's own limit
    scale: float = Field(20.0, gt=0)  # MultipleNegativesRankingLoss similarity scale

    def check(self) -> None:
        """Refuse a missing or doubled source of pairs before any work starts."""
        if (self.beir is None) == (self.pairs is None):
            raise InvalidInput(
                "pass exactly one source of training pairs: --beir DIR (with --split) or "
                "--pairs FILE.jsonl"
            )
        if self.beir and not Path(self.beir).is_dir():
            raise InvalidInput(f"no BEIR folder at {self.beir!r}: check the path")
        if self.pairs and not Path(self.pairs).is_file():
            raise InvalidInput(f"no pairs file at {self.pairs!r}: check the path")


@dataclass
class TrainPair:
    query: str
    positive: str
    relevant: set[str]  # sources and doc ids that count as relevant to the query
    negatives: list[str] = field(default_factory=list)


Progress = Callable[..., None]


# -- pairs ---------------------------------------------------------------------------------


def beir_pairs(folder: str | Path, split: str = "train") -> list[TrainPair]:
    """One pair per judged-relevant (query, document) of qrels/<split>.tsv; the passage is the
    document as kb ingests a BEIR corpus (title, blank line, text)."""
    from kb.eval.beir import load_beir

    data = load_beir(folder, split)
    pairs = []
    for qid, judged in sorted(data.qrels.items()):
        relevant = {doc for doc, grade in judged.items() if grade > 0}
        for doc_id in sorted(relevant):
            doc = data.corpus.get(doc_id)
            if doc is None:
                continue
            text = f"{doc.title}\n\n{doc.text}" if doc.title else doc.text
            pairs.append(TrainPair(data.queries[qid], text, relevant))
    if not pairs:
        raise InvalidInput(
            f"qrels/{split}.tsv of {folder} judges no query relevant to a corpus document: "
            "pass the training split (--split train)"
        )
    return pairs


def file_pairs(path: str | Path, collection: Any) -> tuple[list[TrainPair], int]:
    """Pairs from a JSONL file, and how many records were skipped (their chunks are gone)."""
    from ingest.pipeline import embed_input

    pairs: list[TrainPair] = []
    skipped = 0
    wanted: list[tuple[str, list[int]]] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInput(
                    f"{path}:{number} is not valid JSON ({exc.msg}): fix it"
                ) from exc
            if isinstance(record.get("query"), str) and isinstance(record.get("positive"), str):
                pairs.append(TrainPair(record["query"], record["positive"], set()))
                continue
            messages = record.get("messages") or []
            users = [
                m.get("content")
                for m in messages
                if isinstance(m, dict) and m.get("role") == "user"
            ]
            ids = (record.get("metadata") or {}).get("chunk_ids") or []
            if not users or not ids:
                raise InvalidInput(
                    f'{path}:{number} is neither {{"query", "positive"}} nor a chat example '
                    "with metadata.chunk_ids: use the synthetic Q/A data of `kb finetune "
                    "prepare --from-collection`"
                )
            wanted.append((str(users[-1]), [int(i) for i in ids]))
    chunks = collection.chunks({i for _, ids in wanted for i in ids}) if wanted else {}
    for query, ids in wanted:
        found = [chunks[i] for i in ids if i in chunks]
        if not found:
            skipped += 1  # the collection changed since the data was prepared
            continue
        for chunk in found:
            text = embed_input(_as_chunk(chunk))
            pairs.append(TrainPair(query, text, {chunk.doc_id, chunk.source}))
    return pairs, skipped


def _as_chunk(record: Any):
    from kb.types import Chunk

    return Chunk(
        text=record.text,
        ordinal=record.ordinal,
        start=record.start,
        end=record.end,
        page=record.page,
        heading=record.heading,
        title=record.title,
    )


def mine_hard_negatives(
    kb: Any,
    collection: str,
    pairs: list[TrainPair],
    count: int,
    *,
    method: str = "hybrid",
    skip: int = 0,
    progress: Progress | None = None,
) -> int:
    """Give each pair `count` negatives: the collection's top hits for its query that are not
    relevant to it. Returns how many pairs got fewer than `count` (topped up at random)."""
    if count == 0:
        return 0
    by_query: dict[str, list[TrainPair]] = {}
    for pair in pairs:
        by_query.setdefault(pair.query, []).append(pair)
    pool_texts: list[str] = []
    short = 0
    for done, (query, group) in enumerate(by_query.items(), 1):
        relevant = set().union(*(p.relevant for p in group))
        positives = {_key(p.positive) for p in group}
        hits = kb.search(query, collection=collection, k=MINE_POOL, method=method)
        negatives = [
            h.text
            for h in hits
            if h.source not in relevant
            and h.doc_id not in relevant
            and _key(h.text) not in positives
            and not any(_key(h.text) in p for p in positives)
        ][skip : skip + count]
        pool_texts += [h.text for h in hits[-3:]]
        for pair in group:
            pair.negatives = list(negatives)
        if progress:
            progress(stage="mining hard negatives", done=done, total=len(by_query))
    rng = random.Random(0)
    for pair in pairs:
        if len(pair.negatives) < count:
            short += 1
            extra = [t for t in pool_texts if _key(t) != _key(pair.positive)] or [pair.positive]
            pair.negatives += [rng.choice(extra) for _ in range(count - len(pair.negatives))]
    return short


def _key(text: str) -> str:
    return " ".join(text.split())[:300]


def batches_without_duplicates(
    pairs: list[TrainPair], batch_size: int, rng: random.Random
) -> list[list[TrainPair]]:
    """Shuffled batches in which no two pairs share a query, a positive or a relevant document,
    so no in-batch negative is in fact relevant."""
    order = pairs[:]
    rng.shuffle(order)
    batches: list[list[TrainPair]] = []
    while order:
        batch, taken, rest = [], set(), []
        for pair in order:
            keys = {"q:" + pair.query, "p:" + _key(pair.positive)} | {
                "r:" + r for r in pair.relevant
            }
            if len(batch) < batch_size and not (keys & taken):
                batch.append(pair)
                taken |= keys
            else:
                rest.append(pair)
        if len(batch) < 2 and batches:
            batches[-1] += batch  # a last lone pair joins the previous batch
        else:
            batches.append(batch)
        order = rest
    return batches


# -- training ------------------------------------------------------------------------------


def base_model_path(embedder: str) -> str:
    """The local folder of a collection's embedder name ("minilm" or "st:<path>")."""
    if embedder == "minilm" or embedder == "st:all-MiniLM-L6-v2":
        from kb.embedders.sentence_transformers import bundled_minilm_path

        return bundled_minilm_path()
    if embedder.startswith("st:") and Path(embedder[3:]).is_dir():
        return embedder[3:]
    raise InvalidInput(
        f"the collection's embedder {embedder!r} is not a local sentence-transformers model, so "
        "it cannot be fine-tuned here: use a collection built with 'minilm' or 'st:<path>'"
    )


def train_embedder(
    base_path: str,
    pairs: list[TrainPair],
    spec: EmbeddingFineTuneSpec,
    out_dir: Path,
    ctx: JobContext | None = None,
) -> dict[str, Any]:
    """Train with MultipleNegativesRankingLoss and save the model to `out_dir`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import contextlib

    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )

    random.seed(spec.seed)
    torch.manual_seed(spec.seed)
    model = SentenceTransformer(base_path, device="cpu")
    if spec.max_seq_len:
        model.max_seq_length = spec.max_seq_len
    if spec.batch_size > spec.mini_batch_size:
        # GradCache: the same loss over the whole batch, with the memory of a mini-batch
        loss_fn = CachedMultipleNegativesRankingLoss(
            model, scale=spec.scale, mini_batch_size=spec.mini_batch_size
        )
    else:
        loss_fn = MultipleNegativesRankingLoss(model, scale=spec.scale)
    encode = getattr(model, "preprocess", None) or model.tokenize  # renamed in v6
    rng = random.Random(spec.seed)
    per_epoch = len(batches_without_duplicates(pairs, spec.batch_size, random.Random(spec.seed)))
    total = per_epoch * spec.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01)
    warmup = int(total * spec.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
        ),
    )
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if spec.dtype == "bfloat16"
        else contextlib.nullcontext()
    )
    model.train()
    started = time.monotonic()
    step, seen, losses = 0, 0, []
    total_pairs = len(pairs) * spec.epochs
    for epoch in range(1, spec.epochs + 1):
        epoch_losses = []
        for batch in batches_without_duplicates(pairs, spec.batch_size, rng):
            if ctx:
                ctx.check_cancelled()
            columns = [[p.query for p in batch], [p.positive for p in batch]]
            columns += [[p.negatives[j] for p in batch] for j in range(spec.hard_negatives)]
            features = [encode(column) for column in columns]
            with autocast:  # the cached loss re-runs the model inside backward()
                loss = loss_fn(features, None)
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            seen += len(batch)
            epoch_losses.append(float(loss.detach()))
            elapsed = time.monotonic() - started
            rate = seen / elapsed if elapsed else 0.0
            if ctx:
                ctx.progress(
                    stage="training",
                    step=step,
                    total_steps=total,
                    epoch=epoch,
                    epochs=spec.epochs,
                    loss=round(epoch_losses[-1], 4),
                    examples_per_s=round(rate, 2),
                    eta_s=round((total_pairs - seen) / rate, 1) if rate else None,
                )
        losses.append(sum(epoch_losses) / max(len(epoch_losses), 1))
        if ctx:
            ctx.event(
                f"epoch {epoch}/{spec.epochs}: loss {losses[-1]:.4f}", epoch=epoch, loss=losses[-1]
            )
    seconds = time.monotonic() - started
    model.eval()
    _save_atomically(model, out_dir)
    return {
        "train_loss": losses[-1],
        "loss_history": losses,
        "pairs": len(pairs),
        "steps": step,
        "train_seconds": round(seconds, 1),
        "pairs_per_s": round(seen / seconds, 2) if seconds else None,
    }


def _save_atomically(model: Any, out_dir: Path) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    model.save(str(staging), create_model_card=False)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.replace(out_dir)


# -- re-indexing ---------------------------------------------------------------------------


def reindex_collection(
    kb: Any, collection: str, embedder: str, ctx: JobContext | None = None
) -> dict[str, Any]:
    """Embed every chunk of `collection` with `embedder` and make it the collection's index in
    one commit, holding the write lock throughout so no chunk is added or lost meanwhile."""
    import numpy as np

    from ingest.pipeline import embed_input

    col = kb.collection(collection)
    model = kb.embedder_for(embedder)
    started = time.monotonic()
    with col.write_lock(REINDEX_LOCK_WAIT):
        records = list(col.iter_chunks())
        ids = np.asarray([r.chunk_id for r in records], dtype=np.int64)
        texts = [embed_input(_as_chunk(r)) for r in records]
        done = 0

        def step(n: int) -> None:
            nonlocal done
            done += n
            if ctx:
                ctx.check_cancelled()
                ctx.progress(stage="re-indexing", done=done, total=len(texts))

        vectors = model.embed(texts, progress=step)
        if ctx:
            ctx.check_cancelled()
        generation = col.commit(embedder=embedder, replace_all_vectors=(ids, vectors))
    seconds = time.monotonic() - started
    if ctx:
        ctx.event(
            f"collection {collection!r} re-indexed: {len(ids)} chunks, generation {generation}, "
            f"{seconds:.0f} s",
            generation=generation,
        )
    return {"chunks": len(ids), "generation": generation, "reindex_seconds": round(seconds, 1)}


# -- the whole job -------------------------------------------------------------------------


def check_embeddings_spec(spec: EmbeddingFineTuneSpec, kb: Any, models: ModelRegistry) -> None:
    """Refuse a bad spec before any work: options, collection, embedder and the model name."""
    spec.check()
    col = kb.collection(spec.collection)
    base_model_path(spec.base or col.embedder)
    if spec.out:
        models.check_new_name(spec.out)


def finetune_embeddings(
    kb: Any, spec: EmbeddingFineTuneSpec, models: ModelRegistry, ctx: JobContext | None = None
) -> dict[str, Any]:
    """Train, save and register the embedding model; then re-index the collection with it."""
    check_embeddings_spec(spec, kb, models)
    col = kb.collection(spec.collection)
    info = col.info()
    base = spec.base or col.embedder
    base_path = base_model_path(base)

    def report(**values: Any) -> None:
        if ctx:
            ctx.check_cancelled()
            ctx.progress(**values)

    if spec.beir:
        pairs = beir_pairs(spec.beir, spec.split)
        dataset: dict[str, Any] = {"path": str(Path(spec.beir).resolve()), "split": spec.split}
        qrels = Path(spec.beir) / "qrels" / f"{spec.split}.tsv"
        dataset["sha256"] = file_sha256(qrels)
        skipped = 0
    else:
        pairs, skipped = file_pairs(spec.pairs, col)
        dataset = {"path": str(Path(spec.pairs).resolve()), "sha256": file_sha256(spec.pairs)}
    dataset["collection"] = {"name": spec.collection, "generation": info["generation"]}
    if spec.max_pairs and len(pairs) > spec.max_pairs:
        pairs = random.Random(spec.seed).sample(pairs, spec.max_pairs)
    if len(pairs) < 2:
        raise InvalidInput(
            f"only {len(pairs)} training pair(s) could be made ({skipped} skipped because their "
            "chunks are no longer in the collection): prepare the data again"
        )
    if ctx:
        ctx.event(
            f"{len(pairs)} training pairs ({skipped} skipped); base model {base}",
            pairs=len(pairs),
            skipped=skipped,
        )
    short = mine_hard_negatives(
        kb,
        spec.collection,
        pairs,
        spec.hard_negatives,
        method=spec.mine_method,
        skip=spec.mine_skip,
        progress=report,
    )
    if ctx and spec.hard_negatives:
        ctx.event(
            f"mined {spec.hard_negatives} hard negative(s) per pair with {spec.mine_method} "
            f"search ({short} pair(s) topped up at random)"
        )
    name = (
        spec.out
        or f"{spec.collection}-emb-{(ctx.id if ctx else str(int(time.time()))).rsplit('-', 1)[-1][:8]}"
    )
    models.check_new_name(name)
    out_dir = models.folder(name, "embedding")
    metrics = train_embedder(base_path, pairs, spec, out_dir, ctx)
    record = models.register(
        ModelRecord(
            name=name,
            kind="embedding",
            backend="sentence-transformers",
            base_model=base,
            path=str(out_dir.resolve()),
            dataset=dataset,
            metrics={**metrics, "hard_negatives": spec.hard_negatives},
            params=spec.to_dict(),
            job_id=ctx.id if ctx else None,
        )
    )
    if ctx:
        ctx.event(f"embedding model {name!r} saved to {out_dir}", model=name)
    result: dict[str, Any] = {
        "model": name,
        "path": record.path,
        "embedder": record.embedder_name,
        "previous_embedder": base,
        "metrics": metrics,
        "reindexed": False,
    }
    if spec.reindex:
        result.update(reindex_collection(kb, spec.collection, record.embedder_name, ctx))
        result["reindexed"] = True
    return result


def embeddings_job(kb: Any, spec: EmbeddingFineTuneSpec, models: ModelRegistry):
    """A JobManager function running `finetune_embeddings`."""

    def run(ctx: JobContext) -> dict[str, Any]:
        from kb.finetune.jobs import watch_cancel_marker

        with watch_cancel_marker(ctx, kb.settings.jobs_dir):
            return finetune_embeddings(kb, spec, models, ctx)

    return run

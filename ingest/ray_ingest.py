"""Ingest on a Ray cluster (`kb ingest PATH --ray`): Ray Data workers parse, chunk and embed the
new and changed files; the driver, the collection's one writer, commits what they return.

The driver lists and hashes the files as a local ingest does, so unchanged files never reach the
cluster. Each worker is a Ray Data actor that loads the embedder once and runs the pipeline's own
`load_source`, `chunk_source` and `embed_input` on a batch of files. Results come back in file
order (`preserve_order`), and the driver commits them through `Ingestor._commit`: the same rows,
chunk ids, reports and crash safety as a local ingest, and a killed run keeps what it had
committed. A worker's batch of files is not a local ingest's batch of chunks, so the embedder
batches only texts of one padded length (`Embedder._batches`), on one thread per batch and at
least 384 tokens to a batch (`SentenceTransformerEmbedder._embed_batches`): with the default
torch embedder on CPUs of one model nothing but the text decides its vector, bit for bit,
whatever the worker's batch of files or the machine's core count. For int8 (ONNX Runtime
scales activations per batch) and GPU workers, vectors agree within bfloat16 tolerance.

Boilerplate dropping (KB_DROP_BOILERPLATE) makes a file's chunks depend on the files before it: a
local ingest judges each file by the line counts of the files read so far. So a first, light pass
on the cluster reads each changed file for its line keys only; the driver replays the counts in
file order exactly as `Ingestor._chunked` does and gives each file the verdicts on its own lines,
which is all its chunking reads. The files are parsed twice for it; KB_DROP_BOILERPLATE=false
skips the pass.

`ray` is imported only when an ingest runs; without the extra, `--ray` raises ExtraMissing.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field

from ingest.boilerplate import LineCounts, file_keys
from ingest.pipeline import (
    BOILERPLATE_WARMUP,
    FILE_ERRORS,
    Ingestor,
    IngestReport,
    Source,
    _Pending,
    chunk_source,
    embed_input,
    failure,
    load_source,
)
from kb.errors import ExtraMissing, InvalidInput
from kb.finetune.options import Spec

if TYPE_CHECKING:
    from kb.settings import Settings

INSTALL_HINT = 'pip install -e ".[ray]"'


class RayIngestOptions(Spec):
    """How an ingest runs on Ray; the CLI's `--ray-*` flags are generated from these fields."""

    ray_address: str | None = Field(
        None,
        description="Ray cluster to run on, e.g. 'auto' (the one `ray start` runs here) or "
        "'ray://HOST:10001'; default: RAY_ADDRESS, else a cluster started here with `ray start`, "
        "else a Ray instance started for this run.",
    )
    ray_workers: int | None = Field(
        None,
        ge=1,
        description="Ray Data workers that parse, chunk and embed, each loading the embedder "
        "once; default: the cluster's CPUs / --ray-cpus (its GPUs / --ray-gpus with GPUs).",
    )
    ray_batch_files: int = Field(
        128, ge=1, description="Files a worker parses, chunks and embeds in one batch."
    )
    ray_cpus: float = Field(
        1.0, gt=0, description="CPUs each worker reserves (and its torch threads)."
    )
    ray_gpus: float = Field(
        0.0,
        ge=0,
        description="GPUs each worker reserves; above 0 the embedder runs on the GPU.",
    )


def require_ray():
    """The `ray` module with Ray Data, or ExtraMissing naming the extra to install."""
    # Ray Data logs every operator's progress at INFO; the CLI draws its own bar
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ExtraMissing(
            f"--ray needs the optional 'ray' extra, which is not installed ({exc}); "
            f"install it with `{INSTALL_HINT}`"
        ) from None
    return ray


@dataclass
class RayConnection:
    """A connection to a Ray cluster; `close` shuts down only an instance this run started."""

    ray: Any
    started: bool

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def connect(address: str | None) -> RayConnection:
    """Join the cluster at `address` (when None: RAY_ADDRESS, a cluster `ray start` began on
    this host, or a new local instance), or keep the connection this process already has."""
    ray = require_ray()
    if ray.is_initialized():
        return RayConnection(ray, started=False)
    # the workers' logs stay in the cluster's log folder: Ray Data prints a line per operator
    # and block otherwise, and a worker's failure still reaches the driver as an exception
    ray.init(address=address, logging_level="WARNING", log_to_driver=False, include_dashboard=False)
    return RayConnection(ray, started=True)


def default_workers(ray, options: RayIngestOptions) -> int:
    if options.ray_workers:
        return options.ray_workers
    resources = ray.cluster_resources()
    if options.ray_gpus > 0:
        return max(1, int(resources.get("GPU", 0) // options.ray_gpus))
    return max(1, int(resources.get("CPU", 1) // options.ray_cpus))


class RayIngestor(Ingestor):
    """An Ingestor whose files are parsed, chunked and embedded on a Ray cluster (this
    process's connection, else `options.ray_address`); the caller holds the write lock."""

    def __init__(self, *args, settings: Settings, options: RayIngestOptions, **kwargs):
        require_ray()
        super().__init__(*args, **kwargs)
        # the workers read no .env of their own: they get the driver's settings, with the data
        # folder absolute because their working directory is not the driver's
        self.settings = settings.model_copy(update={"data_dir": settings.data_dir.resolve()})
        self.options = options
        self._keys: list[tuple[int, list[str]]] = []  # line keys of the files read, in order
        self._keys_counted = 0  # how many of them the committed counts hold

    def sync(
        self,
        sources: Iterable[Source],
        *,
        total: int | None = None,
        prune_origins: Iterable[str] = (),
    ) -> IngestReport:
        started = time.perf_counter()
        report = IngestReport(collection=self.collection.name)
        stored = self.collection.origins()
        self.progress.start(total or 0)
        changed: list[Source] = []
        for source in sources:
            report.files_seen += 1
            if stored.get(source.origin) == source.content_hash:
                report.unchanged += 1
                self.progress.file_done(source.display or source.origin, "unchanged")
            else:
                changed.append(source)

        ready: list[_Pending] = []
        ready_chunks = 0
        connection = connect(self.options.ray_address) if changed else None
        try:
            for index, pending in self._results(changed, stored, report):
                if pending is None:
                    continue
                ready.append(pending)
                ready_chunks += sum(len(c) for _, c, _ in pending.docs)
                if ready_chunks >= self.commit_every:
                    self._count_keys_through(index)
                    self._commit(ready, [], report)
                    ready, ready_chunks = [], 0
        finally:
            if connection is not None:
                connection.close()

        self._count_keys_through(len(changed))
        return self._finish(ready, prune_origins, report, started)

    # -- the cluster's work ----------------------------------------------------------------

    def _results(
        self, changed: list[Source], stored: dict[str, str], report: IngestReport
    ) -> Iterator[tuple[int, _Pending | None]]:
        """(index in `changed`, its loaded, chunked and embedded file or None) in file order."""
        if not changed:
            return
        ray = require_ray()
        views = (
            self._boilerplate_views(ray, changed, report) if self.boilerplate is not None else None
        )
        rows = [
            {
                "i": i,
                "source": ray.cloudpickle.dumps(source),
                "view": views[i].to_json() if views is not None else "",
            }
            for i, source in enumerate(changed)
            if views is None or i in views
        ]
        if not rows:  # every file failed to load in the first pass, and was reported there
            return
        workers = default_workers(ray, self.options)
        # one batch per block: a batch that needs rows of two blocks waits for both, so its
        # worker's first results come back a batch later
        blocks = max(workers * 8, -(-len(rows) // self.options.ray_batch_files))
        embedded = _dataset(ray, rows, blocks).map_batches(
            ChunkEmbedWorker,
            fn_constructor_kwargs={
                "settings": self.settings,
                "embedder": self.collection.embedder,
                "device": "cuda" if self.options.ray_gpus > 0 else None,
            },
            batch_size=-(-len(rows) // blocks),
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=self.options.ray_cpus,
            num_gpus=self.options.ray_gpus or None,
        )
        for row in embedded.iter_rows():
            i = int(row["i"])
            source = changed[i]
            name = source.display or source.origin
            if row["status"] != "ok":
                self._record_failure(name, str(row["status"]), str(row["message"]), report)
                yield i, None
                continue
            docs = pickle.loads(row["payload"])
            n = sum(len(c) for _, c, _ in docs)
            report.chunks_embedded += n
            self.progress.chunks_embedded(n)
            status = "updated" if source.origin in stored else "added"
            yield i, _Pending(source.origin, source.content_hash, status, docs, name)

    def _boilerplate_views(
        self, ray, changed: list[Source], report: IngestReport
    ) -> dict[int, LineCounts]:
        """For each changed file that loads, the counts its chunking reads: the verdicts on its
        own lines at the point where a local ingest chunks it (`Ingestor._chunked`)."""
        rows = [{"i": i, "source": ray.cloudpickle.dumps(s)} for i, s in enumerate(changed)]
        # blocks of a few batches each, so that every worker has work from the start
        keyed = _dataset(ray, rows, default_workers(ray, self.options) * 8).map_batches(
            line_keys_batch,
            batch_size=self.options.ray_batch_files,
            batch_format="numpy",
            num_cpus=self.options.ray_cpus,
        )
        for row in keyed.iter_rows():
            i = int(row["i"])
            if row["status"] != "ok":
                name = changed[i].display or changed[i].origin
                self._record_failure(name, str(row["status"]), str(row["message"]), report)
                continue
            self._keys.append((i, str(row["keys"]).split()))
        return boilerplate_views(self.boilerplate, self._keys)

    def _count_keys_through(self, last: int) -> None:
        """Add the line keys of the files up to `last` to the counts the next commit stores,
        so that they hold the files committed and not those still on their way."""
        if self.boilerplate is None:
            return
        while self._keys_counted < len(self._keys) and self._keys[self._keys_counted][0] <= last:
            self.boilerplate.add_keys(self._keys[self._keys_counted][1])
            self._keys_counted += 1


def boilerplate_views(
    stored: LineCounts, keyed: Iterable[tuple[int, list[str]]]
) -> dict[int, LineCounts]:
    """Per file, the counts its chunking reads, replayed as `Ingestor._chunked` counts: `stored`
    plus each loaded file's line keys in order, the first files held until
    `BOILERPLATE_WARMUP` are counted. A view holds only that file's boilerplate lines."""
    counts = LineCounts(stored.files, dict(stored.counts))
    views: dict[int, LineCounts] = {}
    held: list[tuple[int, list[str]]] = []
    for i, keys in keyed:
        counts.add_keys(keys)
        held.append((i, keys))
        if counts.files >= BOILERPLATE_WARMUP:
            for waiting, waiting_keys in held:
                views[waiting] = _verdicts(counts, waiting_keys)
            held = []
    for waiting, waiting_keys in held:
        views[waiting] = _verdicts(counts, waiting_keys)
    return views


def _verdicts(counts: LineCounts, keys: list[str]) -> LineCounts:
    """`counts` cut down to one file's boilerplate lines: `kept_spans` gives that file the
    same spans from it as from the whole counts."""
    return LineCounts(counts.files, {k: counts.counts[k] for k in keys if counts.is_boilerplate(k)})


def _dataset(ray, rows: list[dict[str, Any]], blocks: int):
    """The rows as a dataset of `blocks` blocks (fewer for fewer rows) whose results come back
    in input order, without progress bars."""
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), blocks)))
    # a dataset keeps a copy of the context it was made in, and so do those derived from it
    dataset.context.execution_options.preserve_order = True
    dataset.context.enable_progress_bars = False
    dataset.context.print_on_execution_start = False
    return dataset


def line_keys_batch(batch: dict[str, Any]) -> dict[str, list]:
    """Ray Data task: each source's distinct line keys (boilerplate counting), or its error."""
    out: dict[str, list] = {"i": [], "status": [], "message": [], "keys": []}
    for i, blob in zip(batch["i"], batch["source"], strict=True):
        source: Source = pickle.loads(blob)
        try:
            keys, status, message = " ".join(sorted(file_keys(load_source(source)))), "ok", ""
        except FILE_ERRORS as exc:
            keys, (status, message) = "", failure(exc)
        out["i"].append(int(i))
        out["status"].append(status)
        out["message"].append(message)
        out["keys"].append(keys)
    return out


class ChunkEmbedWorker:
    """Ray Data actor: loads the embedder once, then loads, chunks and embeds batches of files
    with the pipeline's own functions; returns per file its documents, chunks and vectors."""

    def __init__(self, settings: Settings, embedder: str, device: str | None = None):
        from kb.service import KnowledgeBase

        kb = KnowledgeBase(settings)
        self.embedder = kb.embedder_for(embedder)
        if device is not None:
            to_device = getattr(self.embedder, "to_device", None)
            if to_device is None:
                raise InvalidInput(
                    f"embedder {embedder!r} cannot run on a GPU: use a local model "
                    "('minilm' or 'st:PATH') or leave --ray-gpus at 0"
                )
            to_device(device)
        self.chunker = kb.chunker_for(self.embedder)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        out: dict[str, list] = {"i": [], "status": [], "message": [], "payload": []}
        loaded: list[list] = []  # per file that chunked: its (document, chunks) pairs
        for i, blob, view in zip(batch["i"], batch["source"], batch["view"], strict=True):
            source: Source = pickle.loads(blob)
            counts = LineCounts.from_json(str(view)) if view else None
            try:
                chunked = chunk_source(self.chunker, source, load_source(source), counts)
                status, message = "ok", ""
            except FILE_ERRORS as exc:
                chunked, (status, message) = [], failure(exc)
            out["i"].append(int(i))
            out["status"].append(status)
            out["message"].append(message)
            loaded.append(chunked)
        # one embed call for the whole batch, sorted by length inside as a local ingest does
        texts = [embed_input(c) for chunked in loaded for _, chunks in chunked for c in chunks]
        vectors = self.embedder.embed(texts)
        pos = 0
        for chunked in loaded:
            with_vectors = []
            for doc, chunks in chunked:
                with_vectors.append((doc, chunks, vectors[pos : pos + len(chunks)]))
                pos += len(chunks)
            out["payload"].append(pickle.dumps(with_vectors) if chunked else b"")
        return out

"""Ingest on a Ray cluster (`kb ingest PATH --ray`): Ray actors parse, chunk and embed the new
and changed files; the driver, the collection's one writer, commits what they return.

The driver lists and hashes the files as a local ingest does, so unchanged files never reach the
cluster. Each worker is an actor (`ChunkEmbedWorker`) that loads the embedder once and runs the
pipeline's own `load_source`, `chunk_source` and `embed_input` on a batch of files; the driver
hands out batches as workers free up (`WorkerPool.map`, two in hand per worker) and takes the
results back in file order, committing them through `Ingestor._commit`: the same rows, chunk
ids, reports and crash safety as a local ingest, and a killed run keeps what it had committed.
A worker that dies is restarted by Ray and its batch run again.

Plain actors, not Ray Data: a Ray Data actor pool lives and dies with one dataset, and starting
workers (torch and sentence-transformers imported, the model loaded) is most of what Ray adds to
an ingest of a few thousand files on few CPUs (docs/benchmarks.md). Actors can outlive an ingest
(`--ray-keep-workers`: named, detached, stopping themselves when idle), so that the next one with
the same settings, from any process, starts embedding at once; and they load the model in a
thread of their own while the driver's first pass (below) runs on them.

A worker's batch of files is not a local ingest's batch of chunks, so the embedder batches only
texts of one padded length (`Embedder._batches`), on one thread per batch and at least 384
tokens to a batch (`SentenceTransformerEmbedder._embed_batches`): with the default torch
embedder on CPUs of one model nothing but the text decides its vector, bit for bit, whatever
the worker's batch of files or the machine's core count. For int8 (ONNX Runtime scales
activations per batch) and GPU workers, vectors agree within bfloat16 tolerance.

Boilerplate dropping (KB_DROP_BOILERPLATE) makes a file's chunks depend on the files before it:
a local ingest judges each file by the line counts of the files read so far. So a first, light
pass on the workers (while their embedders load) reads each changed file for its line keys only;
the driver replays the counts in file order exactly as `Ingestor._chunked` does and gives each
file the verdicts on its own lines, which is all its chunking reads. The files are parsed twice
for it; KB_DROP_BOILERPLATE=false skips the pass.

`ray` is imported only when an ingest runs; without the extra, `--ray` raises ExtraMissing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
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
    from kb.embedders import Embedder
    from kb.settings import Settings

INSTALL_HINT = 'pip install -e ".[ray]"'
NAMESPACE = "kb"  # the Ray namespace of kept workers
KEPT_PREFIX = "kb-ingest-"  # their names: this, what they were built from, their number
#: times Ray restarts a dead worker and runs its batch again (over a kept worker's whole life)
RESTARTS = 3
TAKE_TRIES = 5  # attempts to take or start a kept worker that is stopping as it is found
HELD_IDLE_S = 900.0  # a held worker idle this long has lost its ingest: it stops


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
        description="Ray workers that parse, chunk and embed, each loading the embedder "
        "once; default: the cluster's CPUs / --ray-cpus (its GPUs / --ray-gpus with GPUs).",
    )
    ray_batch_files: int = Field(
        128,
        ge=1,
        description="Most files a worker parses, chunks and embeds in one batch (fewer towards "
        "the end of an ingest, so that the workers finish together).",
    )
    ray_cpus: float = Field(
        1.0, gt=0, description="CPUs each worker reserves (and its torch threads)."
    )
    ray_gpus: float = Field(
        0.0,
        ge=0,
        description="GPUs each worker reserves; above 0 the embedder runs on the GPU.",
    )
    ray_keep_workers: float = Field(
        0.0,
        ge=0,
        description="Seconds the workers stay on the cluster after this ingest, embedder "
        "loaded and their CPUs (GPUs, memory) held, for the next `--ray` ingest with the same "
        "settings, from any process, to take at once; needs a cluster started with `ray start`. "
        "0: stopped when the ingest ends (workers kept earlier are still taken).",
    )


def require_ray():
    """The `ray` module, or ExtraMissing naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise ExtraMissing(
            f"--ray needs the optional 'ray' extra, which is not installed ({exc}); "
            f"install it with `{INSTALL_HINT}`"
        ) from None
    return ray


@dataclass
class RayConnection:
    """This process's connection to a Ray cluster. `connected`: made here, so `close` ends it
    (a Ray instance of this run's own, `own_instance`, stops with it)."""

    ray: Any
    connected: bool
    own_instance: bool = False

    def close(self) -> None:
        if self.connected:
            self.ray.shutdown()


def connect(address: str | None) -> RayConnection:
    """Join the cluster at `address` (when None: RAY_ADDRESS, a cluster `ray start` began on
    this host, or a new local instance), or keep the connection this process already has."""
    ray = require_ray()
    if ray.is_initialized():
        return RayConnection(ray, connected=False)
    # the workers' logs stay in the cluster's log folder (a restarted worker's warnings among
    # them); a worker's failure still reaches the driver as an exception
    ray.init(address=address, logging_level="WARNING", log_to_driver=False, include_dashboard=False)
    # whether that started a Ray instance of this process's own (no cluster to join), which
    # ends with it; Ray says so only on its node object
    node = getattr(ray._private.worker, "_global_node", None)
    return RayConnection(ray, connected=True, own_instance=bool(getattr(node, "head", False)))


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
        pool: WorkerPool | None = None
        try:
            if connection is not None:
                if connection.own_instance and self.options.ray_keep_workers:
                    raise InvalidInput(
                        "--ray-keep-workers keeps workers on a Ray cluster that outlives this "
                        "command, and there is none: start one with `ray start --head` and "
                        "pass --ray-address auto (or set RAY_ADDRESS)"
                    )
                pool = worker_pool(
                    connection.ray,
                    self.settings,
                    self.embedder,
                    self.collection.embedder,
                    self.options,
                )
            for index, pending in self._results(pool, changed, stored, report):
                if pending is None:
                    continue
                ready.append(pending)
                ready_chunks += sum(len(c) for _, c, _ in pending.docs)
                if ready_chunks >= self.commit_every:
                    self._count_keys_through(index)
                    self._commit(ready, [], report)
                    ready, ready_chunks = [], 0
        finally:
            try:
                if pool is not None:
                    pool.close()
            finally:
                if connection is not None:
                    connection.close()

        self._count_keys_through(len(changed))
        return self._finish(ready, prune_origins, report, started)

    # -- the cluster's work ----------------------------------------------------------------

    def _results(
        self,
        pool: WorkerPool | None,
        changed: list[Source],
        stored: dict[str, str],
        report: IngestReport,
    ) -> Iterator[tuple[int, _Pending | None]]:
        """(index in `changed`, its loaded, chunked and embedded file or None) in file order."""
        if pool is None:
            return
        views = (
            self._boilerplate_views(pool, changed, report) if self.boilerplate is not None else None
        )
        todo = [i for i in range(len(changed)) if views is None or i in views]
        batches = [
            [(i, changed[i], views[i] if views is not None else None) for i in part]
            for part in guided_batches(todo, len(pool.actors), self.options.ray_batch_files)
        ]
        for batch, results in zip(batches, pool.map("chunk_embed", batches), strict=True):
            for (i, source, _), (status, message, docs) in zip(batch, results, strict=True):
                name = source.display or source.origin
                if status != "ok":
                    self._record_failure(name, status, message, report)
                    yield i, None
                    continue
                n = sum(len(c) for _, c, _ in docs)
                report.chunks_embedded += n
                self.progress.chunks_embedded(n)
                status = "updated" if source.origin in stored else "added"
                yield i, _Pending(source.origin, source.content_hash, status, docs, name)

    def _boilerplate_views(
        self, pool: WorkerPool, changed: list[Source], report: IngestReport
    ) -> dict[int, LineCounts]:
        """For each changed file that loads, the counts its chunking reads: the verdicts on its
        own lines at the point where a local ingest chunks it (`Ingestor._chunked`). The workers
        read the files while their embedders load."""
        indexed = list(enumerate(changed))
        batches = guided_batches(indexed, len(pool.actors), self.options.ray_batch_files)
        for batch, results in zip(batches, pool.map("line_keys", batches), strict=True):
            for (i, source), (status, message, keys) in zip(batch, results, strict=True):
                if status != "ok":
                    name = source.display or source.origin
                    self._record_failure(name, status, message, report)
                    continue
                self._keys.append((i, keys))
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


def guided_batches(items: list, workers: int, most: int) -> list[list]:
    """`items` in order, cut into batches of `most` while there is work for every worker to
    get several, then smaller ones (a quarter of each worker's share left, 16 at least), so
    that the workers finish together rather than one waiting on another's last batch."""
    out, lo = [], 0
    while lo < len(items):
        size = min(most, max(16, -(-(len(items) - lo) // (4 * workers))))
        out.append(items[lo : lo + size])
        lo += size
    return out


class WorkerPool:
    """An ingest's `ChunkEmbedWorker` actors, and an ordered map over them. `hold`: this
    ingest's hold on kept workers (None: workers of its own, stopped when it ends)."""

    def __init__(self, ray, actors: list, hold: str | None) -> None:
        self.ray, self.actors, self.hold = ray, actors, hold

    def map(self, method: str, batches: list[list]) -> Iterator[list]:
        """Each batch's results from `method`, in batch order. Every worker holds two batches
        (one running, the next queued), the next going to whichever worker finishes first;
        while an early batch is slow, at most two per worker wait done behind it."""
        ray = self.ray
        running: dict[Any, Any] = {}  # object ref -> (batch index, actor)
        done: dict[int, list] = {}
        free = self.actors * 2  # a worker per batch it can take now
        queued = iter(enumerate(batches))
        following = 0
        while True:
            while (
                free
                and len(running) + len(done) < 4 * len(self.actors)
                and (item := next(queued, None)) is not None
            ):
                actor = free.pop(0)
                running[getattr(actor, method).remote(item[1], self.hold)] = (item[0], actor)
            if not running:
                return
            (ref,), _ = ray.wait(list(running), num_returns=1)
            index, actor = running.pop(ref)
            done[index] = ray.get(ref)
            free.append(actor)
            while following in done:
                yield done.pop(following)
                following += 1

    def close(self) -> None:
        """Kept workers are let go (their idle time starts now); others are stopped."""
        for actor in self.actors:
            if self.hold is not None:
                _control(actor.release).remote(self.hold)
            else:
                self.ray.kill(actor, no_restart=True)


@functools.cache
def _code_version() -> str:
    """A digest of the code a worker runs to load, chunk and embed (kept workers run the code
    they started with)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted([*root.glob("ingest/**/*.py"), *root.glob("kb/embedders/*.py")]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def kept_name(settings: Settings, fingerprint: str, options: RayIngestOptions, workers: int) -> str:
    """The name prefix of kept workers: what they were built from."""
    built_from = [
        settings.model_dump_json(),
        fingerprint,
        options.ray_cpus,
        options.ray_gpus,
        workers,
        _code_version(),
    ]
    return KEPT_PREFIX + hashlib.sha256(json.dumps(built_from).encode()).hexdigest()[:16]


def worker_pool(
    ray, settings: Settings, embedder: Embedder, name: str, options: RayIngestOptions
) -> WorkerPool:
    """The workers of an ingest with `settings` and the collection's embedder (`name`, loaded
    here as `embedder`). Workers kept by an earlier ingest built from the same are taken as
    they are; with `ray_keep_workers` new ones are named and detached, to outlive the ingest.
    Idle workers kept with other settings are stopped first, so that their CPUs are free. A
    worker that dies mid-batch is restarted by Ray and the batch run again."""
    workers = default_workers(ray, options)
    device = "cuda" if options.ray_gpus > 0 else None
    if device is not None and not hasattr(embedder, "to_device"):
        raise InvalidInput(
            f"embedder {name!r} ({type(embedder).__name__}) cannot run on a GPU: use the torch "
            "embedder (a local model with KB_EMBED_DTYPE bfloat16 or float32) or leave "
            "--ray-gpus at 0"
        )
    if device is not None and not ray.cluster_resources().get("GPU"):
        raise InvalidInput("--ray-gpus: the cluster has no GPUs; leave it at 0 to embed on CPUs")
    prefix = kept_name(settings, embedder.fingerprint(), options, workers)
    names = [f"{prefix}-{i}" for i in range(workers)]
    keep = options.ray_keep_workers
    hold = uuid.uuid4().hex  # this ingest's hold on the kept workers it takes
    kept = _take_existing(ray, names, hold)
    if kept is not None:
        return WorkerPool(ray, kept, hold)
    # idle kept workers with other settings, or too few of these, hold CPUs these will need
    stop_kept_workers(ray, but=set(names) if keep else set(), wait=False)
    remote = ray.remote(
        num_cpus=options.ray_cpus,
        num_gpus=options.ray_gpus or None,
        max_restarts=RESTARTS,
        max_task_retries=RESTARTS,
        concurrency_groups={"control": 1},
    )(ChunkEmbedWorker)
    if not keep:
        actors = [remote.remote(settings, name, device) for _ in range(workers)]
        return WorkerPool(ray, actors, None)
    taken: dict[str, Any] = {}
    waiting = names
    try:
        for _ in range(TAKE_TRIES):
            found = {
                worker: remote.options(
                    name=worker, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
                ).remote(settings, name, device, kept=True)
                for worker in waiting
            }  # all started before any is waited for: their processes start side by side
            taken |= _take(ray, found, hold, keep)
            waiting = [w for w in waiting if w not in taken]
            if not waiting:
                return WorkerPool(ray, [taken[w] for w in names], hold)
            time.sleep(0.5)  # a worker stopping as it was found: its name is free once gone
        raise RuntimeError(f"could not start or take the Ray workers {waiting}")
    except BaseException:
        for actor in taken.values():
            _control(actor.release).remote(hold)
        raise


def _control(method):
    """A worker's control method (take, release, stop_if_idle), run beside its batches."""
    return method.options(concurrency_group="control")


def _take(ray, actors: dict[str, Any], hold: str, keep: float | None) -> dict[str, Any]:
    """Those of `actors` now held by `hold` (asked all at once); a worker that is stopping or
    gone is left out."""
    asked = {name: _control(actor.take).remote(hold, keep) for name, actor in actors.items()}
    taken = {}
    for name, ref in asked.items():
        try:
            if ray.get(ref):
                taken[name] = actors[name]
        except ray.exceptions.RayActorError:
            continue
    return taken


def _take_existing(ray, names: list[str], hold: str) -> list | None:
    """The kept workers of these names, all held by `hold`, or None (none held)."""
    found = {}
    for name in names:
        try:
            found[name] = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:  # no such worker
            return None
    taken = _take(ray, found, hold, None)
    if len(taken) == len(names):
        return [taken[name] for name in names]
    for actor in taken.values():
        _control(actor.release).remote(hold)
    return None


def stop_kept_workers(ray, *, but: set[str] = frozenset(), wait: bool = True) -> int:
    """Stop the workers that ingests kept on the cluster (`ray_keep_workers`), those an
    ingest holds now excepted, and any named in `but`; how many. With `wait`, returns once
    they are gone (their CPUs free). Needs a connection: `ray.init(address="auto")`."""
    asked = {}
    for found in ray.util.list_named_actors(all_namespaces=True):
        name = found["name"]
        if found["namespace"] != NAMESPACE or not name.startswith(KEPT_PREFIX) or name in but:
            continue
        try:
            asked[name] = _control(ray.get_actor(name, namespace=NAMESPACE).stop_if_idle).remote()
        except ValueError:  # stopped meanwhile
            continue
    stopping = []
    for name, ref in asked.items():
        try:
            if ray.get(ref):
                stopping.append(name)
        except ray.exceptions.RayActorError:
            continue
    deadline = time.monotonic() + 60
    while wait and stopping and time.monotonic() < deadline:
        alive = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
        stopping = [name for name in stopping if name in alive]
        time.sleep(0.2)
    return len(stopping)


class ChunkEmbedWorker:
    """Ray actor: loads the embedder once, in a thread of its own so that it reads the files'
    line keys meanwhile; then loads, chunks and embeds batches of files with the pipeline's own
    functions, returning per file its documents, chunks and vectors.

    A kept worker (`kept`, named and detached) is held by each ingest that takes it (`take`,
    `release`, with the ingest's hold id) and stops itself once no ingest holds it and it has
    been idle for the `keep` seconds of the last one to take it; a held worker idle for
    HELD_IDLE_S (its ingest's driver died) stops too. Every batch carries its ingest's hold, so a
    worker Ray restarts after a crash is held again by the batch it runs again. The control
    calls run in a group of their own (`control`), not queued behind batches."""

    def __init__(
        self, settings: Settings, embedder: str, device: str | None = None, kept: bool = False
    ):
        self._failed: BaseException | None = None
        self._loading = threading.Thread(
            target=self._load, args=(settings, embedder, device), daemon=True
        )
        self._loading.start()
        self._lock = threading.Lock()
        self._holders: set[str] = set()  # the holds of the ingests holding this worker
        self._running = 0  # batches in hand: a worker stops only between them
        self._used = time.monotonic()
        self._keep = HELD_IDLE_S
        self._stopping = False
        if kept:
            threading.Thread(target=self._stop_when_idle, daemon=True).start()

    def take(self, hold: str, keep: float | None) -> bool:
        """Hold this worker for an ingest that keeps workers `keep` seconds (None: as they
        are); False when it is stopping."""
        with self._lock:
            if self._stopping:
                return False
            self._holders.add(hold)
            self._used = time.monotonic()
            if keep is not None:
                self._keep = keep
            return True

    def release(self, hold: str) -> None:
        with self._lock:
            self._holders.discard(hold)
            self._used = time.monotonic()

    def stop_if_idle(self) -> bool:
        """Stop within a second unless an ingest holds this worker; whether it will."""
        with self._lock:
            if self._holders:
                return False
            self._stopping = True
            return True

    def _stop_when_idle(self) -> None:
        import ray

        while True:
            time.sleep(1.0)
            with self._lock:
                idle = time.monotonic() - self._used
                limit = max(self._keep, HELD_IDLE_S) if self._holders else self._keep
                if self._running or not (self._stopping or idle > limit):
                    continue
                self._stopping = True
            try:
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                return
            except Exception:  # the cluster's control store unreachable: try again
                time.sleep(5.0)

    def _load(self, settings: Settings, embedder: str, device: str | None) -> None:
        try:
            from kb.service import KnowledgeBase

            kb = KnowledgeBase(settings)
            self.embedder = kb.embedder_for(embedder)
            if device is not None:  # `worker_pool` checked that the embedder can move
                self.embedder.to_device(device)
            self.chunker = kb.chunker_for(self.embedder)
        except BaseException as exc:  # raised again by the first batch that needs them
            self._failed = exc

    @contextmanager
    def _in_use(self, hold: str | None) -> Iterator[None]:
        with self._lock:
            if self._stopping:
                raise RuntimeError(
                    "a kept Ray worker stopped as a batch reached it; run the ingest again"
                )
            if hold is not None:
                self._holders.add(hold)
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                self._used = time.monotonic()

    def line_keys(
        self, batch: list[tuple[int, Source]], hold: str | None
    ) -> list[tuple[str, str, list[str]]]:
        """Per source: ("ok", "", its distinct line keys), or its error's status and message."""
        with self._in_use(hold):
            out = []
            for _, source in batch:
                try:
                    out.append(("ok", "", sorted(file_keys(load_source(source)))))
                except FILE_ERRORS as exc:
                    out.append((*failure(exc), []))
            return out

    def chunk_embed(
        self, batch: list[tuple[int, Source, LineCounts | None]], hold: str | None
    ) -> list[tuple[str, str, list]]:
        """Per source: ("ok", "", its (document, chunks, vectors) triples), or its error."""
        with self._in_use(hold):
            return self._chunk_embed(batch)

    def _chunk_embed(
        self, batch: list[tuple[int, Source, LineCounts | None]]
    ) -> list[tuple[str, str, list]]:
        self._loading.join()
        if self._failed is not None:
            with self._lock:  # a kept worker that cannot load is of no use to a later ingest
                self._stopping = True
            raise self._failed
        out: list[tuple[str, str, list]] = []
        loaded: list[list] = []  # per file that chunked: its (document, chunks) pairs
        for _, source, counts in batch:
            try:
                chunked = chunk_source(self.chunker, source, load_source(source), counts)
                out.append(("ok", "", []))
            except FILE_ERRORS as exc:
                chunked = []
                out.append((*failure(exc), []))
            loaded.append(chunked)
        # one embed call for the whole batch, sorted by length inside as a local ingest does
        texts = [embed_input(c) for chunked in loaded for _, chunks in chunked for c in chunks]
        vectors = self.embedder.embed(texts)
        pos = 0
        for n, chunked in enumerate(loaded):
            for doc, chunks in chunked:
                out[n][2].append((doc, chunks, vectors[pos : pos + len(chunks)]))
                pos += len(chunks)
        return out

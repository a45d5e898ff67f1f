"""Ingest and serve on Ray (`kb ingest --ray`, `kb serve --ray`), against a local Ray instance
of two CPUs that the tests start and stop. Without the `ray` extra only the missing-extra test
runs; the others skip, naming the extra."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from ingest.pipeline import IngestProgress
from kb.service import KnowledgeBase
from kb.settings import Settings
from tests.conftest import data_dir_with_cache, free_port
from tests.reliability import check_store, reap, run_kb, start_kb, write_distinct_corpus

COLLECTION = "notes"
FILES = 12
NAV = "Home | Products | Pricing | About us | Contact | Careers | Blog | Sitemap\n"


def write_corpus(folder: Path) -> list[Path]:
    """A dozen notes of their own, and a dozen pages behind a navigation bar that boilerplate
    dropping removes (the counting that makes a file's chunks depend on the files before it)."""
    paths = write_distinct_corpus(folder, FILES)
    for i in range(FILES):
        page = folder / f"page-{i}.md"
        page.write_text(f"{NAV}\n# Page {i}\n\nThe page tells of pgx{i:02d} and nothing else.\n")
        paths.append(page)
    return paths


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[object]:
    ray = pytest.importorskip(
        "ray", reason='the `ray` extra is not installed: pip install -e ".[ray]"'
    )
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    except Exception as exc:  # e.g. no shared memory for the object store in a sandbox
        pytest.skip(f"a local Ray instance cannot start here: {exc}")
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def embedders() -> dict:
    return {}


def knowledge_base(data: Path, cache: Path, embedders: dict, **settings) -> KnowledgeBase:
    if not data.exists():
        data_dir_with_cache(data, cache)
    return KnowledgeBase(Settings(data_dir=data, **settings), embedders=embedders)


def ray_options(**values):
    from ingest.ray_ingest import RayIngestOptions

    return RayIngestOptions(ray_workers=2, ray_batch_files=4, **values)


def assert_same_collection(a: KnowledgeBase, b: KnowledgeBase, queries: list[str]) -> None:
    """Same chunk rows (ids, texts, offsets), the same vectors bit for bit, same results."""
    ca, cb = a.collection(COLLECTION), b.collection(COLLECTION)
    assert list(ca.iter_chunks()) == list(cb.iter_chunks())
    assert sorted(d["source"] for d in ca.documents()) == sorted(
        d["source"] for d in cb.documents()
    )
    ids_a, vecs_a = ca.vectors()
    ids_b, vecs_b = cb.vectors()
    assert np.array_equal(ids_a, ids_b)
    # a text's padded length is its own and every batch runs on one thread (a local ingest's
    # lanes, a worker's one CPU), so neither its batch nor the machine moves its vector
    assert np.array_equal(vecs_a, vecs_b)
    for query in queries:
        top_a = [(p.source, p.start) for p in a.search(query, collection=COLLECTION, k=3)]
        top_b = [(p.source, p.start) for p in b.search(query, collection=COLLECTION, k=3)]
        assert top_a == top_b, query


QUERIES = ["tok0003", "tok0011", "pgx04", "heron and iris"]


@pytest.mark.slow
def test_ray_ingest_builds_what_a_local_ingest_builds_and_syncs_the_same(
    tmp_path: Path, model_cache: Path, embedders: dict, ray_cluster
) -> None:
    corpus = tmp_path / "corpus"
    files = write_corpus(corpus)
    local = knowledge_base(tmp_path / "local", model_cache, embedders)
    on_ray = knowledge_base(tmp_path / "ray", model_cache, embedders)

    first_local = local.ingest_path(corpus, collection=COLLECTION)
    first_ray = on_ray.ingest_path(corpus, collection=COLLECTION, ray=ray_options())
    assert first_ray.added == first_local.added == len(files)
    assert first_ray.chunks_embedded == first_local.chunks_embedded
    assert_same_collection(local, on_ray, QUERIES)
    nav_chunks = [c for c in on_ray.collection(COLLECTION).iter_chunks() if "Pricing" in c.text]
    assert not nav_chunks, "the navigation bar was not dropped as boilerplate"

    again = on_ray.ingest_path(corpus, collection=COLLECTION, ray=ray_options())
    assert (again.chunks_embedded, again.unchanged, again.added) == (0, len(files), 0)
    assert again.generation == first_ray.generation  # nothing to commit

    files[0].write_text("Note 0 now speaks of tok9990 alone.\n")
    files[1].unlink()
    (corpus / "new.txt").write_text("A new note about tok9991 and the kestrel.\n")
    reports = [
        kb.ingest_path(corpus, collection=COLLECTION, prune=True, ray=ray)
        for kb, ray in ((local, None), (on_ray, ray_options()))
    ]
    for report in reports:
        counts = (report.added, report.updated, report.unchanged, report.removed)
        assert counts == (1, 1, len(files) - 2, 1)
        assert report.chunks_embedded == 2
    assert_same_collection(local, on_ray, ["tok9990", "tok9991", "tok0001"])
    assert not on_ray.search("tok0001", collection=COLLECTION, k=3, method="bm25")


class Pause(IngestProgress):
    """Holds the driver once, past the workers' keep time, as a long commit would."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.paused = seconds, False

    def chunks_embedded(self, n: int) -> None:
        if not self.paused:
            self.paused = True
            time.sleep(self.seconds)


@pytest.mark.slow
def test_kept_workers_take_the_next_ingests_then_stop_by_themselves(
    tmp_path: Path, model_cache: Path, embedders: dict, ray_cluster
) -> None:
    """`ray_keep_workers`: the workers stay through a driver's pause longer than their keep
    time; later ingests with the same settings, keeping or not, run on the same processes and
    build the same collection; one with other settings stops them (their CPUs are needed);
    idle past their time, kept workers stop by themselves."""
    from ingest.ray_ingest import NAMESPACE, stop_kept_workers

    def kept() -> list[str]:
        actors = ray_cluster.util.list_named_actors(all_namespaces=True)
        return sorted(a["name"] for a in actors if a["namespace"] == NAMESPACE)

    corpus = tmp_path / "corpus"
    write_corpus(corpus)
    on_ray = knowledge_base(tmp_path / "ray", model_cache, embedders)
    try:
        keep = ray_options(ray_keep_workers=4)
        on_ray.ingest_path(corpus, collection="first", ray=keep, progress=Pause(6.0))
        names, pids = kept(), sorted(ray_worker_pids())
        assert len(names) == len(pids) == 2, (names, pids)
        for collection, options in (("second", keep), ("third", ray_options())):
            report = on_ray.ingest_path(corpus, collection=collection, ray=options)
            assert report.added == 2 * FILES
            assert (kept(), sorted(ray_worker_pids())) == (names, pids), collection
        first, third = on_ray.collection("first"), on_ray.collection("third")
        assert list(first.iter_chunks()) == list(third.iter_chunks())
        assert np.array_equal(first.vectors()[1], third.vectors()[1])

        other = knowledge_base(tmp_path / "other", model_cache, embedders)
        assert other.ingest_path(corpus, collection="c", ray=keep).added == 2 * FILES
        assert kept() and kept() != names, "the first workers should have made way"

        deadline = time.monotonic() + 60
        while (kept() or ray_worker_pids()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not kept() and not ray_worker_pids(), "idle kept workers should have stopped"
    finally:
        stop_kept_workers(ray_cluster)


@pytest.mark.slow
def test_kept_workers_serve_the_next_command(
    tmp_path: Path, model_cache: Path, embedders: dict, ray_cluster
) -> None:
    """`kb ingest --ray --ray-keep-workers`: the workers outlive the command that started them
    and the next command, another process, runs on them."""
    from ingest.ray_ingest import stop_kept_workers

    corpus = tmp_path / "corpus"
    write_distinct_corpus(corpus, 6)
    data = data_dir_with_cache(tmp_path / "data", model_cache)
    address = ray_cluster.get_runtime_context().gcs_address
    flags = ("--ray", "--ray-address", address, "--ray-workers", "2", "--ray-keep-workers", "60")
    try:
        pids = []
        for collection in ("first", "second"):
            args = ("ingest", str(corpus), "-c", collection, *flags, "--json")
            finished = run_kb(data, *args, log=tmp_path / f"{collection}.log", timeout=300)
            assert finished.returncode == 0, finished.output[-3000:]
            assert finished.result["added"] == 6
            pids.append(sorted(ray_worker_pids()))
        assert len(pids[0]) == 2 and pids[1] == pids[0], pids
    finally:
        stop_kept_workers(ray_cluster)


def committed_generation(store: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1)
        try:
            return int(db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])
        finally:
            db.close()
    except (sqlite3.Error, TypeError):
        return 0


def ray_worker_pids() -> list[int]:
    """The processes of the Ray actors that chunk and embed (Ray names them by class)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"ChunkEmbedWorker" in title:
                pids.append(int(entry.name))
    return pids


@pytest.mark.slow
def test_killed_ray_ingest_then_a_rerun_loses_and_duplicates_nothing(
    tmp_path: Path, model_cache: Path, embedders: dict, ray_cluster
) -> None:
    """A worker is SIGKILLed mid-ingest, then the driver itself once it has committed; the store
    stays consistent, and a re-run embeds only what was not committed and ends where a local
    ingest does."""
    corpus = tmp_path / "corpus"
    files = write_distinct_corpus(corpus, 40)
    data = data_dir_with_cache(tmp_path / "data", model_cache)
    store = data / "collections" / COLLECTION / "store.sqlite"
    address = ray_cluster.get_runtime_context().gcs_address
    args = ("ingest", str(corpus), "-c", COLLECTION, "--ray", "--ray-address", address)
    env = {"KB_COMMIT_EVERY_CHUNKS": "4", "KB_EMBED_QUERY_RUNTIME": "torch"}
    flags = ("--ray-workers", "2", "--ray-batch-files", "2", "--json")

    proc = start_kb(data, *args, *flags, log=tmp_path / "driver.log", **env)
    deadline = time.monotonic() + 300
    killed_worker = killed_driver = False
    while proc.poll() is None and time.monotonic() < deadline:
        generation = committed_generation(store)
        if not killed_worker and generation >= 1 and (pids := ray_worker_pids()):
            os.kill(pids[0], signal.SIGKILL)  # Ray restarts the actor and retries its batch
            killed_worker = True
        elif killed_worker and generation >= 4:
            proc.send_signal(signal.SIGKILL)
            killed_driver = True
            break
        time.sleep(0.05)
    finished = reap(proc, tmp_path / "driver.log")
    assert killed_worker, finished.output[-3000:]
    assert killed_driver, f"the ingest ended before it could be killed:\n{finished.output[-3000:]}"
    assert finished.returncode == -signal.SIGKILL

    state = check_store(data, COLLECTION, embedders, "tok0001")
    assert 0 < state.documents < len(files), "the kill should fall between commits"
    assert state.chunks == state.documents  # one chunk per file: none lost or doubled so far
    rerun = run_kb(data, *args, *flags, log=tmp_path / "rerun.log", **env)
    assert rerun.returncode == 0, rerun.output[-3000:]
    assert rerun.result["unchanged"] == state.documents
    assert rerun.result["added"] == len(files) - state.documents
    assert rerun.result["chunks_embedded"] == len(files) - state.chunks  # one chunk per file

    final = check_store(data, COLLECTION, embedders, "tok0001")
    assert (final.documents, final.chunks) == (len(files), len(files))
    local = knowledge_base(tmp_path / "local", model_cache, embedders)
    local.ingest_path(corpus, collection=COLLECTION)
    after = KnowledgeBase(Settings(data_dir=data), embedders=embedders).collection(COLLECTION)
    texts = lambda col: sorted((c.source, c.text) for c in col.iter_chunks())  # noqa: E731
    assert texts(after) == texts(local.collection(COLLECTION))


@pytest.mark.slow
def test_two_serve_replicas_answer_search_alike_and_follow_new_commits(
    tmp_path: Path, model_cache: Path, embedders: dict, ray_cluster
) -> None:
    from ray import serve
    from ray.util import get_node_ip_address

    from api.ray_serve import REPLICA_HEADER, deployment

    corpus = tmp_path / "corpus"
    write_distinct_corpus(corpus, 8)
    data = tmp_path / "data"
    writer = knowledge_base(data, model_cache, embedders, embed_query_runtime="torch")
    writer.ingest_path(corpus, collection=COLLECTION)
    settings = Settings(data_dir=data, embed_query_runtime="torch")

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(
            deployment(settings, replicas=2, cpus=0.5, warm=False, node=get_node_ip_address()),
            name="kb-test",
            route_prefix="/",
        )
        url = f"http://127.0.0.1:{port}/search"

        def answers(query: str, replicas: int = 2) -> dict[str, list]:
            """Each replica's results for `query` (by its header), asking until both answered."""
            seen: dict[str, list] = {}
            deadline = time.monotonic() + 60
            while len(seen) < replicas and time.monotonic() < deadline:
                # BM25: the token a note alone holds must rank it first
                body = {"query": query, "collection": COLLECTION, "k": 3, "method": "bm25"}
                response = httpx.post(url, json=body, timeout=60)
                response.raise_for_status()
                hits = [(r["source"], r["text"]) for r in response.json()["results"]]
                seen.setdefault(response.headers[REPLICA_HEADER], hits)
            assert len(seen) == replicas, f"only {len(seen)} replica(s) answered"
            return seen

        before = answers("tok0005")
        assert len({str(v) for v in before.values()}) == 1
        assert next(iter(before.values()))[0][0] == "note-0005.txt"

        (corpus / "late.txt").write_text("A late note about tok7777 and the juniper.\n")
        writer.ingest_path(corpus, collection=COLLECTION)  # a new generation, replicas running
        after = answers("tok7777")
        assert len({str(v) for v in after.values()}) == 1
        assert next(iter(after.values()))[0][0] == "late.txt"
    finally:
        serve.shutdown()


def test_boilerplate_views_chunk_each_file_as_a_local_ingest_does(tmp_path: Path) -> None:
    """The counts a Ray ingest replays on the driver give every file the chunks that the local
    pipeline gives it, held-back first files (the warm-up) and counts stored before included."""
    from ingest.boilerplate import LineCounts, file_keys
    from ingest.chunking import Chunker
    from ingest.pipeline import (
        BOILERPLATE_WARMUP,
        FILE_ERRORS,
        Ingestor,
        IngestReport,
        chunk_source,
        folder_sources,
        load_source,
    )
    from ingest.ray_ingest import boilerplate_views
    from kb.store.collection import Collection

    chunker = Chunker(lambda text: len(text.split()), 64, 8, drop_boilerplate=True)
    stored = LineCounts()
    for run, count in enumerate((BOILERPLATE_WARMUP + 10, 12)):
        folder = tmp_path / f"run-{run}"
        folder.mkdir()
        for i in range(count):
            # the bar on most early files, fewer later: a file's verdict depends on when it is read
            nav = NAV if (i % 3 != 0 if i < 30 else i % 4 == 0) else ""
            body = f"# Note {run}-{i}\n\nOnly note {run}-{i} speaks of qz{run}{i:03d}."
            (folder / f"n{i:03d}.md").write_text(nav + ("\n" + body if i % 17 else "\n"))
        sources, _ = folder_sources(folder, loader_options={}, fingerprint="t", max_bytes=1 << 20)

        col = Collection.create(tmp_path / f"col-{run}", "c", embedder="minilm", dimension=384)
        col.commit(meta={"boilerplate": stored.to_json()})
        local = Ingestor(col, None, chunker)  # chunking alone: its embedder is never asked
        items = local._chunked(sources, {}, IngestReport("c"))  # held files come out late
        expected = {p.origin: p.docs for p in items if p is not None}

        keyed = []  # what the Ray key pass returns: the files that load, with their line keys
        for i, source in enumerate(sources):
            try:
                keyed.append((i, sorted(file_keys(load_source(source)))))
            except FILE_ERRORS:
                assert source.origin not in expected
        views = boilerplate_views(stored, keyed)
        for i, source in enumerate(sources):
            if i not in views:
                continue
            try:
                chunked = chunk_source(chunker, source, load_source(source), views[i])
            except FILE_ERRORS as exc:  # the same refusal as the local pipeline's
                assert source.origin not in expected, (run, i, exc)
                continue
            assert expected.get(source.origin) == chunked, (run, i)
        dropped = sum(1 for view in views.values() if view.counts)
        assert 0 < dropped < count, "the corpus should have files with and without the bar"
        for _, keys in keyed:
            stored.add_keys(keys)


def test_batches_keep_file_order_and_shrink_towards_the_end() -> None:
    from ingest.ray_ingest import guided_batches

    batches = guided_batches(list(range(2000)), 2, 128)
    assert [i for b in batches for i in b] == list(range(2000))
    sizes = [len(b) for b in batches]
    assert sizes[0] == 128 and max(sizes) == 128
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[-2] == 16, sizes  # the last batches are small, so no worker waits long
    assert [len(b) for b in guided_batches(list(range(10)), 4, 2)] == [2] * 5


def test_ray_without_the_extra_names_it(tmp_path: Path) -> None:
    """With `ray` not importable, both commands stop before any work and name the extra."""
    hidden = tmp_path / "hide"
    (hidden / "ray").mkdir(parents=True)
    (hidden / "ray" / "__init__.py").write_text(
        "raise ImportError(\"No module named 'ray' (hidden by the test)\")\n"
    )
    corpus = tmp_path / "corpus"
    write_distinct_corpus(corpus, 2)
    data = tmp_path / "data"
    env = {"PYTHONPATH": f"{hidden}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for args in (("ingest", str(corpus), "--ray"), ("serve", "--ray", "--port", "1")):
        finished = run_kb(data, *args, log=tmp_path / "out.log", timeout=120, **env)
        assert finished.returncode == 1, finished.output
        output = " ".join(finished.output.split())
        assert "'ray' extra" in output and 'pip install -e ".[ray]"' in output, output
    assert not (data / "collections").exists(), "an ingest began without Ray"

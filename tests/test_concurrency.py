"""Concurrency: searches keep being answered while a `kb ingest` process writes the same
collection, and two writers of one collection are serialized or refused, never interleaved."""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer
from tests.reliability import check_store, reap, start_kb, write_distinct_corpus


@pytest.fixture(scope="module")
def embedders() -> dict:
    return {}


def busy_message(output: str, collection: str, pid: int) -> bool:
    text = " ".join(output.split())  # the console wraps long lines
    return (
        f"collection {collection!r} is being written by another process (pid {pid})" in text
        and "Traceback" not in output
    )


@pytest.mark.slow
def test_two_writers_at_once_one_is_refused(tmp_path: Path, embedders: dict) -> None:
    corpus = tmp_path / "corpus"
    files = write_distinct_corpus(corpus, 150)
    data = tmp_path / "data"
    args = ("ingest", str(corpus), "--collection", "shared", "--json")
    procs = [start_kb(data, *args, log=tmp_path / f"w{i}.log") for i in range(2)]
    ended: dict[int, float] = {}

    def wait(i: int) -> None:
        results[i] = reap(procs[i], tmp_path / f"w{i}.log")
        ended[i] = time.monotonic()

    results: dict = {}
    threads = [threading.Thread(target=wait, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    codes = sorted(r.returncode for r in results.values())
    assert codes[0] == 0 and codes[1] != 0, [r.output[-1500:] for r in results.values()]
    winner = next(i for i in results if results[i].returncode == 0)
    loser = 1 - winner
    assert busy_message(results[loser].output, "shared", procs[winner].pid), results[loser].output
    assert ended[loser] < ended[winner]  # refused at once, not after waiting for the writer
    assert results[winner].result["added"] == len(files)

    state = check_store(data, "shared", embedders, "tok0042")
    assert state.documents == state.chunks == len(files)


@pytest.mark.slow
def test_a_waiting_writer_runs_after_the_holder(tmp_path: Path, embedders: dict) -> None:
    from kb.service import KnowledgeBase
    from kb.settings import Settings

    data = tmp_path / "data"
    first, second = tmp_path / "first", tmp_path / "second"
    write_distinct_corpus(first, 5)
    kb = KnowledgeBase(Settings(data_dir=data), embedders=embedders)
    kb.ingest_path(first, collection="queue")
    write_distinct_corpus(second, 30, seed=99)
    for i, path in enumerate(sorted(second.iterdir())):
        path.rename(second / f"second-{i:04d}.txt")

    lock = kb.collection("queue").write_lock()
    with lock:  # this test process is the writer in the way
        waiting = start_kb(
            data,
            "ingest",
            str(second),
            "-c",
            "queue",
            "--wait",
            "600",
            "--json",
            log=tmp_path / "waiting.log",
        )
        refused = start_kb(data, "ingest", str(second), "-c", "queue", log=tmp_path / "r.log")
        refused_result = reap(refused, tmp_path / "r.log", timeout=300)
        assert refused_result.returncode != 0
        assert busy_message(refused_result.output, "queue", os.getpid()), refused_result.output
        time.sleep(1.0)
        assert os.waitid(os.P_PID, waiting.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    done = reap(waiting, tmp_path / "waiting.log")
    assert done.returncode == 0, done.output[-2000:]
    assert done.result["added"] == 30

    state = check_store(data, "queue", embedders, "tok0003")
    assert state.documents == state.chunks == 35


@pytest.mark.slow
def test_searches_are_answered_while_an_ingest_commits(server: LiveServer, tmp_path: Path) -> None:
    kb = server.services.kb
    seed, corpus = tmp_path / "seed", tmp_path / "corpus"
    write_distinct_corpus(seed, 10, seed=3)
    kb.ingest_path(seed, collection="busy")
    write_distinct_corpus(corpus, 200)
    start_generation = kb.collection("busy").generation

    ingest = start_kb(
        server.settings.data_dir,
        "ingest",
        str(corpus),
        "-c",
        "busy",
        "--json",
        log=tmp_path / "ingest.log",
        KB_COMMIT_EVERY_CHUNKS="40",
    )
    stop = threading.Event()
    latencies: list[float] = []
    failures: list[str] = []
    generations: set[int] = set()

    def hammer(worker: int) -> None:
        methods = ("hybrid", "dense", "bm25")
        with httpx.Client(base_url=server.url, timeout=120) as http:
            n = 0
            while not stop.is_set():
                body = {"query": f"tok{n % 200:04d}", "collection": "busy", "k": 5}
                body["method"] = methods[(n + worker) % 3]
                started = time.perf_counter()
                try:
                    r = http.post("/search", json=body)
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:300]}")
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                latencies.append(time.perf_counter() - started)
                generations.add(kb.collection("busy").generation)
                n += 1

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    try:
        done = reap(ingest, tmp_path / "ingest.log")
    finally:
        stop.set()
        for t in threads:
            t.join()

    assert done.returncode == 0, done.output[-2000:]
    assert failures == []
    assert len(latencies) >= 20
    # commits happened while the queries ran, and the server sees the last one without restart
    assert len(generations) >= 3 and max(generations) >= start_generation + 3
    p95 = statistics.quantiles(latencies, n=20)[-1]
    assert max(latencies) < 60, max(latencies)
    hits = httpx.post(
        server.url + "/search", json={"query": "tok0199", "collection": "busy", "method": "bm25"}
    ).json()["results"]
    assert hits[0]["source"].endswith("note-0199.txt")
    print(
        f"\nconcurrency: {len(latencies)} searches answered during the ingest, "
        f"max {max(latencies):.3f} s, p95 {p95:.3f} s, generations seen {sorted(generations)}"
    )

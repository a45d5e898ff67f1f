"""Crash safety: a real `kb ingest` is SIGKILLed at several points of its commits; every time
the store it leaves is consistent, and re-running the ingest finishes the job without
duplicates."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability import check_store, reap, run_kb, start_kb, write_distinct_corpus

FILES = 240
COMMIT_EVERY = 40  # chunks; one per file, so a full ingest commits six generations
COLLECTION = "crash"


@dataclass
class Watch:
    """What a kill trigger can see of the collection while the child writes it."""

    root: Path
    start_generation: int
    _db: sqlite3.Connection | None = None

    def exists(self, rel: str) -> bool:
        return (self.root / rel).exists()

    def generation(self) -> int:
        if self._db is None:
            if not self.exists("store.sqlite"):
                return 0
            self._db = sqlite3.connect(self.root / "store.sqlite", timeout=1)
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        except sqlite3.Error:
            return 0
        return int(row[0]) if row else 0

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


def gen_folder(offset: int, rel: str = "") -> Callable[[Watch], bool]:
    return lambda w: w.exists(f"gen/{w.start_generation + offset}/{rel}".rstrip("/"))


rnd = random.Random(20240611)

#: (where the kill lands, when to kill, extra delay in seconds)
KILLS = [
    ("while the store is being created", lambda w: w.exists("store.sqlite"), 0.0),
    ("as a new generation folder appears", gen_folder(1), 0.0),
    ("after one commit, while the next writes its index files", gen_folder(2, "dense.faiss"), 0.0),
    ("index files complete, around the SQLite switch", gen_folder(1, "bm25/done.json"), 0.0),
    ("right after the second switch", lambda w: w.generation() >= w.start_generation + 2, 0.0),
    ("a random moment of a commit", gen_folder(1), rnd.uniform(0.0, 0.4)),
]


def running(pid: int) -> bool:
    """True while the child runs; unlike Popen.poll it does not reap it."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None


def kill_when(proc, trigger: Callable[[Watch], bool], delay: float, watch: Watch) -> bool:
    """SIGKILL the child once `trigger` holds (then `delay` later); False if it ended first."""
    deadline = time.monotonic() + 600
    try:
        while running(proc.pid) and time.monotonic() < deadline:
            if trigger(watch):
                time.sleep(delay)
                if not running(proc.pid):
                    return False
                os.kill(proc.pid, signal.SIGKILL)
                return True
            time.sleep(0.001)
        return False
    finally:
        watch.close()


@pytest.fixture(scope="module")
def embedders() -> dict:
    return {}


@pytest.mark.slow
def test_sigkilled_ingest_leaves_a_consistent_store(tmp_path: Path, embedders: dict) -> None:
    corpus = tmp_path / "corpus"
    files = write_distinct_corpus(corpus, FILES)
    data = tmp_path / "data"
    root = data / "collections" / COLLECTION
    env = {"KB_COMMIT_EVERY_CHUNKS": str(COMMIT_EVERY)}
    args = ("ingest", str(corpus), "--collection", COLLECTION)

    survived, orphans_seen, log_rows = 0, 0, []
    for i, (where, trigger, delay) in enumerate(KILLS):
        before = check_store(data, COLLECTION, embedders, "tok0007") if root.exists() else None
        start_gen = before.generation if before else 0
        log = tmp_path / f"kill-{i}.log"
        proc = start_kb(data, *args, log=log, **env)
        killed = kill_when(proc, trigger, delay, Watch(root, start_gen))
        finished = reap(proc, log)
        if not killed:
            assert finished.returncode == 0, finished.output[-3000:]
        else:
            assert finished.returncode == -signal.SIGKILL
        if not (root / "store.sqlite").exists():
            log_rows.append((where, killed, "no store yet"))
            survived += killed
            continue
        state = check_store(data, COLLECTION, embedders, "tok0007")
        orphans = [g for g in state.gen_folders if g > state.generation]
        orphans_seen += bool(orphans)
        survived += killed
        log_rows.append((where, killed, f"gen {start_gen}->{state.generation}", state.documents))
        if not killed:
            break

    # a clean run finishes the job: every file once, no duplicate chunks, orphans removed
    log = tmp_path / "final.log"
    final = run_kb(data, *args, "--json", log=log, **env)
    assert final.returncode == 0, final.output[-3000:]
    assert (
        final.result["failed"] == [] and final.result["added"] + final.result["unchanged"] == FILES
    )
    state = check_store(data, COLLECTION, embedders, "tok0123")
    assert state.documents == state.chunks == FILES
    assert state.sources == sorted(str(p.resolve()) for p in files)
    assert set(state.gen_folders) <= {state.generation, state.generation - 1}

    from kb.service import KnowledgeBase
    from kb.settings import Settings

    kb = KnowledgeBase(Settings(data_dir=data), embedders=embedders)
    hits = kb.search("tok0123", collection=COLLECTION, k=3, method="bm25")
    assert hits[0].source.endswith("note-0123.txt")
    assert not any(h.source.endswith("note-0123.txt") for h in hits[1:])
    again = kb.ingest_path(corpus, collection=COLLECTION)
    assert again.chunks_embedded == 0 and again.unchanged == FILES

    print(f"\ncrash: {survived} kills survived, {orphans_seen} left an orphan generation folder")
    for row in log_rows:
        print("  ", *row)
    assert survived >= len(KILLS) - 2  # the random ones may miss when the machine is fast

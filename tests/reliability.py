"""Helpers for the reliability tests: real `kb` subprocesses, their peak memory, and a check
that a collection on disk is self-consistent (rows, FAISS and BM25 agree; search works)."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

WORDS = [
    "amber",
    "basalt",
    "cobalt",
    "delta",
    "ember",
    "fjord",
    "garnet",
    "harbor",
    "indigo",
    "jasper",
    "kelp",
    "lantern",
    "meadow",
    "nectar",
    "opal",
    "pelican",
    "quartz",
    "raven",
    "saffron",
    "tundra",
    "umber",
    "velvet",
    "walrus",
    "xenon",
    "yarrow",
    "zephyr",
    "acorn",
    "bramble",
    "cinder",
    "dune",
    "estuary",
    "fennel",
    "glacier",
    "heron",
    "iris",
    "juniper",
    "kestrel",
    "lichen",
]


def write_distinct_corpus(folder: Path, n: int, *, seed: int = 7) -> list[Path]:
    """`n` small text files (one chunk each), each with its own token `tokNNNN`."""
    folder.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    paths = []
    for i in range(n):
        body = " ".join(rnd.choice(WORDS) for _ in range(50))
        path = folder / f"note-{i:04d}.txt"
        path.write_text(f"Note {i} about tok{i:04d}: {body}. The end of tok{i:04d}.\n")
        paths.append(path)
    return paths


def kb_env(data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "KB_DATA_DIR": str(data_dir),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **extra,
    }


def start_kb(data_dir: Path, *args: str, log: Path, **env: str) -> subprocess.Popen:
    """A real `python -m kb ARGS` child, its output going to `log` (no pipe to fill up)."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "kb", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=kb_env(data_dir, **env),
            cwd=ROOT,
        )


@dataclass
class Finished:
    returncode: int
    output: str
    max_rss_bytes: int
    result: dict = field(default_factory=dict)  # the last JSON line, with --json


def peak_rss(pid: int) -> int:
    """VmHWM of a running process in bytes (0 once it has exited).

    Not wait4's ru_maxrss: Linux carries a process's peak over exec, so a child forked from
    this test process (hundreds of MB to GB, with models loaded) would report that as its own.
    VmHWM belongs to the address space that exec created, so it counts only the child's work.
    """
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reap(proc: subprocess.Popen, log: Path, timeout: float = 600) -> Finished:
    """Wait for a child (killing it after `timeout`), sampling its own peak RSS as it runs."""
    deadline = time.monotonic() + timeout
    peak = 0
    while True:
        peak = max(peak, peak_rss(proc.pid))
        pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            os.kill(proc.pid, signal.SIGKILL)
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    output = log.read_text(errors="replace")
    result = {}
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
                break
            except ValueError:
                continue
    return Finished(proc.returncode, output, peak, result)


def run_kb(data_dir: Path, *args: str, log: Path, timeout: float = 600, **env: str) -> Finished:
    return reap(start_kb(data_dir, *args, log=log, **env), log, timeout)


@dataclass
class StoreState:
    generation: int
    documents: int
    chunks: int
    sources: list[str]
    gen_folders: list[int]


def check_store(data_dir: Path, collection: str, embedders: dict, query: str) -> StoreState:
    """Assert a collection is consistent as a fresh reader sees it; return what it holds."""
    from kb.retrieval import METHODS
    from kb.service import KnowledgeBase
    from kb.settings import Settings
    from kb.store.bm25 import BM25Index
    from kb.store.index import VectorIndex

    root = data_dir / "collections" / collection
    db = sqlite3.connect(root / "store.sqlite")
    try:
        meta = dict(db.execute("SELECT key, value FROM meta"))
        assert {"embedder", "dimension", "generation", "next_chunk_id"} <= set(meta), meta
        generation = int(meta["generation"])
        rows = db.execute("SELECT id, vector FROM chunks ORDER BY id").fetchall()
        docs = db.execute("SELECT id, source, chunk_count FROM documents").fetchall()
        per_doc = dict(db.execute("SELECT doc_id, COUNT(*) FROM chunks GROUP BY doc_id"))
    finally:
        db.close()
    chunk_ids = [r[0] for r in rows]
    doc_ids = {d[0] for d in docs}
    assert set(per_doc) <= doc_ids, "chunks whose document is gone"
    assert all(count == per_doc.get(did, 0) > 0 for did, _, count in docs), "chunk_count is off"
    assert not chunk_ids or chunk_ids[-1] < int(meta["next_chunk_id"])

    if generation == 0:
        assert not chunk_ids, "chunk rows without a committed generation"
    else:
        # the generation SQLite names must be complete on disk: it was fsynced before the switch
        folder = root / "gen" / str(generation)
        dense = VectorIndex.load(folder / "dense.faiss")
        assert dense.ntotal == len(chunk_ids)
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
        _, found = dense.search(vectors.reshape(len(rows), -1), 1)
        assert found[:, 0].tolist() == chunk_ids, "FAISS ids differ from the chunk rows"
        bm25 = BM25Index.load(folder / "bm25")
        assert sorted(bm25.ids.tolist()) == chunk_ids, "BM25 ids differ from the chunk rows"

    kb = KnowledgeBase(Settings(data_dir=data_dir), embedders=embedders)
    col = kb.collection(collection)
    try:
        snapshot = col.snapshot()
        assert snapshot.generation == generation and snapshot.dense.ntotal == len(chunk_ids)
        assert len(snapshot.bm25.ids) == len(chunk_ids)
        if chunk_ids:
            for method in METHODS:
                hits = kb.search(query, collection=collection, k=5, method=method)
                assert hits and {h.chunk_id for h in hits} <= set(chunk_ids), method
    finally:
        col.close()
    gen_dir = root / "gen"
    folders = sorted(int(p.name) for p in gen_dir.iterdir()) if gen_dir.exists() else []
    return StoreState(generation, len(docs), len(chunk_ids), sorted(d[1] for d in docs), folders)

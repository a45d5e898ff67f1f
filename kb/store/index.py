"""FAISS vector indexes over int64 chunk ids: flat (exact), IVF (quantised) or HNSW.

Vectors are L2-normalised float32 and the metric is inner product, so scores are cosines.

Kinds (`build_index(kind=...)`; `VectorIndex.kind` describes a built index in the same grammar,
so `build_index(d, n, index.kind, ...)` builds another of the same shape):

- ``"flat"``: exact search, IndexIDMap2(IndexFlatIP); 4 bytes per dimension per vector.
- ``"ivf"``: IndexIVFScalarQuantizer with fp16 codes (2 bytes per dimension), ``nlist`` about
  4*sqrt(N), trained on a sample; add and remove are native. Options ``ivf:nlist=4096,sq=fp16``,
  ``sq=sq8`` / ``sq=sq4``, ``pq=48`` (IndexIVFPQ, 48 bytes per vector), ``flat`` (IndexIVFFlat),
  ``nprobe=32``. Described as e.g. ``"ivf4096,sq_fp16"``.
- ``"hnsw"``: IndexIDMap2(IndexHNSWFlat), M=32. Options ``hnsw:m=32,sq=sq8,ef_search=64,
  ef_construction=40``; described as e.g. ``"hnsw32,sq8"``. HNSW cannot remove vectors: `remove`
  raises `Unavailable` and the store rebuilds from its stored vectors with `rebuild`.
- ``"auto"``: flat up to ``exact_max`` vectors, else ivf with fp16 codes.

Concurrency: `search` only reads and FAISS releases the GIL while it runs, so any number of
threads may search one VectorIndex at once. Writers never change an index that readers hold:
they take `copy()`, `add`/`remove` on it, `save` it and swap the reference. An index loaded with
``mmap=True`` is read-only (FAISS would abort the process on a write); `copy()` it to write.

Threads: OpenMP's thread count is per calling thread (libgomp), so `faiss.omp_set_num_threads`
in the main thread does not reach a worker pool. `search` therefore runs fewer than
`PARALLEL_MIN_QUERIES` queries on one OpenMP thread in the calling thread: FAISS parallelises over
queries, so a single query gains nothing from more threads, and on a busy machine spinning OpenMP
workers made single-query flat search several times slower (benchmarks/scale.py measures it).
Concurrency for single queries comes from the caller's thread pool instead. Larger batches use
the thread's default OpenMP thread count. On a shared or busy machine, start the process with
OMP_WAIT_POLICY=PASSIVE (it must be set before FAISS loads): with spinning OpenMP workers,
2-thread training and HNSW builds ran 4-8x slower than with passive ones on loaded cores.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from kb.errors import Conflict, InvalidInput, Unavailable

log = logging.getLogger(__name__)

#: searches with fewer queries than this run on one OpenMP thread (see the module docstring)
PARALLEL_MIN_QUERIES = 16
#: k-means wants at least this many training points per IVF list (FAISS warns below 39)
MIN_POINTS_PER_LIST = 39
#: default HNSW neighbours per node
HNSW_M = 32
#: default HNSW beam width at search time; measured by benchmarks/scale.py
DEFAULT_EF_SEARCH = 64
#: collections smaller than this are indexed exactly by `rebuild` whatever the kind
MIN_TRAINED_SIZE = 1_000

_SQ_TYPES = {
    "fp16": faiss.ScalarQuantizer.QT_fp16,
    "sq8": faiss.ScalarQuantizer.QT_8bit,
    "sq4": faiss.ScalarQuantizer.QT_4bit,
}
_SQ_ALIASES = {
    "fp16": "fp16",
    "sq_fp16": "fp16",
    "8": "sq8",
    "sq8": "sq8",
    "4": "sq4",
    "sq4": "sq4",
}
_OPTIONS = {
    "flat": set(),
    "ivf": {"nlist", "nprobe", "sq", "pq", "flat"},
    "hnsw": {"m", "sq", "ef_search", "ef_construction"},
}


@dataclass(frozen=True)
class IndexSpec:
    """A parsed index kind. ``encoding`` is "flat", "fp16", "sq8", "sq4" or "pq"."""

    family: str
    encoding: str = "flat"
    nlist: int | None = None
    nprobe: int | None = None
    pq_m: int | None = None
    m: int = HNSW_M
    ef_search: int = DEFAULT_EF_SEARCH
    ef_construction: int = 40

    @property
    def needs_training(self) -> bool:
        return self.family == "ivf" or self.encoding in ("sq8", "sq4")


def parse_kind(kind: str) -> IndexSpec:
    """Parse "flat", "ivf:nlist=4096,sq=fp16", "ivf4096,pq48", "hnsw32,sq8", ... (not "auto")."""
    head, sep, rest = kind.strip().lower().partition(":")
    if not sep:
        head, _, rest = head.partition(",")
    match = re.fullmatch(r"(flat|ivf|hnsw)(\d*)", head)
    if not match:
        raise InvalidInput(
            f"unknown index kind {kind!r}: use auto, flat, ivf[:options] or hnsw[:options]"
        )
    family, number = match.groups()
    fields: dict = {"family": family, "encoding": "fp16" if family == "ivf" else "flat"}
    if number:
        fields["nlist" if family == "ivf" else "m"] = int(number)
    for option in filter(None, rest.split(",")):
        key, eq, value = option.strip().partition("=")
        if not eq:  # descriptive tokens: sq_fp16, sq8, pq48, flat
            key, value = ("pq", key[2:]) if re.fullmatch(r"pq\d+", key) else ("sq", key)
            if value == "flat":
                key = "flat"
        if key not in _OPTIONS[family]:
            allowed = ", ".join(sorted(_OPTIONS[family])) or "none"
            raise InvalidInput(f"index kind {kind!r}: unknown option {key!r} (options: {allowed})")
        if key == "sq":
            if value not in _SQ_ALIASES:
                raise InvalidInput(f"index kind {kind!r}: sq={value!r}; use fp16, sq8 or sq4")
            fields["encoding"] = _SQ_ALIASES[value]
        elif key == "flat":
            fields["encoding"] = "flat"
        else:
            try:
                number = int(value)
            except ValueError:
                raise InvalidInput(f"index kind {kind!r}: {key} needs a whole number") from None
            if number < 1:
                raise InvalidInput(f"index kind {kind!r}: {key} must be at least 1")
            if key == "pq":
                fields.update(encoding="pq", pq_m=number)
            else:
                fields[key] = number
    return IndexSpec(**fields)


def check_kind(kind: str) -> str:
    """`kind` unchanged when it is "auto" or a kind `parse_kind` accepts; else InvalidInput."""
    if kind.strip().lower() != "auto":
        parse_kind(kind)
    return kind


def resolve_kind(kind: str, expected_size: int, exact_max: int = 25_000) -> IndexSpec:
    """The spec `build_index` uses: "auto" is flat up to `exact_max` vectors, else ivf fp16."""
    if kind.strip().lower() == "auto":
        return IndexSpec("flat") if expected_size <= exact_max else IndexSpec("ivf", "fp16")
    return parse_kind(kind)


def default_nlist(expected_size: int) -> int:
    """About 4*sqrt(N) inverted lists."""
    return max(1, round(4 * math.sqrt(max(expected_size, 1))))


def default_train_size(n: int, spec: IndexSpec) -> int:
    """Training sample for `rebuild`: enough for nlist lists (k-means cost grows with it)."""
    nlist = spec.nlist or default_nlist(n)
    return max(MIN_POINTS_PER_LIST * nlist + nlist, 20_000)


def default_nprobe(nlist: int) -> int:
    """Lists probed per query: 64, or nlist/64 for very large indexes, at most 256.

    benchmarks/scale.py (SciFact-derived data): nprobe=64 gives recall@10 0.97 at 1M vectors
    (nlist 4000, p50 under 1 ms); recall at a fixed nprobe hardly falls as nlist grows with
    4*sqrt(N).
    """
    return min(nlist, max(64, min(256, math.ceil(nlist / 64))))


class VectorIndex:
    """A FAISS index from int64 ids to normalised float32 vectors, searched by inner product."""

    def __init__(self, index: faiss.Index, *, read_only: bool = False):
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise InvalidInput("kb indexes use inner product on normalised vectors")
        self._index = index
        self._read_only = read_only

    # -- description -----------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def dimension(self) -> int:
        return int(self._index.d)

    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def kind(self) -> str:
        """E.g. "flat", "ivf4096,sq_fp16", "ivf1024,pq48", "hnsw32", "hnsw32,sq8"."""
        inner = self._inner()
        if isinstance(inner, faiss.IndexFlat):
            return "flat"
        if isinstance(inner, faiss.IndexHNSW):
            storage = faiss.downcast_index(inner.storage)
            return f"hnsw{_hnsw_m(inner)}" + _sq_suffix(storage)
        ivf = _ivf_of(inner)
        if isinstance(ivf, faiss.IndexIVFPQ):
            return f"ivf{ivf.nlist},pq{ivf.pq.M}"
        if isinstance(ivf, faiss.IndexIVFScalarQuantizer):
            return f"ivf{ivf.nlist}" + _sq_suffix(ivf)
        return f"ivf{ivf.nlist},flat"

    @property
    def supports_remove(self) -> bool:
        return not isinstance(self._inner(), faiss.IndexHNSW) and not self._read_only

    @property
    def search_params(self) -> dict[str, int]:
        """The current nprobe (IVF) or ef_search (HNSW); empty for flat."""
        inner = self._inner()
        if isinstance(inner, faiss.IndexHNSW):
            return {"ef_search": int(inner.hnsw.efSearch)}
        if isinstance(inner, faiss.IndexFlat):
            return {}
        return {"nprobe": int(_ivf_of(inner).nprobe)}

    def memory_bytes(self) -> int:
        """Bytes held by codes, ids, lists and graph (an estimate; overheads of a few % excluded)."""
        total = 0
        index = faiss.downcast_index(self._index)
        if isinstance(index, faiss.IndexIDMap2):
            # id_map vector plus the reverse hash map (~40 bytes a node with its bucket)
            total += self.ntotal * (8 + 40)
        inner = self._inner()
        if isinstance(inner, faiss.IndexHNSW):
            storage = faiss.downcast_index(inner.storage)
            hnsw = inner.hnsw
            total += self.ntotal * storage.code_size
            total += hnsw.neighbors.size() * 4 + hnsw.levels.size() * 4 + hnsw.offsets.size() * 8
        elif isinstance(inner, faiss.IndexFlat):
            total += self.ntotal * inner.code_size
        else:
            ivf = _ivf_of(inner)
            total += self.ntotal * (ivf.code_size + 8) + ivf.nlist * self.dimension * 4
            if isinstance(ivf, faiss.IndexIVFPQ):
                total += ivf.pq.centroids.size() * 4
        return total

    def __repr__(self) -> str:
        return f"VectorIndex(kind={self.kind!r}, ntotal={self.ntotal}, dimension={self.dimension})"

    # -- reading ---------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores (n, k) float32, ids (n, k) int64); missing slots have id -1. Thread-safe."""
        queries = self._as_vectors(queries, "queries")
        if k < 1:
            raise InvalidInput(f"k={k}: ask for at least one result")
        threads = 1 if len(queries) < PARALLEL_MIN_QUERIES else None
        with omp_threads(threads):
            scores, ids = self._index.search(queries, k)
        return scores, ids

    def copy(self) -> VectorIndex:
        """A private, writable copy (serialised and read back, so no memory is shared)."""
        return VectorIndex(faiss.deserialize_index(faiss.serialize_index(self._index)))

    def save(self, path: Path) -> None:
        """Write atomically: a temp file beside `path`, fsynced, then renamed over it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            faiss.write_index(self._index, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @classmethod
    def load(cls, path: Path, *, mmap: bool = False) -> VectorIndex:
        """Read an index; `mmap=True` maps its codes from the file and gives a read-only index."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no vector index at {path}")
        flags = faiss.IO_FLAG_MMAP_IFC if mmap else 0
        return cls(faiss.read_index(str(path), flags), read_only=mmap)

    # -- writing (on the writer's own copy) ---------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under the given ids; ids must be new (the caller owns id allocation)."""
        self._check_writable("add to")
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        vectors = self._as_vectors(vectors, "vectors")
        if len(ids) != len(vectors):
            raise InvalidInput(f"{len(ids)} ids for {len(vectors)} vectors: pass one id per vector")
        if len(ids):
            self._index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        """Remove vectors by id; returns how many were present. HNSW raises `Unavailable`."""
        self._check_writable("remove from")
        if isinstance(self._inner(), faiss.IndexHNSW):
            raise Unavailable(
                f"a {self.kind} index cannot remove vectors: rebuild it from the stored vectors "
                "with kb.store.index.rebuild, or use kind 'flat' or 'ivf'"
            )
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if not len(ids):
            return 0
        return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Set IVF nprobe / HNSW ef_search (saved with the index). A parameter for another kind is
        ignored, so a store may pass both. Call before sharing the index with searching threads."""
        inner = self._inner()
        if nprobe is not None and not isinstance(inner, faiss.IndexFlat | faiss.IndexHNSW):
            ivf = _ivf_of(inner)
            ivf.nprobe = max(1, min(int(nprobe), ivf.nlist))
        if ef_search is not None and isinstance(inner, faiss.IndexHNSW):
            inner.hnsw.efSearch = max(1, int(ef_search))

    # -- helpers ---------------------------------------------------------------------------

    def _inner(self) -> faiss.Index:
        index = faiss.downcast_index(self._index)
        if isinstance(index, faiss.IndexIDMap2 | faiss.IndexIDMap):
            return faiss.downcast_index(index.index)
        return index

    def _check_writable(self, verb: str) -> None:
        if self._read_only:
            raise Conflict(f"cannot {verb} an index loaded with mmap=True: call copy() first")

    def _as_vectors(self, x: np.ndarray, what: str) -> np.ndarray:
        x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dimension:
            raise InvalidInput(
                f"{what} have shape {x.shape}; this index holds {self.dimension}-dimensional vectors"
            )
        return x


def build_index(
    dimension: int,
    expected_size: int,
    kind: str = "auto",
    *,
    exact_max: int = 25_000,
    train_vectors: np.ndarray | None = None,
) -> VectorIndex:
    """An empty index for about `expected_size` vectors; ivf and sq8/sq4 kinds need `train_vectors`.

    IVF's nlist is about 4*sqrt(expected_size), lowered to what the training sample supports
    (39 points per list), and nprobe defaults to `default_nprobe(nlist)`.
    """
    if dimension < 1:
        raise InvalidInput(f"dimension={dimension}: must be at least 1")
    spec = resolve_kind(kind, expected_size, exact_max)
    if spec.needs_training:
        if train_vectors is None or not len(train_vectors):
            raise InvalidInput(
                f"index kind {kind!r} ({spec.family}, {spec.encoding}) must be trained: "
                "pass train_vectors (a sample of the vectors), or use rebuild()"
            )
        train_vectors = np.ascontiguousarray(train_vectors, dtype=np.float32)
        if train_vectors.ndim != 2 or train_vectors.shape[1] != dimension:
            raise InvalidInput(
                f"train_vectors have shape {train_vectors.shape}; expected (n, {dimension})"
            )
    if spec.family == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))
    elif spec.family == "hnsw":
        index = faiss.IndexIDMap2(_hnsw(dimension, spec, train_vectors))
    else:
        index = _ivf(dimension, expected_size, spec, train_vectors)
    return VectorIndex(index)


def rebuild(
    dimension: int,
    ids: np.ndarray,
    vectors: np.ndarray,
    kind: str = "auto",
    *,
    exact_max: int = 25_000,
    train_size: int | None = None,
    seed: int = 0,
    batch_size: int = 100_000,
) -> VectorIndex:
    """A fresh index of all `vectors`, trained on a random sample of them when the kind needs it.

    Under `MIN_TRAINED_SIZE` vectors a trained kind is pointless, so the result is flat.
    """
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    n = len(ids)
    spec = resolve_kind(kind, n, exact_max)
    train = None
    if spec.needs_training and n < MIN_TRAINED_SIZE:
        log.info("rebuild: %d vectors is too few to train %r; building a flat index", n, kind)
        kind = "flat"
    elif spec.needs_training:
        size = train_size or default_train_size(n, spec)
        pick = np.random.default_rng(seed).choice(n, size=min(n, size), replace=False)
        train = np.asarray(vectors[np.sort(pick)], dtype=np.float32)
    index = build_index(dimension, n, kind, exact_max=exact_max, train_vectors=train)
    for lo in range(0, n, batch_size):
        index.add(ids[lo : lo + batch_size], vectors[lo : lo + batch_size])
    return index


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of `truth` (exact top-k ids) present in the same row of `found`."""
    k = truth.shape[1]
    hits = sum(len(np.intersect1d(f[f >= 0], t[t >= 0])) for f, t in zip(found, truth, strict=True))
    return hits / (k * len(truth)) if len(truth) else 1.0


def tune_nprobe(
    index: VectorIndex,
    queries: np.ndarray,
    truth: np.ndarray,
    target: float = 0.95,
    candidates: tuple[int, ...] = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256),
) -> int:
    """Set and return the smallest nprobe whose recall@k (k = truth's width) reaches `target`."""
    k = truth.shape[1]
    chosen = candidates[-1]
    for nprobe in candidates:
        index.set_search_params(nprobe=nprobe)
        if recall_at_k(index.search(queries, k)[1], truth) >= target:
            chosen = nprobe
            break
    index.set_search_params(nprobe=chosen)
    return chosen


@contextmanager
def omp_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` OpenMP threads in this thread (None: leave as is), then restore."""
    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _hnsw(dimension: int, spec: IndexSpec, train: np.ndarray | None) -> faiss.Index:
    if spec.encoding == "flat":
        index = faiss.IndexHNSWFlat(dimension, spec.m, faiss.METRIC_INNER_PRODUCT)
    elif spec.encoding in _SQ_TYPES:
        qtype = _SQ_TYPES[spec.encoding]
        index = faiss.IndexHNSWSQ(dimension, qtype, spec.m, faiss.METRIC_INNER_PRODUCT)
    else:
        raise InvalidInput(f"hnsw supports sq=fp16, sq8 or sq4 codes, not {spec.encoding}")
    index.hnsw.efConstruction = spec.ef_construction
    index.hnsw.efSearch = spec.ef_search
    if not index.is_trained:
        index.train(train)
    return index


def _ivf(dimension: int, expected_size: int, spec: IndexSpec, train: np.ndarray) -> faiss.IndexIVF:
    supported = max(1, len(train) // MIN_POINTS_PER_LIST)
    nlist = min(spec.nlist or default_nlist(expected_size), supported)
    if spec.nlist and nlist < spec.nlist:
        log.warning(
            "ivf: %d training vectors support nlist=%d, not %d", len(train), nlist, spec.nlist
        )
    quantizer = faiss.IndexFlatIP(dimension)
    ip = faiss.METRIC_INNER_PRODUCT
    if spec.encoding == "pq":
        if dimension % spec.pq_m:
            raise InvalidInput(f"pq={spec.pq_m} must divide the dimension {dimension}")
        index = faiss.IndexIVFPQ(quantizer, dimension, nlist, spec.pq_m, 8, ip)
    elif spec.encoding == "flat":
        index = faiss.IndexIVFFlat(quantizer, dimension, nlist, ip)
    else:
        # fp16 keeps vectors exactly enough without residuals; coarser codes encode residuals
        by_residual = spec.encoding != "fp16"
        qtype = _SQ_TYPES[spec.encoding]
        index = faiss.IndexIVFScalarQuantizer(quantizer, dimension, nlist, qtype, ip, by_residual)
    index.cp.seed = 1234
    index.train(train)
    index.nprobe = min(nlist, spec.nprobe or default_nprobe(nlist))
    return index


def _hnsw_m(index: faiss.IndexHNSW) -> int:
    return int(index.hnsw.nb_neighbors(1))  # level 0 holds 2*M, upper levels M


def _ivf_of(index: faiss.Index) -> faiss.IndexIVF:
    return faiss.downcast_index(faiss.extract_index_ivf(index))


def _sq_suffix(index: faiss.Index) -> str:
    if not isinstance(index, faiss.IndexScalarQuantizer | faiss.IndexIVFScalarQuantizer):
        return ""
    names = {qtype: name for name, qtype in _SQ_TYPES.items()}
    name = names.get(index.sq.qtype, f"qt{index.sq.qtype}")
    return ",sq_fp16" if name == "fp16" else f",{name}"


__all__ = [
    "IndexSpec",
    "VectorIndex",
    "build_index",
    "default_nlist",
    "default_nprobe",
    "default_train_size",
    "omp_threads",
    "check_kind",
    "parse_kind",
    "recall_at_k",
    "rebuild",
    "resolve_kind",
    "tune_nprobe",
]

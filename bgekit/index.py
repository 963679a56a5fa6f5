"""``DenseIndex``: a faiss vector index with string ids, exact or approximate, saved atomically.

Scores are inner products. With L2-normalised vectors (what ``Embedder`` returns by default)
the inner product *is* the cosine similarity.

Kinds and their knobs:

* ``"flat"`` – exact search (``faiss.IndexFlatIP``). No knobs. Right up to a few million vectors.
* ``"hnsw"`` – graph search (``faiss.IndexHNSWFlat``, inner product). ``m`` (links per node,
  default 32), ``ef_construction`` (build effort, 200), ``ef_search`` (search effort, 128;
  raised to ``k`` when ``k`` is larger). More effort = better recall, slower.
* ``"ivf"`` – inverted lists (``faiss.IndexIVFFlat``, inner product). ``nlist`` (number of
  clusters; default ``4 * sqrt(n)`` picked when trained) and ``nprobe`` (clusters visited per
  query, 16). Needs training: the first ``add`` trains on its vectors when it has at least
  ``nlist`` of them, or call :meth:`DenseIndex.train` with a sample first.

Compressed kinds (fewer bytes per vector; see :mod:`bgekit.quantization`):

* ``"sq8"`` – int8 scalar quantizer (``faiss.IndexScalarQuantizer``, ``QT_8bit``): one byte per
  dimension (4x smaller than float32), a range per dimension trained on the first ``add`` (or
  :meth:`DenseIndex.train`). The float query is scored against the decoded vectors.
* ``"binary"`` – one bit per dimension (32x smaller; ``faiss.IndexBinaryFlat``), exact Hamming
  search over the signs (``x > 0``) of documents and query. ``dim`` must be a multiple of 8.
* ``"binary_hnsw"`` – the same bits in a graph (``faiss.IndexBinaryHNSW``); knobs ``m``,
  ``ef_construction``, ``ef_search`` as for ``"hnsw"``.
* ``"ivfpq"`` – inverted lists with product-quantised residuals (``faiss.IndexIVFPQ``, inner
  product): ``pq_m`` sub-vectors of ``pq_nbits`` bits each (default ``pq_m`` = the largest
  divisor of ``dim`` up to ``dim / 8``, 8 bits: ``dim / 8`` bytes per vector); ``nlist``,
  ``nprobe`` as for ``"ivf"``. Needs at least ``max(nlist, 2 ** pq_nbits)`` training vectors.

Binary kinds score a hit by the cosine of the two sign vectors, ``1 - 2 * hamming / dim``.

**Rescoring** (compressed kinds): with ``rescore=r`` (an int, 0 = off) the index also keeps a
copy of the vectors for rescoring (``rescore_dtype="float32"``, or ``"int8"`` with ranges
calibrated on the training vectors: 4x smaller, :func:`bgekit.quantization.quantize_int8`),
fetches ``r * k`` candidates from the compressed index and returns the ``k`` best by the inner
product of the *float* query with those vectors. The copy is saved as ``rescore.npy`` and is
memory-mapped by :meth:`DenseIndex.load`, so it can stay on disk.

The search-time knobs (``ef_search``, ``nprobe``, ``rescore``) can be changed between searches:
``index.knobs["nprobe"] = 64``.

Search results: ``ids, scores = index.search(queries, k)``. ``scores`` is a float32 array of
shape ``(m, min(k, len(index)))``, best first. ``ids[i]`` is the list of string ids of query
``i``'s hits, in the same order. Exact search always fills every row. Approximate search can
find fewer than ``k`` hits for a query; then ``ids[i]`` is *shorter* and the tail of
``scores[i]`` is ``-inf``. faiss' ``-1`` padding never reaches the caller, and
``zip(ids[i], scores[i])`` yields exactly the real hits.

Ties: equal scores come in id-descending order, the total order :mod:`bgekit.metrics` ranks by
(``trec_eval``'s), whatever faiss returned; a tie group that crosses the cut is fetched whole first.
So a top ``k`` is the prefix of any deeper top ``k`` for exact search (flat, or IVF visiting every
list); HNSW's graph search may find other hits as its effort grows with ``k``.

Example::

    >>> import numpy as np
    >>> index = DenseIndex(dim=4)
    >>> index.add(["a", "b"], np.eye(4, dtype=np.float32)[:2])
    >>> ids, scores = index.search(np.array([0.0, 1.0, 0.0, 0.0], dtype=np.float32), k=5)
    >>> ids, scores.tolist()
    ([['b', 'a']], [[1.0, 0.0]])
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bgekit._io import atomic_dir

logger = logging.getLogger(__name__)

__all__ = ["DenseIndex", "KINDS", "COMPRESSED_KINDS"]

KINDS = ("flat", "hnsw", "ivf", "sq8", "binary", "binary_hnsw", "ivfpq")
#: kinds that store fewer bytes than float32 and can rescore their candidates with the float query
COMPRESSED_KINDS = ("sq8", "binary", "binary_hnsw", "ivfpq")
_BINARY_KINDS = ("binary", "binary_hnsw")
RESCORE_DTYPES = ("float32", "int8")
FORMAT = "bgekit.DenseIndex"
FORMAT_VERSION = 1
_RESCORE_KNOBS: dict[str, Any] = {"rescore": 0, "rescore_dtype": "float32"}
_DEFAULT_KNOBS: dict[str, dict[str, Any]] = {
    "flat": {},
    "hnsw": {"m": 32, "ef_construction": 200, "ef_search": 128},
    "ivf": {"nlist": None, "nprobe": 16},
    "sq8": {**_RESCORE_KNOBS},
    "binary": {**_RESCORE_KNOBS},
    "binary_hnsw": {"m": 32, "ef_construction": 200, "ef_search": 128, **_RESCORE_KNOBS},
    "ivfpq": {"nlist": None, "nprobe": 16, "pq_m": None, "pq_nbits": 8, **_RESCORE_KNOBS},
}
_FILES = ("index.faiss", "ids.json", "meta.json")
_RESCORE_FILE, _RANGES_FILE = "rescore.npy", "rescore_ranges.npy"


def _faiss():
    import faiss  # imported lazily: a heavy import, and only needed when an index is used

    return faiss


def _as_matrix(x: Any, dim: int, name: str, allow_1d: bool) -> np.ndarray:
    """Validate and convert to a C-contiguous float32 (n, dim) array."""
    arr = np.asarray(x)
    if arr.dtype.kind != "f":
        raise TypeError(
            f"{name} must be a floating-point array (float32 preferred), got dtype {arr.dtype}"
        )
    if arr.ndim == 1 and allow_1d:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        want = f"({dim},) or (n, {dim})" if allow_1d else f"(n, {dim})"
        raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        what = "NaN" if np.isnan(arr[bad]).any() else "inf"
        raise ValueError(f"{name}[{bad}] contains {what} ({int((~finite).sum())} bad row(s) in all)")
    return arr


class DenseIndex:
    """Inner-product vector index over faiss with string ids (see the module docstring).

    >>> index = DenseIndex(384, kind="hnsw", m=32, ef_search=64)   # doctest: +SKIP
    >>> index.add(doc_ids, doc_vectors)                              # doctest: +SKIP
    >>> ids, scores = index.search(query_vectors, k=10)              # doctest: +SKIP
    >>> index.save("my_index"); index = DenseIndex.load("my_index") # doctest: +SKIP
    """

    def __init__(self, dim: int, kind: str = "flat", **knobs: Any) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        unknown = set(knobs) - set(_DEFAULT_KNOBS[kind])
        if unknown:
            allowed = sorted(_DEFAULT_KNOBS[kind]) or "none"
            raise ValueError(f"unknown knob(s) {sorted(unknown)} for kind={kind!r}; allowed: {allowed}")
        self.dim = int(dim)
        self.kind = kind
        self.knobs: dict[str, Any] = {**_DEFAULT_KNOBS[kind], **knobs}
        for name, val in self.knobs.items():
            if name == "rescore_dtype":
                if val not in RESCORE_DTYPES:
                    raise ValueError(f"knob rescore_dtype must be one of {RESCORE_DTYPES}, got {val!r}")
                continue
            least = 0 if name == "rescore" else 1
            if val is not None and (isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < least):
                what = "an int >= 0 (0: no rescoring)" if name == "rescore" else "a positive int"
                raise ValueError(f"knob {name} must be {what}, got {val!r}")
            if val is not None:
                self.knobs[name] = int(val)
        if kind in _BINARY_KINDS and self.dim % 8:
            raise ValueError(f"kind={kind!r} packs 8 dimensions per byte: dim must be a multiple of 8, got {self.dim}")
        if kind == "ivfpq":
            if self.knobs["pq_m"] is None:
                self.knobs["pq_m"] = max(m for m in range(1, max(1, self.dim // 8) + 1) if self.dim % m == 0)
            if self.dim % self.knobs["pq_m"]:
                raise ValueError(f"knob pq_m={self.knobs['pq_m']} must divide dim={self.dim}")
            if self.knobs["pq_nbits"] > 16:
                raise ValueError(f"knob pq_nbits must be at most 16, got {self.knobs['pq_nbits']}")
        self._ids: list[str] = []
        self._pos: dict[str, int] = {}
        self._index = self._new_faiss_index() if kind not in ("ivf", "ivfpq") or self.knobs["nlist"] else None
        # rescoring copy (compressed kinds with rescore > 0): chunks appended by add(), or a memory map after load()
        self._keeps_copy = kind in COMPRESSED_KINDS and self.knobs["rescore"] > 0
        self._rescore_parts: list[np.ndarray] = []
        self._rescore_ranges: np.ndarray | None = None

    # ------------------------------------------------------------------ building
    def _new_faiss_index(self, nlist: int | None = None):
        faiss = _faiss()
        if self.kind == "flat":
            return faiss.IndexFlatIP(self.dim)
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.knobs["m"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.knobs["ef_construction"]
            index.hnsw.efSearch = self.knobs["ef_search"]
            return index
        if self.kind in COMPRESSED_KINDS:
            return self._new_compressed_index(nlist)
        nlist = nlist or self.knobs["nlist"]
        quantizer = faiss.IndexFlatIP(self.dim)
        # faiss' Python wrapper keeps a reference to the quantizer for the index's lifetime
        return faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)

    def _new_compressed_index(self, nlist: int | None = None):
        faiss = _faiss()
        if self.kind == "sq8":
            return faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        if self.kind == "binary":
            return faiss.IndexBinaryFlat(self.dim)
        if self.kind == "binary_hnsw":
            index = faiss.IndexBinaryHNSW(self.dim, self.knobs["m"])
            index.hnsw.efConstruction = self.knobs["ef_construction"]
            index.hnsw.efSearch = self.knobs["ef_search"]
            return index
        nlist = nlist or self.knobs["nlist"]
        quantizer = faiss.IndexFlatIP(self.dim)
        return faiss.IndexIVFPQ(quantizer, self.dim, nlist, self.knobs["pq_m"], self.knobs["pq_nbits"],
                                faiss.METRIC_INNER_PRODUCT)

    @property
    def is_trained(self) -> bool:
        """False for an IVF, IVF-PQ or SQ8 index (or an int8 rescoring copy) not trained yet."""
        if self._index is None or not bool(self._index.is_trained):
            return False
        return not (self._keeps_copy and self.knobs["rescore_dtype"] == "int8" and self._rescore_ranges is None)

    def train(self, vectors: np.ndarray) -> None:
        """Train an IVF index's clusters on a sample of vectors (flat and HNSW need no training).

        Needs at least ``nlist`` vectors (faiss recommends >= 39 per cluster). When ``nlist`` was
        not given it is set to ``4 * sqrt(len(vectors))``, at most ``len(vectors) // 39``.
        ``"ivfpq"`` also trains its product quantizer (at least ``2 ** pq_nbits`` vectors),
        ``"sq8"`` its per-dimension ranges, and an int8 rescoring copy its ranges
        (:func:`bgekit.quantization.calibrate_int8`).
        """
        x = _as_matrix(vectors, self.dim, "vectors", allow_1d=False)
        if self.kind in COMPRESSED_KINDS:
            self._train_compressed(x)
            return
        if self.kind != "ivf":
            logger.info("%s index needs no training; ignoring train()", self.kind)
            return
        if self.is_trained:
            raise ValueError("this IVF index is already trained")
        n = x.shape[0]
        nlist = self._pick_nlist(n)
        if n < nlist:
            raise ValueError(
                f"IVF training needs at least nlist={nlist} vectors, got {n}: "
                "train on more vectors or pick a smaller nlist"
            )
        if n < 39 * nlist:
            logger.warning("training IVF with %d vectors for %d clusters (faiss suggests >= %d)", n, nlist, 39 * nlist)
        if self._index is None or self._index.nlist != nlist:
            self.knobs["nlist"] = nlist
            self._index = self._new_faiss_index(nlist)
        self._index.train(x)

    def _pick_nlist(self, n: int) -> int:
        nlist = self.knobs["nlist"]
        return max(1, min(int(4 * math.sqrt(n)), n // 39)) if nlist is None else nlist

    def _train_compressed(self, x: np.ndarray) -> None:
        if self.is_trained:
            raise ValueError(f"this {self.kind} index is already trained")
        n = x.shape[0]
        if n == 0:
            raise ValueError("training needs at least one vector")
        if self.kind == "ivfpq" and (self._index is None or not self._index.is_trained):
            nlist = self._pick_nlist(n)
            least = max(nlist, 2 ** self.knobs["pq_nbits"])
            if n < least:
                raise ValueError(
                    f"IVF-PQ training needs at least max(nlist={nlist}, 2**pq_nbits={2 ** self.knobs['pq_nbits']}) "
                    f"= {least} vectors, got {n}: train on more vectors or pick a smaller nlist / pq_nbits"
                )
            if self._index is None or self._index.nlist != nlist:
                self.knobs["nlist"] = nlist
                self._index = self._new_faiss_index(nlist)
            self._index.train(x)
        elif not self._index.is_trained:  # sq8: a range per dimension
            self._index.train(x)
        if self._keeps_copy and self.knobs["rescore_dtype"] == "int8" and self._rescore_ranges is None:
            from bgekit.quantization import calibrate_int8

            self._rescore_ranges = calibrate_int8(x)

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add vectors with their string ids. May be called many times (batches).

        ``vectors`` is a float array (n, dim); other float dtypes are converted to float32.
        Nothing is added if any check fails (dtype, shape, NaN/inf, non-string or duplicate id).
        """
        if isinstance(ids, str):
            raise TypeError("ids must be a sequence of strings, not a single string")
        ids = list(ids)
        x = _as_matrix(vectors, self.dim, "vectors", allow_1d=False)
        if len(ids) != x.shape[0]:
            raise ValueError(f"got {len(ids)} ids for {x.shape[0]} vectors")
        seen: set[str] = set()
        for i, doc_id in enumerate(ids):
            if not isinstance(doc_id, str):
                raise TypeError(f"ids[{i}] must be a str, got {type(doc_id).__name__} ({doc_id!r})")
            if doc_id in self._pos:
                raise ValueError(f"duplicate id {doc_id!r} (ids[{i}]): already in the index")
            if doc_id in seen:
                raise ValueError(f"duplicate id {doc_id!r} (ids[{i}]): repeated in this batch")
            seen.add(doc_id)
        if not ids:
            return
        if not self.is_trained:
            self.train(x)
        start = len(self._ids)
        if self.kind in _BINARY_KINDS:
            from bgekit.quantization import quantize_binary

            self._index.add(quantize_binary(x))
        else:
            self._index.add(x)
        if self._keeps_copy:
            self._rescore_parts.append(self._rescore_codes(x))
        self._ids.extend(ids)
        self._pos.update((doc_id, start + i) for i, doc_id in enumerate(ids))

    # ------------------------------------------------------------------ querying
    def search(self, queries: np.ndarray, k: int = 10) -> tuple[list[list[str]], np.ndarray]:
        """Top-``k`` ids and scores per query, best first.

        ``queries``: (m, dim) or a single (dim,) vector (treated as m=1). Returns
        ``(ids, scores)`` with ``scores`` of shape ``(m, min(k, len(self)))``; see the module
        docstring for approximate kinds that find fewer hits (shorter ``ids[i]``, ``-inf`` scores).
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        q = _as_matrix(queries, self.dim, "queries", allow_1d=True)
        m = q.shape[0]
        kk = min(int(k), len(self))
        if kk == 0:
            return [[] for _ in range(m)], np.zeros((m, 0), dtype=np.float32)
        if self.kind in COMPRESSED_KINDS:
            return self._search_compressed(q, kk)
        scores, pos = self._search_tie_safe(q, kk)
        missing = pos < 0
        if missing.any():
            scores[missing] = -np.inf
        ids = [[self._ids[p] for p in row if p >= 0] for row in pos.tolist()]
        return ids, scores

    def _faiss_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._index
        if self.kind == "hnsw":
            index.hnsw.efSearch = max(self.knobs["ef_search"], k)
        elif self.kind == "ivf":
            index.nprobe = min(self.knobs["nprobe"], index.nlist)
        scores, pos = index.search(q, k)
        return np.asarray(scores, dtype=np.float32), np.asarray(pos, dtype=np.int64)

    def _search_tie_safe(self, q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``kk`` per query in :func:`bgekit.metrics.rank_order`'s order (score, then id descending).

        faiss returns an arbitrary member of a group of equal scores at the cut, so a top ``kk`` need
        not be the prefix of a deeper one. One hit more than asked is fetched; where it ties the
        ``kk``-th, the search goes deeper until the tie group is complete, then the rows with ties are
        re-sorted by id and cut at ``kk``.
        """
        from bgekit.metrics import rank_order

        n = len(self)
        fetch = min(kk + 1, n)
        scores, pos = self._faiss_search(q, fetch)
        out_s, out_p = scores[:, :kk].copy(), pos[:, :kk].copy()
        rows = np.arange(q.shape[0])
        deeper = False  # rows searched again: always written back from the deeper search
        while True:
            # a tie can cross the cut only where the last fetched hit scores the same as the kk-th
            if fetch >= n:
                open_rows = np.zeros(len(rows), dtype=bool)
            else:
                open_rows = (pos[:, fetch - 1] >= 0) & (scores[:, fetch - 1] == scores[:, kk - 1])
            # rows with any tie among their real hits: re-sort by id (faiss' order within a tie is arbitrary)
            valid = pos >= 0
            tied = ((scores[:, 1:] == scores[:, :-1]) & valid[:, 1:]).any(axis=1)
            for r in np.flatnonzero((tied | deeper) & ~open_rows):
                real = np.flatnonzero(pos[r] >= 0)
                ids = [self._ids[p] for p in pos[r, real]]
                top = real[rank_order(ids, scores[r, real], kk)]
                out_s[rows[r]], out_p[rows[r]] = -np.inf, -1
                out_s[rows[r], : len(top)] = scores[r, top]
                out_p[rows[r], : len(top)] = pos[r, top]
            if not open_rows.any():
                return out_s, out_p
            rows, q = rows[open_rows], q[open_rows]
            fetch, deeper = min(n, 2 * fetch), True
            scores, pos = self._faiss_search(q, fetch)

    # ------------------------------------------------------------------ compressed kinds
    def _search_compressed(self, q: np.ndarray, kk: int) -> tuple[list[list[str]], np.ndarray]:
        r = self.knobs["rescore"]
        if r and not self._keeps_copy:
            raise ValueError(
                f"rescore={r} needs a rescoring copy of the vectors, but this index was built without one: "
                "create it with rescore > 0 (e.g. DenseIndex(dim, kind, rescore=4)), or set knobs['rescore'] = 0"
            )
        n_cand = min(len(self), kk * r) if r else kk
        index = self._index
        if self.kind == "binary_hnsw":
            index.hnsw.efSearch = max(self.knobs["ef_search"], n_cand)
        elif self.kind == "ivfpq":
            index.nprobe = min(self.knobs["nprobe"], index.nlist)
        if self.kind in _BINARY_KINDS:
            from bgekit.quantization import quantize_binary

            dist, pos = index.search(quantize_binary(q), n_cand)
            scores = (1.0 - 2.0 * np.asarray(dist, dtype=np.float64) / self.dim).astype(np.float32)
        else:
            scores, pos = index.search(q, n_cand)
            scores = np.asarray(scores, dtype=np.float32)
        pos = np.asarray(pos, dtype=np.int64)
        if r:
            scores, pos = self._rescore(q, pos, kk)
        else:  # best first; equal scores (common with Hamming distances) in the metrics' order (doc id descending)
            scores, pos = self._sort_rows(scores, pos, kk)
        missing = pos < 0
        if missing.any():
            scores[missing] = -np.inf
        ids = [[self._ids[p] for p in row if p >= 0] for row in pos.tolist()]
        return ids, scores

    def _sort_rows(self, scores: np.ndarray, pos: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        """Each row's real hits in :func:`bgekit.metrics.rank_order`'s order, cut at ``kk`` (-1 / -inf pad)."""
        from bgekit.metrics import rank_order

        out_s = np.full((pos.shape[0], kk), -np.inf, dtype=np.float32)
        out_p = np.full((pos.shape[0], kk), -1, dtype=np.int64)
        for r in range(pos.shape[0]):
            real = np.flatnonzero(pos[r] >= 0)
            top = real[rank_order([self._ids[p] for p in pos[r, real]], scores[r, real], kk)]
            out_s[r, : len(top)], out_p[r, : len(top)] = scores[r, top], pos[r, top]
        return out_s, out_p

    def _rescore_codes(self, x: np.ndarray) -> np.ndarray:
        """What the rescoring copy stores for float32 vectors ``x`` (a copy, never the caller's array)."""
        if self.knobs["rescore_dtype"] == "int8":
            from bgekit.quantization import quantize_int8

            return quantize_int8(x, self._rescore_ranges)
        return np.array(x, dtype=np.float32, copy=True)

    def _rescore_matrix(self) -> np.ndarray:
        if len(self._rescore_parts) > 1:
            self._rescore_parts = [np.concatenate(self._rescore_parts)]
        if not self._rescore_parts:
            dtype = np.int8 if self.knobs["rescore_dtype"] == "int8" else np.float32
            return np.zeros((0, self.dim), dtype=dtype)
        return self._rescore_parts[0]

    def _rescore(self, q: np.ndarray, pos: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``kk`` best candidates of each row of ``pos`` by the float query's inner product with the copy."""
        from bgekit.metrics import rank_order

        store = self._rescore_matrix()
        int8 = self.knobs["rescore_dtype"] == "int8"
        scores = np.full((q.shape[0], kk), -np.inf, dtype=np.float32)
        best = np.full((q.shape[0], kk), -1, dtype=np.int64)
        for i, row in enumerate(pos):
            cand = np.unique(row[row >= 0])  # sorted: ties go to the earlier insertion
            if not len(cand):
                continue
            vecs = store[cand]
            if int8:
                from bgekit.quantization import dequantize_int8

                vecs = dequantize_int8(vecs, self._rescore_ranges)
            s = vecs @ q[i]
            order = np.asarray(rank_order([self._ids[c] for c in cand], s, kk), dtype=np.int64)
            scores[i, : len(order)] = s[order]
            best[i, : len(order)] = cand[order]
        return scores, best

    def _load_rescore_copy(self, path: Path) -> None:
        _check_copy(self, path)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._pos

    @property
    def code_size(self) -> int:
        """Bytes the index stores per vector for search: ``4 * dim`` for the float kinds, ``dim`` for
        ``"sq8"``, ``dim / 8`` for the binary kinds, ``pq_m * pq_nbits / 8`` for ``"ivfpq"``.

        Not counted: graph links (HNSW kinds), list ids (IVF kinds), the string ids, and the
        rescoring copy (``rescore_size``), which :meth:`load` leaves on disk (memory-mapped).

        >>> DenseIndex(1024, kind="binary").code_size, DenseIndex(1024, kind="sq8").code_size
        (128, 1024)
        """
        if self.kind in ("flat", "hnsw", "ivf"):
            return 4 * self.dim
        if self.kind in _BINARY_KINDS:
            return self.dim // 8
        if self.kind == "sq8":
            return self.dim
        return (self.knobs["pq_m"] * self.knobs["pq_nbits"] + 7) // 8

    @property
    def rescore_size(self) -> int:
        """Bytes per vector of the rescoring copy: ``4 * dim`` (float32), ``dim`` (int8) or 0 (none)."""
        if not self._keeps_copy:
            return 0
        return self.dim if self.knobs["rescore_dtype"] == "int8" else 4 * self.dim

    @property
    def ids(self) -> list[str]:
        """All ids, in insertion order (a copy)."""
        return list(self._ids)

    def reconstruct(self, doc_ids: Sequence[str] | None = None) -> np.ndarray:
        """The stored vectors (float32 (n, dim)) for ``doc_ids`` (default: all, in insertion order).

        Compressed kinds return what the index holds, decoded: ``"sq8"`` and ``"ivfpq"`` their
        approximations of the vectors, the binary kinds the sign vectors (+1 / -1).
        """
        if isinstance(doc_ids, str):
            raise TypeError("doc_ids must be a sequence of strings, not a single string")
        doc_ids = self._ids if doc_ids is None else list(doc_ids)
        try:
            positions = [self._pos[d] for d in doc_ids]
        except KeyError as e:
            raise KeyError(f"id {e.args[0]!r} is not in the index") from None
        if not positions:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.kind in ("ivf", "ivfpq"):
            self._index.make_direct_map()
        rows = np.stack([self._index.reconstruct(p) for p in positions])
        if self.kind in _BINARY_KINDS:
            from bgekit.quantization import unpack_binary

            return unpack_binary(rows.astype(np.uint8, copy=False), self.dim)
        return rows.astype(np.float32, copy=False)

    def __repr__(self) -> str:
        knobs = "".join(f", {k}={v}" for k, v in self.knobs.items())
        return f"DenseIndex(dim={self.dim}, kind={self.kind!r}{knobs}, n={len(self)})"

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``index.faiss``, ``ids.json`` and ``meta.json`` into folder ``path``.

        The folder is built beside the target and swapped in when complete, so a crash while
        saving leaves the previous index at ``path`` as it was. An existing folder that is not a
        saved DenseIndex is never overwritten.
        """
        path = Path(path)
        if path.exists():
            if not path.is_dir():
                raise FileExistsError(f"{path} exists and is not a folder")
            if any(path.iterdir()) and not _looks_like_index(path):
                raise FileExistsError(f"refusing to overwrite {path}: it is not empty and holds no saved DenseIndex")
        if self._index is None:
            raise ValueError("this IVF index is not trained yet: add vectors (or call train) before saving")
        if self.kind in COMPRESSED_KINDS and not self.is_trained:
            raise ValueError(f"this {self.kind} index is not trained yet: add vectors (or call train) before saving")
        faiss = _faiss()
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dim": self.dim,
            "kind": self.kind,
            "knobs": self.knobs,
            "count": len(self),
            "faiss_version": getattr(faiss, "__version__", "unknown"),
        }
        files = list(_FILES)
        if self._keeps_copy:
            meta["rescore_copy"] = True
            files.append(_RESCORE_FILE)
            if self.knobs["rescore_dtype"] == "int8":
                files.append(_RANGES_FILE)
        with atomic_dir(path) as tmp:
            if self.kind in _BINARY_KINDS:
                faiss.write_index_binary(self._index, str(tmp / "index.faiss"))
            else:
                faiss.write_index(self._index, str(tmp / "index.faiss"))
            if self._keeps_copy:
                np.save(tmp / _RESCORE_FILE, self._rescore_matrix(), allow_pickle=False)
                if self.knobs["rescore_dtype"] == "int8":
                    np.save(tmp / _RANGES_FILE, self._rescore_ranges, allow_pickle=False)
            (tmp / "ids.json").write_text(json.dumps(self._ids, ensure_ascii=False), encoding="utf-8")
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            for name in files:
                with open(tmp / name, "rb") as f:
                    os.fsync(f.fileno())
        logger.info("saved %r to %s", self, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> DenseIndex:
        """Load a folder written by :meth:`save`; refuses one whose files disagree with each other."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"no saved index at {path}")
        missing = [n for n in _FILES if not (path / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{path} is not a complete saved DenseIndex: missing {', '.join(missing)}")
        try:
            meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
            ids = json.loads((path / "ids.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: unreadable JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{path}/meta.json is not a bgekit DenseIndex description")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{path}: format_version {meta.get('format_version')!r} is not supported "
                f"(this bgekit reads {FORMAT_VERSION})"
            )
        if meta.get("kind") not in KINDS:
            raise ValueError(f"{path}/meta.json: unknown kind {meta.get('kind')!r}")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"{path}/ids.json must be a JSON list of strings")
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))
            raise ValueError(f"{path}/ids.json: duplicate id {dup!r}")
        if meta.get("count") != len(ids):
            raise ValueError(f"{path}: meta.json says count={meta.get('count')} but ids.json holds {len(ids)} ids")
        faiss = _faiss()
        binary = meta["kind"] in _BINARY_KINDS
        try:
            index = (faiss.read_index_binary if binary else faiss.read_index)(str(path / "index.faiss"))
        except RuntimeError as e:  # faiss' reader reports a damaged or foreign file this way
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{path}/index.faiss is not a readable faiss "
                             f"{'binary ' if binary else ''}index for kind={meta['kind']!r} ({first})") from None
        if index.ntotal != len(ids):
            raise ValueError(f"{path}: index.faiss holds {index.ntotal} vectors but ids.json holds {len(ids)} ids")
        if index.d != meta.get("dim"):
            raise ValueError(f"{path}: index.faiss has dimension {index.d} but meta.json says dim={meta.get('dim')}")
        expected_type = {"flat": faiss.IndexFlat, "hnsw": faiss.IndexHNSWFlat, "ivf": faiss.IndexIVFFlat,
                         "sq8": faiss.IndexScalarQuantizer, "binary": faiss.IndexBinaryFlat,
                         "binary_hnsw": faiss.IndexBinaryHNSW, "ivfpq": faiss.IndexIVFPQ}[meta["kind"]]
        if not isinstance(index, expected_type):
            raise ValueError(
                f"{path}: index.faiss is a {type(index).__name__}, but meta.json says kind={meta['kind']!r}"
            )
        if not binary and index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"{path}: index.faiss does not use inner-product search")
        knobs = dict(meta.get("knobs") or {})
        if meta["kind"] in ("ivf", "ivfpq"):
            if index.nlist != knobs.get("nlist"):
                raise ValueError(f"{path}: index.faiss has nlist={index.nlist} but meta.json says {knobs.get('nlist')}")
        if meta["kind"] == "ivfpq" and (index.pq.M, index.pq.nbits) != (knobs.get("pq_m"), knobs.get("pq_nbits")):
            raise ValueError(f"{path}: index.faiss has pq_m={index.pq.M}, pq_nbits={index.pq.nbits} but meta.json "
                             f"says {knobs.get('pq_m')}, {knobs.get('pq_nbits')}")
        obj = cls(meta["dim"], kind=meta["kind"], **knobs)
        obj._index = index
        obj._ids = ids
        obj._pos = {doc_id: i for i, doc_id in enumerate(ids)}
        if meta["kind"] in ("hnsw", "binary_hnsw"):
            index.hnsw.efSearch = obj.knobs["ef_search"]
        obj._keeps_copy = meta["kind"] in COMPRESSED_KINDS and bool(meta.get("rescore_copy"))
        if obj._keeps_copy:
            obj._load_rescore_copy(path)
        logger.info("loaded %r from %s", obj, path)
        return obj


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent} is not a complete saved DenseIndex: missing {path.name}")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{path} is not a readable .npy array ({e})") from None


def _check_copy(obj: DenseIndex, path: Path) -> None:
    """Check and attach the rescoring copy saved in ``path`` (memory-mapped: it can stay on disk)."""
    dtype = np.int8 if obj.knobs["rescore_dtype"] == "int8" else np.float32
    store = _load_npy(path / _RESCORE_FILE, mmap=True)
    if store.dtype != dtype or store.shape != (len(obj), obj.dim):
        raise ValueError(f"{path}/{_RESCORE_FILE} holds {store.dtype} {store.shape}, expected "
                         f"{np.dtype(dtype)} ({len(obj)}, {obj.dim}) for rescore_dtype={obj.knobs['rescore_dtype']!r}")
    if dtype == np.int8:
        ranges = _load_npy(path / _RANGES_FILE, mmap=False)
        if ranges.shape != (2, obj.dim) or ranges.dtype != np.float32 or not np.isfinite(ranges).all():
            raise ValueError(f"{path}/{_RANGES_FILE} holds {ranges.dtype} {ranges.shape}, expected finite "
                             f"float32 (2, {obj.dim})")
        obj._rescore_ranges = ranges
    obj._rescore_parts = [store]


def _looks_like_index(path: Path) -> bool:
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


if __name__ == "__main__":  # python -m bgekit.index build ... (see bgekit.index_build)
    import sys

    from bgekit.index_build import main

    sys.exit(main())

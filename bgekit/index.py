"""``DenseIndex``: a faiss vector index with string ids, exact or approximate, saved atomically.

Scores are inner products. With L2-normalised vectors (what ``Encoder`` returns by default)
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

The search-time knobs (``ef_search``, ``nprobe``) can be changed between searches:
``index.knobs["nprobe"] = 64``.

Search results: ``ids, scores = index.search(queries, k)``. ``scores`` is a float32 array of
shape ``(m, min(k, len(index)))``, best first. ``ids[i]`` is the list of string ids of query
``i``'s hits, in the same order. Exact search always fills every row. Approximate search can
find fewer than ``k`` hits for a query; then ``ids[i]`` is *shorter* and the tail of
``scores[i]`` is ``-inf``. faiss' ``-1`` padding never reaches the caller, and
``zip(ids[i], scores[i])`` yields exactly the real hits.

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

__all__ = ["DenseIndex", "KINDS"]

KINDS = ("flat", "hnsw", "ivf")
FORMAT = "bgekit.DenseIndex"
FORMAT_VERSION = 1
_DEFAULT_KNOBS: dict[str, dict[str, Any]] = {
    "flat": {},
    "hnsw": {"m": 32, "ef_construction": 200, "ef_search": 128},
    "ivf": {"nlist": None, "nprobe": 16},
}
_FILES = ("index.faiss", "ids.json", "meta.json")


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
            if val is not None and (isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1):
                raise ValueError(f"knob {name} must be a positive int, got {val!r}")
            if val is not None:
                self.knobs[name] = int(val)
        self._ids: list[str] = []
        self._pos: dict[str, int] = {}
        self._index = self._new_faiss_index() if kind != "ivf" or self.knobs["nlist"] else None

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
        nlist = nlist or self.knobs["nlist"]
        quantizer = faiss.IndexFlatIP(self.dim)
        # faiss' Python wrapper keeps a reference to the quantizer for the index's lifetime
        return faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)

    @property
    def is_trained(self) -> bool:
        """False only for an IVF index that has not been trained yet."""
        return self._index is not None and bool(self._index.is_trained)

    def train(self, vectors: np.ndarray) -> None:
        """Train an IVF index's clusters on a sample of vectors (flat and HNSW need no training).

        Needs at least ``nlist`` vectors (faiss recommends >= 39 per cluster). When ``nlist`` was
        not given it is set to ``4 * sqrt(len(vectors))``, at most ``len(vectors) // 39``.
        """
        x = _as_matrix(vectors, self.dim, "vectors", allow_1d=False)
        if self.kind != "ivf":
            logger.info("%s index needs no training; ignoring train()", self.kind)
            return
        if self.is_trained:
            raise ValueError("this IVF index is already trained")
        n = x.shape[0]
        nlist = self.knobs["nlist"]
        if nlist is None:
            nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
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
        self._index.add(x)
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

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._pos

    @property
    def ids(self) -> list[str]:
        """All ids, in insertion order (a copy)."""
        return list(self._ids)

    def reconstruct(self, doc_ids: Sequence[str] | None = None) -> np.ndarray:
        """The stored vectors (float32 (n, dim)) for ``doc_ids`` (default: all, in insertion order)."""
        if isinstance(doc_ids, str):
            raise TypeError("doc_ids must be a sequence of strings, not a single string")
        doc_ids = self._ids if doc_ids is None else list(doc_ids)
        try:
            positions = [self._pos[d] for d in doc_ids]
        except KeyError as e:
            raise KeyError(f"id {e.args[0]!r} is not in the index") from None
        if not positions:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.kind == "ivf":
            self._index.make_direct_map()
        return np.stack([self._index.reconstruct(p) for p in positions]).astype(np.float32, copy=False)

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
        with atomic_dir(path) as tmp:
            faiss.write_index(self._index, str(tmp / "index.faiss"))
            (tmp / "ids.json").write_text(json.dumps(self._ids, ensure_ascii=False), encoding="utf-8")
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            for name in _FILES:
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
                f"{path}: format_version {meta.get('format_version')!r} is not supported (this bgekit reads {FORMAT_VERSION})"
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
        index = faiss.read_index(str(path / "index.faiss"))
        if index.ntotal != len(ids):
            raise ValueError(f"{path}: index.faiss holds {index.ntotal} vectors but ids.json holds {len(ids)} ids")
        if index.d != meta.get("dim"):
            raise ValueError(f"{path}: index.faiss has dimension {index.d} but meta.json says dim={meta.get('dim')}")
        expected_type = {"flat": faiss.IndexFlat, "hnsw": faiss.IndexHNSWFlat, "ivf": faiss.IndexIVFFlat}[meta["kind"]]
        if not isinstance(index, expected_type):
            raise ValueError(f"{path}: index.faiss is a {type(index).__name__}, but meta.json says kind={meta['kind']!r}")
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"{path}: index.faiss does not use inner-product search")
        knobs = dict(meta.get("knobs") or {})
        if meta["kind"] == "ivf":
            if index.nlist != knobs.get("nlist"):
                raise ValueError(f"{path}: index.faiss has nlist={index.nlist} but meta.json says {knobs.get('nlist')}")
        obj = cls(meta["dim"], kind=meta["kind"], **knobs)
        obj._index = index
        obj._ids = ids
        obj._pos = {doc_id: i for i, doc_id in enumerate(ids)}
        if meta["kind"] == "hnsw":
            index.hnsw.efSearch = obj.knobs["ef_search"]
        logger.info("loaded %r from %s", obj, path)
        return obj


def _looks_like_index(path: Path) -> bool:
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT

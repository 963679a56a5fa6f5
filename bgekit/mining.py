"""Hard-negative mining for FlagEmbedding training data, with a guard against false negatives.

A *hard negative* is a passage the model ranks high for a query although it does not answer it.
Training on them teaches the model the fine distinctions; training on *false* negatives (passages
that do answer the query but are not labelled) teaches it the wrong thing. This module mines the
former and tries not to mine the latter.

Input and output are FlagEmbedding training JSONL, one ``{"query": str, "pos": [str, ...],
"neg": [str, ...]}`` per line; other keys are kept as they are. Like FlagEmbedding's ``hn_mine``,
the ``neg`` list of every row is **replaced** by the mined negatives.

The algorithm, per query:

1. encode the queries (with ``query_instruction_for_retrieval`` as prefix; ``None``: no prefix,
   as ``hn_mine``, whose default is an empty instruction) and the candidate pool (no prefix);
   the pool is ``candidate_pool`` or, by default, every ``pos`` and ``neg`` text of the input,
   de-duplicated after whitespace normalisation;
2. rank the pool by inner product with exact faiss search (:class:`bgekit.index.DenseIndex`, flat;
   equal scores in the package's one total order, so a rank range never depends on the search depth);
3. drop the query's own positives and the query text itself (exact match after whitespace
   normalisation), then keep ranks ``[a, b)`` of what is left (``range_for_sampling="a-b"``,
   0-based). *Difference from hn_mine*: hn_mine slices ranks first and drops positives afterwards,
   so its ranks count the positives; here ranks count only real candidates;
4. optional guard: drop candidates scoring ``>= (1 - margin) * ref`` where ``ref`` is the query's
   *lowest* positive score (``margin_reference="min"``, the cautious choice: anything the model
   rates as high as a known positive may well be one; ``"max"`` uses the best positive), and,
   with a ``reranker``, candidates the cross-encoder scores above ``reranker_threshold``
   (``compute_score(pairs, normalize=True)``: the sigmoid of the reranker's logit, in [0, 1] but
   not a calibrated probability);
5. sample ``negative_number`` of the survivors in random order with ``random.Random(seed)``;
6. rows that come up short are padded with random pool texts (never a positive, the query or a
   duplicate; the guard applies to them too), and counted in the report.

>>> from bgekit.mining import mine_hard_negatives
>>> report = mine_hard_negatives("BAAI/bge-large-en-v1.5", "train.jsonl", "train_mined.jsonl",
...                              range_for_sampling="2-200", negative_number=15,
...                              query_instruction_for_retrieval="Represent this sentence for "
...                              "searching relevant passages: ", margin=0.05)   # doctest: +SKIP
>>> print(report.summary())                                                       # doctest: +SKIP

To mine several settings from the same embeddings (as notebook 04 does), build a
:class:`HardNegativeMiner` once and call :meth:`HardNegativeMiner.mine` for each.
"""
from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write_jsonl, read_jsonl
from .data import load_passages, missing_positives, normalize_text, validate_training_row

logger = logging.getLogger(__name__)

__all__ = ["HardNegativeMiner", "MiningReport", "mine_hard_negatives", "mine_course_train_split",
           "course_train_rows", "parse_range", "normalize_text"]

#: defaults shared by the function, the class and the CLI (FlagEmbedding's hn_mine defaults)
DEFAULT_RANGE = (10, 210)
DEFAULT_NEGATIVE_NUMBER = 15
DEFAULT_RERANKER_THRESHOLD = 0.5
#: the course's settings (notebooks 04 and 05): a small corpus, so an earlier and shorter range
COURSE_RANGE = (2, 100)
COURSE_NEGATIVE_NUMBER = 7
COURSE_MARGIN = 0.05
COURSE_SEED = 42


def parse_range(value: str | Sequence[int], name: str = "range_for_sampling") -> tuple[int, int]:
    """Parse ``"a-b"`` (or ``(a, b)``) into ``(a, b)`` with ``0 <= a < b``; errors name the argument.

    >>> parse_range("10-210")
    (10, 210)
    """
    if isinstance(value, str):
        parts = value.strip().split("-")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"{name} must look like 'a-b' with whole numbers 0 <= a < b (e.g. '10-210'), "
                             f"got {value!r}")
        a, b = (int(p) for p in parts)
    else:
        try:
            a, b = value  # type: ignore[misc]
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be 'a-b' or a pair (a, b), got {value!r}") from None
        if any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) for x in (a, b)):
            raise ValueError(f"{name} must hold whole numbers, got {value!r}")
        a, b = int(a), int(b)
    if a < 0 or b < 0:
        raise ValueError(f"{name}: ranks cannot be negative, got {a}-{b}")
    if a >= b:
        raise ValueError(f"{name}: the start must be below the end (ranks [a, b)), got {a}-{b}; did you mean {b}-{a}?")
    return a, b


# ---------------------------------------------------------------------------------------- input
def _load_rows(source: str | os.PathLike | Sequence[Mapping]) -> list[dict]:
    """Training rows from a JSONL path (errors ``path:line: ...``) or a list of dicts (``rows[i]: ...``)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"input_file not found: {path}")
        rows = [dict(validate_training_row(obj, f"{path}:{lineno}")) for lineno, obj in read_jsonl(path)]
        where = str(path)
    else:
        rows = [dict(validate_training_row(obj, f"rows[{i}]")) for i, obj in enumerate(source)]
        where = "the input rows"
    if not rows:
        raise ValueError(f"{where}: no training rows")
    return rows


def _dedupe(texts: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """Unique texts (first spelling kept) and a map normalised text -> index."""
    out: list[str] = []
    index: dict[str, int] = {}
    for t in texts:
        key = normalize_text(t)
        if key not in index:
            index[key] = len(out)
            out.append(t)
    return out, index


# ---------------------------------------------------------------------------------------- report
@dataclass
class MiningReport:
    """What a mining run did. ``summary()`` gives the text the CLI prints.

    Score arrays are kept for plotting: ``positive_scores`` (one per query-positive pair),
    ``negative_scores`` (mined from the rank range), ``padded_scores`` (random padding).
    ``dropped`` lists the candidates the guard removed: dicts with ``row``, ``query``, ``text``,
    ``score`` (bi-encoder), ``positive_score`` (the margin's reference), ``rank`` (None for padding
    candidates), ``reason`` (``"margin"`` or ``"reranker"``) and ``reranker_score``.
    ``output_rows`` holds the mined rows (as written to ``output_file``).

    ``dropped_by_margin`` counts every in-range candidate the margin removed (plus padding candidates
    it removed); ``dropped_by_reranker`` counts candidates the reranker rejected. The reranker is only
    asked about candidates in the (random) order they are tried, until a row has enough negatives,
    so it does not score the whole range.
    """

    rows: int
    negative_number: int
    range_for_sampling: tuple[int, int]
    pool_size: int
    negatives_per_row: np.ndarray
    padded_rows: int
    padded_negatives: int
    short_rows: int
    dropped_by_margin: int
    dropped_by_reranker: int
    positive_scores: np.ndarray
    negative_scores: np.ndarray
    padded_scores: np.ndarray
    dropped: list[dict] = field(default_factory=list, repr=False)
    margin: float | None = None
    reranker_threshold: float | None = None
    seed: int | None = None
    output_file: Path | None = None
    seconds: float = 0.0
    output_rows: list[dict] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        """A few lines: rows, negatives per row, padding, guard drops, score distributions."""
        n = self.negatives_per_row
        a, b = self.range_for_sampling

        def stats(x: np.ndarray) -> str:
            if len(x) == 0:
                return "none"
            p = np.percentile(x, [5, 50, 95])
            return f"mean {x.mean():.3f}  p5 {p[0]:.3f}  median {p[1]:.3f}  p95 {p[2]:.3f}  (n={len(x)})"

        guard = []
        if self.margin is not None:
            guard.append(f"margin {self.margin:g}: {self.dropped_by_margin}")
        if self.reranker_threshold is not None:
            guard.append(f"reranker > {self.reranker_threshold:g}: {self.dropped_by_reranker}")
        lines = [
            f"rows: {self.rows} | pool: {self.pool_size} texts | ranks {a}-{b} | seed {self.seed}"
            + (f" | {self.seconds:.1f} s" if self.seconds else ""),
            f"negatives per row: {self.negative_number} wanted; min {int(n.min()) if len(n) else 0}, "
            f"mean {n.mean() if len(n) else 0:.2f}, max {int(n.max()) if len(n) else 0}",
            f"padded rows: {self.padded_rows} ({self.padded_negatives} random negatives)"
            + (f" | still short: {self.short_rows}" if self.short_rows else ""),
            "candidates dropped by the guard: " + (", ".join(guard) if guard else "no guard"),
            f"scores  positives: {stats(self.positive_scores)}",
            f"        mined negatives: {stats(self.negative_scores)}",
        ]
        if len(self.padded_scores):
            lines.append(f"        padded negatives: {stats(self.padded_scores)}")
        if self.output_file is not None:
            lines.append(f"written: {self.output_file}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


# ---------------------------------------------------------------------------------------- miner
def _as_encoder(model: Any, batch_size: int | None):
    if hasattr(model, "encode_queries") and hasattr(model, "encode"):
        return model
    from .embedder import Embedder

    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model_name_or_path must be a model name, a folder or an Embedder, got {type(model).__name__}")
    return Embedder(model, **({"batch_size": batch_size} if batch_size else {}))


def _as_reranker(reranker: Any):
    if reranker is None or hasattr(reranker, "compute_score"):
        return reranker
    if isinstance(reranker, (str, os.PathLike)):
        from .reranker import Reranker

        return Reranker(str(reranker))
    raise TypeError(f"reranker must be a Reranker, a model name or a folder, got {type(reranker).__name__}")


def _move_to_gpu(index: Any) -> bool:
    """Move a DenseIndex's faiss index onto the GPU(s); False (and a warning) when faiss has no GPU."""
    import faiss

    n_gpus = getattr(faiss, "get_num_gpus", lambda: 0)()
    if n_gpus < 1 or not hasattr(faiss, "index_cpu_to_all_gpus"):
        logger.warning("use_gpu_for_searching: this faiss build has no GPU support (or no GPU is visible); "
                       "searching on the CPU. Install faiss-gpu to search on the GPU.")
        return False
    index._index = faiss.index_cpu_to_all_gpus(index._index)
    logger.info("searching on %d GPU(s)", n_gpus)
    return True


class HardNegativeMiner:
    """Encode the training rows and the candidate pool once; mine with several settings.

    >>> miner = HardNegativeMiner(encoder, "train.jsonl", query_instruction_for_retrieval=None)  # doctest: +SKIP
    >>> r1 = miner.mine("2-50", negative_number=7, seed=0)                     # doctest: +SKIP
    >>> r2 = miner.mine("10-100", negative_number=7, seed=0, margin=0.05)      # doctest: +SKIP
    """

    def __init__(self, model_name_or_path: Any, input_file: str | os.PathLike | Sequence[Mapping],
                 candidate_pool: str | os.PathLike | Sequence[str] | None = None, *,
                 use_gpu_for_searching: bool = False, query_instruction_for_retrieval: str | None = None,
                 batch_size: int | None = None, show_progress: bool | None = None) -> None:
        t0 = time.perf_counter()
        self.rows = _load_rows(input_file)
        if candidate_pool is None:
            pool_texts = [t for r in self.rows for key in ("pos", "neg") for t in (r.get(key) or [])]
        else:
            pool_texts = load_passages(candidate_pool, "candidate_pool", join_title=False)
        self.pool, self._pool_index = _dedupe(pool_texts)
        # encoded too, for their scores (a custom candidate_pool); most of them missing gets a warning
        self._missing_positives = missing_positives((p for r in self.rows for p in r["pos"]), self._pool_index,
                                                    "candidate pool")
        self._model = model_name_or_path
        self._encoder: Any = None
        self.query_instruction_for_retrieval = query_instruction_for_retrieval or ""
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.use_gpu_for_searching = use_gpu_for_searching
        self.on_gpu = False
        self._encoded = False
        self._search_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self.encode_seconds = time.perf_counter() - t0

    @property
    def encoder(self) -> Any:
        """The :class:`bgekit.Embedder` (loaded on first use when a name or folder was given)."""
        if self._encoder is None:
            self._encoder = _as_encoder(self._model, self.batch_size)
        return self._encoder

    def _encode(self) -> None:
        """Encode queries, pool and positives, and build the index (once, on first use)."""
        if self._encoded:
            return
        t0 = time.perf_counter()
        kw: dict[str, Any] = {"show_progress": self.show_progress}
        if self.batch_size:
            kw["batch_size"] = self.batch_size

        # queries (unique texts, with the instruction) and the pool (no instruction)
        q_texts, q_index = _dedupe([r["query"] for r in self.rows])
        self._row_q = np.array([q_index[normalize_text(r["query"])] for r in self.rows], dtype=np.int64)
        logger.info("mining: %d rows (%d unique queries), pool of %d texts", len(self.rows), len(q_texts),
                    len(self.pool))
        self.q_vecs = self.encoder.encode_queries(
            q_texts, query_instruction_for_retrieval=self.query_instruction_for_retrieval, **kw)
        self.pool_vecs = self.encoder.encode(self.pool, **kw)
        missing = self._missing_positives
        extra = self.encoder.encode(missing, **kw) if missing else np.zeros((0, self.pool_vecs.shape[1]), np.float32)
        self._extra_index = {normalize_text(t): i for i, t in enumerate(missing)}
        self._extra_vecs = extra

        # for each row: pool indices to exclude (its positives and its query) and its positive scores
        self._excluded: list[set[int]] = []
        self._pos_scores: list[np.ndarray] = []
        for i, r in enumerate(self.rows):
            keys = [normalize_text(p) for p in r["pos"]] + [normalize_text(r["query"])]
            self._excluded.append({self._pool_index[k] for k in keys if k in self._pool_index})
            qv = self.q_vecs[self._row_q[i]]
            pv = np.stack([self._pos_vec(normalize_text(p)) for p in r["pos"]])
            self._pos_scores.append(pv @ qv)

        from .index import DenseIndex

        self.index = DenseIndex(self.pool_vecs.shape[1], kind="flat")
        self.index.add([str(i) for i in range(len(self.pool))], self.pool_vecs)
        self.on_gpu = _move_to_gpu(self.index) if self.use_gpu_for_searching else False
        self._encoded = True
        self.encode_seconds += time.perf_counter() - t0

    def _pos_vec(self, key: str) -> np.ndarray:
        if key in self._pool_index:
            return self.pool_vecs[self._pool_index[key]]
        return self._extra_vecs[self._extra_index[key]]

    def _search(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k pool positions and scores per unique query (cached; a deeper earlier search is reused)."""
        k = min(k, len(self.pool))
        if self._search_cache is None or self._search_cache[0] < k:
            ids, scores = self.index.search(self.q_vecs, k)
            # ids are "0".."n-1"; flat search fills every row
            pos = np.array(ids).astype(np.int64).reshape(len(ids), -1)
            self._search_cache = (k, pos, scores)
        _, pos, scores = self._search_cache
        return pos[:, :k], scores[:, :k]

    def ranked_candidates(self, row: int, k: int | None = None) -> tuple[list[int], list[float]]:
        """Pool positions and scores of row ``row``'s candidates, best first, positives and query removed."""
        self._encode()
        k = len(self.pool) if k is None else k
        excl = self._excluded[row]
        pos, scores = self._search(k + len(excl))
        q = self._row_q[row]
        keep = [(int(p), float(s)) for p, s in zip(pos[q], scores[q]) if int(p) not in excl][:k]
        return [p for p, _ in keep], [s for _, s in keep]

    def query_vector(self, row: int) -> np.ndarray:
        """The query vector of row ``row`` (as encoded for search, instruction included)."""
        self._encode()
        return self.q_vecs[self._row_q[row]]

    def positive_scores(self, row: int) -> np.ndarray:
        """Scores of row ``row``'s positives (query vector · positive vector), in ``pos`` order."""
        self._encode()
        return self._pos_scores[row].copy()

    def mine(self, range_for_sampling: str | Sequence[int] = DEFAULT_RANGE,
             negative_number: int = DEFAULT_NEGATIVE_NUMBER, seed: int = 42, *, margin: float | None = None,
             margin_reference: str = "min", reranker: Any = None,
             reranker_threshold: float = DEFAULT_RERANKER_THRESHOLD, output_file: str | os.PathLike | None = None,
             max_dropped_examples: int = 10_000, reranker_max_checks: int | None = None) -> MiningReport:
        """Mine negatives for every row (see the module docstring); write ``output_file`` if given.

        ``reranker_max_checks`` bounds the reranker guard: at most this many candidates of one row are scored by
        the cross-encoder (default ``max(3 * negative_number, 10)``); a row whose budget runs out keeps the
        negatives it has (counted in ``short_rows``), so a lenient threshold cannot make the guard score most of
        the pool."""
        t0 = time.perf_counter()
        a, b = parse_range(range_for_sampling)
        if a >= len(self.pool):
            raise ValueError(f"range_for_sampling: the start rank {a} is beyond the candidate pool "
                             f"({len(self.pool)} texts); use a start below {len(self.pool)}")
        if isinstance(negative_number, bool) or not isinstance(negative_number, (int, np.integer)) \
                or negative_number < 1:
            raise ValueError(f"negative_number must be a positive whole number, got {negative_number!r}")
        if margin is not None and not (0.0 <= float(margin) < 1.0):
            raise ValueError(f"margin is relative: use a value in [0, 1) such as 0.05, got {margin!r}")
        if margin_reference not in ("min", "max"):
            raise ValueError(f"margin_reference must be 'min' or 'max', got {margin_reference!r}")
        reranker = _as_reranker(reranker)
        budget = max(3 * int(negative_number), 10) if reranker_max_checks is None else int(reranker_max_checks)
        if reranker is not None and budget < 1:
            raise ValueError(f"reranker_max_checks must be >= 1, got {reranker_max_checks!r}")
        self._encode()
        if b - a < negative_number:
            logger.warning("range_for_sampling %d-%d holds fewer than negative_number=%d candidates: "
                           "every row will be padded", a, b, negative_number)
        rng = random.Random(seed)
        n_rows, P = len(self.rows), len(self.pool)
        max_excl = max(len(e) for e in self._excluded)
        pos_all, scores_all = self._search(b + max_excl)

        dropped: list[dict] = []
        n_margin = n_rerank = 0
        chosen: list[list[tuple[int, float, bool]]] = [[] for _ in range(n_rows)]  # (pool idx, score, padded)
        streams: list[Iterator[tuple[int, float, int | None]]] = []
        refs = np.array([float(s.min() if margin_reference == "min" else s.max()) for s in self._pos_scores])
        thresholds = (1.0 - float(margin)) * refs if margin is not None else None

        for i in range(n_rows):
            q = self._row_q[i]
            excl = self._excluded[i]
            cands = [(int(p), float(s)) for p, s in zip(pos_all[q], scores_all[q]) if int(p) not in excl][a:b]
            cands_ranked = []
            for r, (p, s) in enumerate(cands):
                if thresholds is not None and s >= thresholds[i]:  # the margin looks at the whole range
                    n_margin += 1
                    if len(dropped) < max_dropped_examples:
                        dropped.append(self._example(i, p, s, a + r, "margin", refs[i]))
                    continue
                cands_ranked.append((p, s, a + r))
            rng.shuffle(cands_ranked)
            streams.append(self._stream(i, cands_ranked, rng, {p for p, _ in cands}))

        # rounds: each unfinished row pulls as many candidates as it still needs; the guard checks them
        pending = list(range(n_rows))
        checks = [0] * n_rows  # candidates of each row scored by the reranker (bounded by `budget`)
        while pending:
            batch: list[tuple[int, int, float, int | None]] = []
            still: list[int] = []
            for i in pending:
                need = negative_number - len(chosen[i])
                if reranker is not None:
                    need = min(need, budget - checks[i])
                    if need <= 0:
                        continue
                got = 0
                for p, s, rank in streams[i]:
                    if thresholds is not None and s >= thresholds[i]:
                        n_margin += 1
                        if len(dropped) < max_dropped_examples:
                            dropped.append(self._example(i, p, s, rank, "margin", refs[i]))
                        continue
                    batch.append((i, p, s, rank))
                    got += 1
                    if got == need:
                        break
                if got:
                    still.append(i)
                    checks[i] += got
            if reranker is not None and batch:
                pairs = [(self.rows[i]["query"], self.pool[p]) for i, p, _, _ in batch]
                rr = np.asarray(reranker.compute_score(pairs, normalize=True), dtype=np.float64).reshape(-1)
                if rr.shape[0] != len(pairs):
                    raise ValueError(f"reranker returned {rr.shape[0]} scores for {len(pairs)} pairs")
            else:
                rr = None
            for j, (i, p, s, rank) in enumerate(batch):
                if rr is not None and rr[j] > reranker_threshold:
                    n_rerank += 1
                    if len(dropped) < max_dropped_examples:
                        dropped.append(self._example(i, p, s, rank, "reranker", refs[i], float(rr[j])))
                    continue
                chosen[i].append((p, s, rank is None))
            # a row that pulled candidates may still be short after the reranker: go again
            pending = [i for i in still if len(chosen[i]) < negative_number]

        out_rows, neg_scores, pad_scores, counts = [], [], [], []
        padded_rows = short_rows = 0
        for i, r in enumerate(self.rows):
            row = dict(r)
            row["neg"] = [self.pool[p] for p, _, _ in chosen[i]]
            out_rows.append(row)
            counts.append(len(chosen[i]))
            neg_scores += [s for _, s, pad in chosen[i] if not pad]
            pads = [s for _, s, pad in chosen[i] if pad]
            pad_scores += pads
            padded_rows += bool(pads)
            short_rows += len(chosen[i]) < negative_number
        capped = sum(reranker is not None and checks[i] >= budget and len(chosen[i]) < negative_number
                     for i in range(n_rows))
        if capped:
            logger.warning("%d row(s) stopped short: the reranker checked %d candidates each "
                           "(reranker_max_checks) and rejected too many", capped, budget)
        if short_rows:
            logger.warning("%d row(s) have fewer than %d negatives: the pool (%d texts) has too few candidates "
                           "left after removing positives, the query and the guard's drops", short_rows,
                           negative_number, P)
        if output_file is not None:
            output_file = Path(output_file)
            atomic_write_jsonl(output_file, out_rows)
        report = MiningReport(
            rows=n_rows, negative_number=int(negative_number), range_for_sampling=(a, b), pool_size=P,
            negatives_per_row=np.array(counts, dtype=np.int64), padded_rows=padded_rows,
            padded_negatives=len(pad_scores), short_rows=short_rows, dropped_by_margin=n_margin,
            dropped_by_reranker=n_rerank, positive_scores=np.concatenate(self._pos_scores).astype(np.float32),
            negative_scores=np.array(neg_scores, dtype=np.float32), padded_scores=np.array(pad_scores, np.float32),
            dropped=dropped, margin=None if margin is None else float(margin),
            reranker_threshold=float(reranker_threshold) if reranker is not None else None, seed=seed,
            output_file=output_file, seconds=time.perf_counter() - t0, output_rows=out_rows,
        )
        logger.info("mined %d rows: %d padded, %d dropped by margin, %d by reranker%s", n_rows, padded_rows,
                    n_margin, n_rerank, f"; wrote {output_file}" if output_file is not None else "")
        return report

    def _stream(self, i: int, ranked: list[tuple[int, float, int]], rng: random.Random, in_range: set[int]
                ) -> Iterator[tuple[int, float, int | None]]:
        """Row ``i``'s candidates in the order they are tried: the shuffled in-range ones (those the margin
        kept), then random pool texts outside the range (padding)."""
        seen = set(self._excluded[i]) | in_range
        yield from ranked
        P = len(self.pool)
        qv = self.q_vecs[self._row_q[i]]
        # padding: random pool texts not seen yet; rejection sampling while most of the pool is eligible
        while len(seen) < P:
            if P - len(seen) < P // 2 or P - len(seen) < 64:
                rest = [p for p in range(P) if p not in seen]
                rng.shuffle(rest)
                for p in rest:
                    yield p, float(self.pool_vecs[p] @ qv), None
                return
            p = rng.randrange(P)
            if p in seen:
                continue
            seen.add(p)
            yield p, float(self.pool_vecs[p] @ qv), None

    def _example(self, i: int, p: int, score: float, rank: int | None, reason: str, ref: float,
                 reranker_score: float | None = None) -> dict:
        return {"row": i, "query": self.rows[i]["query"], "text": self.pool[p], "score": score,
                "positive_score": float(ref), "rank": rank, "reason": reason, "reranker_score": reranker_score}


def mine_hard_negatives(model_name_or_path: Any, input_file: str | os.PathLike | Sequence[Mapping],
                        output_file: str | os.PathLike | None,
                        range_for_sampling: str | Sequence[int] = DEFAULT_RANGE,
                        negative_number: int = DEFAULT_NEGATIVE_NUMBER,
                        candidate_pool: str | os.PathLike | Sequence[str] | None = None,
                        use_gpu_for_searching: bool = False, query_instruction_for_retrieval: str | None = None,
                        seed: int = 42, *, margin: float | None = None, margin_reference: str = "min",
                        reranker: Any = None, reranker_threshold: float = DEFAULT_RERANKER_THRESHOLD,
                        batch_size: int | None = None, show_progress: bool | None = None) -> MiningReport:
    """Mine hard negatives with FlagEmbedding ``hn_mine``'s arguments; returns a :class:`MiningReport`.

    ``model_name_or_path``: a model name/folder or an :class:`bgekit.Embedder`. ``input_file``: a
    training JSONL path (or a list of row dicts). ``candidate_pool``: a JSONL of ``{"text"}`` (texts verbatim,
    as hn_mine; a title is ignored), a BEIR folder (titles ignored: for positives written as title + text, pass
    ``[doc_text(d) for d in corpus.values()]`` as :func:`mine_course_train_split` does) or a list of strings
    (:func:`bgekit.data.load_passages`); default every ``pos``/``neg`` of the input. ``range_for_sampling``: ``"a-b"``.
    ``query_instruction_for_retrieval``: prefix for the queries; ``None`` = none (hn_mine's default);
    pass the model's (``encoder.query_instruction_for_retrieval``) for BGE. ``margin``/``reranker``: the guard
    (see the module docstring). The output is written atomically; each row's ``neg`` is replaced.

    >>> from bgekit import Embedder
    >>> report = mine_hard_negatives(Embedder(), "train.jsonl", "mined.jsonl", "2-100", 7,
    ...                              margin=0.05)   # doctest: +SKIP
    >>> report.padded_rows, report.dropped_by_margin   # doctest: +SKIP
    """
    miner = HardNegativeMiner(model_name_or_path, input_file, candidate_pool,
                              use_gpu_for_searching=use_gpu_for_searching,
                              query_instruction_for_retrieval=query_instruction_for_retrieval,
                              batch_size=batch_size, show_progress=show_progress)
    report = miner.mine(range_for_sampling, negative_number, seed, margin=margin, margin_reference=margin_reference,
                        reranker=reranker, reranker_threshold=reranker_threshold, output_file=output_file)
    report.seconds += miner.encode_seconds
    return report


def course_train_rows(data_dir: str | os.PathLike | None = None, split: str = "train", grade: int = 2
                      ) -> tuple[list[dict], list[str]]:
    """Training rows and the candidate pool from a BEIR folder (default: the course data).

    A row per query with ``pos`` = its passages judged ``>= grade`` (as ``doc_text``), plus ``query_id``
    and ``pos_ids``; queries without such a passage are skipped. The pool is the whole corpus.
    """
    from .data import course_data_dir, doc_text, load_beir

    data = load_beir(course_data_dir() if data_dir is None else data_dir, split)
    rows = []
    for qid, text in data.queries.items():
        pos_ids = [d for d, g in sorted(data.qrels.get(qid, {}).items()) if g >= grade]
        if pos_ids:
            rows.append({"query": text, "pos": [doc_text(data.corpus[d]) for d in pos_ids], "neg": [],
                         "query_id": qid, "pos_ids": pos_ids})
    pool = [doc_text(d) for d in data.corpus.values()]
    return rows, pool


def mine_course_train_split(model_name_or_path: Any, output_file: str | os.PathLike, *,
                            data_dir: str | os.PathLike | None = None, split: str = "train",
                            range_for_sampling: str | Sequence[int] = COURSE_RANGE,
                            negative_number: int = COURSE_NEGATIVE_NUMBER, margin: float | None = COURSE_MARGIN,
                            seed: int = COURSE_SEED,
                            query_instruction_for_retrieval: str | None = "model", **kw: Any) -> MiningReport:
    """One call from the course data to a mined training file (what notebooks 04 and 05 use).

    Queries of ``split`` with their grade-2 passages as positives, the whole corpus as the pool,
    the model's own query instruction (``"model"``; pass ``None`` for none) and a 5% margin guard.

    >>> from bgekit import setup
    >>> cfg = setup()                                                                       # doctest: +SKIP
    >>> report = mine_course_train_split(cfg.embedder, cfg.work_dir / "train_mined.jsonl")  # doctest: +SKIP
    """
    rows, pool = course_train_rows(data_dir, split)
    encoder = _as_encoder(model_name_or_path, kw.pop("batch_size", None))
    instr = query_instruction_for_retrieval
    if instr == "model":
        instr = encoder.query_instruction_for_retrieval
    return mine_hard_negatives(encoder, rows, output_file, range_for_sampling, negative_number, pool,
                               query_instruction_for_retrieval=instr, seed=seed, margin=margin, **kw)

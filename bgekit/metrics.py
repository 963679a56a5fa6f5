"""Information-retrieval metrics: recall, precision, MRR, nDCG and MAP at a cut-off.

Inputs follow the usual ``pytrec_eval`` / BEIR shapes::

    run   = {"q1": {"d3": 12.1, "d7": 9.8}, ...}   # query id -> {doc id: score}, higher is better
    qrels = {"q1": {"d3": 2, "d9": 1}, ...}         # query id -> {doc id: graded relevance}

Conventions (the same as ``trec_eval``, so the numbers agree with ``pytrec_eval`` to 1e-9):

* **Ranking.** Each query's documents are sorted by score, highest first; equal scores are
  ordered by doc id in *descending* string order (``trec_eval`` sorts ties this way).
  The dict order of ``run`` is ignored.
* **Relevance.** A document is relevant when its relevance is > 0. nDCG uses the graded
  relevance itself as the gain (``trec_eval``'s ``ndcg_cut``), with a ``log2(rank + 1)``
  discount; judgements <= 0 give no gain. The ideal ranking sorts the query's judgements.
* **recall@k** = relevant docs in the top k / all relevant docs of the query (a real recall,
  not a "hit rate"). **precision@k** = relevant docs in the top k / k, even when the run
  returned fewer than k documents. **mrr@k** = 1 / rank of the first relevant doc within the
  top k, else 0. **map@k** = sum of precision@rank at each relevant doc in the top k / all
  relevant docs of the query (``trec_eval``'s ``map_cut``).
* **Which queries count.** A query is scored when ``qrels`` gives it at least one relevant
  document. A query in ``qrels`` with no relevant document (all judgements <= 0) cannot be
  scored by recall, MAP or nDCG, so it is *left out* of the per-query dicts and of the means
  (``trec_eval`` would score it 0 on every measure and drag the mean down for all systems
  alike). A scored query that is missing from ``run`` (or has an empty ranking) scores 0.
  Queries that are in ``run`` but not in ``qrels`` are ignored.

Example::

    >>> run = {"q1": {"a": 0.9, "b": 0.8, "c": 0.1}}
    >>> qrels = {"q1": {"b": 1, "c": 2}}
    >>> round(recall_at_k(run, qrels, 2)["q1"], 3)
    0.5
    >>> evaluate(run, qrels, ks=(1, 3), metrics=("mrr",))
    {'mrr@1': 0.0, 'mrr@3': 0.5}
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence

from .types import Qrels, Run

logger = logging.getLogger(__name__)

__all__ = [
    "METRICS",
    "evaluate",
    "evaluate_per_query",
    "format_table",
    "map_at_k",
    "mrr_at_k",
    "ndcg_at_k",
    "precision_at_k",
    "rank_documents",
    "rank_order",
    "recall_at_k",
]


METRICS: tuple[str, ...] = ("ndcg", "recall", "precision", "mrr", "map")
"""Metric names understood by :func:`evaluate` (keys come out as ``"name@k"``)."""


def rank_documents(scores: Mapping[str, float], k: int | None = None) -> list[str]:
    """Doc ids of one query best first: score descending, ties by doc id descending.

    This is the one total order of the package: every place that cuts a ranked list (BM25, dense
    search, fusion, reranking, mining) cuts by it, so a top ``k`` is always the first ``k`` of a
    deeper top ``k`` and the metrics see the same top ``k`` the retriever returned. ``k`` (``None``:
    all) keeps the best ``k``.

    >>> rank_documents({"a": 1.0, "b": 2.0, "c": 1.0})
    ['b', 'c', 'a']
    >>> rank_documents({"a": 1.0, "b": 2.0, "c": 1.0}, k=2)
    ['b', 'c']
    """
    ids = list(scores)
    values = [float(scores[d]) for d in ids]
    return [ids[i] for i in rank_order(ids, values, k)]


def rank_order(doc_ids: Sequence[str], scores: Sequence[float], k: int | None = None) -> list[int]:
    """Positions of ``doc_ids`` best first under :func:`rank_documents`' order (score descending,
    ties by doc id descending), the first ``k`` of them (``None``: all).

    ``scores`` may be a list or a 1-d numpy array (any float dtype; compared as given). With a ``k``
    smaller than the list, only the entries scoring at least the ``k``-th best score are sorted, so
    cutting a long array (BM25 over a whole corpus) stays cheap. Doc ids are compared as strings and
    should be unique.

    Raises:
        ValueError: a NaN score (naming its doc id), ``len(doc_ids) != len(scores)``, or a bad ``k``.

    >>> rank_order(["a", "b", "c", "d"], [1.0, 3.0, 1.0, 1.0], k=3)
    [1, 3, 2]
    """
    import numpy as np

    n = len(doc_ids)
    s = np.asarray(scores)
    if s.ndim != 1 or s.shape[0] != n:
        raise ValueError(f"got {n} doc ids but scores of shape {s.shape}: expected one score per doc id")
    if k is not None and (isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0):
        raise ValueError(f"k must be an int >= 0 or None, got {k!r}")
    if n == 0:
        return []
    if s.dtype.kind not in "fiub":
        s = s.astype(np.float64)
    if s.dtype.kind == "f":
        nan = np.flatnonzero(np.isnan(s))
        if nan.size:
            raise ValueError(f"run score for doc {doc_ids[int(nan[0])]!r} is NaN")
    if k is None or k >= n:
        cand = range(n)
    elif k == 0:
        return []
    else:
        kth = np.partition(s, n - k)[n - k]  # the k-th best score: everything tied with it may make the cut
        cand = np.flatnonzero(s >= kth).tolist()
    values = s.tolist()
    # doc id descending first, then a stable sort on score descending keeps that order for ties
    order = sorted(cand, key=lambda i: doc_ids[i], reverse=True)
    order.sort(key=lambda i: -values[i])
    return order if k is None else order[:k]


def _check_ks(ks: Iterable[int] | int) -> tuple[int, ...]:
    if isinstance(ks, int):
        ks = (ks,)
    out = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"cut-off k must be a positive int, got {k!r}")
        out.append(k)
    if not out:
        raise ValueError("ks is empty: give at least one cut-off, e.g. ks=(10,)")
    return tuple(out)


def _check_metrics(metrics: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
    if not metrics:
        raise ValueError(f"metrics is empty; choose from {list(METRICS)}")
    return metrics


def _scores_one_query(
    ranking: Sequence[str], judged: Mapping[str, int], ks: tuple[int, ...], metrics: tuple[str, ...]
) -> dict[str, float]:
    """All requested metrics for one query whose judgements contain >= 1 relevant doc."""
    rels = [judged.get(d, 0) for d in ranking[: max(ks)]]
    n_rel = sum(1 for r in judged.values() if r > 0)
    ideal = sorted((r for r in judged.values() if r > 0), reverse=True)
    out: dict[str, float] = {}
    for k in ks:
        top = rels[:k]
        hits = 0
        first_hit = 0
        ap_sum = 0.0
        dcg = 0.0
        for i, r in enumerate(top):
            if r > 0:
                hits += 1
                ap_sum += hits / (i + 1)
                dcg += r / math.log2(i + 2)
                if not first_hit:
                    first_hit = i + 1
        for m in metrics:
            if m == "recall":
                val = hits / n_rel
            elif m == "precision":
                val = hits / k
            elif m == "mrr":
                val = 1.0 / first_hit if first_hit else 0.0
            elif m == "map":
                val = ap_sum / n_rel
            else:  # ndcg
                idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal[:k]))
                val = dcg / idcg
            out[f"{m}@{k}"] = val
    return out


def _check_qrels(qrels: Qrels) -> None:
    for qid, judged in qrels.items():
        for did, rel in judged.items():
            # ints (numpy ints included) only: a float grade like 0.5 is a mistake, not a silent 0
            if isinstance(rel, bool) or not isinstance(rel, numbers.Integral):
                raise TypeError(
                    f"qrels[{qid!r}][{did!r}] = {rel!r}: relevance must be an int (graded, > 0 is relevant)"
                )


def evaluate_per_query(
    run: Run,
    qrels: Qrels,
    ks: Iterable[int] | int = (1, 3, 5, 10, 100),
    metrics: Iterable[str] | str = METRICS,
) -> dict[str, dict[str, float]]:
    """Per-query scores: ``{"ndcg@10": {qid: value, ...}, ...}`` (see module docstring for conventions).

    >>> evaluate_per_query({"q": {"a": 1.0}}, {"q": {"a": 1}}, ks=1, metrics="precision")
    {'precision@1': {'q': 1.0}}
    """
    ks = _check_ks(ks)
    metrics = _check_metrics(metrics)
    _check_qrels(qrels)
    keys = [f"{m}@{k}" for m in metrics for k in ks]
    table: dict[str, dict[str, float]] = {key: {} for key in keys}
    skipped = 0
    for qid, judged in qrels.items():
        if not any(r > 0 for r in judged.values()):
            skipped += 1
            continue
        ranking = rank_documents(run.get(qid, {}))
        for key, val in _scores_one_query(ranking, judged, ks, metrics).items():
            table[key][qid] = val
    if skipped:
        logger.info("%d query(ies) in qrels have no relevant document and are not scored", skipped)
    return table


def evaluate(
    run: Run,
    qrels: Qrels,
    ks: Iterable[int] | int = (1, 3, 5, 10, 100),
    metrics: Iterable[str] | str = METRICS,
) -> dict[str, float]:
    """Mean of each metric over the scored queries: ``{"ndcg@10": 0.71, "recall@100": 0.93, ...}``.

    Keys come metric by metric, each with every k, in the order given. Queries in ``qrels``
    with at least one relevant doc are averaged; missing from ``run`` means 0 for that query.

    >>> evaluate({"q": {"a": 2.0, "b": 1.0}}, {"q": {"b": 1}}, ks=(1, 2), metrics=("recall", "mrr"))
    {'recall@1': 0.0, 'recall@2': 1.0, 'mrr@1': 0.0, 'mrr@2': 0.5}
    """
    per_query = evaluate_per_query(run, qrels, ks, metrics)
    n = len(next(iter(per_query.values())))
    if n == 0:
        raise ValueError("no query in qrels has a relevant document (relevance > 0): nothing to evaluate")
    missing = sum(1 for q, j in qrels.items() if q not in run and any(r > 0 for r in j.values()))
    if missing:
        logger.warning("%d of %d evaluated queries are missing from the run (scored 0)", missing, n)
    return {key: math.fsum(vals.values()) / n for key, vals in per_query.items()}


def _one_metric(name: str, run: Run, qrels: Qrels, k: int) -> dict[str, float]:
    return evaluate_per_query(run, qrels, ks=(k,), metrics=(name,))[f"{name}@{k}"]


def ndcg_at_k(run: Run, qrels: Qrels, k: int) -> dict[str, float]:
    """nDCG@k per query, graded gains (``trec_eval`` ndcg_cut). ``{qid: value}``."""
    return _one_metric("ndcg", run, qrels, k)


def recall_at_k(run: Run, qrels: Qrels, k: int) -> dict[str, float]:
    """Recall@k per query: relevant retrieved in the top k / all relevant. ``{qid: value}``."""
    return _one_metric("recall", run, qrels, k)


def precision_at_k(run: Run, qrels: Qrels, k: int) -> dict[str, float]:
    """Precision@k per query: relevant in the top k / k. ``{qid: value}``."""
    return _one_metric("precision", run, qrels, k)


def mrr_at_k(run: Run, qrels: Qrels, k: int) -> dict[str, float]:
    """Reciprocal rank of the first relevant doc within the top k (0 if none). ``{qid: value}``."""
    return _one_metric("mrr", run, qrels, k)


def map_at_k(run: Run, qrels: Qrels, k: int) -> dict[str, float]:
    """Average precision cut at k, divided by all relevant docs (``trec_eval`` map_cut). ``{qid: value}``."""
    return _one_metric("map", run, qrels, k)


def format_table(
    results: Mapping[str, Mapping[str, float]],
    columns: Sequence[str] | None = None,
    digits: int = 4,
) -> str:
    """A Markdown table, one row per system, one column per metric.

    ``results`` maps a system name to the output of :func:`evaluate`. ``columns`` picks and
    orders the metric keys (default: every key, in first-seen order); a missing value shows "-".

    >>> print(format_table({"bm25": {"ndcg@10": 0.5}, "dense": {"ndcg@10": 0.625}}))
    | system | ndcg@10 |
    |:-------|--------:|
    | bm25   |  0.5000 |
    | dense  |  0.6250 |
    """
    if columns is None:
        columns = []
        for row in results.values():
            for key in row:
                if key not in columns:
                    columns.append(key)
    header = ["system", *columns]
    body = [
        [str(name)] + [f"{row[c]:.{digits}f}" if c in row else "-" for c in columns]
        for name, row in results.items()
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def fmt_row(cells: Sequence[str]) -> str:
        padded = (c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells))
        return "| " + " | ".join(padded) + " |"

    rule = (":" + "-" * (widths[0] + 1) if i == 0 else "-" * (widths[i] + 1) + ":" for i in range(len(header)))
    lines = [fmt_row(header), "|" + "|".join(rule) + "|"]
    for r in body:
        lines.append(fmt_row(r))
    return "\n".join(lines)

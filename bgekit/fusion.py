"""Fusion: combine the rankings or scores of several stages into one ranking.

Two ways, one home:

* **rank fusion** (:func:`rrf`, reciprocal-rank fusion): only each list's *order* counts, so lists
  whose scores live on unrelated scales (BM25 and cosine) can be merged without calibration;
* **score interpolation** (:func:`fuse_scores`): ``reranker logit + weight x first-stage score`` for
  a reranked candidate list, with the weight chosen on validation queries by
  :func:`tune_fusion_weight` (never on the test queries).

A run is ``{qid: {doc_id: score}}`` (:data:`bgekit.types.Run`); fused runs rank ties by doc id
descending, as :func:`bgekit.metrics.rank_documents` does, so a fused run evaluates the same way
wherever it is ranked.

>>> rrf([{"q": {"a": 3.0, "b": 2.0}}, {"q": {"b": 9.0}}], k_rrf=0)   # b: 1/2 + 1/1, a: 1/1
{'q': {'b': 1.5, 'a': 1.0}}
>>> fuse_scores({"q": {"a": 0.9, "b": 0.5}}, {"q": {"a": 1.0, "b": 2.0}}, weight=10)
{'q': {'a': 10.0, 'b': 7.0}}
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .metrics import rank_documents
from .types import Qrels, Run

__all__ = ["rrf", "fuse_scores", "tune_fusion_weight", "FUSION_WEIGHTS"]

#: weights :func:`tune_fusion_weight` tries by default (0: the reranker alone; large: the first stage's
#: order, with the reranker breaking near-ties)
FUSION_WEIGHTS: tuple[float, ...] = (0.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 200.0)


def _ranks(scores: Mapping[str, float]) -> dict[str, int]:
    """1-based competition ranks ("1224"): a doc's rank is 1 + the number of docs scored strictly higher."""
    values = sorted((float(v) for v in scores.values()), reverse=True)
    out: dict[str, int] = {}
    for d, v in scores.items():
        # bisect on the descending list: count of values strictly greater than v
        lo, hi = 0, len(values)
        v = float(v)
        while lo < hi:
            mid = (lo + hi) // 2
            if values[mid] > v:
                lo = mid + 1
            else:
                hi = mid
        out[d] = lo + 1
    return out


def rrf(
    runs: Sequence[Run],
    k_rrf: int = 60,
    top_k: int = 100,
    weights: Sequence[float] | None = None,
) -> dict[str, dict[str, float]]:
    """Reciprocal-rank fusion: ``score(d) = sum_runs weight / (k_rrf + rank_run(d))``.

    Each run ranks its docs by score, highest = rank 1; docs with equal scores share the best rank
    of their group ("1224" ranking), so fusion does not depend on arbitrary tie order. A doc absent
    from a run gets nothing from it. The fused run keeps the ``top_k`` best docs per query (ties by
    doc id descending, as :mod:`bgekit.metrics` ranks them); its query ids are the union of the runs'.
    Source: Cormack, Clarke and Büttcher, SIGIR 2009 (``k_rrf=60`` is theirs).

    Args:
        runs: one or more runs ``{qid: {doc_id: score}}``.
        k_rrf: the RRF constant (>= 0); larger values flatten the gap between top ranks.
        top_k: docs kept per query after fusion.
        weights: one weight per run (default: all 1).

    Returns:
        The fused run ``{qid: {doc_id: rrf score}}``, each query's docs best first.

    Raises:
        ValueError: no runs, a bad ``k_rrf`` or ``top_k``, or not one weight per run.

    >>> rrf([{"q": {"a": 3.0, "b": 2.0}}, {"q": {"b": 9.0}}], k_rrf=1)   # b: 1/(1+2) + 1/(1+1), a: 1/(1+1)
    {'q': {'b': 0.8333333333333333, 'a': 0.5}}
    """
    if not runs:
        raise ValueError("rrf needs at least one run")
    if isinstance(k_rrf, bool) or not isinstance(k_rrf, (int, float)) or k_rrf < 0:
        raise ValueError(f"k_rrf must be a number >= 0, got {k_rrf!r}")
    if isinstance(top_k, bool) or not hasattr(top_k, "__index__") or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    top_k = int(top_k)
    if weights is None:
        weights = [1.0] * len(runs)
    if len(weights) != len(runs):
        raise ValueError(f"got {len(weights)} weights for {len(runs)} runs")
    qids: list[str] = []
    seen: set[str] = set()
    for r in runs:
        for q in r:
            if q not in seen:
                seen.add(q)
                qids.append(q)
    fused: dict[str, dict[str, float]] = {}
    for q in qids:
        acc: dict[str, float] = {}
        for r, w in zip(runs, weights):
            scores = r.get(q)
            if not scores:
                continue
            for d, rank in _ranks(scores).items():
                acc[d] = acc.get(d, 0.0) + w / (k_rrf + rank)
        fused[q] = {d: acc[d] for d in rank_documents(acc)[:top_k]}
    return fused


def fuse_scores(first_stage: Run, reranked: Run, weight: float) -> dict[str, dict[str, float]]:
    """Score interpolation: ``reranked[q][d] + weight * first_stage[q][d]`` for every reranked pair.

    The reranker's logit and the first stage's score (a cosine in [-1, 1] for a dense retriever)
    live on different scales, so ``weight`` is not a share: it says how many logits one unit of
    cosine is worth. ``weight=0`` is the reranker alone. Tune it with :func:`tune_fusion_weight`.

    Args:
        first_stage: the first-stage run ``{qid: {doc_id: score}}``.
        reranked: the reranker's scores ``{qid: {doc_id: logit}}`` (a subset of ``first_stage``).
        weight: finite, >= 0.

    Returns:
        ``{qid: {doc_id: fused score}}`` for the reranked pairs, in ``reranked``'s order.

    Raises:
        ValueError: a negative or non-finite weight.
        KeyError: a reranked query or document without a first-stage score.

    >>> fuse_scores({"q": {"a": 0.9, "b": 0.5}}, {"q": {"a": 1.0, "b": 2.0}}, weight=10)
    {'q': {'a': 10.0, 'b': 7.0}}
    """
    w = float(weight)
    if not math.isfinite(w) or w < 0:
        raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
    out: dict[str, dict[str, float]] = {}
    for qid, scores in reranked.items():
        first = first_stage.get(qid)
        if first is None:
            raise KeyError(f"query {qid!r} is reranked but missing from the first-stage run")
        row = {}
        for doc_id, s in scores.items():
            if doc_id not in first:
                raise KeyError(f"document {doc_id!r} of query {qid!r} is reranked but has no first-stage score")
            row[doc_id] = float(s) + w * float(first[doc_id])
        out[qid] = row
    return out


def tune_fusion_weight(first_stage: Run, reranked: Run, qrels: Qrels, weights: Sequence[float] = FUSION_WEIGHTS,
                       metric: str = "ndcg@10") -> tuple[float, dict[float, float]]:
    """The fusion weight with the best ``metric`` on these queries, and the score of every weight tried.

    Use validation queries (e.g. the training queries held out with ``holdout_queries``), never the
    test queries, or the reported gain is tuned on the answers. Ties go to the smaller weight.

    Args:
        first_stage, reranked: as for :func:`fuse_scores`.
        qrels: ``{qid: {doc_id: relevance}}`` of the same (validation) queries.
        weights: the weights to try (default :data:`FUSION_WEIGHTS`).
        metric: ``"name@k"`` as :func:`bgekit.metrics.evaluate` names it.

    Returns:
        ``(best weight, {weight: metric value})``.

    Raises:
        ValueError: a malformed ``metric`` or no weights.

    >>> first = {"q": {"a": 0.9, "b": 0.5}}; rr = {"q": {"a": 1.0, "b": 2.0}}
    >>> tune_fusion_weight(first, rr, {"q": {"a": 1}}, weights=(0, 1, 10), metric="mrr@10")
    (10.0, {0.0: 0.5, 1.0: 0.5, 10.0: 1.0})
    """
    from .metrics import evaluate

    name, sep, k = metric.partition("@")
    if not sep or not k.isdigit():
        raise ValueError(f"metric must look like 'ndcg@10', got {metric!r}")
    if not weights:
        raise ValueError("weights is empty: give at least one weight to try")
    table = {float(w): evaluate(fuse_scores(first_stage, reranked, w), qrels, ks=(int(k),), metrics=(name,))[metric]
             for w in weights}
    best = max(table, key=lambda w: (table[w], -w))
    return best, table

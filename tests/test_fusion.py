"""bgekit.fusion: rank fusion (RRF) and score interpolation, against hand-worked cases and a brute-force reference."""
from __future__ import annotations

import random

import pytest

from bgekit import fusion


def _ref_order(scores):
    """Best first, ties by doc id descending: the order bgekit.metrics evaluates (written independently)."""
    return [d for d, _ in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def _ref_rrf(runs, k_rrf, top_k, weights):
    """Brute force: a doc's rank in a run is 1 + the number of docs with a strictly higher score."""
    out = {}
    for q in dict.fromkeys(q for r in runs for q in r):
        acc = {}
        for r, w in zip(runs, weights):
            scores = r.get(q, {})
            for d, s in scores.items():
                rank = 1 + sum(1 for t in scores.values() if t > s)
                acc[d] = acc.get(d, 0.0) + w / (k_rrf + rank)
        out[q] = {d: acc[d] for d in _ref_order(acc)[:top_k]}
    return out


def test_rrf_hand_worked():
    # run 1: a (rank 1), b and c tied (rank 2 each); run 2: c (1), d (2); k_rrf = 1
    runs = [{"q": {"a": 3.0, "b": 1.0, "c": 1.0}}, {"q": {"c": 5.0, "d": 4.0}}]
    fused = fusion.rrf(runs, k_rrf=1, top_k=10)
    assert fused == {"q": {"c": pytest.approx(1 / 3 + 1 / 2), "a": pytest.approx(1 / 2),
                           "b": pytest.approx(1 / 3), "d": pytest.approx(1 / 3)}}
    assert list(fused["q"]) == ["c", "a", "d", "b"]  # b and d tie: doc id descending


@pytest.mark.parametrize("seed", range(5))
def test_rrf_matches_brute_force_on_random_runs_with_ties(seed):
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(12)]
    runs = [{f"q{j}": {d: float(rng.randint(0, 4)) for d in rng.sample(docs, rng.randint(1, 12))}
             for j in range(3) if rng.random() < 0.8 or j == 0} for _ in range(3)]
    weights = [rng.uniform(0.5, 2.0) for _ in runs]
    k_rrf, top_k = rng.choice([0, 1, 60]), rng.randint(1, 12)
    got = fusion.rrf(runs, k_rrf=k_rrf, top_k=top_k, weights=weights)
    ref = _ref_rrf(runs, k_rrf, top_k, weights)
    assert list(got) == list(ref)
    for q in ref:
        assert list(got[q]) == list(ref[q])
        assert got[q] == pytest.approx(ref[q])


@pytest.mark.parametrize("kwargs,match", [
    (dict(runs=[]), "at least one run"),
    (dict(runs=[{"q": {"a": 1.0}}], k_rrf=-1), "k_rrf"),
    (dict(runs=[{"q": {"a": 1.0}}], top_k=0), "top_k"),
    (dict(runs=[{"q": {"a": 1.0}}], top_k=True), "top_k"),
    (dict(runs=[{"q": {"a": 1.0}}], weights=[1.0, 2.0]), "2 weights for 1 runs"),
])
def test_rrf_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fusion.rrf(**kwargs)


def test_fuse_scores_hand_worked_and_errors():
    first = {"q": {"a": 0.9, "b": 0.5, "c": 0.7}}
    logits = {"q": {"a": -1.0, "b": 2.0}}  # c was not reranked: it is left out
    assert fusion.fuse_scores(first, logits, 0) == {"q": {"a": -1.0, "b": 2.0}}
    assert fusion.fuse_scores(first, logits, 10) == {"q": {"a": pytest.approx(8.0), "b": pytest.approx(7.0)}}
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="weight"):
            fusion.fuse_scores(first, logits, bad)
    with pytest.raises(KeyError, match="'q2'"):
        fusion.fuse_scores(first, {"q2": {"a": 1.0}}, 1)
    with pytest.raises(KeyError, match="'z'"):
        fusion.fuse_scores(first, {"q": {"z": 1.0}}, 1)


def test_tune_fusion_weight_against_hand_computed_mrr():
    # q1: relevant a. logits put b first; cosines put a first. q2: relevant y, first in both.
    first = {"q1": {"a": 0.9, "b": 0.5}, "q2": {"x": 0.2, "y": 0.8}}
    logits = {"q1": {"a": 1.0, "b": 2.0}, "q2": {"x": 0.0, "y": 1.0}}
    qrels = {"q1": {"a": 1}, "q2": {"y": 1}}
    # w=0: q1 ranks b, a -> RR 1/2; w=1: 1.9 vs 2.5 -> still 1/2; w=5: 5.5 vs 4.5 -> a first, RR 1
    best, table = fusion.tune_fusion_weight(first, logits, qrels, weights=(0, 1, 5, 50), metric="mrr@10")
    assert table == {0.0: pytest.approx(0.75), 1.0: pytest.approx(0.75), 5.0: 1.0, 50.0: 1.0}
    assert best == 5.0  # ties go to the smaller weight
    with pytest.raises(ValueError, match="ndcg@10"):
        fusion.tune_fusion_weight(first, logits, qrels, metric="mrr")
    with pytest.raises(ValueError, match="weights is empty"):
        fusion.tune_fusion_weight(first, logits, qrels, weights=())


def test_one_home_old_import_locations_still_work():
    import bgekit
    from bgekit import reranker, retrieval

    assert retrieval.rrf is fusion.rrf and bgekit.rrf is fusion.rrf
    assert reranker.fuse_scores is fusion.fuse_scores and bgekit.fuse_scores is fusion.fuse_scores
    assert reranker.tune_fusion_weight is fusion.tune_fusion_weight
    assert reranker.FUSION_WEIGHTS is fusion.FUSION_WEIGHTS
    for mod in (retrieval, reranker):  # none of them defines its own copy
        for name in ("rrf", "fuse_scores", "tune_fusion_weight"):
            obj = getattr(mod, name, None)
            assert obj is None or obj.__module__ == "bgekit.fusion"

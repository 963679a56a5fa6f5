"""bgekit.metrics against pytrec_eval (trec_eval) on random runs, and on cases worked out by hand."""

import math
import random

import pytest

from bgekit.metrics import (
    evaluate,
    evaluate_per_query,
    format_table,
    map_at_k,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    rank_documents,
    recall_at_k,
)

KS = (1, 2, 3, 5, 10, 20)


# ----------------------------------------------------------------------------- hand-worked cases
def test_ties_broken_by_doc_id_descending():
    # a and b tie at 1.0: trec_eval ranks b before a
    assert rank_documents({"a": 1.0, "b": 1.0, "c": 0.5, "d": 2.0}) == ["d", "b", "a", "c"]
    run = {"q": {"a": 1.0, "b": 1.0, "c": 0.5}}
    qrels = {"q": {"a": 1}}
    assert precision_at_k(run, qrels, 1) == {"q": 0.0}
    assert recall_at_k(run, qrels, 1) == {"q": 0.0}
    assert recall_at_k(run, qrels, 2) == {"q": 1.0}
    assert mrr_at_k(run, qrels, 3) == {"q": 0.5}
    assert ndcg_at_k(run, qrels, 2)["q"] == pytest.approx(1 / math.log2(3), abs=1e-12)


def test_dict_order_of_run_is_ignored():
    qrels = {"q": {"x": 1, "y": 2}}
    a = evaluate({"q": {"x": 0.3, "y": 0.3, "z": 0.9}}, qrels, ks=(1, 2, 3))
    b = evaluate({"q": {"z": 0.9, "y": 0.3, "x": 0.3}}, qrels, ks=(1, 2, 3))
    assert a == b


def test_k_beyond_run_length_graded():
    # run returns 2 docs; 3 relevant docs with grades a=2, b=1, c=3
    run = {"q": {"a": 0.9, "b": 0.8}}
    qrels = {"q": {"a": 2, "b": 1, "c": 3, "n": 0}}
    res = evaluate(run, qrels, ks=(10,))
    dcg = 2 / 1 + 1 / math.log2(3)  # ranks 1 and 2
    idcg = 3 / 1 + 2 / math.log2(3) + 1 / 2  # ideal order c, a, b
    assert res["ndcg@10"] == pytest.approx(dcg / idcg, abs=1e-12)
    assert res["precision@10"] == pytest.approx(2 / 10)  # divides by k, not by run length
    assert res["recall@10"] == pytest.approx(2 / 3)
    assert res["mrr@10"] == 1.0
    assert res["map@10"] == pytest.approx((1 / 1 + 2 / 2) / 3)


def test_ideal_dcg_truncated_at_k():
    run = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
    qrels = {"q": {"b": 1, "c": 1, "d": 1}}
    # top-2: a (0), b (1) -> dcg = 1/log2(3); ideal top-2 = 1 + 1/log2(3)
    assert ndcg_at_k(run, qrels, 2)["q"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)), abs=1e-12)
    # map@3: hits at ranks 2 and 3 -> (1/2 + 2/3) / 3 relevant
    assert map_at_k(run, qrels, 3)["q"] == pytest.approx((1 / 2 + 2 / 3) / 3, abs=1e-12)


def test_query_without_relevant_docs_is_not_scored():
    run = {"q1": {"a": 1.0}, "q2": {"b": 1.0}}
    qrels = {"q1": {"a": 1}, "q2": {"b": 0, "c": -1}}
    per_query = evaluate_per_query(run, qrels, ks=(1,))
    assert all(set(v) == {"q1"} for v in per_query.values())
    assert evaluate(run, qrels, ks=(1,)) == {f"{m}@1": 1.0 for m in ("ndcg", "recall", "precision", "mrr", "map")}
    with pytest.raises(ValueError, match="no query in qrels has a relevant document"):
        evaluate(run, {"q2": {"b": 0}})


def test_query_missing_from_run_scores_zero_and_counts_in_mean():
    run = {"q1": {"a": 1.0}}
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    assert recall_at_k(run, qrels, 5) == {"q1": 1.0, "q2": 0.0}
    res = evaluate(run, qrels, ks=(5,))
    assert res["recall@5"] == 0.5 and res["ndcg@5"] == 0.5 and res["precision@5"] == pytest.approx(0.1)
    # an empty ranking is the same as a missing one
    assert evaluate({"q1": {"a": 1.0}, "q2": {}}, qrels, ks=(5,)) == res


def test_recall_is_not_a_hit_rate():
    run = {"q": {"a": 2.0, "b": 1.0}}
    qrels = {"q": {"a": 1, "x": 1, "y": 1, "z": 1}}
    assert recall_at_k(run, qrels, 10)["q"] == 0.25


def test_evaluate_key_order_and_validation():
    res = evaluate({"q": {"a": 1.0}}, {"q": {"a": 1}}, ks=(3, 1), metrics=("mrr", "recall"))
    assert list(res) == ["mrr@3", "mrr@1", "recall@3", "recall@1"]
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate({}, {"q": {"a": 1}}, metrics=("hitrate",))
    with pytest.raises(ValueError, match="positive int"):
        evaluate({}, {"q": {"a": 1}}, ks=(0,))
    with pytest.raises(TypeError, match=r"qrels\['q'\]\['a'\]"):
        evaluate({}, {"q": {"a": 1.5}})
    with pytest.raises(ValueError, match="NaN"):
        evaluate({"q": {"a": float("nan")}}, {"q": {"a": 1}})


def test_format_table():
    table = format_table({"bm25": {"ndcg@10": 0.5, "recall@100": 0.75}, "dense": {"ndcg@10": 0.625}})
    assert table.splitlines() == [
        "| system | ndcg@10 | recall@100 |",
        "|:-------|--------:|-----------:|",
        "| bm25   |  0.5000 |     0.7500 |",
        "| dense  |  0.6250 |          - |",
    ]


# ----------------------------------------------------------------------------- against pytrec_eval
def _random_case(seed):
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(rng.randint(5, 40))]
    run, qrels = {}, {}
    for qi in range(rng.randint(1, 25)):
        qid = f"q{qi}"
        judged = rng.sample(docs, rng.randint(1, min(12, len(docs))))
        qrels[qid] = {d: rng.choice([-1, 0, 0, 1, 1, 2, 3]) for d in judged}
        if rng.random() < 0.1:
            continue  # query absent from the run
        retrieved = rng.sample(docs, rng.randint(1, len(docs)))
        # coarse scores -> many ties; sometimes negative
        run[qid] = {d: round(rng.uniform(-1, 1), 1) for d in retrieved}
    run["q_unjudged"] = {docs[0]: 1.0}  # in the run, not in qrels: ignored
    return run, qrels


@pytest.mark.parametrize("seed", range(60))
def test_agrees_with_pytrec_eval(seed):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    run, qrels = _random_case(seed)
    cut = ",".join(map(str, KS))
    measures = {f"ndcg_cut.{cut}", f"recall.{cut}", f"P.{cut}", f"map_cut.{cut}", "recip_rank"}
    ref = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    ours = evaluate_per_query(run, qrels, ks=KS)

    scored = {q for q, j in qrels.items() if any(r > 0 for r in j.values())}
    compared = 0
    for qid in scored:
        if qid not in run:
            assert all(ours[key][qid] == 0.0 for key in ours)
            continue
        r = ref[qid]
        for k in KS:
            assert ours[f"ndcg@{k}"][qid] == pytest.approx(r[f"ndcg_cut_{k}"], abs=1e-9)
            assert ours[f"recall@{k}"][qid] == pytest.approx(r[f"recall_{k}"], abs=1e-9)
            assert ours[f"precision@{k}"][qid] == pytest.approx(r[f"P_{k}"], abs=1e-9)
            assert ours[f"map@{k}"][qid] == pytest.approx(r[f"map_cut_{k}"], abs=1e-9)
            # trec_eval's recip_rank has no cut-off: 1/rank of the first relevant doc
            rr = r["recip_rank"]
            expected_mrr = rr if rr > 0 and round(1 / rr) <= k else 0.0
            assert ours[f"mrr@{k}"][qid] == pytest.approx(expected_mrr, abs=1e-9)
        compared += 1
    assert set(ours["ndcg@10"]) == scored
    # means: over scored queries, missing ones as 0
    means = evaluate(run, qrels, ks=(10,), metrics=("ndcg",)) if scored else None
    if scored:
        expected = sum(ref[q]["ndcg_cut_10"] for q in scored if q in run) / len(scored)
        assert means["ndcg@10"] == pytest.approx(expected, abs=1e-9)


def test_random_cases_cover_ties_and_grades():
    # guard that the random cases above really exercise ties, grades and absent queries
    ties = grades = absent = 0
    for seed in range(60):
        run, qrels = _random_case(seed)
        ties += any(len(set(s.values())) < len(s) for s in run.values())
        grades += any(r >= 2 for j in qrels.values() for r in j.values())
        absent += any(q not in run for q in qrels)
    assert ties > 50 and grades > 50 and absent > 10

"""Tests of bgekit.retrieval: BM25 against bm25s and a hand-written BM25, RRF on hand-computed cases,
dense search against brute-force cosine of Encoder embeddings, MTEB's identical-id rule."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from bgekit.metrics import evaluate
from bgekit.retrieval import (
    BM25Retriever,
    DenseRetriever,
    HybridRetriever,
    evaluate_retrieval,
    retrieve_runs,
    rrf,
)

DOCS = {
    "d1": ("Yellow tomato leaves", "Lower leaves of a tomato turn yellow when the plant lacks nitrogen or is watered too much."),
    "d2": ("Leggy seedlings", "Seedlings stretch and flop over when light is too weak; move them closer to a grow lamp."),
    "d3": ("Watering cacti", "Water a cactus only when the soil is completely dry, about every two to three weeks."),
    "d4": ("Fungus gnats", "Small black flies over potting soil are fungus gnats; let the top layer dry out between waterings."),
    "d5": ("Basil care", "Pinch basil tips above a pair of leaves so the plant branches instead of flowering."),
    "d6": ("Repotting orchids", "Orchids grow in bark, not soil; repot them after flowering when roots spill out of the pot."),
    "d7": ("Overwatering", "Too much water suffocates roots; leaves droop and yellow even though the soil is wet."),
    "d8": ("Aphids", "Green aphids cluster on new shoots; rinse them off with water or spray soapy water."),
    "d9": ("Light for herbs", "Herbs on a windowsill need six hours of direct sun; a south window works best."),
    "d10": ("", "Tomato plants need deep watering twice a week and a stake to hold the fruit."),
}
QUERIES = {
    "q1": "why is my tomato plant going yellow",
    "q2": "baby plants tall and floppy",
    "q3": "how often do I water my cactus",
    "q4": "tiny flies in my plant pot",
    "q5": "bugs on new growth of my pepper",
}
QRELS = {
    "q1": {"d1": 2, "d7": 1},
    "q2": {"d2": 1},
    "q3": {"d3": 2},
    "q4": {"d4": 1},
    "q5": {"d8": 1, "d6": 0},
}


def write_beir(root: Path, docs=DOCS, queries=QUERIES, qrels=QRELS, split="test") -> Path:
    """A BEIR folder written by hand (not through bgekit.data), so the test reads real files."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as f:
        for did, (title, text) in docs.items():
            f.write(json.dumps({"_id": did, "title": title, "text": text}) + "\n")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as f:
        for qid, text in queries.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    (root / "qrels").mkdir(exist_ok=True)
    with open(root / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for qid, judged in qrels.items():
            for did, rel in judged.items():
                f.write(f"{qid}\t{did}\t{rel}\n")
    return root


def corpus_dict(docs=DOCS) -> dict[str, dict[str, str]]:
    return {d: {"title": t, "text": x} for d, (t, x) in docs.items()}


@pytest.fixture(scope="module")
def encoder():
    from bgekit.encoder import Encoder
    from bgekit.models import offline_model_path

    return Encoder(str(offline_model_path()), device="cpu", show_progress=False)


# ----------------------------------------------------------------------------------- BM25
def _bm25_by_hand(docs: list[list[str]], query: list[str], k1=1.5, b=0.75) -> np.ndarray:
    """Lucene (>= 8) BM25: idf = ln(1 + (N - df + .5) / (df + .5)); tf part = tf / (tf + k1 (1 - b + b dl/avgdl)).

    (Lucene 8 dropped the classic constant factor (k1 + 1) from the numerator; it does not change rankings.)
    """
    n = len(docs)
    avgdl = sum(len(d) for d in docs) / n
    out = np.zeros(n)
    for term in query:  # a repeated query term counts again (bm25s, like a Lucene bool query)
        df = sum(1 for d in docs if term in d)
        if df == 0:
            continue
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        for i, d in enumerate(docs):
            tf = d.count(term)
            out[i] += idf * tf / (tf + k1 * (1 - b + b * len(d) / avgdl))
    return out


def test_bm25_equals_hand_computed_formula():
    texts = ["water the basil water", "basil likes sun", "prune roses in spring", "sun and water for roses basil"]
    bm25 = BM25Retriever(texts, stemmer=None, stopwords=None)
    tok = [re.findall(r"\w\w+", t.lower()) for t in texts]
    for query in ["basil water", "roses", "sun sun basil", "cactus"]:
        ref = _bm25_by_hand(tok, re.findall(r"\w\w+", query.lower()))
        np.testing.assert_allclose(bm25.scores(query), ref, rtol=1e-5, atol=1e-6)
        hits = bm25.search([query], k=10)[0]
        expect = {str(i): s for i, s in enumerate(ref) if s > 0}
        assert {d for d, _ in hits} == set(expect)
        for d, s in hits:
            assert s == pytest.approx(expect[d], rel=1e-5)
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert bm25.search(["cactus"], k=3) == [[]]  # no shared token: no hit


def test_bm25_matches_bm25s_directly():
    import bm25s

    corpus = corpus_dict()
    ids = list(corpus)
    texts = [(corpus[d]["title"] + " " + corpus[d]["text"]).strip() for d in ids]
    try:
        import Stemmer

        stemmer = Stemmer.Stemmer("english")
    except ImportError:
        stemmer = None
    ref = bm25s.BM25()
    ref.index(bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    ours = BM25Retriever(corpus)  # defaults: English stopwords, PyStemmer when installed
    assert (ours.stemmer is None) == (stemmer is None)
    for query in QUERIES.values():
        q = bm25s.tokenize([query], stopwords="en", stemmer=stemmer, show_progress=False)
        docs, scores = ref.retrieve(q, k=len(ids), show_progress=False)
        expect = {ids[i]: float(s) for i, s in zip(docs[0], scores[0]) if s > 0}
        got = ours.search([query], k=len(ids))[0]
        assert {d for d, _ in got} == set(expect)
        for d, s in got:
            assert s == pytest.approx(expect[d], rel=1e-6)
        got_scores = [s for _, s in got]
        assert got_scores == sorted(got_scores, reverse=True)
    # k smaller than the number of matches keeps the best ones
    top2 = ours.search([QUERIES["q1"]], k=2)[0]
    full = ours.search([QUERIES["q1"]], k=10)[0]
    assert top2 == full[:2]


def test_bm25_doc_text_and_errors():
    bm25 = BM25Retriever(corpus_dict())
    assert bm25.doc_text("d1") == "Yellow tomato leaves " + DOCS["d1"][1]
    assert bm25.doc_text("d10") == DOCS["d10"][1]  # empty title: no leading space
    with pytest.raises(KeyError, match="nope"):
        bm25.doc_text("nope")
    with pytest.raises(ValueError, match="empty"):
        BM25Retriever({})
    with pytest.raises(TypeError, match="doc ids must be str"):
        BM25Retriever({1: "x"})
    with pytest.raises(TypeError, match=r"query #1"):
        bm25.search(["ok", None], k=3)
    with pytest.raises(TypeError, match="list of query strings"):
        bm25.search("a single string", k=3)
    with pytest.raises(ValueError, match="positive int"):
        bm25.search(["x"], k=0)


# ------------------------------------------------------------------------------------ RRF
def test_rrf_hand_computed_with_ties_and_single_run_docs():
    runs = [
        {"q": {"a": 3.0, "b": 2.0, "c": 2.0, "d": 1.0}, "only1": {"x": 1.0}},  # b, c tied: both rank 2
        {"q": {"c": 5.0, "e": 4.0}, "only2": {"y": 0.5, "z": 0.5}},
    ]
    fused = rrf(runs, k_rrf=60, top_k=100)
    expect = {
        "c": 1 / 62 + 1 / 61,
        "a": 1 / 61,
        "e": 1 / 62,  # e and b tie at 1/62: ordered by doc id descending (as bgekit.metrics ranks)
        "b": 1 / 62,
        "d": 1 / 64,  # rank 4 after the tie ("1224" ranking)
    }
    assert list(fused["q"]) == list(expect)
    for d, s in expect.items():
        assert fused["q"][d] == pytest.approx(s, abs=1e-15)
    assert fused["only1"] == {"x": pytest.approx(1 / 61)}
    assert fused["only2"] == {"z": pytest.approx(1 / 61), "y": pytest.approx(1 / 61)}
    assert list(fused) == ["q", "only1", "only2"]
    # top_k truncates after fusion; k_rrf=0 and weights
    assert list(rrf(runs, k_rrf=60, top_k=2)["q"]) == ["c", "a"]
    w = rrf(runs, k_rrf=0, top_k=10, weights=[1.0, 3.0])["q"]
    assert w["c"] == pytest.approx(1 / 2 + 3 / 1) and w["e"] == pytest.approx(3 / 2) and w["a"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="weights"):
        rrf(runs, weights=[1.0])
    with pytest.raises(ValueError, match="at least one run"):
        rrf([])


def test_hybrid_search_is_rrf_of_member_searches(encoder):
    corpus = corpus_dict()
    dense = DenseRetriever(encoder, corpus)
    bm25 = BM25Retriever(corpus)
    hybrid = HybridRetriever([dense, bm25], k_rrf=60, depth=10)
    texts = list(QUERIES.values())
    got = hybrid.search(texts, k=5)
    d_hits, b_hits = dense.search(texts, 10), bm25.search(texts, 10)
    for i in range(len(texts)):
        ref = rrf([{"q": dict(d_hits[i])}, {"q": dict(b_hits[i])}], k_rrf=60, top_k=5)["q"]
        assert [d for d, _ in got[i]] == list(ref)
        np.testing.assert_allclose([s for _, s in got[i]], list(ref.values()), rtol=1e-12)
    assert hybrid.doc_text("d3") == dense.doc_text("d3")
    with pytest.raises(ValueError, match="different corpus"):
        HybridRetriever([dense, BM25Retriever({"zz": "other"})])


# ---------------------------------------------------------------------------------- dense
def test_dense_equals_brute_force_cosine(encoder):
    corpus = corpus_dict()
    instruction = "Represent this sentence for searching relevant passages: "
    dense = DenseRetriever(encoder, corpus, query_instruction=instruction, batch_size=3)
    # reference: raw (unnormalised) embeddings of the exact strings, cosine by hand
    ids = list(corpus)
    doc_strings = [f"{t} {x}".strip() for t, x in DOCS.values()]
    qs = list(QUERIES.values())
    D = encoder.encode(doc_strings, normalize=False)
    Q = encoder.encode([instruction + q for q in qs], normalize=False)
    cos = (Q @ D.T) / np.linalg.norm(Q, axis=1, keepdims=True) / np.linalg.norm(D, axis=1)[None, :]
    for k in (1, 4, len(ids), 50):  # k beyond the corpus returns the whole corpus
        hits = dense.search(qs, k=k)
        for i, row in enumerate(hits):
            order = np.argsort(-cos[i], kind="stable")[: min(k, len(ids))]
            assert [d for d, _ in row] == [ids[j] for j in order]
            np.testing.assert_allclose([s for _, s in row], cos[i, order], atol=1e-5)
    # the default query instruction is the model's (MiniLM: none)
    plain = DenseRetriever(encoder, corpus, embeddings=dense.embeddings)
    Q0 = encoder.encode(qs)
    np.testing.assert_allclose(plain.encode_queries(qs), Q0, atol=1e-6)
    assert plain.search([], k=3) == []


def test_dense_hnsw_and_bad_embeddings(encoder):
    corpus = corpus_dict()
    flat = DenseRetriever(encoder, corpus)
    hnsw = DenseRetriever(encoder, corpus, index_kind="hnsw", embeddings=flat.embeddings, ef_search=64)
    # on 10 vectors HNSW with ef_search >= n visits everything: same answer as exact search
    assert [[d for d, _ in r] for r in hnsw.search(list(QUERIES.values()), 5)] == [
        [d for d, _ in r] for r in flat.search(list(QUERIES.values()), 5)
    ]
    with pytest.raises(ValueError, match="one row per document"):
        DenseRetriever(encoder, corpus, embeddings=flat.embeddings[:3])


def test_identical_id_hit_is_dropped(encoder):
    corpus = corpus_dict()
    # a query whose id and text are those of a corpus document (ArguAna/Quora style)
    queries = {"d3": DOCS["d3"][0] + " " + DOCS["d3"][1], "q1": QUERIES["q1"]}
    for retriever in (DenseRetriever(encoder, corpus), BM25Retriever(corpus)):
        kept = retriever.run(queries, k=4, ignore_identical_ids=False)
        assert next(iter(kept["d3"])) == "d3"  # it finds itself first
        run = retriever.run(queries, k=3)
        # k + 1 hits are fetched, the identical one dropped, so k remain, in order
        assert list(run["d3"]) == [d for d in kept["d3"] if d != "d3"][:3]
        assert len(run["d3"]) == 3
        assert run["q1"] == dict(list(kept["q1"].items())[:3])


# ------------------------------------------------------------------------ one-call evaluation
def test_evaluate_retrieval_equals_metrics_on_runs(tmp_path, encoder):
    root = write_beir(tmp_path / "tiny")
    ks = (1, 3, 10)
    table = evaluate_retrieval(root, encoder, ks=ks, show_progress=False)
    assert list(table) == ["dense", "bm25", "hybrid"]
    corpus = corpus_dict()
    dense_run = DenseRetriever(encoder, corpus).run(QUERIES, k=100)
    bm25_run = BM25Retriever(corpus).run(QUERIES, k=100)
    expect = {
        "dense": evaluate({q: dict(list(r.items())[:10]) for q, r in dense_run.items()}, QRELS, ks=ks),
        "bm25": evaluate(bm25_run, QRELS, ks=ks),
        "hybrid": evaluate(rrf([dense_run, bm25_run], k_rrf=60, top_k=10), QRELS, ks=ks),
    }
    for m in expect:
        assert table[m].keys() == expect[m].keys()
        for key, val in expect[m].items():
            assert table[m][key] == pytest.approx(val, abs=1e-12), (m, key)
    # the tiny set is easy: dense finds the yellow-tomato and cactus passages first
    runs = retrieve_runs(corpus, QUERIES, encoder, methods=["dense"], k=1)
    assert next(iter(runs["dense"]["q3"])) == "d3"
    only_bm25 = evaluate_retrieval(root, None, methods="bm25", ks=(10,))  # no encoder needed
    ref = evaluate(bm25_run, QRELS, ks=(10,))
    assert only_bm25 == {"bm25": pytest.approx(ref, abs=1e-12)}
    with pytest.raises(ValueError, match="unknown retrieval method"):
        evaluate_retrieval(root, encoder, methods=["splade"])

"""Tests of bgekit.retrieval: BM25 against bm25s and a hand-written BM25, RRF on hand-computed cases,
dense search against brute-force cosine of Embedder embeddings, MTEB's identical-id rule."""

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
    from bgekit.embedder import Embedder
    from bgekit.models import offline_model_path

    return Embedder(str(offline_model_path()), device="cpu", show_progress=False)


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
    with pytest.raises(TypeError, match=r"queries\[1\] is"):
        bm25.search(["ok", None], k=3)
    with pytest.raises(TypeError, match="queries must be a list of strings, got a single string"):
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
    dense = DenseRetriever(encoder, corpus, query_instruction_for_retrieval=instruction, batch_size=3)
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


def test_identical_id_hit_is_dropped_when_asked(encoder):
    corpus = corpus_dict()
    # a query whose id and text are those of a corpus document (ArguAna/Quora style)
    queries = {"d3": DOCS["d3"][0] + " " + DOCS["d3"][1], "q1": QUERIES["q1"]}
    for retriever in (DenseRetriever(encoder, corpus), BM25Retriever(corpus)):
        kept = retriever.run(queries, k=4)  # the default keeps it
        assert next(iter(kept["d3"])) == "d3"  # it finds itself first
        run = retriever.run(queries, k=3, ignore_identical_ids=True)
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


# ------------------------------------------------- query id = doc id (fault: relevant hit dropped)
CACTUS_DOCS = {
    "1": ("Watering cacti", "Water a cactus every two to three weeks in summer, and only when the soil is dry."),
    "2": ("Pruning roses", "Cut rose stems back by a third in early spring, just above an outward-facing bud."),
    "3": ("Basil", "Pinch basil tips so the plant branches instead of flowering."),
}
CACTUS_QUERIES = {"1": "how often should I water my cactus"}  # query ids and doc ids: separate namespaces
CACTUS_QRELS = {"1": {"1": 1}}


def test_hit_whose_id_equals_the_query_id_is_kept_by_default(tmp_path, encoder):
    root = write_beir(tmp_path / "cactus", CACTUS_DOCS, CACTUS_QUERIES, CACTUS_QRELS)
    table = evaluate_retrieval(root, encoder, ks=(10,), metrics=("recall",))
    assert table == {m: {"recall@10": 1.0} for m in ("dense", "bm25", "hybrid")}
    corpus = corpus_dict(CACTUS_DOCS)
    for retriever in (DenseRetriever(encoder, corpus), BM25Retriever(corpus)):
        assert next(iter(retriever.run(CACTUS_QUERIES, k=10)["1"])) == "1"
    runs = retrieve_runs(corpus, CACTUS_QUERIES, encoder, k=10)
    assert all(next(iter(run["1"])) == "1" for run in runs.values())


def test_dropping_a_relevant_identical_id_hit_warns_naming_query_and_doc(tmp_path, encoder, caplog):
    root = write_beir(tmp_path / "cactus", CACTUS_DOCS, CACTUS_QUERIES, CACTUS_QRELS)
    with caplog.at_level("WARNING", logger="bgekit.retrieval"):
        table = evaluate_retrieval(root, encoder, ks=(10,), metrics=("recall",), ignore_identical_ids=True)
    assert table == {m: {"recall@10": 0.0} for m in ("dense", "bm25", "hybrid")}
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name == "bgekit.retrieval"]
    assert len(warned) == 2  # once per searched run (dense, BM25); hybrid fuses those runs
    assert all("doc '1'" in w and "query '1'" in w and "relevant" in w for w in warned)
    caplog.clear()
    bm25 = BM25Retriever(corpus_dict(CACTUS_DOCS))
    with caplog.at_level("WARNING", logger="bgekit.retrieval"):
        run = bm25.run(CACTUS_QUERIES, k=10, ignore_identical_ids=True, qrels={"1": {"2": 1, "1": 0}})
    assert "1" not in run["1"]
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # dropped doc not judged relevant: quiet


def test_known_datasets_filter_identical_ids_by_default(tmp_path):
    from bgekit.retrieval import IGNORE_IDENTICAL_IDS, ignore_identical_ids_for

    assert {"arguana", "quora"} <= set(IGNORE_IDENTICAL_IDS)
    assert ignore_identical_ids_for(tmp_path / "ArguAna") and ignore_identical_ids_for("beir/quora/")
    assert not ignore_identical_ids_for("scifact") and not ignore_identical_ids_for(tmp_path / "data")
    # ArguAna style: the query is an argument that is also in the corpus; its counter-argument is the answer
    docs = {
        "a1": ("", "Zoos protect endangered animals and breed them for release into the wild."),
        "a2": ("", "Zoos keep animals in small enclosures; breeding programmes rarely release animals into the wild."),
        "a3": ("", "School uniforms reduce bullying about clothes."),
    }
    queries = {"a1": docs["a1"][1]}
    qrels = {"a1": {"a2": 1}}
    on = evaluate_retrieval(write_beir(tmp_path / "arguana", docs, queries, qrels), None, methods="bm25",
                            ks=(1,), metrics=("ndcg",))
    off = evaluate_retrieval(write_beir(tmp_path / "my-debates", docs, queries, qrels), None, methods="bm25",
                             ks=(1,), metrics=("ndcg",))
    assert on == {"bm25": {"ndcg@1": 1.0}}  # its own copy dropped: the counter-argument is first
    assert off == {"bm25": {"ndcg@1": 0.0}}  # kept: it finds itself first
    forced = evaluate_retrieval(tmp_path / "my-debates", None, methods="bm25", ks=(1,), metrics=("ndcg",),
                                ignore_identical_ids=True)
    assert forced == on


# ------------------------------------------------------------ ties: top k is a prefix of a deeper top k
TIE_WORDS = ("water", "basil", "cactus", "rose", "soil", "sun", "prune", "leaf")


def tied_corpus(seed: int, n_docs: int = 30, n_texts: int = 6) -> dict[str, str]:
    """Few distinct texts, many copies each, ids in shuffled order: most scores tie."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(TIE_WORDS, size=int(rng.integers(1, 4)), replace=False)) for _ in range(n_texts)]
    ids = [f"d{i}" for i in rng.permutation(n_docs)]  # "d9" > "d10" as strings: the order is not insertion order
    return {d: texts[int(rng.integers(n_texts))] for d in ids}


def tied_queries(seed: int) -> list[str]:
    rng = np.random.default_rng(seed + 1000)
    return [" ".join(rng.choice(TIE_WORDS, size=2, replace=False)) for _ in range(4)]


def assert_prefix_property(retriever, queries, n):
    from bgekit.metrics import rank_documents

    full = retriever.search(queries, k=n)
    for row in full:
        assert len({s for _, s in row}) < len(row), "the test needs ties"
        # best first by the metrics' own order (score, then doc id descending)
        assert [d for d, _ in row] == rank_documents(dict(row))
    for k in range(1, n + 1):
        assert retriever.search(queries, k=k) == [row[:k] for row in full], k


def tied_dense(encoder, corpus):
    """A dense retriever whose copies of a text have one and the same vector (as one batch gives them)."""
    uniq = sorted(set(corpus.values()))
    vecs = dict(zip(uniq, encoder.encode(uniq)))
    return DenseRetriever(encoder, corpus, embeddings=np.stack([vecs[t] for t in corpus.values()]))


@pytest.mark.parametrize("seed", range(4))
def test_bm25_top_k_is_a_prefix_under_ties(seed):
    corpus = tied_corpus(seed)
    bm25 = BM25Retriever(corpus, stemmer=None)
    n = max(len(r) for r in bm25.search(tied_queries(seed), k=len(corpus)))
    assert_prefix_property(bm25, tied_queries(seed), n)


@pytest.mark.parametrize("seed", range(4))
def test_dense_top_k_is_a_prefix_under_ties(seed, encoder):
    corpus = tied_corpus(seed)
    assert_prefix_property(tied_dense(encoder, corpus), tied_queries(seed), len(corpus))


@pytest.mark.parametrize("seed", range(3))
def test_hybrid_top_k_is_a_prefix_under_ties(seed, encoder):
    corpus = tied_corpus(seed)
    dense, bm25 = tied_dense(encoder, corpus), BM25Retriever(corpus, stemmer=None)
    hybrid = HybridRetriever([dense, bm25], depth=8)  # k beyond depth: still one fused list
    assert_prefix_property(hybrid, tied_queries(seed), len(corpus))
    n = len(corpus)
    # and run() cuts the same list
    queries = {f"q{i}": t for i, t in enumerate(tied_queries(seed))}
    deep = hybrid.run(queries, k=n)
    for k in (1, 3, 8, n):
        assert {q: list(r) for q, r in hybrid.run(queries, k=k).items()} == {q: list(r)[:k] for q, r in deep.items()}


def test_six_identical_passages_rank_the_same_at_every_depth(encoder):
    # the example: nDCG@1 must not depend on how deep you retrieve
    corpus = {f"p{i}": "Water a cactus only when the soil is completely dry." for i in range(1, 7)}
    dense = DenseRetriever(encoder, corpus)
    assert (dense.embeddings == dense.embeddings[0]).all()  # one batch: exact copies, so exact ties
    top6 = dense.search(["how often should I water a cactus"], k=6)[0]
    assert [d for d, _ in top6] == ["p6", "p5", "p4", "p3", "p2", "p1"]  # doc id descending, as trec_eval
    assert [dense.search(["how often should I water a cactus"], k=k)[0] for k in range(1, 7)] == [
        top6[:k] for k in range(1, 7)
    ]
    qrels = {"q": {"p6": 1}}
    ndcg1 = [evaluate(dense.run({"q": "how often should I water a cactus"}, k=k), qrels, ks=(1,))["ndcg@1"]
             for k in range(1, 7)]
    assert ndcg1 == [1.0] * 6

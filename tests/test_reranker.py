"""Reranker scores against an independent reference: a hand-written transformers forward pass, pair by pair."""
from __future__ import annotations

import itertools

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bgekit.models import ModelLoadError
from bgekit.reranker import Reranker, fuse_scores, tokenize_pairs, tune_fusion_weight

Q1 = "why are the leaves of my tomato plant turning yellow?"
Q2 = "tiny black flies in my houseplant pots"
PAIRS = [
    (Q1, "Lower leaves of a tomato turn yellow when the plant lacks nitrogen or is watered too much."),
    (Q2, "Fungus gnats breed in damp compost; letting the top few centimetres dry breaks their life cycle, and "
         "yellow sticky traps catch the adults while the larvae die off in the drier mix."),
    (Q1, "short"),
    ("", "An empty query still makes a pair."),
    (Q2, "Orchids grow in bark, not soil; repot them after flowering when roots spill out of the pot. " * 3),
    ("a", ""),
    (Q1, "Basil likes warmth."),
]


@pytest.fixture(scope="session")
def reranker_dir(tmp_path_factory, minilm_path):
    """A tiny cross-encoder: the bundled MiniLM with a seeded classification head, scaled up so that
    scores spread over several units (a mix-up of pairs would show)."""
    torch.manual_seed(1234)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=1)
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 1.0)
        model.classifier.bias.fill_(0.25)
    out = tmp_path_factory.mktemp("tiny_reranker")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def rr(reranker_dir):
    return Reranker(reranker_dir, device="cpu")


def reference_logits(path, pairs, max_length=512):
    """Each pair alone (no padding at all): tokenizer([q], [p]) -> model -> logit.

    (Lists, because ``tokenizer("a", "")`` drops an empty passage and its [SEP], while a batch keeps it,
    as sentence-transformers and FlagEmbedding do.)"""
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for q, p in pairs:
            b = tok([q], [p], truncation=True, max_length=max_length, return_tensors="pt")
            out.append(float(model(**b).logits[0, 0]))
    return torch.tensor(out)


@pytest.fixture(scope="module")
def ref(reranker_dir):
    return reference_logits(reranker_dir, PAIRS)


def test_reference_scores_are_spread(ref):
    # guards the test itself: identical scores would hide an order mix-up
    assert float(ref.std()) > 0.1 and len(set(ref.round(decimals=3).tolist())) == len(PAIRS)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 64])
def test_matches_transformers_reference(rr, ref, batch_size):
    got = rr.compute_score(PAIRS, batch_size=batch_size)
    assert isinstance(got, list) and len(got) == len(PAIRS) and all(isinstance(x, float) for x in got)
    torch.testing.assert_close(torch.tensor(got), ref, atol=1e-5, rtol=0)


def test_normalize_is_sigmoid(rr, ref):
    got = rr.compute_score(PAIRS, normalize=True, batch_size=3)
    torch.testing.assert_close(torch.tensor(got), torch.sigmoid(ref), atol=1e-6, rtol=0)
    assert all(0.0 <= x <= 1.0 for x in got)


def test_input_order_kept_under_permutation(rr):
    perm = [4, 0, 6, 2, 5, 1, 3]
    a = rr.compute_score(PAIRS, batch_size=2)
    b = rr.compute_score([PAIRS[i] for i in perm], batch_size=2)
    torch.testing.assert_close(torch.tensor(b), torch.tensor([a[i] for i in perm]), atol=1e-5, rtol=0)


def test_lists_as_pairs_and_single_pair(rr, ref):
    assert rr.compute_score([list(p) for p in PAIRS[:2]]) == pytest.approx(ref[:2].tolist(), abs=1e-5)
    single = rr.compute_score(PAIRS[0])  # one pair on its own: still a list of one score
    assert isinstance(single, list) and single == pytest.approx([float(ref[0])], abs=1e-5)


def test_empty_input(rr):
    assert rr.compute_score([]) == []
    assert rr.rerank("q", []) == []


@pytest.mark.parametrize("bad, where", [
    ([("q", "p"), ("q", None)], "pairs[1][1]"),
    ([("q", "p"), (3, "p")], "pairs[1][0]"),
    ([("q", "p"), "qp"], "pairs[1]"),
    ([("q", "p", "x")], "pairs[0]"),
    ([("q", "p"), ("q", "p"), 7], "pairs[2]"),
])
def test_bad_items_name_their_index(rr, bad, where):
    with pytest.raises(TypeError) as e:
        rr.compute_score(bad)
    assert where in str(e.value)


@pytest.mark.parametrize("bad", ["just a string", 42, {"q": "p"}])
def test_bad_container(rr, bad):
    with pytest.raises(TypeError, match="pairs"):
        rr.compute_score(bad)


def test_truncation_keeps_passage_budget(rr):
    tok = rr.tokenizer
    long_q = "why do my tomato leaves curl and turn yellow at the edges " * 6   # > 16 tokens
    long_p = "Tomatoes need deep, regular watering and full sun to ripen their fruit. " * 20
    short_p = "Too much water."
    feats, _ = tokenize_pairs(tok, [(long_q, long_p), (long_q, short_p), ("short query", long_p)], 64)
    n_q = [f["input_ids"].index(tok.sep_token_id) - 1 for f in feats]
    n_p = [len(f["input_ids"]) - n - 3 for f, n in zip(feats, n_q)]
    assert [len(f["input_ids"]) for f in feats] == [64, 64, 64]
    p_short = len(tok(short_p, add_special_tokens=False)["input_ids"])
    q_short = len(tok("short query", add_special_tokens=False)["input_ids"])
    # long + long: query capped at max_length // 4, the passage gets the rest
    assert (n_q[0], n_p[0]) == (16, 45)
    # long query + short passage: the query may use the room the passage leaves
    assert (n_q[1], n_p[1]) == (61 - p_short, p_short)
    # short query: kept whole, passage cut
    assert (n_q[2], n_p[2]) == (q_short, 61 - q_short)
    # the kept tokens are the first tokens of each text
    full_q = tok(long_q, add_special_tokens=False)["input_ids"]
    full_p = tok(long_p, add_special_tokens=False)["input_ids"]
    assert feats[0]["input_ids"][1:17] == full_q[:16] and feats[0]["input_ids"][18:63] == full_p[:45]


def test_truncated_scores_match_reference(rr, reranker_dir):
    long_q = "why do my tomato leaves curl and turn yellow at the edges " * 6
    long_p = "Tomatoes need deep, regular watering and full sun to ripen their fruit. " * 20
    tok = rr.tokenizer
    cut_q = tok.decode(tok(long_q, add_special_tokens=False)["input_ids"][:16])
    ref = reference_logits(reranker_dir, [(cut_q, long_p), ("short query", long_p)], max_length=64)
    got = rr.compute_score([(long_q, long_p), ("short query", long_p)], max_length=64)
    torch.testing.assert_close(torch.tensor(got), ref, atol=1e-5, rtol=0)


def test_rerank_orders_best_first(rr):
    passages = [p for _, p in PAIRS]
    scores = rr.compute_score([(Q1, p) for p in passages])
    out = rr.rerank(Q1, passages)
    assert [r["index"] for r in out] == sorted(range(len(passages)), key=lambda i: -scores[i])
    assert [r["text"] for r in out] == [passages[r["index"]] for r in out]
    assert [r["score"] for r in out] == pytest.approx(sorted(scores, reverse=True), abs=1e-6)
    top = rr.rerank(Q1, passages, top_k=2)
    assert top == out[:2]
    norm = rr.rerank(Q1, passages, top_k=3, normalize=True)
    assert [r["index"] for r in norm] == [r["index"] for r in out[:3]]
    assert all(0 <= r["score"] <= 1 for r in norm)


def test_rerank_accepts_title_text_records(rr):
    docs = [{"title": "Fungus gnats", "text": "Let the mix dry out."}, "Basil likes warmth."]
    out = rr.rerank(Q2, docs)
    by_index = {r["index"]: r for r in out}
    assert by_index[0]["text"] == "Fungus gnats Let the mix dry out."
    assert by_index[0]["score"] == pytest.approx(rr.compute_score([(Q2, "Fungus gnats Let the mix dry out.")])[0],
                                                 abs=1e-6)


def test_rerank_bad_input(rr):
    with pytest.raises(TypeError, match="query"):
        rr.rerank(None, ["p"])
    with pytest.raises(TypeError, match="passages"):
        rr.rerank("q", "a single string")
    with pytest.raises(TypeError, match=r"passages\[1\]"):
        rr.rerank("q", ["p", 3])
    with pytest.raises(ValueError, match="top_k"):
        rr.rerank("q", ["p"], top_k=0)


def test_embedder_folder_is_refused(minilm_path):
    with pytest.raises(ValueError, match="not a cross-encoder"):
        Reranker(minilm_path, device="cpu")


def test_head_missing_is_refused(tmp_path, minilm_path):
    # a plain encoder checkpoint without bgekit/ST metadata: caught by the missing classifier weights
    from transformers import AutoModel

    AutoModel.from_pretrained(minilm_path).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="classifier"):
        Reranker(tmp_path, device="cpu")


def test_small_mode_needs_a_path(monkeypatch):
    monkeypatch.setenv("BGEKIT_MODE", "small")   # the course's mode comes from the environment, not a parameter
    with pytest.raises(ModelLoadError, match="train_reranker"):
        Reranker()


def test_missing_folder_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError):
        Reranker(tmp_path / "nope" / "reranker", device="cpu")


def test_repr_and_defaults(rr):
    assert rr.max_length == 512 and rr.device.type == "cpu" and rr.dtype == torch.float32
    assert "Reranker(" in repr(rr)


# --- whole runs, score fusion ---------------------------------------------------------------
CORPUS = {"d1": {"title": "Cacti", "text": "Water a cactus when the soil is dry."},
          "d2": "Tomatoes need full sun and deep watering.",
          "d3": {"title": "", "text": "Basil likes warmth."}}
RUN = {"qa": {"d1": 0.9, "d2": 0.5, "d3": 0.1}, "qb": {"d3": 0.7, "d2": 0.6}}
QUERY_TEXTS = {"qa": "how often to water a cactus", "qb": "herbs that like heat"}


def test_rerank_run_matches_per_query_scores(rr):
    got = rr.rerank_run(RUN, QUERY_TEXTS, CORPUS)
    assert set(got) == {"qa", "qb"} and set(got["qa"]) == {"d1", "d2", "d3"} and set(got["qb"]) == {"d3", "d2"}
    texts = {"d1": "Cacti Water a cactus when the soil is dry.", "d2": CORPUS["d2"], "d3": "Basil likes warmth."}
    for q, hits in RUN.items():
        want = rr.compute_score([(QUERY_TEXTS[q], texts[d]) for d in hits], batch_size=1)
        assert [got[q][d] for d in hits] == pytest.approx(want, abs=1e-5)
    # a function doc_id -> text gives the same scores
    by_function = rr.rerank_run(RUN, QUERY_TEXTS, texts.__getitem__)
    assert all(by_function[q] == pytest.approx(got[q], abs=1e-6) for q in RUN)


def test_rerank_run_top_k_keeps_the_best_first_stage_candidates(rr):
    got = rr.rerank_run(RUN, QUERY_TEXTS, CORPUS, k=2)
    assert set(got["qa"]) == {"d1", "d2"} and set(got["qb"]) == {"d3", "d2"}


def test_rerank_run_bad_input(rr):
    with pytest.raises(KeyError, match="'qa'.*not in queries"):
        rr.rerank_run(RUN, {"qb": "x"}, CORPUS)
    with pytest.raises(KeyError, match="'d3'.*not in the corpus"):
        rr.rerank_run(RUN, QUERY_TEXTS, {"d1": "a", "d2": "b"})
    with pytest.raises(ValueError, match="k must be a positive int"):
        rr.rerank_run(RUN, QUERY_TEXTS, CORPUS, k=0)
    assert rr.rerank_run({}, QUERY_TEXTS, CORPUS) == {}


def test_fuse_scores_hand_computed():
    first = {"q": {"a": 0.8, "b": 0.6, "c": 0.2}}
    logits = {"q": {"a": -1.0, "b": 2.0, "c": 0.5}}
    assert fuse_scores(first, logits, 0) == {"q": {"a": -1.0, "b": 2.0, "c": 0.5}}
    fused = fuse_scores(first, logits, 20)
    assert fused["q"] == pytest.approx({"a": 15.0, "b": 14.0, "c": 4.5})
    assert fuse_scores(first, {"q": {"c": 1.0}}, 2.5) == {"q": {"c": pytest.approx(1.5)}}  # reranked subset only


@pytest.mark.parametrize("weight", [-1, float("nan"), float("inf")])
def test_fuse_scores_bad_weight(weight):
    with pytest.raises(ValueError, match="weight must be"):
        fuse_scores({"q": {"a": 1.0}}, {"q": {"a": 1.0}}, weight)


def test_fuse_scores_missing_first_stage():
    with pytest.raises(KeyError, match="query 'q2'"):
        fuse_scores({"q": {"a": 1.0}}, {"q2": {"a": 1.0}}, 1)
    with pytest.raises(KeyError, match="document 'b' of query 'q'"):
        fuse_scores({"q": {"a": 1.0}}, {"q": {"b": 1.0}}, 1)


def test_tune_fusion_weight_picks_the_best_and_reports_all():
    # q1: the reranker is right, q2: the first stage is right; w in between gets both right
    first = {"q1": {"a": 0.50, "b": 0.55}, "q2": {"c": 0.9, "d": 0.1}}
    logits = {"q1": {"a": 1.0, "b": 0.0}, "q2": {"c": 0.0, "d": 1.0}}
    qrels = {"q1": {"a": 1}, "q2": {"c": 1}}
    best, table = tune_fusion_weight(first, logits, qrels, weights=(0, 5, 100), metric="mrr@10")
    # w=0: q1 right, q2 wrong (0.5) -> 0.75; w=5: q1 1.0 vs 0.25 -> a wins, q2 4.5 vs 1.5 -> c wins -> 1.0;
    # w=100: q1 51 vs 55 -> b wins (0.5), q2 right -> 0.75
    assert table == pytest.approx({0.0: 0.75, 5.0: 1.0, 100.0: 0.75})
    assert best == 5.0
    # ties go to the smaller weight
    assert tune_fusion_weight(first, logits, {"q2": {"c": 1}}, weights=(100, 5), metric="mrr@10")[0] == 5.0


def test_tune_fusion_weight_bad_metric():
    with pytest.raises(ValueError, match="metric must look like"):
        tune_fusion_weight({"q": {"a": 1.0}}, {"q": {"a": 1.0}}, {"q": {"a": 1}}, metric="ndcg")
    with pytest.raises(ValueError, match="weights is empty"):
        tune_fusion_weight({"q": {"a": 1.0}}, {"q": {"a": 1.0}}, {"q": {"a": 1}}, weights=())


def test_bf16_scores_close_to_fp32(reranker_dir, rr, ref):
    bf = Reranker(reranker_dir, device="cpu", dtype="bf16")
    got = torch.tensor(bf.compute_score(PAIRS))
    # bfloat16 keeps 8 bits of mantissa: about 2-3 significant digits; the order of clearly apart scores holds
    assert torch.allclose(got, ref, atol=0.1 + 0.02 * ref.abs().max().item())


# --- truncation is a warning, as in the encoder ---------------------------------------------
def test_truncation_warns_once_per_call_like_the_encoder(rr, caplog):
    import logging

    long = "grow lights for seedlings " * 200
    with caplog.at_level(logging.WARNING, logger="bgekit"):
        rr.compute_score([(Q1, long), (Q1, "short"), (Q2, long)])
        rr.rerank_run({"qa": {"d1": 1.0, "d2": 0.5}}, {"qa": Q1}, {"d1": long, "d2": "short"})
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "bgekit.reranker"]
    assert msgs == ["2 of 3 pairs were longer than 512 tokens and were truncated",
                    "1 of 2 pairs were longer than 512 tokens and were truncated"]


def test_truncation_count_is_exact_at_the_boundary(rr, caplog):
    import logging

    pair = (Q1, PAIRS[1][1])
    n = len(rr.tokenizer([pair[0]], [pair[1]])["input_ids"][0])  # the whole pair, special tokens included
    with caplog.at_level(logging.WARNING, logger="bgekit.reranker"):
        rr.compute_score([pair], max_length=n)       # fits exactly: nothing cut, nothing said
    assert not [r for r in caplog.records if "truncated" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger="bgekit.reranker"):
        rr.compute_score([pair], max_length=n - 1)
    assert [r.getMessage() for r in caplog.records] == [f"1 of 1 pairs were longer than {n - 1} tokens and were truncated"]
    assert tokenize_pairs(rr.tokenizer, [pair, pair], n)[1] == 0
    assert tokenize_pairs(rr.tokenizer, [pair, (Q1, "short")], n - 1)[1] == 1


# --- ties: the top k is a prefix of a deeper top k, cut by the metrics' order ----------------------
TIED = ["Water a cactus when the soil is dry.", "Basil likes warmth.", "WATER A CACTUS WHEN THE SOIL IS DRY.",
        "Tomatoes need full sun.", "basil likes warmth.", "Water a cactus when the soil is dry.",
        "Basil likes warmth.", "tomatoes need full sun."]  # the tokenizer lower-cases: 3 tie groups
TIED_IDS = ["d4", "d11", "d7", "d2", "d30", "d10", "d9", "d1"]


def test_rerank_top_k_is_a_prefix_under_ties(rr):
    from bgekit.metrics import rank_documents

    full = rr.rerank(Q1, TIED, ids=TIED_IDS)
    scores = [r["score"] for r in full]
    assert len(set(scores)) == 3, "the test needs ties"
    assert [r["id"] for r in full] == rank_documents({r["id"]: r["score"] for r in full})  # id descending in a tie
    assert all(TIED_IDS[r["index"]] == r["id"] and TIED[r["index"]] == r["text"] for r in full)
    plain = rr.rerank(Q1, TIED)
    for k in range(1, len(TIED) + 1):
        assert rr.rerank(Q1, TIED, top_k=k, ids=TIED_IDS) == full[:k]
        assert rr.rerank(Q1, TIED, top_k=k) == plain[:k]
    # without ids, equal scores keep input order
    for a, b in itertools.pairwise(plain):
        assert a["score"] > b["score"] or (a["score"] == b["score"] and a["index"] < b["index"])
    with pytest.raises(ValueError, match="one doc id per passage"):
        rr.rerank(Q1, TIED, ids=TIED_IDS[:3])
    with pytest.raises(ValueError, match="distinct"):
        rr.rerank(Q1, TIED[:2], ids=["a", "a"])


@pytest.mark.parametrize("seed", range(3))
def test_rerank_run_cuts_the_first_stage_by_the_metrics_order(rr, seed):
    import random

    from bgekit.metrics import rank_documents

    rnd = random.Random(seed)
    corpus = dict(zip(TIED_IDS, TIED))
    # first-stage scores with many ties, inserted in a random order (dict order must not matter)
    ids = TIED_IDS[:]
    rnd.shuffle(ids)
    run = {"q": {d: rnd.choice([0.5, 0.7, 0.9]) for d in ids}}
    deep = rr.rerank_run(run, {"q": Q1}, corpus)
    assert list(deep["q"]) == rank_documents(deep["q"])  # best first, by the same order
    for k in range(1, len(ids) + 1):
        got = rr.rerank_run(run, {"q": Q1}, corpus, k=k)["q"]
        assert set(got) == set(rank_documents(run["q"])[:k]), k
        assert list(got) == rank_documents(got)
        assert got == pytest.approx({d: deep["q"][d] for d in got}, abs=1e-5)


def test_rerank_run_tie_at_the_cut_example(rr):
    run = {"q": {"d1": 0.5, "d2": 0.5, "d3": 0.5, "d0": 0.9}}
    got = rr.rerank_run(run, {"q": Q1}, dict(zip(["d0", "d1", "d2", "d3"], TIED[:4])), k=2)
    assert set(got["q"]) == {"d0", "d3"}  # trec_eval ranks d3 before d2 before d1

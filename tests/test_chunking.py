"""Chunking long documents (bgekit.chunking), checked against hand-worked windows and brute force."""
import random

import pytest

from bgekit.chunking import (
    build_long_documents,
    chunk_corpus,
    chunk_corpus_spans,
    chunk_spans,
    chunk_text,
    course_long_documents,
    max_over_chunks,
    passage_spans,
    span_qrels,
)
from bgekit.data import doc_text


@pytest.fixture(scope="module")
def tok(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


def n_tokens(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


@pytest.fixture(scope="module")
def one_token_words(tok):
    # plain words that WordPiece keeps whole: one word = one token, so windows can be worked out by hand
    cands = "the cat sat on mat dog ran far away red blue green tree house water plant leaf root soil pot".split()
    words = [w for w in cands if n_tokens(tok, w) == 1]
    assert len(words) >= 15
    return words


def test_windows_of_one_token_words_match_the_hand_worked_ones(tok, one_token_words):
    words = [one_token_words[i % len(one_token_words)] for i in range(25)]
    text = " ".join(words)
    # 25 tokens, windows of 10 sharing 3: tokens [0,10), [7,17), [14,24), [21,25)
    want = [" ".join(words[a:b]) for a, b in [(0, 10), (7, 17), (14, 24), (21, 25)]]
    assert chunk_text(text, tok, max_tokens=10, overlap=3) == want
    # no overlap: [0,10), [10,20), [20,25)
    assert chunk_text(text, tok, max_tokens=10) == [" ".join(words[a:b]) for a, b in [(0, 10), (10, 20), (20, 25)]]


def test_a_short_text_is_one_chunk_and_an_empty_one_none(tok):
    assert chunk_text("  Water the fern weekly.  ", tok, max_tokens=64) == ["Water the fern weekly."]
    assert chunk_text("", tok, max_tokens=8) == [] and chunk_text("   ", tok, max_tokens=8) == []


@pytest.mark.parametrize("max_tokens,overlap", [(16, 0), (16, 5), (37, 12), (64, 63), (5, 1)])
def test_chunks_fit_cover_the_text_in_order_and_keep_its_characters(tok, max_tokens, overlap):
    rng = random.Random(max_tokens * 100 + overlap)
    vocab = ["Overwatering", "etiolation", "isn't", "rot,", "Monstera's", "café", "pH-6.5", "(roots)", "well-drained",
             "the", "leaves", "yellowing", "Fungus-gnats!", "humidity", "12°C", "repotting"]
    text = " ".join(rng.choice(vocab) for _ in range(300))
    spans = chunk_spans(text, tok, max_tokens, overlap)
    chunks = [text[s:e] for s, e in spans]
    assert chunks == chunk_text(text, tok, max_tokens, overlap)
    # every chunk fits, and starts and ends on a word: re-tokenised it gives at most max_tokens tokens
    assert all(n_tokens(tok, c) <= max_tokens for c in chunks), [n_tokens(tok, c) for c in chunks]
    # in order, overlapping or touching, and together they cover every non-space character of the text
    assert all(s2 > s1 and s2 <= e1 + 1 for (s1, e1), (s2, _) in zip(spans, spans[1:]))
    covered = set()
    for s, e in spans:
        covered.update(range(s, e))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())
    # the tokens of the whole text are the tokens of the chunks, less the overlaps
    all_ids = tok(text, add_special_tokens=False)["input_ids"]
    assert sum(n_tokens(tok, c) for c in chunks) >= len(all_ids)
    if overlap == 0:
        assert sum(n_tokens(tok, c) for c in chunks) == len(all_ids)


def test_a_word_longer_than_the_window_is_cut_inside_and_the_loop_ends(tok):
    word = "pneumonoultramicroscopicsilicovolcanoconiosis" * 2   # under WordPiece's 100 characters
    assert n_tokens(tok, word) > 8
    chunks = chunk_text(word + " is long", tok, max_tokens=4, overlap=2)
    assert chunks[-1].endswith("long") and 1 < len(chunks) < 100
    assert all(n_tokens(tok, c) <= 6 for c in chunks)   # a piece cut inside a word may re-tokenise differently


def test_bad_arguments_are_named(tok):
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("a b c", tok, max_tokens=4, overlap=4)
    with pytest.raises(ValueError, match="max_tokens"):
        chunk_text("a b c", tok, max_tokens=0)
    with pytest.raises(TypeError, match="str"):
        chunk_text(None, tok, max_tokens=4)

    class Slow:
        is_fast = False

    with pytest.raises(ValueError, match="fast tokenizer"):
        chunk_text("a b c", Slow(), max_tokens=4)


def test_chunk_corpus_reads_title_and_text_and_maps_chunks_to_documents(tok, one_token_words):
    corpus = {"d1": {"title": "Tree", "text": " ".join(one_token_words[:12])}, "d2": "water the plant"}
    chunks, parent = chunk_corpus(corpus, tok, max_tokens=5, overlap=1)
    assert list(chunks)[:1] == ["d1#0"] and chunks["d1#0"]["text"].startswith("Tree ")
    assert {parent[c] for c in chunks} == {"d1", "d2"}
    assert chunks["d2#0"] == {"title": "", "text": "water the plant"} and "d2#1" not in chunks
    assert sorted(c for c in chunks if parent[c] == "d1") == [f"d1#{i}" for i in range(len(chunks) - 1)]


def test_max_over_chunks_equals_brute_force():
    rng = random.Random(0)
    parent = {f"d{d}#{i}": f"d{d}" for d in range(20) for i in range(rng.randint(1, 4))}
    run = {f"q{q}": {c: rng.random() for c in rng.sample(sorted(parent), 30)} for q in range(10)}
    got = max_over_chunks(run, parent, k=5)
    for q, hits in run.items():
        best = {}
        for c, s in hits.items():
            best[parent[c]] = max(best.get(parent[c], -1.0), s)
        want = sorted(best.items(), key=lambda kv: -kv[1])[:5]
        assert list(got[q].items()) == want
    with pytest.raises(KeyError, match="q0.*nope"):
        max_over_chunks({"q0": {"nope": 1.0}}, parent)


def test_long_documents_join_passages_and_carry_the_best_grade():
    corpus = {p: {"title": f"T{p}", "text": f"text of {p}."} for p in ("p1", "p2", "p3", "p4")}
    qrels = {"q1": {"p2": 1, "p3": 2}, "q2": {"p4": 1}, "q3": {"p9": 2}}
    docs, dq, where = build_long_documents(corpus, qrels, [("A", "Article A", ["p1", "p2", "p3"]), ("B", "B", ["p4"])])
    assert docs["A"] == {"title": "Article A", "text": "Tp1. text of p1.\n\nTp2. text of p2.\n\nTp3. text of p3."}
    assert dq == {"q1": {"A": 2}, "q2": {"B": 1}}
    for pid, (d, pos) in where.items():
        assert docs[d]["text"][pos:].startswith(f"T{pid}. text of {pid}.")
    with pytest.raises(ValueError, match="p1"):
        build_long_documents(corpus, qrels, [("A", "A", ["p1"]), ("B", "B", ["p1"])])
    with pytest.raises(KeyError, match="'B'.*p7"):
        build_long_documents(corpus, qrels, [("A", "A", ["p1"]), ("B", "B", ["p7"])])


def test_chunk_corpus_spans_locate_the_chunks_of_chunk_text(tok, one_token_words):
    corpus = {"d1": {"title": "Tree", "text": " ".join(one_token_words * 2)}, "d2": "water the plant"}
    spans = chunk_corpus_spans(corpus, tok, max_tokens=6, overlap=2)
    for d, doc in corpus.items():                 # the reference: chunk_text on each document's text
        want = chunk_text(doc_text(doc), tok, 6, 2)
        got = [doc_text(doc)[a:b] for c, (dd, a, b) in spans.items() if dd == d]
        assert got == want and len(want) >= 1
    chunks, parent = chunk_corpus(corpus, tok, max_tokens=6, overlap=2)
    assert list(chunks) == list(spans) and all(parent[c] == spans[c][0] for c in chunks)


@pytest.fixture(scope="module")
def course_articles():
    from bgekit.data import course_data_dir, load_beir

    data = load_beir(course_data_dir(), "test")
    return data, course_long_documents(data.corpus, data.qrels, course_data_dir())


def test_course_long_documents_hold_every_passage_once_by_topic(course_articles):
    data, (docs, dq, where) = course_articles
    assert set(where) == set(data.corpus)          # every passage in exactly one article (where is keyed by passage)
    sizes = {}
    for d, _ in where.values():
        sizes[d] = sizes.get(d, 0) + 1
    by_topic = {}
    for d, n in sizes.items():
        by_topic.setdefault(d.rsplit(" ", 1)[0], []).append(n)
    for topic, ns in by_topic.items():      # round(n / 8) articles of near-equal length ("about eight" paragraphs)
        assert len(ns) == max(1, round(sum(ns) / 8)) and max(ns) - min(ns) <= 1, (topic, ns)
    assert len(by_topic) >= 5 and all(docs[d]["title"].endswith(f"part {d.rsplit(' ', 1)[1]}") for d in docs)
    # passage_spans: each passage found, character for character, in its article's document text
    spans = passage_spans(docs, data.corpus, where)
    for pid, (d, a, b) in spans.items():
        p = data.corpus[pid]
        assert doc_text(docs[d])[a:b] == f"{p['title'].rstrip('.')}. {p['text']}"
    # whole documents as units give back build_long_documents' own document qrels (queries without any: empty rows)
    whole = {d: (d, 0, len(doc_text(doc))) for d, doc in docs.items()}
    got = span_qrels(whole, spans, data.qrels)
    assert {q: r for q, r in got.items() if r} == dq and set(got) == set(data.qrels)


def test_course_long_documents_name_a_passage_without_a_source(tmp_path, course_articles):
    from bgekit.data import course_data_dir

    data, _ = course_articles
    corpus = dict(data.corpus) | {"stray": {"title": "Not in the sources", "text": "Written here."}}
    with pytest.raises(KeyError, match="stray"):
        course_long_documents(corpus, {}, course_data_dir())
    with pytest.raises(FileNotFoundError, match="passages_"):
        course_long_documents(data.corpus, {}, tmp_path)


def test_span_qrels_hand_worked():
    units = {"a#0": ("a", 0, 100), "a#1": ("a", 50, 150), "a#2": ("a", 140, 240), "b#0": ("b", 0, 100)}
    passages = {"p": ("a", 100, 200), "r": ("b", 10, 20)}      # p: 100 characters
    qrels = {"q1": {"p": 2, "r": 1}, "q2": {"p": 0}, "q3": {"x": 3}}
    # a#0 holds 0 of p, a#1 50 (exactly half: counts), a#2 60; b#0 all of r
    assert span_qrels(units, passages, qrels) == {"q1": {"a#1": 2, "a#2": 2, "b#0": 1}, "q2": {}, "q3": {}}
    assert span_qrels(units, passages, qrels, min_share=0.6) == {"q1": {"a#2": 2, "b#0": 1}, "q2": {}, "q3": {}}
    assert span_qrels(units, passages, {"q": {"p": 1, "p2": 3}}, min_share=1.0) == {"q": {}}
    with pytest.raises(ValueError, match="min_share"):
        span_qrels(units, passages, qrels, min_share=0)


def test_passage_spans_hold_when_texts_carry_outer_whitespace():
    # doc_text strips both ends: a text ending in a newline, or a passage with no title, must not shift the spans
    corpus = {"p": {"title": "A", "text": "one."}, "r": {"title": "B", "text": "two.\n"}, "s": {"title": "", "text": "three."}}
    docs, _, where = build_long_documents(corpus, {}, [("d", "Doc", ["p", "r"]), ("e", "", ["s"])])
    spans = passage_spans(docs, corpus, where)
    assert [doc_text(docs[d])[a:b] for d, a, b in spans.values()] == ["A. one.", "B. two.", "three."]
    with pytest.raises(KeyError, match="'x'"):
        passage_spans(docs, corpus, {"x": ("d", 0)})
    with pytest.raises(KeyError, match="'zz'"):
        passage_spans(docs, corpus, {"p": ("zz", 0)})


def test_span_qrels_skips_an_empty_passage():
    units = {"a#0": ("a", 0, 100), "a#1": ("a", 80, 200)}
    assert span_qrels(units, {"p1": ("a", 150, 150)}, {"q": {"p1": 1}}) == {"q": {}}


def test_course_long_documents_reject_a_bad_size_and_name_a_bad_source_line(tmp_path, course_articles):
    from bgekit.data import course_data_dir

    data, _ = course_articles
    with pytest.raises(ValueError, match="per_article"):
        course_long_documents(data.corpus, {}, course_data_dir(), per_article=0)
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "passages_x.jsonl").write_text('{"topic": "t", "title": "x", "text": "y"}\n{"topic": "t"}\n')
    with pytest.raises(ValueError, match=r"passages_x.jsonl, line 2"):
        course_long_documents(data.corpus, {}, tmp_path)


def test_chunk_corpus_names_a_document_without_text(tok):
    with pytest.raises(TypeError, match=r"corpus\['a'\] has no string 'text'"):
        chunk_corpus({"ok": "fine", "a": {"title": "x", "text": None}}, tok, max_tokens=8)

"""Integrity of the general look-alike set, data/general/lookalikes.jsonl (notebook 05's forgetting check):
format, sizes, unique texts, no query copied from its passage, nothing about gardening, and that it is harder
than the paraphrase pairs for the bundled model (numpy brute-force ranking, no bgekit code involved)."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

GENERAL = Path(__file__).resolve().parents[1] / "data" / "general"
LOOKALIKES = GENERAL / "lookalikes.jsonl"
GARDEN_WORDS = re.compile(r"\b(garden\w*|compost\w*|houseplant\w*|seedling\w*|potting|fertili[sz]\w*|prun\w*|"
                          r"soil|plants?|weeds?|foliage|horticultur\w*)\b", re.I)


def norm(text: str) -> str:
    return " ".join(text.lower().split())


@pytest.fixture(scope="module")
def rows():
    out = []
    for lineno, line in enumerate(LOOKALIKES.read_text(encoding="utf-8").splitlines(), 1):
        assert line.strip(), f"{LOOKALIKES}:{lineno}: empty line"
        obj = json.loads(line)
        assert set(obj) == {"id", "topic", "text", "queries"}, f"{LOOKALIKES}:{lineno}: keys {sorted(obj)}"
        assert isinstance(obj["text"], str) and obj["text"].strip(), f"{LOOKALIKES}:{lineno}: empty text"
        assert isinstance(obj["queries"], list), f"{LOOKALIKES}:{lineno}: queries must be a list"
        assert all(isinstance(q, str) and q.strip() for q in obj["queries"]), f"{LOOKALIKES}:{lineno}: empty query"
        out.append(obj)
    return out


def test_ids_and_texts_are_unique(rows):
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"L\d{3}", i) for i in ids)
    texts = [norm(r["text"]) for r in rows]
    assert len(set(texts)) == len(texts)
    queries = [norm(q) for r in rows for q in r["queries"]]
    assert len(set(queries)) == len(queries)
    assert not set(queries) & set(texts)


def test_sizes_and_the_distractor_structure(rows):
    """At least 150 questions; every topic holds 5 look-alike passages, 4 asked for and 1 pure distractor."""
    assert sum(len(r["queries"]) for r in rows) >= 150
    per_topic = Counter(r["topic"] for r in rows)
    asked = Counter(r["topic"] for r in rows if r["queries"])
    assert len(per_topic) >= 40
    assert all(n >= 5 for n in per_topic.values()), per_topic
    assert all(per_topic[t] - asked[t] >= 1 for t in per_topic), "every topic has a passage no question asks for"
    assert all(asked[t] >= 4 for t in per_topic)


def test_no_query_copies_its_passage(rows):
    """No question repeats 5 consecutive words of the passage that answers it (word overlap alone must not win)."""
    def grams(text, n=5):
        words = re.findall(r"[a-z0-9']+", text.lower())
        return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}

    for r in rows:
        for q in r["queries"]:
            assert not grams(q) & grams(r["text"]), (r["id"], q)


def test_nothing_about_gardening(rows):
    """The set must be outside the course domain (the forgetting check needs another domain)."""
    for r in rows:
        for text in [r["text"], r["topic"], *r["queries"]]:
            assert not GARDEN_WORDS.search(text), (r["id"], GARDEN_WORDS.search(text).group(0))


@pytest.mark.slow
def test_harder_than_the_paraphrase_pairs(rows, encoder):
    """The bundled model's top-1 accuracy, ranked by brute-force numpy cosine, is clearly lower on the look-alikes
    than on the paraphrase pairs (the reason the set exists: the pairs sit at the ceiling)."""
    def top1(queries, passages, gold):
        q = encoder.encode(queries)
        p = encoder.encode(passages)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        p /= np.linalg.norm(p, axis=1, keepdims=True)
        return float(np.mean((q @ p.T).argmax(1) == np.array(gold)))

    pairs = [json.loads(line) for line in (GENERAL / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    acc_pairs = top1([r["a"] for r in pairs], [r["b"] for r in pairs], list(range(len(pairs))))
    asked = [(q, i) for i, r in enumerate(rows) for q in r["queries"]]
    acc_look = top1([q for q, _ in asked], [r["text"] for r in rows], [i for _, i in asked])
    assert acc_look < acc_pairs - 0.05, (acc_look, acc_pairs)

"""Integrity of the course's own retrieval collection in data/ (BEIR format)."""

import json
from collections import Counter
from pathlib import Path

import pytest

from bgekit.data import load_beir

DATA = Path(__file__).resolve().parent.parent / "data"

pytestmark = pytest.mark.skipif(
    not (DATA / "corpus.jsonl").is_file(),
    reason=f"course data not built yet: {DATA / 'corpus.jsonl'} is missing (see data/build.py)",
)


@pytest.fixture(scope="module")
def splits():
    # strict loading checks ids are unique and every qrel points to an existing query and passage
    return {split: load_beir(DATA, split) for split in ("train", "test")}


def _ids(path):
    return [json.loads(line)["_id"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_ids_unique_and_texts_present(splits):
    for name in ("corpus.jsonl", "queries.jsonl"):
        dup = [i for i, c in Counter(_ids(DATA / name)).items() if c > 1]
        assert not dup, f"duplicate ids in {name}: {dup[:5]}"
    corpus = splits["test"].corpus
    empty = [d for d, doc in corpus.items() if not doc["text"].strip()]
    assert not empty, f"passages with empty text: {empty[:5]}"


def test_sizes(splits):
    corpus = splits["test"].corpus
    n_queries = len(splits["train"].queries) + len(splits["test"].queries)
    assert len(corpus) >= 500
    assert n_queries >= 400
    assert len(splits["test"].queries) >= 100


def test_splits_disjoint_and_every_query_has_a_relevant_passage(splits):
    train, test = set(splits["train"].qrels), set(splits["test"].qrels)
    assert not train & test, f"queries in both splits: {sorted(train & test)[:5]}"
    for name, data in splits.items():
        without = [q for q, judged in data.qrels.items() if not any(r > 0 for r in judged.values())]
        assert not without, f"{name} queries with no relevant passage: {without[:5]}"
        assert all(data.queries[q].strip() for q in data.queries), f"empty query text in {name}"


def test_some_queries_have_several_relevant_passages(splits):
    for name, data in splits.items():
        several = sum(1 for judged in data.qrels.values() if sum(r > 0 for r in judged.values()) > 1)
        assert several > 0, f"no {name} query has more than one relevant passage"


def test_queries_are_not_copied_from_passages(splits):
    # a query that is a verbatim substring of one of its relevant passages defeats the exercise
    corpus = splits["test"].corpus
    for data in splits.values():
        for qid, judged in data.qrels.items():
            q = data.queries[qid].strip().lower()
            for did, rel in judged.items():
                if rel > 0:
                    assert q not in corpus[did]["text"].lower(), f"query {qid} is copied from passage {did}"

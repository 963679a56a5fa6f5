"""The corpus-embedding cache: reused only when model, settings and texts are the same."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from bgekit.cache import cached_embeddings, corpus_key, model_fingerprint
from bgekit.embedder import Embedder
from bgekit.retrieval import DenseRetriever

CORPUS = {
    "a": {"title": "Watering", "text": "Water succulents only when the soil is dry."},
    "b": {"title": "Frost", "text": "Cover tender plants with fleece on cold nights."},
    "c": "Prune roses in late winter, just above an outward-facing bud.",
}


def _forbid_encoding(monkeypatch, enc):
    def boom(*a, **k):
        raise AssertionError("the cache should have been used")
    monkeypatch.setattr(enc, "encode_corpus", boom)


def test_second_retriever_loads_the_same_matrix_without_encoding(encoder, tmp_path, monkeypatch, caplog):
    first = DenseRetriever(encoder, CORPUS, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1
    np.testing.assert_array_equal(first.embeddings, encoder.encode_corpus([CORPUS["a"], CORPUS["b"], CORPUS["c"]]))
    _forbid_encoding(monkeypatch, encoder)
    with caplog.at_level(logging.INFO, logger="bgekit.cache"):
        second = DenseRetriever(encoder, CORPUS, cache_dir=tmp_path)
    assert "reused 3 cached embeddings" in caplog.text
    np.testing.assert_array_equal(second.embeddings, first.embeddings)
    assert second.search(["when to water a cactus"], k=1)[0][0][0] == "a"


def test_key_changes_with_texts_settings_and_weights(encoder, minilm_path):
    texts = ["one passage", "another passage"]
    base = corpus_key(encoder, texts)
    assert corpus_key(encoder, texts) == base
    assert corpus_key(encoder, ["one passage", "another passage."]) != base
    assert corpus_key(encoder, texts[::-1]) != base
    assert corpus_key(encoder, ["one passageanother", " passage"]) != base    # boundaries count, not just bytes
    assert corpus_key(encoder, texts, max_length=32) != base
    other = Embedder(minilm_path, max_length=64)
    assert corpus_key(other, texts) != base                                   # same weights, other token budget
    same = Embedder(minilm_path)
    assert corpus_key(same, texts) == base                                    # a fresh load of the same folder
    with torch.no_grad():
        next(same.model.parameters()).view(-1)[0] += 1e-3                      # one weight, one step of "training"
    assert corpus_key(same, texts) != base


def test_fingerprint_sees_every_parameter(minilm_path):
    enc = Embedder(minilm_path)
    before = model_fingerprint(enc.model, enc.tokenizer)
    assert before == model_fingerprint(enc.model, enc.tokenizer)
    assert model_fingerprint(enc.model) != before                             # the tokenizer is part of it
    with torch.no_grad():
        list(enc.model.parameters())[-1].view(-1)[-1] += 1e-6
    assert model_fingerprint(enc.model, enc.tokenizer) != before


@pytest.mark.parametrize("bad", [b"not a numpy file", "wrong shape", "nan"])
def test_a_bad_cache_file_is_reported_and_recomputed(tmp_path, caplog, bad):
    key = "k" * 64
    path = tmp_path / f"{key[:40]}.npy"
    if bad == "wrong shape":
        np.save(path, np.zeros((2, 4), dtype=np.float32))
    elif bad == "nan":
        np.save(path, np.full((3, 4), np.nan, dtype=np.float32))
    else:
        path.write_bytes(bad)
    want = np.arange(12, dtype=np.float32).reshape(3, 4)
    with caplog.at_level(logging.WARNING, logger="bgekit.cache"):
        got = cached_embeddings(tmp_path, key, 3, lambda: want)
    assert "ignoring the embedding cache file" in caplog.text and str(path) in caplog.text
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.load(path), want)                        # replaced by the good matrix
    assert [p.name for p in tmp_path.iterdir()] == [path.name]                 # no temporary file left behind


def test_cache_needs_an_encoder_and_not_precomputed_embeddings(encoder, tmp_path):
    with pytest.raises(ValueError, match="either embeddings"):
        DenseRetriever(encoder, CORPUS, embeddings=np.zeros((3, 384), np.float32), cache_dir=tmp_path)

    class Plain:
        def encode_corpus(self, texts, **kw):
            return np.eye(3, 4, dtype=np.float32)

    with pytest.raises(TypeError, match="needs a bgekit.Embedder; Plain has no model, tokenizer"):
        DenseRetriever(Plain(), CORPUS, cache_dir=tmp_path)

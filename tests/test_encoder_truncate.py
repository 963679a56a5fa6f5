"""Embedder(truncate_dim=): the first dimensions of the pooled vector, normalised after truncation,
against sentence-transformers' own truncate_dim and a plain numpy slice of the untruncated vectors."""
import numpy as np
import pytest

from bgekit import Embedder

TEXTS = ["Water a snake plant only when the soil is dry.", "Why are my basil leaves black?", "short", ""]


def test_truncated_vectors_are_the_renormalised_leading_dimensions(minilm_path):
    raw = Embedder(minilm_path, device="cpu", normalize=False).encode(TEXTS)
    enc = Embedder(minilm_path, device="cpu", truncate_dim=100)
    got = enc.encode(TEXTS)
    assert enc.dim == 100 and got.shape == (len(TEXTS), 100) and got.dtype == np.float32
    want = raw[:, :100] / np.linalg.norm(raw[:, :100], axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-5)
    q = enc.encode_queries(["basil"])
    assert q.shape == (1, 100)


def test_matches_sentence_transformers_truncate_dim(minilm_path):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_path), device="cpu", truncate_dim=64)
    want = st.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=True)
    got = Embedder(minilm_path, device="cpu", truncate_dim=64).encode(TEXTS)
    assert want.shape == got.shape == (len(TEXTS), 64)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_bad_truncate_dim_and_cache_key(minilm_path):
    from bgekit.cache import corpus_key

    for bad in (0, 385, 12.5, True):
        with pytest.raises(ValueError, match=r"truncate_dim must be an int in \[1, 384\]"):
            Embedder(minilm_path, device="cpu", truncate_dim=bad)
    full, cut = Embedder(minilm_path, device="cpu"), Embedder(minilm_path, device="cpu", truncate_dim=128)
    assert full.truncate_dim is None and full.dim == 384
    # cached corpus embeddings of a truncated encoder never stand in for full ones (or the other way round)
    assert corpus_key(full, TEXTS) != corpus_key(cut, TEXTS)

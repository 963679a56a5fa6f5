"""Embedder embeddings against an independent reference: a hand-written transformers forward pass."""
import logging

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from bgekit import Embedder

TEXTS = [
    "Water a snake plant only when the soil is dry all the way down.",
    "",
    "short",
    "Fungus gnats breed in damp compost; letting the top few centimetres dry breaks their life cycle, and "
    "yellow sticky traps catch the adults while the larvae die off in the drier mix.",
    "Why are the tips of my spider plant brown?",
    "a " * 40,
    "Repot in spring, one size up, into a mix with plenty of bark and perlite so the roots can breathe.",
]


def reference(path, texts, pooling, max_length, normalize=True):
    """Tokenise each text alone (no padding at all), forward, pool, normalise."""
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for t in texts:
            b = tok([t], truncation=True, max_length=max_length, return_tensors="pt")
            h = model(**b).last_hidden_state
            if pooling == "cls":
                v = h[:, 0]
            else:
                m = b["attention_mask"].unsqueeze(-1).float()
                v = (h * m).sum(1) / m.sum(1)
            if normalize:
                v = torch.nn.functional.normalize(v, dim=-1)
            out.append(v[0].numpy())
    return np.stack(out)


@pytest.fixture(scope="module")
def refs(minilm_path):
    return {p: reference(minilm_path, TEXTS, p, 256) for p in ("mean", "cls")}


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("batch_size", [1, 2, 3, 64])
def test_matches_transformers_reference(minilm_path, refs, pooling, batch_size):
    enc = Embedder(minilm_path, device="cpu", pooling=pooling)
    got = enc.encode(TEXTS, batch_size=batch_size)
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(got, refs[pooling], atol=1e-5)


def test_unnormalised_matches_reference(minilm_path):
    enc = Embedder(minilm_path, device="cpu", normalize=False)
    ref = reference(minilm_path, TEXTS[:3], "mean", 256, normalize=False)
    np.testing.assert_allclose(enc.encode(TEXTS[:3]), ref, atol=1e-5)
    assert not np.allclose(np.linalg.norm(ref, axis=1), 1.0)


def test_matches_sentence_transformers(minilm_path, encoder):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_path), device="cpu")
    texts = TEXTS + ["word " * 400]  # also past the 256-token limit
    want = st.encode(texts, batch_size=3, convert_to_numpy=True, normalize_embeddings=True)
    np.testing.assert_allclose(encoder.encode(texts, batch_size=5), want, atol=1e-5)


def test_convert_to_numpy_false_returns_a_torch_tensor_as_sentence_transformers(minilm_path, encoder):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm_path), device="cpu")
    got = encoder.encode(TEXTS, convert_to_numpy=False)
    want = st.encode(TEXTS, convert_to_tensor=True, normalize_embeddings=True)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32 and got.shape == (len(TEXTS), 384)
    torch.testing.assert_close(got, want.cpu(), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(got.numpy(), encoder.encode(TEXTS))
    q = encoder.encode_queries(["dry brown leaf tips"], convert_to_numpy=False)
    assert isinstance(q, torch.Tensor) and q.shape == (1, 384)
    empty = encoder.encode([], convert_to_numpy=False)
    assert isinstance(empty, torch.Tensor) and empty.shape == (0, 384)


def test_input_order_kept_under_length_sorting(encoder):
    one_by_one = np.stack([encoder.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(encoder.encode(TEXTS, batch_size=2), one_by_one, atol=1e-5)


def test_queries_get_the_instruction(minilm_path):
    enc = Embedder(minilm_path, device="cpu", query_instruction_for_retrieval="Represent this sentence for searching: ")
    q = ["dry brown leaf tips"]
    np.testing.assert_allclose(enc.encode_queries(q), enc.encode(["Represent this sentence for searching: " + q[0]]),
                               atol=1e-6)
    np.testing.assert_allclose(enc.encode_queries(q, query_instruction_for_retrieval=""), enc.encode(q), atol=1e-6)
    assert not np.allclose(enc.encode_queries(q), enc.encode(q), atol=1e-3)


def test_legacy_names_are_aliases(minilm_path, tmp_path):
    """``Encoder``, ``query_instruction=`` and ``encode_queries(instruction=)`` (bgekit < 0.5) still work and mean
    the same as ``Embedder`` / ``query_instruction_for_retrieval``; a model folder saved with the old metadata key
    reads the same."""
    import json

    import bgekit
    from bgekit import models

    assert bgekit.Encoder is Embedder
    old = bgekit.Encoder(minilm_path, device="cpu", query_instruction="Q: ")
    assert old.query_instruction_for_retrieval == old.spec.query_instruction == "Q: "
    q = ["dry brown leaf tips"]
    np.testing.assert_allclose(old.encode_queries(q, instruction=""),
                               old.encode_queries(q, query_instruction_for_retrieval=""), atol=0)
    (tmp_path / models.METADATA_FILE).write_text(json.dumps({"pooling": "cls", "query_instruction": "old: "}))
    assert models.get_spec(str(tmp_path)).query_instruction_for_retrieval == "old: "


def test_bge_registry_instruction_and_pooling():
    from bgekit.models import BGE_QUERY_INSTRUCTION, get_spec

    spec = get_spec("BAAI/bge-large-en-v1.5")
    assert (spec.pooling, spec.dim, spec.query_instruction_for_retrieval) == ("cls", 1024, BGE_QUERY_INSTRUCTION)


def test_corpus_records_are_title_space_text(encoder):
    docs = [{"title": "Snake plant", "text": "Water sparingly."}, {"text": "No title here."}, "plain string"]
    want = encoder.encode(["Snake plant Water sparingly.", "No title here.", "plain string"])
    np.testing.assert_allclose(encoder.encode_corpus(docs), want, atol=1e-6)


def test_empty_input_gives_zero_rows(encoder):
    out = encoder.encode([])
    assert out.shape == (0, 384) and out.dtype == np.float32
    assert encoder.encode_queries([]).shape == (0, 384)


@pytest.mark.parametrize("bad, idx, word", [(["ok", 3, "x"], 1, "int"), (["ok", "ok", None], 2, "None")])
def test_non_strings_named_by_index(encoder, bad, idx, word):
    with pytest.raises(TypeError, match=rf"texts\[{idx}\].*{word}"):
        encoder.encode(bad)


def test_single_string_is_rejected_with_hint(encoder):
    with pytest.raises(TypeError, match="got a single string: wrap it in a list"):
        encoder.encode("just one")


def test_empty_strings_encode(encoder):
    out = encoder.encode(["", ""])
    assert np.isfinite(out).all() and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)


def test_truncation_is_counted_in_one_warning(encoder, caplog):
    long = ["grow " * 600, "light " * 300, "short text"]
    with caplog.at_level(logging.WARNING, logger="bgekit"):
        encoder.encode(long)
    msgs = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert msgs == ["2 of 3 texts were longer than 256 tokens and were truncated"]


def test_unknown_pooling_and_dtype_rejected(minilm_path):
    with pytest.raises(ValueError, match="pooling"):
        Embedder(minilm_path, pooling="max")
    with pytest.raises(ValueError, match="dtype"):
        Embedder(minilm_path, dtype="int8")


def test_full_attention_mask_is_dropped_only_when_it_changes_nothing(minilm_path):
    from bgekit._batching import model_inputs

    tok = AutoTokenizer.from_pretrained(minilm_path)
    model = AutoModel.from_pretrained(minilm_path).eval()
    same = tok(["two equal", "two equal"], return_tensors="pt")
    assert "attention_mask" not in model_inputs(same) and set(model_inputs(same)) == set(same) - {"attention_mask"}
    with torch.inference_mode():
        a = model(**same).last_hidden_state
        b = model(**model_inputs(same)).last_hidden_state
    assert torch.allclose(a, b, atol=1e-5)
    padded = tok(["short", "a somewhat longer text here"], padding=True, return_tensors="pt")
    assert model_inputs(padded) is padded                       # padding present: the mask must stay

"""Tests of weighted model merging (LM-Cocktail style)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch


def make_tiny(folder: Path, seed: int, hidden: int = 32) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from bgekit.models import ModelSpec, offline_model_path, save_model_metadata

    tok = AutoTokenizer.from_pretrained(offline_model_path())
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    save_model_metadata(folder, ModelSpec(str(folder), pooling="mean", query_instruction="q: ", max_length=64),
                        hidden)
    return folder


def load(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("merge")
    return make_tiny(root / "a", 0), make_tiny(root / "b", 1)


def test_weights_one_zero_reproduce_the_first_model_exactly(tmp_path, pair):
    from bgekit.merging import merge_models

    a, b = pair
    out = merge_models([a, b], [1.0, 0.0], tmp_path / "m")
    wa, wm = load(a), load(out)
    assert wa.keys() == wm.keys()
    assert all(torch.equal(wa[k], wm[k]) for k in wa)
    out2 = merge_models([a, b], [0, 3], tmp_path / "m2")  # weights are normalised: (0, 3) -> (0, 1)
    wb, wm2 = load(b), load(out2)
    assert all(torch.equal(wb[k], wm2[k]) for k in wb)


def test_half_half_is_the_average_and_loads_everywhere(tmp_path, pair):
    from sentence_transformers import SentenceTransformer

    from bgekit import Encoder
    from bgekit.merging import merge_models

    a, b = pair
    out = merge_models([str(a), str(b)], [0.5, 0.5], tmp_path / "m")
    wa, wb, wm = load(a), load(b), load(out)
    for k in wa:
        if torch.is_floating_point(wa[k]):
            assert torch.allclose(wm[k], 0.5 * wa[k] + 0.5 * wb[k], atol=1e-7), k
        else:
            assert torch.equal(wm[k], wa[k]), k
    # 2:1 weights are normalised to 2/3, 1/3
    out3 = merge_models([a, b], [2, 1], tmp_path / "m3")
    wm3 = load(out3)
    k = "encoder.layer.0.attention.self.query.weight"
    assert torch.allclose(wm3[k], (2 * wa[k] + wb[k]) / 3, atol=1e-6)
    # tokenizer and metadata come from the first model
    meta = json.loads((out / "bgekit.json").read_text())
    assert meta["pooling"] == "mean" and meta["query_instruction"] == "q: "
    assert (out / "tokenizer.json").is_file()
    texts = ["water the basil", "a tomato with yellow leaves"]
    enc = Encoder(out, device="cpu")
    assert enc.pooling == "mean"
    st = SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_numpy=True)
    assert np.allclose(enc.encode(texts), st, atol=1e-5)


def test_mismatched_models_error_clearly(tmp_path, pair):
    from bgekit.merging import merge_models, merge_state_dicts

    a, _ = pair
    wide = make_tiny(tmp_path / "wide", 0, hidden=48)
    with pytest.raises(ValueError, match="same architecture.*shape"):
        merge_models([a, wide], [0.5, 0.5], tmp_path / "m")
    assert not (tmp_path / "m").exists()
    with pytest.raises(ValueError, match="missing \\['b'\\]"):
        merge_state_dicts([{"a": torch.zeros(1), "b": torch.zeros(1)}, {"a": torch.zeros(1)}], [1, 1])
    with pytest.raises(ValueError, match="2 models but 1 weights"):
        merge_models([a, a], [1.0], tmp_path / "m")
    with pytest.raises(ValueError, match=">= 0"):
        merge_models([a, a], [1.0, -0.5], tmp_path / "m")
    with pytest.raises(ValueError, match="sum to 0"):
        merge_models([a, a], [0, 0], tmp_path / "m")


def test_failed_merge_leaves_existing_folder(tmp_path, pair):
    from bgekit.merging import merge_models

    a, b = pair
    out = merge_models([a, b], [0.5, 0.5], tmp_path / "m")
    before = load(out)
    with pytest.raises(Exception):
        merge_models([a, tmp_path / "missing"], [0.5, 0.5], out)
    after = load(out)
    assert all(torch.equal(before[k], after[k]) for k in before)

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
    save_model_metadata(folder, ModelSpec(str(folder), pooling="mean", query_instruction_for_retrieval="q: ", max_length=64),
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

    from bgekit import Embedder
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
    assert meta["pooling"] == "mean" and meta["query_instruction_for_retrieval"] == "q: "
    assert (out / "tokenizer.json").is_file()
    texts = ["water the basil", "a tomato with yellow leaves"]
    enc = Embedder(out, device="cpu")
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
    from bgekit.models import ModelLoadError

    a, b = pair
    out = merge_models([a, b], [0.5, 0.5], tmp_path / "m")
    before = load(out)
    with pytest.raises(ModelLoadError):
        merge_models([a, tmp_path / "missing"], [0.5, 0.5], out)
    after = load(out)
    assert all(torch.equal(before[k], after[k]) for k in before)


# ---------------------------------------------------------------- tokenizers and settings must agree
def _retokenize(src: Path, dst: Path, edit_tokenizer_json, swap_rows: tuple[int, int] | None = None,
                edit_config=None) -> Path:
    """A copy of model folder ``src`` whose tokenizer.json (and tokenizer_config.json) are edited, and
    embedding rows swapped if asked."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    for name, edit in (("tokenizer.json", edit_tokenizer_json), ("tokenizer_config.json", edit_config)):
        if edit is not None:
            obj = json.loads((dst / name).read_text(encoding="utf-8"))
            edit(obj)
            (dst / name).write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    (dst / "vocab.txt").unlink(missing_ok=True)  # the fast tokenizer is the one in tokenizer.json
    if swap_rows is not None:
        w = load_file(str(dst / "model.safetensors"))
        key = "embeddings.word_embeddings.weight"
        i, j = swap_rows
        w[key][[i, j]] = w[key][[j, i]].clone()
        save_file(w, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_models_with_permuted_vocabularies_are_refused(tmp_path, pair):
    from transformers import AutoTokenizer

    from bgekit import Embedder
    from bgekit.merging import merge_models

    a, _ = pair
    vocab = AutoTokenizer.from_pretrained(a).get_vocab()
    i, j = vocab["water"], vocab["the"]

    def swap(tj):
        v = tj["model"]["vocab"]
        v["water"], v["the"] = j, i

    # same vocabulary size, another order; the embedding rows follow, so b computes the same function as a
    b = _retokenize(a, tmp_path / "b", swap, swap_rows=(i, j))
    texts = ["water the basil", "the cactus needs little water"]
    ea, eb = Embedder(a, device="cpu").encode(texts), Embedder(b, device="cpu").encode(texts)
    np.testing.assert_allclose(ea, eb, atol=1e-6)
    assert AutoTokenizer.from_pretrained(b)("water")["input_ids"][1] == j
    with pytest.raises(ValueError, match=rf"tokenizers differ \(vocabulary: 2 of {len(vocab)} token ids map to "
                                         rf"other word pieces \(id {min(i, j)}: "):
        merge_models([a, b], [0.5, 0.5], tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_models_with_another_normalisation_are_refused(tmp_path, pair):
    from bgekit.merging import merge_models

    a, _ = pair

    def cased(tj):
        tj["normalizer"]["lowercase"] = False

    def cased_config(cfg):  # transformers rebuilds a BERT normaliser from do_lower_case
        cfg["do_lower_case"] = False

    c = _retokenize(a, tmp_path / "cased", cased, edit_config=cased_config)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(c)("WATER")["input_ids"] != AutoTokenizer.from_pretrained(a)("WATER")["input_ids"]
    with pytest.raises(ValueError, match=r"tokenizers differ \(normalizer: .*'lowercase': True.* vs .*'lowercase': False"):
        merge_models([a, c], [0.5, 0.5], tmp_path / "m")


def test_special_token_roles_are_compared():
    from transformers import AutoTokenizer

    from bgekit.merging import tokenizer_difference
    from bgekit.models import offline_model_path

    tok = AutoTokenizer.from_pretrained(offline_model_path())
    assert tokenizer_difference(tok, AutoTokenizer.from_pretrained(offline_model_path())) is None
    other = AutoTokenizer.from_pretrained(offline_model_path(), cls_token="[SEP]")
    diff = tokenizer_difference(tok, other)
    assert diff is not None and "cls_token" in diff and "'[CLS]' vs '[SEP]'" in diff


def test_different_settings_warn_and_the_first_models_are_kept(tmp_path, pair, caplog):
    from bgekit.merging import merge_models
    from bgekit.models import ModelSpec, save_model_metadata

    a, b = pair
    import shutil

    c = tmp_path / "c"
    shutil.copytree(b, c)
    save_model_metadata(c, ModelSpec(str(c), pooling="cls", query_instruction_for_retrieval="query: ", max_length=64), 32)
    with caplog.at_level("WARNING", logger="bgekit.merging"):
        out = merge_models([a, c], [0.5, 0.5], tmp_path / "m")
    msgs = [r.getMessage() for r in caplog.records if r.name == "bgekit.merging"]
    assert len(msgs) == 2
    assert "different pooling" in msgs[0] and "'mean'" in msgs[0] and "'cls'" in msgs[0] and "keeps the first" in msgs[0]
    assert "different query_instruction_for_retrieval" in msgs[1] and "'q: '" in msgs[1] and "'query: '" in msgs[1]
    meta = json.loads((out / "bgekit.json").read_text())
    assert (meta["pooling"], meta["query_instruction_for_retrieval"]) == ("mean", "q: ")

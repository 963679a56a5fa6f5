import json

import pytest

from bgekit import models
from bgekit.config import get_mode


def test_registry_knows_the_course_models():
    for name in ["BAAI/bge-small-en-v1.5", "BAAI/bge-base-en-v1.5", "BAAI/bge-large-en-v1.5",
                 "BAAI/bge-reranker-base", "BAAI/bge-reranker-large", models.OFFLINE_EMBEDDER]:
        assert name in models.REGISTRY
    assert models.get_spec("BAAI/bge-small-en-v1.5").dim == 384
    assert models.get_spec("BAAI/bge-reranker-large").kind == "reranker"
    mini = models.get_spec(models.OFFLINE_EMBEDDER)
    assert (mini.pooling, mini.query_instruction_for_retrieval, mini.max_length) == ("mean", "", 256)


def test_offline_name_resolves_to_bundled_folder(minilm_path):
    assert models.resolve_model(models.OFFLINE_EMBEDDER) == str(minilm_path)
    assert (minilm_path / "config.json").exists()
    assert models.get_spec(str(minilm_path)).pooling == "mean"


def test_folder_metadata_is_read(tmp_path):
    spec = models.ModelSpec("x", pooling="cls", query_instruction_for_retrieval="Q: ", dim=8, max_length=64)
    models.save_model_metadata(tmp_path, spec)
    got = models.get_spec(str(tmp_path))
    assert (got.pooling, got.query_instruction_for_retrieval, got.dim, got.max_length) == ("cls", "Q: ", 8, 64)
    pool = json.loads((tmp_path / "1_Pooling" / "config.json").read_text())
    assert pool["pooling_mode_cls_token"] and not pool["pooling_mode_mean_tokens"]


def test_sentence_transformers_folder_metadata_is_read(minilm_path, tmp_path):
    import shutil

    copy = tmp_path / "mini"
    shutil.copytree(minilm_path, copy)
    spec = models.get_spec(str(copy))  # not the bundled path any more: read from 1_Pooling
    assert (spec.pooling, spec.max_length, spec.normalize) == ("mean", 256, True)


def test_folder_metadata_with_a_byte_order_mark_is_read(minilm_path, tmp_path):
    import shutil

    copy = tmp_path / "mini"
    shutil.copytree(minilm_path, copy)
    for name in ("1_Pooling/config.json", "sentence_bert_config.json", "modules.json"):
        path = copy / name
        path.write_text("\ufeff" + path.read_text(encoding="utf-8"), encoding="utf-8")  # as some Windows tools save
    spec = models.get_spec(str(copy))
    assert (spec.pooling, spec.max_length, spec.normalize) == ("mean", 256, True)


def test_unknown_model_defaults_to_cls_with_a_warning(caplog):
    with caplog.at_level("WARNING"):
        spec = models.get_spec("someone/unknown-model")
    assert spec.pooling == "cls" and not spec.known
    assert "No pooling settings known" in caplog.text


def test_hub_model_offline_error_names_model_and_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from bgekit import Embedder

    with pytest.raises(models.ModelLoadError) as e:
        Embedder("BAAI/bge-large-en-v1.5", device="cpu")
    msg = str(e.value)
    assert "BAAI/bge-large-en-v1.5" in msg and "BGEKIT_MODE=small" in msg and "HF_HUB_OFFLINE" in msg


def test_missing_local_folder_is_a_clear_error():
    with pytest.raises(models.ModelLoadError, match="not found"):
        models.resolve_model("./no/such/folder")


def test_mode_switch(monkeypatch):
    monkeypatch.setenv("BGEKIT_MODE", "full")
    assert get_mode() == ("full", "BGEKIT_MODE=full")
    assert get_mode("small")[0] == "small"
    monkeypatch.setenv("BGEKIT_MODE", "tiny")
    with pytest.raises(ValueError, match="Unknown mode 'tiny'"):
        get_mode()

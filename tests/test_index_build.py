"""python -m bgekit.index build: sharded, resumable, and the same vectors from one or two processes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bgekit.data import save_beir
from bgekit.index import DenseIndex
from bgekit.index_build import build_index, shard_path

REPO = Path(__file__).resolve().parent.parent
WORDS = "plant water soil leaf root sun pot light seed grow green dry wet rot fungus gnat basil tomato".split()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A 2-layer random BERT (real transformers model, small enough to encode in milliseconds)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from bgekit.models import offline_model_path

    folder = tmp_path_factory.mktemp("tiny") / "model"
    tok = AutoTokenizer.from_pretrained(offline_model_path())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    corpus = {f"doc{i}": {"title": WORDS[i % len(WORDS)],
                          "text": " ".join(rng.choice(WORDS, size=int(rng.integers(3, 30))))} for i in range(43)}
    return save_beir(tmp_path_factory.mktemp("beir"), corpus, {"q1": "basil"}, {"test": {"q1": {"doc1": 1}}})


def _build(data, out, tiny, **kw):
    return build_index(data, out, str(tiny), kind=kw.pop("kind", "flat"), shard_size=kw.pop("shard_size", 8), **kw)


def test_build_equals_encoding_the_corpus_directly(tmp_path, data, tiny):
    from bgekit import Embedder
    from bgekit.data import doc_text, load_beir

    path = _build(data, tmp_path / "out", tiny)
    index = DenseIndex.load(path)
    corpus = load_beir(data).corpus
    assert index.ids == list(corpus) and len(list((tmp_path / "out" / "shards").iterdir())) == 6
    want = Embedder(str(tiny), device="cpu").encode([doc_text(d) for d in corpus.values()])
    np.testing.assert_allclose(index.reconstruct(), want, atol=1e-5)  # other batches: float round-off only


def test_killed_build_resumes_from_its_shards(tmp_path, data, tiny, monkeypatch):
    from bgekit.embedder import Embedder

    whole = DenseIndex.load(_build(data, tmp_path / "whole", tiny)).reconstruct()
    real, calls = Embedder.encode, []

    def encode(self, texts, **kw):
        calls.append(len(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process is stopped while encoding its third shard
        return real(self, texts, **kw)

    monkeypatch.setattr(Embedder, "encode", encode)
    with pytest.raises(KeyboardInterrupt):
        _build(data, tmp_path / "out", tiny)
    assert sorted(p.name for p in (tmp_path / "out" / "shards").iterdir()) == ["shard-00000.npz", "shard-00001.npz"]
    assert not (tmp_path / "out" / "index").exists()
    calls.clear()

    def counting(self, texts, **kw):
        calls.append(len(texts))
        return real(self, texts, **kw)

    monkeypatch.setattr(Embedder, "encode", counting)
    index = DenseIndex.load(_build(data, tmp_path / "out", tiny))
    assert calls == [8, 8, 8, 3]  # only the four missing shards were encoded
    np.testing.assert_array_equal(index.reconstruct(), whole)


def test_bad_input_is_named_and_loses_nothing(tmp_path, data, tiny):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="kind must be one of"):
        _build(data, out, tiny, kind="lsh")
    assert not (out / "shards").exists()  # refused before encoding anything
    _build(data, out, tiny, kind="binary", knobs={"rescore": 2})
    before = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    index_before = DenseIndex.load(out / "index").reconstruct()

    with pytest.raises(ValueError, match=r"other settings \(shard_size, shards differ"):
        _build(data, out, tiny, shard_size=5)
    bad = shard_path(out, 2)
    bad.write_bytes(before[bad.name][:100])  # a torn / damaged file
    with pytest.raises(ValueError, match=r"shard-00002.npz: unreadable shard .*delete it and run the build again"):
        _build(data, out, tiny, kind="binary", knobs={"rescore": 2})
    ids, vecs = np.load(shard_path(out, 1))["ids"], np.load(shard_path(out, 1))["vectors"]
    np.savez(shard_path(out, 2), ids=ids, vectors=vecs * 2, sha256=np.array("0" * 64))
    with pytest.raises(ValueError, match="shard-00002.npz: holds 8 ids that differ from the corpus at position 0"):
        _build(data, out, tiny, kind="binary", knobs={"rescore": 2})
    # nothing else was lost: the other shards and the index are as they were
    for name, content in before.items():
        if name != bad.name:
            assert (out / "shards" / name).read_bytes() == content
    np.testing.assert_array_equal(DenseIndex.load(out / "index").reconstruct(), index_before)
    bad.unlink()  # the advice in the message works
    np.testing.assert_array_equal(DenseIndex.load(_build(data, out, tiny, kind="binary", knobs={"rescore": 2}))
                                  .reconstruct(), index_before)


@pytest.mark.slow
def test_two_processes_give_the_one_process_vectors_and_ids(tmp_path, data, tiny):
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    args = ["-m", "bgekit.index", "build", "--data", str(data), "--model", str(tiny), "--shard-size", "8",
            "--kind", "sq8", "--knob", "rescore=3"]
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *args, "--out", str(tmp_path / "two")], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    a, b = DenseIndex.load(tmp_path / "one" / "index"), DenseIndex.load(tmp_path / "two" / "index")
    assert a.ids == b.ids and len(a) == 43
    np.testing.assert_array_equal(a._rescore_matrix(), b._rescore_matrix())  # the float vectors, bit for bit
    np.testing.assert_array_equal(a.reconstruct(), b.reconstruct())
    for s in range(6):
        za, zb = np.load(shard_path(tmp_path / "one", s)), np.load(shard_path(tmp_path / "two", s))
        np.testing.assert_array_equal(za["vectors"], zb["vectors"])
        assert za["ids"].tolist() == zb["ids"].tolist()

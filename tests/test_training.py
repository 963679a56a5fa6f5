"""Tests of the embedder trainer: the loss, data checks, checkpoint/resume, the saved folder, the CLI."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bgekit.training.embedder import (TrainArgs, TrainExample, _sample_group, contrastive_loss, info_nce_loss,
                                      latest_checkpoint, load_train_examples, train_embedder)

REPO = Path(__file__).resolve().parent.parent
WORDS = "plant water soil leaf root sun pot light seed grow green dry wet rot fungus gnat basil tomato".split()


def make_tiny_model(folder: Path, dropout: float = 0.1) -> Path:
    """A 2-layer random BERT (hidden 32) with the bundled MiniLM's tokenizer: fast to train on CPU."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from bgekit.models import offline_model_path

    tok = AutoTokenizer.from_pretrained(offline_model_path())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_train_data(path: Path, n: int = 24, n_neg: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        q = " ".join(rng.choice(WORDS, 5))
        rows.append({"query": q, "pos": [f"{q} answer {i}"],
                     "neg": [" ".join(rng.choice(WORDS, 8)) + f" n{i}.{j}" for j in range(n_neg)]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def weights_of(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    keys = {k for k in a if k != "embeddings.position_ids"}  # a buffer older files carry
    assert keys == {k for k in b if k != "embeddings.position_ids"}
    return max((a[k].float() - b[k].float()).abs().max().item() for k in keys)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


# ------------------------------------------------------------------------------------------ loss
def test_info_nce_matches_hand_computation():
    # 2 queries, groups of 3 passages (positive first), d = 2, temperature 0.5
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    p = torch.tensor([[0.8, 0.6], [0.0, 1.0], [-1.0, 0.0],     # group of query 0
                      [0.6, 0.8], [1.0, 0.0], [0.0, -1.0]])    # group of query 1
    t = 0.5
    losses = []
    for i, qi in enumerate(q.tolist()):
        scores = [sum(a * b for a, b in zip(qi, pj)) / t for pj in p.tolist()]  # vs all 6 passages
        log_z = math.log(sum(math.exp(s) for s in scores))
        losses.append(log_z - scores[i * 3])  # its positive sits at i * group_size
    expected = sum(losses) / len(losses)
    assert info_nce_loss(q, p, t).item() == pytest.approx(expected, abs=1e-6)
    # contrastive_loss without a process group is the same loss
    bw, val = contrastive_loss(q, p, t, negatives_cross_device=True)
    assert bw.item() == pytest.approx(expected, abs=1e-6) and val.item() == pytest.approx(expected, abs=1e-6)


def test_info_nce_gradient_and_temperature():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1).requires_grad_()
    p = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    loss = info_nce_loss(q, p, 0.1)
    loss.backward()
    # reference: softmax(qp/t) - onehot, times p / t, averaged over queries
    s = (q.detach() @ p.T) / 0.1
    prob = torch.softmax(s, dim=1)
    prob[torch.arange(3), torch.arange(3) * 2] -= 1
    assert torch.allclose(q.grad, prob @ p / 0.1 / 3, atol=1e-5)
    # a lower temperature sharpens the softmax: the loss of a correctly ranked batch falls
    qq, pp = torch.eye(2), torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    assert info_nce_loss(qq, pp, 0.05).item() < info_nce_loss(qq, pp, 1.0).item()


def test_info_nce_rejects_bad_shapes():
    with pytest.raises(ValueError, match="whole group"):
        info_nce_loss(torch.zeros(2, 4), torch.zeros(5, 4), 0.02)
    with pytest.raises(ValueError, match="expected q"):
        info_nce_loss(torch.zeros(2, 4), torch.zeros(4, 3), 0.02)


# ------------------------------------------------------------------------------------------ data
def test_bad_data_fails_before_training_naming_the_line(tmp_path):
    good = {"query": "q", "pos": ["p"], "neg": ["n1", "n2", "n3"]}
    cases = [
        ({"pos": ["p"], "neg": ["n"]}, "missing key 'query'"),
        ({"query": "q", "neg": ["n"]}, "missing key 'pos'"),
        ({"query": "q", "pos": [], "neg": ["n1", "n2", "n3"]}, "'pos' must be a non-empty list"),
        ({"query": "q", "pos": ["p"], "neg": ["n1"]}, "1 usable negative"),
    ]
    for bad, message in cases:
        path = tmp_path / "train.jsonl"
        path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n" + json.dumps(good) + "\n")
        out = tmp_path / "out"
        # the model does not exist: the data error must come first, before any model is touched
        with pytest.raises(ValueError, match=message) as err:
            train_embedder(output_dir=str(out), train_data=str(path), model_name_or_path=str(tmp_path / "no-model"),
                           train_group_size=4, show_progress=False)
        assert f"{path}:3" in str(err.value)  # line 3 (line 2 is blank)
        assert not out.exists()


def test_short_negatives_topped_up_from_corpus(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"query": "q", "pos": ["the answer"], "neg": ["n1"]}) + "\n")
    corpus = ["the answer", "c1", "c2", "c3", "n1"]
    with pytest.raises(ValueError, match="--corpus"):
        load_train_examples(path, 4)
    (ex,) = load_train_examples(path, 4, corpus)
    for seed in range(20):
        group = _sample_group(ex, np.random.default_rng(seed), 4, corpus)
        assert group[0] == "the answer" and len(group) == 4 and len(set(group)) == 4
        assert "n1" in group[1:]                      # its own negative is always used
        assert set(group[1:]) <= {"n1", "c1", "c2", "c3"}  # never its positive as a negative


def test_group_sampling_is_deterministic_and_covers_negatives():
    ex = TrainExample("q", ["p1", "p2"], [f"n{i}" for i in range(10)], "x:1")
    a = _sample_group(ex, np.random.default_rng([1, 0, 5, 1]), 4, None)
    b = _sample_group(ex, np.random.default_rng([1, 0, 5, 1]), 4, None)
    assert a == b and a[0] in ("p1", "p2") and len(set(a[1:])) == 3
    seen = {n for s in range(50) for n in _sample_group(ex, np.random.default_rng(s), 4, None)[1:]}
    assert seen == set(ex.neg)


# ------------------------------------------------------------------------------------------ resume
KILL_HELPER = textwrap.dedent("""
    # runs `python -m bgekit.train`, but blocks right after the first checkpoint is written so that
    # the test can SIGKILL it there (a real crash of a real process, at a known point)
    import os, sys, time
    from pathlib import Path
    from bgekit.training import embedder
    from bgekit.train import main
    save = embedder._Trainer._save_checkpoint
    def save_then_wait(self):
        path = save(self)
        Path(os.environ["CKPT_MARKER"]).write_text(str(path))
        time.sleep(600)
    embedder._Trainer._save_checkpoint = save_then_wait
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(tmp_path, tiny):
    data = make_train_data(tmp_path / "train.jsonl", n=20)
    common = dict(model_name_or_path=str(tiny), train_data=str(data), train_group_size=3,
                  per_device_train_batch_size=4, num_train_epochs=2, learning_rate=1e-3, warmup_ratio=0.2,
                  logging_steps=100, save_steps=3, temperature=0.05, seed=7, show_progress=False)
    # uninterrupted run (dropout is on, so the RNG state matters)
    ref = train_embedder(output_dir=str(tmp_path / "ref"), **common)

    out = tmp_path / "run"
    argv = [f"--{k}={v}" for k, v in common.items()]
    helper = tmp_path / "kill_helper.py"
    helper.write_text(KILL_HELPER)
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, str(helper), f"--output_dir={out}", *argv], cwd=REPO,
                            env=os.environ | {"CKPT_MARKER": str(marker)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert latest_checkpoint(out) == out / "checkpoint-3"
    assert not (out / "model.safetensors").exists()  # it died before the end
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["step"] == 3 and len(state["loss_history"]) == 3
    assert {"optimizer.pt", "scheduler.pt", "rng_state_0.pth"} <= {p.name for p in (out / "checkpoint-3").iterdir()}

    r = subprocess.run([sys.executable, "-m", "bgekit.train", f"--output_dir={out}", *argv,
                        "--resume_from_checkpoint", "latest"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stderr
    assert max_diff(weights_of(ref), weights_of(out)) <= 1e-6
    h_ref = json.loads((ref / "loss_history.json").read_text())
    h_out = json.loads((out / "loss_history.json").read_text())
    assert [h["step"] for h in h_out] == list(range(1, 11))
    assert np.allclose([h["loss"] for h in h_out], [h["loss"] for h in h_ref], atol=1e-6)
    # a checkpoint was written every 3 steps, except at the end where the final model is
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6", "checkpoint-9"]


def test_resume_needs_a_checkpoint(tmp_path, tiny):
    data = make_train_data(tmp_path / "train.jsonl", n=8)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_embedder(output_dir=str(tmp_path / "o"), model_name_or_path=str(tiny), train_data=str(data),
                       train_group_size=2, resume_from_checkpoint="latest", show_progress=False)


# ------------------------------------------------------------------------------------------ saved model
@pytest.mark.slow
def test_saved_model_loads_the_same_in_bgekit_sentence_transformers_and_transformers(tmp_path, minilm_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from bgekit import Encoder

    data = make_train_data(tmp_path / "train.jsonl", n=8, n_neg=2)
    out = train_embedder(output_dir=str(tmp_path / "ft"), model_name_or_path=str(minilm_path),
                         train_data=str(data), train_group_size=2, per_device_train_batch_size=4, max_steps=2,
                         learning_rate=1e-4, query_max_len=16, passage_max_len=24, show_progress=False)
    meta = json.loads((out / "bgekit.json").read_text())
    assert meta["pooling"] == "mean" and meta["normalize"] is True and meta["dim"] == 384
    assert max_diff(weights_of(out), weights_of(Path(minilm_path))) > 0  # it trained

    texts = ["how often should I water a cactus", "Yellow leaves at the bottom of a tomato plant are normal."]
    ours = Encoder(out, device="cpu").encode(texts)
    st = SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_numpy=True)
    assert np.allclose(ours, st, atol=1e-5)
    # and by hand with plain transformers: mean pooling + L2 normalisation
    tok, model = AutoTokenizer.from_pretrained(out), AutoModel.from_pretrained(out).eval()
    with torch.no_grad():
        enc = tok(texts, padding=True, return_tensors="pt")
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    assert np.allclose(ours, ref, atol=1e-5)
    hist = json.loads((out / "loss_history.json").read_text())
    assert [h["step"] for h in hist] == [1, 2] and all(np.isfinite(h["loss"]) for h in hist)


def test_pooling_and_instruction_recorded(tmp_path, tiny):
    from bgekit import Encoder

    data = make_train_data(tmp_path / "train.jsonl", n=4, n_neg=1)
    out = train_embedder(output_dir=str(tmp_path / "ft"), model_name_or_path=str(tiny), train_data=str(data),
                         train_group_size=2, per_device_train_batch_size=2, max_steps=1, pooling="mean",
                         query_instruction_for_retrieval="query: ", show_progress=False)
    meta = json.loads((out / "bgekit.json").read_text())
    assert meta["pooling"] == "mean" and meta["query_instruction"] == "query: " and meta["max_length"] == 128
    enc = Encoder(out, device="cpu")
    assert enc.pooling == "mean" and enc.query_instruction == "query: "
    st_cfg = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert st_cfg["pooling_mode_mean_tokens"] and not st_cfg["pooling_mode_cls_token"]


# ------------------------------------------------------------------------------------------ CLI
def test_cli_parses_flagembedding_arguments():
    from bgekit.train import build_parser

    ns = build_parser().parse_args([
        "--output_dir", "o", "--train_data", "t.jsonl", "--fp16", "--normlized", "False", "--temperature", "0.05",
        "--train_group_size", "4", "--negatives_cross_device", "--dataloader_drop_last", "True",
        "--query_instruction_for_retrieval", "Represent: ", "--resume_from_checkpoint", "latest"])
    args = TrainArgs(**vars(ns))
    assert args.fp16 is True and args.normlized is False and args.temperature == 0.05
    assert args.train_group_size == 4 and args.negatives_cross_device and args.dataloader_drop_last
    assert args.query_instruction_for_retrieval == "Represent: " and args.resume_from_checkpoint == "latest"
    d = TrainArgs(**vars(build_parser().parse_args(["--output_dir", "o", "--train_data", "t"])))
    assert d.normlized is True and d.fp16 is False and d.train_group_size == 8
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--output_dir", "o", "--train_data", "t", "--fp16", "maybe"])


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match="train_group_size must be >= 1"):
        TrainArgs(output_dir="o", train_data="t", train_group_size=0)
    with pytest.raises(ValueError, match="choose one of fp16 and bf16"):
        TrainArgs(output_dir="o", train_data="t", fp16=True, bf16=True)
    with pytest.raises(ValueError, match="output_dir is required"):
        TrainArgs(train_data="t")


def test_cli_reports_bad_data_with_exit_code(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"query": "q", "pos": []}\n')
    r = subprocess.run([sys.executable, "-m", "bgekit.train", "--output_dir", str(tmp_path / "o"),
                        "--train_data", str(path)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and f"{path}:1" in r.stderr and "pos" in r.stderr

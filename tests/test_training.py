"""Tests of the embedder trainer (a transformers.Trainer): the loss, shared-positive masking, the cached loss,
data checks, checkpoint/resume, the saved folder, the CLI."""
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
from gradients import assert_same_gradients, param_grads

from bgekit._batching import length_sorted_chunks
from bgekit.training.data import TrainExample, load_train_examples, sample_group
from bgekit.training.embedder import (
    EmbedderTrainer,
    TrainArgs,
    build_embedder_trainer,
    train_embedder,
)
from bgekit.training.losses import (
    contrastive_loss,
    info_nce_loss,
    shared_positive_mask,
    text_ids,
)

REPO = Path(__file__).resolve().parent.parent
WORDS = ["plant", "water", "soil", "leaf", "root", "sun", "pot", "light", "seed", "grow", "green", "dry", "wet", "rot", "fungus", "gnat", "basil", "tomato"]
QUIET = dict(disable_tqdm=True, report_to="none", use_cpu=True)


def make_tiny_model(folder: Path, dropout: float = 0.1, hidden: int = 32, layers: int = 2) -> Path:
    """A random BERT (hidden 32, 2 layers by default) with the bundled MiniLM's tokenizer: fast on CPU."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from bgekit.models import offline_model_path

    tok = AutoTokenizer.from_pretrained(offline_model_path())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=2 * hidden, max_position_embeddings=512, hidden_dropout_prob=dropout,
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


def losses_of(folder: Path) -> list[float]:
    state = json.loads((folder / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny_nodrop(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny0") / "model", dropout=0.0)


# ------------------------------------------------------------------------------------------ loss
def test_info_nce_matches_hand_computation():
    # 2 queries, groups of 3 passages (positive first), d = 2, temperature 0.5
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    p = torch.tensor([[0.8, 0.6], [0.0, 1.0], [-1.0, 0.0],     # group of query 0
                      [0.6, 0.8], [1.0, 0.0], [0.0, -1.0]])    # group of query 1
    t = 0.5
    losses, own, own_masked = [], [], []
    for i, qi in enumerate(q.tolist()):
        scores = [sum(a * b for a, b in zip(qi, pj)) / t for pj in p.tolist()]  # vs all 6 passages
        losses.append(math.log(sum(math.exp(s) for s in scores)) - scores[i * 3])  # its positive sits at i * 3
        own.append(math.log(sum(math.exp(s) for s in scores[i * 3:i * 3 + 3])) - scores[i * 3])
        kept = [scores[j] for j in range(i * 3, i * 3 + 3) if (i, j) != (0, 1)]   # mask: query 0, column 1
        own_masked.append(math.log(sum(math.exp(s) for s in kept)) - scores[i * 3])
    assert info_nce_loss(q, p, t).item() == pytest.approx(sum(losses) / 2, abs=1e-6)
    assert info_nce_loss(q, p, t, in_batch=False).item() == pytest.approx(sum(own) / 2, abs=1e-6)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 1] = True
    assert info_nce_loss(q, p, t, mask, in_batch=False).item() == pytest.approx(sum(own_masked) / 2, abs=1e-6)
    # contrastive_loss without a process group is the same loss
    assert contrastive_loss(q, p, t, negatives_cross_device=True).item() == pytest.approx(sum(losses) / 2, abs=1e-6)


def test_info_nce_gradient_and_temperature():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1).requires_grad_()
    p = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    info_nce_loss(q, p, 0.1).backward()
    # reference: softmax(qp/t) - onehot, times p / t, averaged over queries
    prob = torch.softmax((q.detach() @ p.T) / 0.1, dim=1)
    prob[torch.arange(3), torch.arange(3) * 2] -= 1
    assert torch.allclose(q.grad, prob @ p / 0.1 / 3, atol=1e-5)
    qq, pp = torch.eye(2), torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    assert info_nce_loss(qq, pp, 0.05).item() < info_nce_loss(qq, pp, 1.0).item()


def test_info_nce_rejects_bad_shapes():
    with pytest.raises(ValueError, match="whole group"):
        info_nce_loss(torch.zeros(2, 4), torch.zeros(5, 4), 0.02)
    with pytest.raises(ValueError, match="expected q"):
        info_nce_loss(torch.zeros(2, 4), torch.zeros(4, 3), 0.02)


def test_shared_positive_mask_hand_worked():
    # query 0: positives {A}; query 1: positives {B, A}; groups of 2: [A, x], [B, A]
    qpos = torch.stack([torch.cat([text_ids(["A"]), torch.zeros(1, dtype=torch.long)]), text_ids(["B", "A"])])
    mask = shared_positive_mask(qpos, text_ids(["A", "x", "B", "A"]), 2)
    # query 0: column 3 is another copy of A (masked), its own target column 0 is not
    # query 1: columns 0 and 3 hold A, one of its positives (masked); column 2 is its target
    assert mask.tolist() == [[False, False, False, True], [True, False, False, True]]
    q = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    p = torch.nn.functional.normalize(torch.randn(4, 4), dim=-1)
    s = q @ p.T / 0.1
    want = ((torch.logsumexp(s[0, [0, 1, 2]], 0) - s[0, 0]) + (torch.logsumexp(s[1, [1, 2]], 0) - s[1, 2])) / 2
    assert info_nce_loss(q, p, 0.1, mask).item() == pytest.approx(want.item(), abs=1e-5)


def _batch(trainer: EmbedderTrainer, n: int | None = None) -> dict:
    ds = trainer.train_dataset
    return trainer.data_collator([ds[i] for i in range(n or len(ds))])


def test_shared_positive_is_not_a_negative(tmp_path, tiny_nodrop):
    # two queries whose only positive is the same passage; batch of 2, group size 1, dropout off:
    # unmasked, the two columns are equal and the first-step loss is ln 2 for any model; masked it is 0
    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps({"query": q, "pos": ["water a cactus every two weeks"]}) + "\n"
                            for q in ("how often water cactus", "cactus watering schedule")))
    losses = {}
    for masked in (False, True):
        out = tmp_path / f"o{masked}"
        tr = build_embedder_trainer(TrainArgs(
            output_dir=str(out), model_name_or_path=str(tiny_nodrop), train_data=str(data), train_group_size=1,
            per_device_train_batch_size=2, max_steps=1, logging_steps=1, save_strategy="no", learning_rate=1e-3,
            mask_shared_positives=masked, **QUIET))
        tr.train()
        losses[masked] = losses_of_state(tr)[0]
    assert losses[False] == pytest.approx(math.log(2), abs=1e-6)
    assert losses[True] == 0.0


def losses_of_state(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


# ------------------------------------------------------------------------------------------ cached loss
@pytest.mark.parametrize("cross", [False, True])
def test_cached_loss_and_gradients_equal_plain(tmp_path, tiny_nodrop, cross):
    data = make_train_data(tmp_path / "t.jsonl", n=6, n_neg=3)
    # a shared positive in the batch too, so that masking is part of what must agree
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    rows[1]["pos"] = rows[0]["pos"]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = dict(output_dir=str(tmp_path / "o"), model_name_or_path=str(tiny_nodrop), train_data=str(data),
                  train_group_size=3, per_device_train_batch_size=6, temperature=0.05, negatives_cross_device=cross,
                  **QUIET)
    grads, values = [], []
    for cached in (0, 4):
        tr = build_embedder_trainer(TrainArgs(cached_mini_batch_size=cached, **common))
        batch = _batch(tr)
        model = tr.model.train()
        model.zero_grad()
        loss = tr.compute_loss(model, batch)
        (loss / 2).backward()  # as the Trainer does with gradient accumulation: the upstream gradient scales
        values.append(loss.item())
        grads.append(param_grads(model))
    assert values[1] == pytest.approx(values[0], abs=1e-5)
    assert_same_gradients(grads[0], grads[1], min_params=10)


@pytest.mark.parametrize("sub_batch_size", [2, None])
def test_sub_batches_give_the_whole_batch_loss_and_gradients(tmp_path, tiny_nodrop, sub_batch_size):
    """Length-sorted sub-batches (2 texts, or the CPU default of 4096 tokens) against one forward of the batch."""
    data = make_train_data(tmp_path / "t.jsonl", n=6, n_neg=3)
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    for i, r in enumerate(rows):          # lengths that differ a lot, so that sorting and cutting matter
        r["neg"][0] = " ".join([r["neg"][0]] * (1 + 6 * i))
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = dict(output_dir=str(tmp_path / "o"), model_name_or_path=str(tiny_nodrop), train_data=str(data),
                  train_group_size=3, per_device_train_batch_size=6, temperature=0.05, passage_max_len=256, **QUIET)
    grads, values, limits = [], [], []
    for sub in (-1, sub_batch_size):
        tr = build_embedder_trainer(TrainArgs(sub_batch_size=sub, **common))
        limits.append(tr.sub_batch)
        model = tr.model.train()
        model.zero_grad()
        batch = _batch(tr)
        chunks = length_sorted_chunks(batch["passage"], *tr.sub_batch)
        assert len(chunks) == 1 if sub == -1 else len(chunks) > 1
        loss = tr.compute_loss(model, batch)
        loss.backward()
        values.append(loss.item())
        grads.append(param_grads(model))
    assert limits == [(0, 0), (2, 0) if sub_batch_size else (0, 4096)]
    assert values[1] == pytest.approx(values[0], abs=1e-5)
    assert_same_gradients(grads[0], grads[1], min_params=10)


def test_gradient_checkpointing_is_non_reentrant_unless_asked():
    """Several forwards before one backward (sub-batches; queries and passages) need non-reentrant checkpointing
    under DDP: the reentrant kind, transformers 4.x's default, raises 'Expected to mark a variable ready only once'."""
    assert TrainArgs(output_dir="o", train_data="t", gradient_checkpointing=True,
                     **QUIET).gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert TrainArgs(output_dir="o", train_data="t", gradient_checkpointing=True, **QUIET,
                     gradient_checkpointing_kwargs={"use_reentrant": True}).gradient_checkpointing_kwargs == {
        "use_reentrant": True}
    assert TrainArgs(output_dir="o", train_data="t", **QUIET).gradient_checkpointing_kwargs is None


def test_default_sub_batches_follow_the_device(tmp_path):
    from bgekit._batching import CPU_SUB_BATCH_TOKENS

    args = TrainArgs(output_dir=str(tmp_path), train_data="t", **QUIET)
    assert args.sub_batch_limits() == (0, CPU_SUB_BATCH_TOKENS)
    assert TrainArgs(output_dir=str(tmp_path), train_data="t", sub_batch_size=-1, **QUIET).sub_batch_limits() == (0, 0)
    assert TrainArgs(output_dir=str(tmp_path), train_data="t", sub_batch_size=8, **QUIET).sub_batch_limits() == (8, 0)


def test_cached_loss_replays_the_rng_and_puts_it_back(monkeypatch):
    """A chunk's replay draws the dropout masks of its first pass, and the RNG goes on as if nothing was replayed.
    The accelerator branch runs on a stand-in torch.mps (no Apple GPU here), which records the calls: MPS takes
    no device argument on older torch, CUDA does."""
    from bgekit.training.losses import _replayed, _rng_state

    saved = _rng_state(torch.device("cpu"))
    first = torch.rand(4)
    expected_next = torch.rand(4)
    torch.set_rng_state(saved[1])
    torch.rand(4)
    with _replayed(saved):
        assert torch.equal(torch.rand(4), first)
        torch.rand(100)
    assert torch.equal(torch.rand(4), expected_next)

    calls = []

    class FakeMps:
        state = torch.tensor([1], dtype=torch.uint8)

        @staticmethod
        def get_rng_state(*args):
            calls.append(("get", args))
            return FakeMps.state.clone()

        @staticmethod
        def set_rng_state(state, *args):
            calls.append(("set", int(state[0]), args))
            FakeMps.state = state

    monkeypatch.setattr(torch, "mps", FakeMps)
    saved = _rng_state(torch.device("mps"))
    FakeMps.state = torch.tensor([2], dtype=torch.uint8)
    with _replayed(saved):
        assert int(FakeMps.state[0]) == 1
    assert int(FakeMps.state[0]) == 2 and calls == [("get", ()), ("get", ()), ("set", 1, ()), ("set", 2, ())]


def test_cached_loss_with_dropout_equals_a_graph_forward_of_the_same_chunks():
    """With dropout on, each chunk's replay draws the masks of its first pass: the cached loss and gradients equal a
    forward with a graph over the same chunks (same order, same seed), and the RNG goes on as after that forward."""
    from transformers import BertConfig, BertModel

    from bgekit._batching import length_sorted_chunks
    from bgekit.training.losses import CachedEmbeddings

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3,
                                 max_position_embeddings=64), add_pooling_layer=False).train()

    def batch(n, length, seed):
        g = torch.Generator().manual_seed(seed)
        mask = (torch.arange(length)[None] < torch.randint(2, length + 1, (n,), generator=g)[:, None]).long()
        return {"input_ids": torch.randint(1, 100, (n, length), generator=g) * mask, "attention_mask": mask}

    q, p = batch(6, 10, 1), batch(12, 16, 2)

    def embed(b):
        return torch.nn.functional.normalize(model(**b).last_hidden_state[:, 0], dim=-1)

    def run(cached):
        model.zero_grad()
        torch.manual_seed(123)
        if cached:
            loss = CachedEmbeddings(embed, 4).loss([q, p], lambda a, b: info_nce_loss(a, b, 0.05))
        else:
            embs = []
            for b in (q, p):
                chunks = length_sorted_chunks(b, rows=4)
                emb = torch.cat([embed(c) for _, c in chunks])
                embs.append(emb[torch.argsort(torch.cat([i for i, _ in chunks]))])
            loss = info_nce_loss(*embs, 0.05)
        loss.backward()
        return loss.item(), param_grads(model), torch.rand(3)

    (v_ref, g_ref, next_ref), (v, g, next_draw) = run(False), run(True)
    assert v == pytest.approx(v_ref, abs=1e-6)
    assert_same_gradients(g_ref, g, min_params=10)
    assert torch.equal(next_draw, next_ref)


def test_is_oom_knows_the_out_of_memory_errors():
    from bgekit.training.trainer import is_oom

    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")) and is_oom(MemoryError())
    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 4294967296 bytes. Error code 12 (Cannot allocate memory)"))
    assert is_oom(RuntimeError("MPS backend out of memory (MPS allocated: 9.00 GB)"))
    assert not is_oom(RuntimeError("The size of tensor a (3) must match the size of tensor b (4)"))
    assert is_oom(RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"))
    assert not is_oom(RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED."))
    assert not is_oom(ValueError("out of memory. (not an allocation error)"))


MEMCAP_HELPER = textwrap.dedent("""
    # one training step of a batch far larger than a memory cap (RLIMIT_AS) set after loading:
    # the plain loss must fail with bgekit's advice, the cached one must train
    import json, resource, sys
    from bgekit.training.embedder import TrainArgs, TrainingOutOfMemory, build_embedder_trainer, is_oom, oom_advice
    model, data, out, cached, cap_mb = sys.argv[1:6]
    args = TrainArgs(output_dir=out, model_name_or_path=model, train_data=data, train_group_size=4,
                     per_device_train_batch_size=64, passage_max_len=256, query_max_len=32, max_steps=1,
                     save_strategy="no", logging_steps=1, cached_mini_batch_size=int(cached), use_cpu=True,
                     disable_tqdm=True, report_to="none")
    trainer = build_embedder_trainer(args)
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + int(cap_mb) * 2**20, resource.RLIM_INFINITY))
    try:
        trainer.train()
    except Exception as e:
        if is_oom(e):
            print(json.dumps({"oom": True, "advice": oom_advice(args)}))
            sys.exit(0)
        raise
    print(json.dumps({"oom": False, "loss": trainer.state.log_history[0]["loss"]}))
""")


@pytest.mark.slow
def test_a_batch_over_the_memory_cap_trains_with_the_cache(tmp_path):
    model = make_tiny_model(tmp_path / "m", dropout=0.0, hidden=128, layers=4)
    rng = np.random.default_rng(0)
    rows = [{"query": " ".join(rng.choice(WORDS, 6)), "pos": [" ".join(rng.choice(WORDS, 300))],
             "neg": [" ".join(rng.choice(WORDS, 300)) for _ in range(3)]} for _ in range(64)]
    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    helper = tmp_path / "memcap.py"
    helper.write_text(MEMCAP_HELPER)
    env = os.environ | {"OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1", "PYTHONPATH": str(REPO)}

    def run(cached: int) -> dict:
        r = subprocess.run([sys.executable, str(helper), str(model), str(data), str(tmp_path / f"o{cached}"),
                            str(cached), "300"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    # 256 passages x 256 tokens x 4 layers: the plain step's activations need well over 300 MB
    plain = run(0)
    assert plain["oom"] is True and "--cached_mini_batch_size" in plain["advice"]
    cached = run(16)
    assert cached["oom"] is False and math.isfinite(cached["loss"])


# ------------------------------------------------------------------------------------------ data
def test_one_row_validator_everywhere(tmp_path):
    """bgekit.data, the miner and the trainer refuse a bad row with the same message (the same function)."""
    from bgekit import data as bdata
    from bgekit import mining

    bad = {"query": "q", "pos": ["p"], "neg": ["n", "  "]}
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"query": "ok", "pos": ["p"], "neg": ["n"]}) + "\n" + json.dumps(bad) + "\n")
    want = f"{path}:2: neg[1] is blank"
    for load in (bdata.load_training_jsonl, mining._load_rows, lambda p: load_train_examples(p, 2)):
        with pytest.raises(ValueError, match=want.replace(".", r"\.").replace("[", r"\[").replace("]", r"\]")):
            load(path)


def test_bad_data_fails_before_training_naming_the_line(tmp_path):
    good = {"query": "q", "pos": ["p"], "neg": ["n1", "n2", "n3"]}
    cases = [
        ({"pos": ["p"], "neg": ["n"]}, "missing key 'query'"),
        ({"query": "q", "neg": ["n"]}, "missing key 'pos'"),
        ({"query": "q", "pos": [], "neg": ["n1", "n2", "n3"]}, "'pos' must be a non-empty list"),
        ({"query": " ", "pos": ["p"]}, "'query' is blank"),
        ("[1, 2]", "expected a JSON object"),
    ]
    for bad, message in cases:
        path = tmp_path / "train.jsonl"
        line = bad if isinstance(bad, str) else json.dumps(bad)
        path.write_text(json.dumps(good) + "\n\n" + line + "\n" + json.dumps(good) + "\n")
        out = tmp_path / "out"
        # the model does not exist: the data error must come first, before any model is touched
        with pytest.raises(ValueError, match=message) as err:
            train_embedder(output_dir=str(out), train_data=str(path), model_name_or_path=str(tmp_path / "no-model"),
                           train_group_size=4, **QUIET)
        assert f"{path}:3" in str(err.value)  # line 3 (line 2 is blank)
        assert not out.exists()


def test_short_negatives_topped_up_and_logged(tmp_path, caplog):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"query": "q", "pos": ["the answer"], "neg": ["n1"]}) + "\n"
                    + json.dumps({"query": "r", "pos": ["other answer"], "neg": ["m1", "m2", "m3"]}) + "\n")
    with caplog.at_level("WARNING"):
        (ex, _), pool = load_train_examples(path, 4)
    assert "1 of 2 training rows have fewer than train_group_size-1=3 negatives" in caplog.text
    assert set(pool) == {"the answer", "n1", "other answer", "m1", "m2", "m3"}
    for seed in range(20):
        group = sample_group(ex, np.random.default_rng(seed), 4, pool)
        assert group[0] == "the answer" and len(group) == 4 and len(set(group)) == 4
        assert "n1" in group[1:] and "the answer" not in group[1:]  # its own negative first; never its positive
    corpus = ["the answer", "c1", "c2", "c3", "n1"]
    (ex, _), pool = load_train_examples(path, 4, corpus)
    for seed in range(10):
        negs = sample_group(ex, np.random.default_rng(seed), 4, pool)[1:]
        assert "n1" in negs and len(set(negs)) == 3 and set(negs) <= {"n1", "c1", "c2", "c3"}
    with pytest.raises(ValueError, match="too few other passages"):
        load_train_examples(path, 4, ["the answer", "c1"])


def test_corpus_option_tops_up_from_a_beir_folder(tmp_path):
    """--corpus: the passages missing negatives are drawn from (a BEIR folder here: titles joined, duplicates once)."""
    from bgekit.data import save_beir

    save_beir(tmp_path / "beir", {"d1": {"title": "T", "text": "one"}, "d2": {"title": "", "text": "two"},
                                  "d3": {"title": "T", "text": "one"}}, {"q": "q"}, {"test": {"q": {"d1": 1}}})
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"query": "q", "pos": ["the answer"], "neg": []}) + "\n")
    trainer = build_embedder_trainer(TrainArgs(output_dir=str(tmp_path / "out"), train_data=str(data),
                                               model_name_or_path=str(make_tiny_model(tmp_path / "m")),
                                               train_group_size=3, corpus=str(tmp_path / "beir"), **QUIET))
    assert trainer.train_dataset.pool == ["T one", "two"]
    assert sorted(trainer.train_dataset[0]["passages"][1:]) == ["T one", "two"]


def test_a_corpus_copy_of_a_positive_is_never_its_negative(tmp_path, caplog):
    """Positives are compared after whitespace normalisation, in the row's negatives and in the corpus; a corpus
    that holds most positives in another form (titles joined) is reported, since those copies cannot be told apart."""
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"query": "q", "pos": ["the answer"], "neg": ["the  answer\n", "n1"]}) + "\n")
    (ex,), pool = load_train_examples(path, 4, [" the answer ", "the\tanswer", "c1", "c2", "c3"])
    assert ex.neg == ["n1"]
    for seed in range(20):
        negs = sample_group(ex, np.random.default_rng(seed), 4, pool)[1:]
        assert "n1" in negs and len(negs) == 3 and set(negs) <= {"n1", "c1", "c2", "c3"}
    assert "positives are not in the corpus" not in caplog.text
    with caplog.at_level("WARNING"):
        load_train_examples(path, 4, ["Title the answer", "c1", "c2", "c3"])
    assert "1 of 1 positives are not in the corpus" in caplog.text


def test_group_sampling_is_deterministic_and_covers_negatives():
    ex = TrainExample("q", ["p1", "p2"], [f"n{i}" for i in range(10)], "x:1")
    a = sample_group(ex, np.random.default_rng([1, 0, 5]), 4, [])
    assert a == sample_group(ex, np.random.default_rng([1, 0, 5]), 4, []) and a[0] in ("p1", "p2")
    seen = {n for s in range(50) for n in sample_group(ex, np.random.default_rng(s), 4, [])[1:]}
    assert seen == set(ex.neg)


# ------------------------------------------------------------------------------------------ resume
KILL_HELPER = textwrap.dedent("""
    # runs `python -m bgekit.train`, but blocks right after the first checkpoint is written so that
    # the test can SIGKILL it there (a real crash of a real process, at a known point)
    import os, sys, time
    from pathlib import Path
    from bgekit.training.embedder import EmbedderTrainer
    from bgekit.train import main
    save = EmbedderTrainer._save_checkpoint
    def save_then_wait(self, *a, **k):
        save(self, *a, **k)
        Path(os.environ["CKPT_MARKER"]).write_text(str(self.state.global_step))
        time.sleep(600)
    EmbedderTrainer._save_checkpoint = save_then_wait
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(tmp_path, tiny):
    data = make_train_data(tmp_path / "train.jsonl", n=20)
    common = dict(model_name_or_path=str(tiny), train_data=str(data), train_group_size=3,
                  per_device_train_batch_size=4, num_train_epochs=2, learning_rate=1e-3, warmup_ratio=0.2,
                  logging_steps=1, save_steps=3, temperature=0.05, seed=7, disable_tqdm=True)
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
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    assert not (out / "model.safetensors").exists()  # it died before the end
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "model.safetensors",
            "bgekit.json"} <= {p.name for p in (out / "checkpoint-3").iterdir()}

    r = subprocess.run([sys.executable, "-m", "bgekit.train", f"--output_dir={out}", *argv,
                        "--resume_from_checkpoint", "latest"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert max_diff(weights_of(ref), weights_of(out)) <= 1e-6
    assert len(losses_of(out)) == 10 and np.allclose(losses_of(out), losses_of(ref), atol=1e-6)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-3", "checkpoint-6",
                                                                "checkpoint-9"]


def test_resume_needs_a_checkpoint(tmp_path, tiny):
    data = make_train_data(tmp_path / "train.jsonl", n=8)
    with pytest.raises(ValueError, match="checkpoint"):
        train_embedder(output_dir=str(tmp_path / "o"), model_name_or_path=str(tiny), train_data=str(data),
                       train_group_size=2, resume_from_checkpoint="latest", **QUIET)


# ------------------------------------------------------------------------------------------ saved model
@pytest.mark.slow
def test_saved_model_loads_the_same_in_bgekit_sentence_transformers_and_transformers(tmp_path, minilm_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from bgekit import Embedder

    data = make_train_data(tmp_path / "train.jsonl", n=8, n_neg=2)
    out = train_embedder(output_dir=str(tmp_path / "ft"), model_name_or_path=str(minilm_path),
                         train_data=str(data), train_group_size=2, per_device_train_batch_size=4, max_steps=2,
                         learning_rate=1e-4, query_max_len=16, passage_max_len=24, logging_steps=1,
                         save_strategy="no", **QUIET)
    meta = json.loads((out / "bgekit.json").read_text())
    assert meta["pooling"] == "mean" and meta["normalize"] is True and meta["dim"] == 384
    assert max_diff(weights_of(out), weights_of(Path(minilm_path))) > 0  # it trained

    texts = ["how often should I water a cactus", "Yellow leaves at the bottom of a tomato plant are normal."]
    ours = Embedder(out, device="cpu").encode(texts)
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
    assert len(losses_of(out)) == 2 and all(np.isfinite(losses_of(out)))


def test_pooling_and_instruction_recorded(tmp_path, tiny):
    from bgekit import Embedder

    data = make_train_data(tmp_path / "train.jsonl", n=4, n_neg=1)
    out = train_embedder(output_dir=str(tmp_path / "ft"), model_name_or_path=str(tiny), train_data=str(data),
                         train_group_size=2, per_device_train_batch_size=2, max_steps=1,
                         sentence_pooling_method="mean", query_instruction_for_retrieval="query: ",
                         save_strategy="no", **QUIET)
    meta = json.loads((out / "bgekit.json").read_text())
    assert meta["pooling"] == "mean" and meta["query_instruction_for_retrieval"] == "query: "
    enc = Embedder(out, device="cpu")
    assert enc.pooling == "mean" and enc.query_instruction_for_retrieval == "query: "
    st_cfg = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert st_cfg["pooling_mode_mean_tokens"] and not st_cfg["pooling_mode_cls_token"]


# ------------------------------------------------------------------------------------------ CLI
def test_cli_parses_flagembedding_arguments():
    from transformers import TrainingArguments

    from bgekit.train import build_parser, parse_args

    args = parse_args([
        "--output_dir", "o", "--train_data", "t.jsonl", "--normlized", "False", "--temperature", "0.05",
        "--train_group_size", "4", "--negatives_cross_device", "--dataloader_drop_last", "True",
        "--query_instruction_for_retrieval", "Represent: ", "--lr_scheduler_type", "cosine",
        "--dataloader_num_workers", "0", "--logging_dir", "logs", "--report_to", "none", "--use_cpu"])
    assert isinstance(args, TrainingArguments)
    assert args.normalize_embeddings is False and args.normlized is False and args.temperature == 0.05
    assert args.train_group_size == 4 and args.negatives_cross_device and args.dataloader_drop_last
    assert args.query_instruction_for_retrieval == "Represent: " and args.lr_scheduler_type == "cosine"
    d = parse_args(["--output_dir", "o", "--train_data", "t"])
    assert d.normalize_embeddings is True and d.train_group_size == 8 and d.temperature == 0.02
    help_text = build_parser().format_help()
    for name in ("--normalize_embeddings", "--normlized", "--sentence_pooling_method",
                 "--query_instruction_for_retrieval", "--train_group_size", "--temperature", "--negatives_cross_device",
                 "--query_max_len", "--passage_max_len", "--use_inbatch_neg", "--cached_mini_batch_size", "--sub_batch_size",
                 "--deepspeed", "--report_to", "--lr_scheduler_type", "--gradient_checkpointing", "--fp16",
                 "--dataloader_num_workers", "--resume_from_checkpoint"):
        assert name in help_text, name


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match="train_group_size must be >= 1"):
        TrainArgs(output_dir="o", train_data="t", train_group_size=0)
    for bad in (0, -2, 0.5, "8", True):
        with pytest.raises(ValueError, match=f"sub_batch_size must be an int >= 1, or -1 for the whole batch, got {bad!r}"):
            TrainArgs(output_dir="o", train_data="t", sub_batch_size=bad)
    with pytest.raises(ValueError, match="choose one of fp16 and bf16"):
        TrainArgs(output_dir="o", train_data="t", fp16=True, bf16=True)
    with pytest.raises(ValueError, match="sentence_pooling_method"):
        TrainArgs(output_dir="o", train_data="t", sentence_pooling_method="max")


def test_cli_reports_bad_data_with_exit_code(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"query": "q", "pos": []}\n')
    r = subprocess.run([sys.executable, "-m", "bgekit.train", "--output_dir", str(tmp_path / "o"),
                        "--train_data", str(path)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and f"{path}:1" in r.stderr and "pos" in r.stderr


@pytest.mark.skipif(__import__("importlib").util.find_spec("deepspeed") is not None, reason="deepspeed installed")
def test_deepspeed_without_the_package_says_how_to_install(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 1}, "train_micro_batch_size_per_gpu": "auto"}))
    data = make_train_data(tmp_path / "t.jsonl", n=4)
    r = subprocess.run([sys.executable, "-m", "bgekit.train", "--output_dir", str(tmp_path / "o"),
                        "--train_data", str(data), "--deepspeed", str(ds)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "pip install deepspeed" in r.stderr, r.stderr[-2000:]


BLOG = ["--learning_rate", "1e-5", "--num_train_epochs", "5", "--per_device_train_batch_size", "{bs}",
        "--dataloader_drop_last", "True", "--normlized", "True", "--temperature", "0.02", "--query_max_len", "64",
        "--passage_max_len", "256", "--train_group_size", "2", "--negatives_cross_device", "--logging_steps", "10",
        "--save_steps", "1000", "--query_instruction_for_retrieval",
        "Represent this sentence for searching relevant passages: "]


@pytest.mark.slow
def test_blog_command_runs_unchanged(tmp_path, tiny):
    """FlagEmbedding's fine-tuning command from the blog, with a tiny model and data (no --fp16 on CPU)."""
    data = make_train_data(tmp_path / "toy.jsonl", n=8, n_neg=2)
    out = tmp_path / "ft"
    argv = ["--output_dir", str(out), "--model_name_or_path", str(tiny), "--train_data", str(data),
            *[a.format(bs=4) for a in BLOG]]
    r = subprocess.run([sys.executable, "-m", "bgekit.train", *argv], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((out / "bgekit.json").read_text())
    assert meta["query_instruction_for_retrieval"].startswith("Represent this sentence") and meta["normalize"] is True
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 10 and [h["step"] for h in state["log_history"] if "loss" in h] == [10]

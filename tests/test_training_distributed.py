"""Cross-device negatives under ``torchrun --nproc_per_node 2`` (CPU, gloo) equal single-process training
on the same global batch: the loss to 1e-5 and the gradients to float32 round-off."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
WORDS = "plant water soil leaf root sun pot light seed grow green dry wet rot fungus gnat basil tomato".split()

pytestmark = pytest.mark.slow


def make_tiny_model(folder: Path) -> Path:
    """A 2-layer random BERT without dropout (so that every process computes the same function)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from bgekit.models import offline_model_path

    tok = AutoTokenizer.from_pretrained(offline_model_path())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


B, G, W, T = 2, 3, 2, 0.05  # queries per process, group size, processes, temperature


def fixed_batch() -> tuple[list[str], list[str]]:
    queries = [f"query {i}: why does my {WORDS[i]} wilt" for i in range(B * W)]
    passages = [f"passage {i}.{j} about {WORDS[i + j]} and {WORDS[-1 - j]}" for i in range(B * W) for j in range(G)]
    return queries, passages


STEP_HELPER = textwrap.dedent("""
    # one DDP forward/backward of the cross-device contrastive loss; rank 0 saves loss and gradients
    import sys, torch, torch.distributed as dist
    from transformers import AutoModel, AutoTokenizer
    from bgekit.training.embedder import BiEncoder, contrastive_loss
    model_dir, out, B, G, T = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    queries, passages = eval(sys.argv[6]), eval(sys.argv[7])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir)
    for p in model.pooler.parameters():
        p.requires_grad_(False)
    net = torch.nn.parallel.DistributedDataParallel(BiEncoder(model, "cls", True))
    enc = lambda t: tok(t, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    q, p = net(enc(queries[rank * B:(rank + 1) * B]), enc(passages[rank * B * G:(rank + 1) * B * G]))
    loss, value = contrastive_loss(q, p, T, negatives_cross_device=True)
    loss.backward()  # DDP averages the gradients over the processes
    if rank == 0:
        torch.save({"loss": value.item(),
                    "grads": {n: x.grad for n, x in model.named_parameters() if x.grad is not None}}, out)
    dist.destroy_process_group()
""")


def test_cross_device_loss_and_gradients_equal_single_process_on_global_batch(tmp_path, tiny):
    from transformers import AutoModel, AutoTokenizer

    from bgekit.training.embedder import BiEncoder, contrastive_loss

    queries, passages = fixed_batch()
    helper = tmp_path / "step.py"
    helper.write_text(STEP_HELPER)
    out = tmp_path / "dist.pt"
    torchrun(str(helper), str(tiny), str(out), str(B), str(G), str(T), repr(queries), repr(passages))
    got = torch.load(out)

    # single process, the whole global batch (4 queries x 3 passages, all 12 passages as candidates)
    tok, model = AutoTokenizer.from_pretrained(tiny), AutoModel.from_pretrained(tiny)
    enc = lambda t: tok(t, padding="max_length", max_length=16, truncation=True, return_tensors="pt")  # noqa: E731
    q, p = BiEncoder(model, "cls", True)(enc(queries), enc(passages))
    loss, value = contrastive_loss(q, p, T)
    loss.backward()
    assert got["loss"] == pytest.approx(value.item(), abs=1e-5)
    # local-only loss would differ: the cross-device one really sees the other process's passages
    local = contrastive_loss(q[:B].detach(), p[:B * G].detach(), T)[1].item()
    assert abs(local - value.item()) > 1e-3
    ref = {n: x.grad for n, x in model.named_parameters() if x.grad is not None}
    assert got["grads"].keys() == ref.keys()
    scale = max(g.abs().max().item() for g in ref.values())
    for name, g in ref.items():
        assert torch.allclose(got["grads"][name], g, atol=1e-4 * scale, rtol=1e-4), name


def test_torchrun_cli_matches_single_process_on_global_batch(tmp_path, tiny):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(16):
        qtext = " ".join(rng.choice(WORDS, 5))
        rows.append({"query": qtext, "pos": [f"{qtext} answer {i}"],
                     "neg": [" ".join(rng.choice(WORDS, 8)) + f" n{j}" for j in range(3)]})
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--model_name_or_path", str(tiny), "--train_data", str(data), "--train_group_size", "3",
              "--max_steps", "3", "--logging_steps", "1", "--save_steps", "0", "--learning_rate", "1e-3",
              "--temperature", "0.05", "--dataloader_drop_last", "--show_progress", "False", "--seed", "3"]
    torchrun("-m", "bgekit.train", "--output_dir", str(tmp_path / "dist"), "--per_device_train_batch_size", "2",
             "--negatives_cross_device", *common)
    r = subprocess.run([sys.executable, "-m", "bgekit.train", "--output_dir", str(tmp_path / "single"),
                        "--per_device_train_batch_size", "4", *common], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    dist = json.loads((tmp_path / "dist" / "loss_history.json").read_text())
    single = json.loads((tmp_path / "single" / "loss_history.json").read_text())
    assert [h["step"] for h in dist] == [1, 2, 3]
    # step 1: same weights, same global batch -> same loss; steps 2-3 also check the update was the same
    assert np.allclose([h["loss"] for h in dist], [h["loss"] for h in single], atol=1e-5)
    meta = json.loads((tmp_path / "dist" / "bgekit.json").read_text())
    assert meta["pooling"] == "cls"

"""Cross-device negatives under ``torchrun --nproc_per_node 2`` (CPU, gloo) equal single-process training on the
same global batch (shared positives masked across devices too); FlagEmbedding's blog command runs under torchrun."""
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
from test_training import (
    BLOG,
    losses_of,
    make_tiny_model,
    make_train_data,
    max_diff,
    weights_of,
)

REPO = Path(__file__).resolve().parent.parent
WORDS = ["plant", "water", "soil", "leaf", "root", "sun", "pot", "light", "seed", "grow", "green", "dry", "wet", "rot", "fungus", "gnat", "basil", "tomato"]

pytestmark = pytest.mark.slow


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", dropout=0.0)


B, G, W, T = 2, 3, 2, 0.05  # queries per process, group size, processes, temperature


def fixed_batch() -> tuple[list[str], list[list[str]], list[str]]:
    queries = [f"query {i}: why does my {WORDS[i]} wilt" for i in range(B * W)]
    groups = [[f"passage {i}.{j} about {WORDS[i + j]} and {WORDS[-1 - j]}" for j in range(G)] for i in range(B * W)]
    groups[2][0] = groups[0][0]  # query 2 (on rank 1) shares query 0's positive (on rank 0)
    return queries, groups, [g[0] for g in groups]


STEP_HELPER = textwrap.dedent("""
    # one DDP forward/backward of the cross-device loss, as EmbedderTrainer computes it; rank 0 saves loss and grads
    import sys, torch, torch.distributed as dist
    from transformers import AutoModel, AutoTokenizer
    from bgekit.embedder import pool
    from bgekit.training.losses import contrastive_loss, text_ids
    model_dir, out, B, G, T = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    queries, groups = eval(sys.argv[6]), eval(sys.argv[7])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir)
    model.pooler.requires_grad_(False)
    net = torch.nn.parallel.DistributedDataParallel(model)
    def emb(texts):
        b = tok(texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
        return torch.nn.functional.normalize(pool(net(**b).last_hidden_state, b["attention_mask"], "cls"), dim=-1)
    mine = range(rank * B, (rank + 1) * B)
    passages = [p for i in mine for p in groups[i]]
    qpos = torch.stack([text_ids([groups[i][0]]) for i in mine])
    loss = contrastive_loss(emb([queries[i] for i in mine]), emb(passages), T, True, qpos, text_ids(passages))
    loss.backward()  # DDP averages the gradients over the processes
    if rank == 0:
        torch.save({"loss": loss.item(),
                    "grads": {n: x.grad for n, x in model.named_parameters() if x.grad is not None}}, out)
    dist.destroy_process_group()
""")


@pytest.mark.parametrize("masked", [True, False])
def test_cross_device_loss_and_gradients_equal_single_process_on_global_batch(tmp_path, tiny, masked):
    from transformers import AutoModel, AutoTokenizer

    from bgekit.embedder import pool
    from bgekit.training.losses import contrastive_loss, text_ids

    queries, groups, _ = fixed_batch()
    if not masked:
        groups[2][0] = "a passage of its own"
    helper = tmp_path / "step.py"
    helper.write_text(STEP_HELPER)
    out = tmp_path / "dist.pt"
    torchrun(str(helper), str(tiny), str(out), str(B), str(G), str(T), repr(queries), repr(groups))
    got = torch.load(out)

    # single process, the whole global batch (4 queries x 3 passages, all 12 passages as candidates)
    tok, model = AutoTokenizer.from_pretrained(tiny), AutoModel.from_pretrained(tiny)

    def emb(texts):
        b = tok(texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
        return torch.nn.functional.normalize(pool(model(**b).last_hidden_state, b["attention_mask"], "cls"), dim=-1)

    passages = [p for g in groups for p in g]
    q, p = emb(queries), emb(passages)
    qpos = torch.stack([text_ids([g[0]]) for g in groups])
    loss = contrastive_loss(q, p, T, False, qpos, text_ids(passages))
    loss.backward()
    assert got["loss"] == pytest.approx(loss.item(), abs=1e-5)
    unmasked = contrastive_loss(q.detach(), p.detach(), T).item()
    assert (abs(unmasked - loss.item()) > 1e-3) == masked  # the mask really acts across devices
    local = contrastive_loss(q[:B].detach(), p[:B * G].detach(), T).item()
    assert abs(local - loss.item()) > 1e-3  # the cross-device loss sees the other process's passages
    ref = {n: x.grad for n, x in model.named_parameters() if x.grad is not None}
    assert got["grads"].keys() == ref.keys()
    scale = max(g.abs().max().item() for g in ref.values())
    for name, g in ref.items():
        assert torch.allclose(got["grads"][name], g, atol=1e-4 * scale, rtol=1e-4), name


def test_torchrun_cli_matches_single_process_on_global_batch(tmp_path, tiny):
    data = make_train_data(tmp_path / "train.jsonl", n=16, n_neg=3)
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    for i in range(0, 15, 3):  # shared positives, some of them across devices
        rows[i + 1]["pos"] = rows[i]["pos"]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--model_name_or_path", str(tiny), "--train_data", str(data), "--train_group_size", "3",
              "--max_steps", "3", "--logging_steps", "1", "--save_strategy", "no", "--learning_rate", "1e-3",
              "--temperature", "0.05", "--dataloader_drop_last", "True", "--disable_tqdm", "True", "--seed", "3"]
    torchrun("-m", "bgekit.train", "--output_dir", str(tmp_path / "dist"), "--per_device_train_batch_size", "2",
             "--negatives_cross_device", *common)
    r = subprocess.run([sys.executable, "-m", "bgekit.train", "--output_dir", str(tmp_path / "single"),
                        "--per_device_train_batch_size", "4", *common], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    dist, single = losses_of(tmp_path / "dist"), losses_of(tmp_path / "single")
    assert len(dist) == 3
    # step 1: same weights, same global batch -> same loss; steps 2-3 also check the update was the same
    assert np.allclose(dist, single, atol=1e-5), (dist, single)
    # Adam turns the float32 round-off of near-zero gradients (summed in another order by the all-reduce) into
    # differences of a few percent of one step (lr 1e-3); a different update would differ by whole steps
    assert max_diff(weights_of(tmp_path / "dist"), weights_of(tmp_path / "single")) < 1e-4
    assert json.loads((tmp_path / "dist" / "bgekit.json").read_text())["pooling"] == "cls"
    # the cached loss under DDP: its first backward (to the cached embeddings) runs through the cross-device gather
    torchrun("-m", "bgekit.train", "--output_dir", str(tmp_path / "cached"), "--per_device_train_batch_size", "2",
             "--negatives_cross_device", "--cached_mini_batch_size", "1", *common)
    assert np.allclose(losses_of(tmp_path / "cached"), single, atol=1e-5)
    assert max_diff(weights_of(tmp_path / "cached"), weights_of(tmp_path / "single")) < 1e-4


def test_blog_command_runs_unchanged_under_torchrun(tmp_path, tiny):
    data = make_train_data(tmp_path / "toy.jsonl", n=8, n_neg=2)
    out = tmp_path / "ft"
    torchrun("-m", "bgekit.train", "--output_dir", str(out), "--model_name_or_path", str(tiny),
             "--train_data", str(data), *[a.format(bs=2) for a in BLOG])
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 10  # 8 queries / (2 per device x 2 devices) x 5 epochs
    assert json.loads((out / "bgekit.json").read_text())["query_instruction_for_retrieval"].startswith("Represent this")

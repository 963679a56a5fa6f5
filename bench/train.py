"""Benchmark: bgekit's embedder trainer vs sentence-transformers' trainer, plain and cached InfoNCE.

    python bench/train.py                                  # bundled MiniLM, 64 course queries, batch 16, group 4
    python bench/train.py --n 256 --batch 32 --group 8 --max-len 128 --repeats 3 --mini-batch 16
    python bench/train.py --device cuda --fp16 --n 2048 --batch 64 --group 8   # on a GPU

Two pairs, each in the same process, alternating, ``--repeats`` times:

- bgekit ``EmbedderTrainer`` (plain InfoNCE) vs ``SentenceTransformerTrainer`` + ``MultipleNegativesRankingLoss``;
- bgekit with ``cached_mini_batch_size=M`` vs ``SentenceTransformerTrainer`` + ``CachedMultipleNegativesRankingLoss(
  mini_batch_size=M)``.

All four train the same model on the same query groups (1 positive + ``group - 1`` negatives each, as
(anchor, positive, negative_1, ...) columns for sentence-transformers), with the same batch size,
token length, learning rate, temperature (``scale = 1 / temperature``), no warm-up, no weight decay,
gradient clipping at 1.0, one epoch, last incomplete batch dropped. Timed: training plus saving the
model (model loading excluded). Reported: query groups per second (best run of each) and the ratios.

Both sides compute the same loss; they differ in how texts are batched through the model. sentence-transformers
runs one forward per column (the 16 anchors, the 16 positives, ...), each padded to its longest text (cached:
chunks of ``mini_batch_size`` rows in column order, trailing padding cut). bgekit sorts the batch's texts by
length and runs sub-batches of similar length (``sub_batch_size``; on a CPU about 4096 tokens each; cached: the
chunks), so fewer padding tokens go through the model. The gain therefore grows with the spread of text lengths:
``--max-len 64`` cuts every course passage to the same 64 tokens and leaves nothing to save.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bgekit.models import offline_model_path
from bgekit.training.embedder import TrainArgs, build_embedder_trainer

WORDS = ["plant", "water", "soil", "leaf", "root", "sun", "pot", "light", "seed", "grow", "green", "dry", "wet", "rot", "fungus", "gnat", "basil", "tomato", "compost", "prune", "bloom", "shade", "frost", "mulch", "drain", "repot", "fertiliser", "aphid", "mildew", "cutting"]


def make_groups(n: int, group: int, seed: int = 0) -> list[dict]:
    """``n`` training rows ``{query, pos, neg}``: from the course data when present, else synthetic."""
    rng = random.Random(seed)
    try:
        from bgekit.data import course_data_dir, doc_text, load_beir

        data = load_beir(course_data_dir(), split="train")
        docs = {d: doc_text(x) for d, x in data.corpus.items()}
        ids = sorted(docs)
        rows = []
        for qid in sorted(data.queries)[:n]:
            pos = [docs[d] for d, r in data.qrels[qid].items() if r > 0]
            neg = [docs[d] for d in rng.sample(ids, group + 5) if data.qrels[qid].get(d, 0) <= 0][:group - 1]
            rows.append({"query": data.queries[qid], "pos": pos[:1], "neg": neg})
        if len(rows) >= n:
            return rows
    except (FileNotFoundError, ValueError):
        pass
    rows = []
    for _i in range(n):
        q = " ".join(rng.choices(WORDS, k=8))
        rows.append({"query": q, "pos": [" ".join(rng.choices(WORDS, k=60))],
                     "neg": [" ".join(rng.choices(WORDS, k=60)) for _ in range(group - 1)]})
    return rows


def run_bgekit(model: str, rows_file: Path, out: Path, a: argparse.Namespace, cached: int) -> tuple[float, int]:
    args = TrainArgs(output_dir=str(out), model_name_or_path=model, train_data=str(rows_file),
                     learning_rate=a.lr, num_train_epochs=1, per_device_train_batch_size=a.batch,
                     dataloader_drop_last=True, temperature=a.temperature, query_max_len=a.max_len,
                     passage_max_len=a.max_len, train_group_size=a.group, save_strategy="no", logging_steps=10_000,
                     fp16=a.fp16, use_cpu=a.device == "cpu", disable_tqdm=True, report_to="none", seed=0,
                     max_grad_norm=1.0, weight_decay=0.0, warmup_ratio=0.0, cached_mini_batch_size=cached)
    trainer = build_embedder_trainer(args)  # model loading: not timed
    sync()
    t0 = time.perf_counter()
    trainer.train()
    trainer.save_model(str(out / "final"))
    sync()
    return time.perf_counter() - t0, trainer.state.global_step * a.batch


def run_st(model: str, rows: list[dict], out: Path, a: argparse.Namespace, cached: int) -> tuple[float, int]:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    try:
        from sentence_transformers.sentence_transformer import losses
    except ImportError:  # sentence-transformers < 5
        from sentence_transformers import losses

    st = SentenceTransformer(model, device=a.device)
    st.max_seq_length = a.max_len
    if cached:
        loss = losses.CachedMultipleNegativesRankingLoss(st, scale=1.0 / a.temperature, mini_batch_size=cached)
    else:
        loss = losses.MultipleNegativesRankingLoss(st, scale=1.0 / a.temperature)
    cols = ["anchor", "positive"] + [f"negative_{i}" for i in range(1, a.group)]
    records = [[r["query"], r["pos"][0], *r["neg"][:a.group - 1]] for r in rows]
    ds = Dataset.from_dict({c: [rec[i] for rec in records] for i, c in enumerate(cols)})
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(out / "st-trainer"), num_train_epochs=1, per_device_train_batch_size=a.batch,
        learning_rate=a.lr, warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, fp16=a.fp16,
        dataloader_drop_last=True, save_strategy="no", report_to="none", logging_steps=10_000, seed=0,
        use_cpu=a.device == "cpu", disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=st, args=targs, train_dataset=ds, loss=loss)
    sync()
    t0 = time.perf_counter()
    trainer.train()
    st.save(str(out / "st"))
    sync()
    return time.perf_counter() - t0, trainer.state.global_step * a.batch


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model folder or hub id (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--n", type=int, default=64, help="query groups per epoch")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--group", type=int, default=4, help="train_group_size (1 positive + group-1 negatives)")
    p.add_argument("--max-len", type=int, default=256, dest="max_len",
                   help="token length of queries and passages (FlagEmbedding's examples: passage_max_len 256)")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--mini-batch", type=int, default=8, dest="mini_batch",
                   help="chunk size of the cached losses (cached_mini_batch_size / mini_batch_size)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--fp16", action="store_true")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model = a.model or str(offline_model_path())
    if a.n < a.batch:
        sys.exit("--n must be at least --batch")
    rows = make_groups(a.n, a.group)
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    rows_file = tmp / "train.jsonl"
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    shown = "all-MiniLM-L6-v2 (bundled)" if a.model is None else model
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    plens = [len(x) for x in tok([t for r in rows for t in r["pos"][:1] + r["neg"][:a.group - 1]], truncation=True,
                                 max_length=a.max_len)["input_ids"]]
    print(f"model {shown} | device {a.device}"
          f"{' fp16' if a.fp16 else ''} | torch threads {torch.get_num_threads()} | {a.n} query groups, "
          f"batch {a.batch}, group {a.group}, max_len {a.max_len}, 1 epoch\n"
          f"passages: {sum(plens) / len(plens):.0f} tokens on average, {min(plens)} to {max(plens)}; "
          f"{sum(n == a.max_len for n in plens) / len(plens):.0%} reach max_len")
    speed: dict[str, list[float]] = {k: [] for k in ("bgekit", "st", "bgekit cached", "st cached")}
    try:
        for r in range(a.repeats):
            for cached in (0, a.mini_batch):
                tag = " cached" if cached else ""
                t, n = run_bgekit(model, rows_file, tmp / f"ours{r}{tag}", a, cached)
                speed["bgekit" + tag].append(n / t)
                t2, n2 = run_st(model, rows, tmp / f"st{r}{tag}", a, cached)
                speed["st" + tag].append(n2 / t2)
            print(f"  round {r + 1}: " + " | ".join(f"{k} {v[-1]:7.2f}" for k, v in speed.items()) + " groups/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    best = {k: max(v) for k, v in speed.items()}
    print(f"sentence-transformers: SentenceTransformerTrainer, scale={1 / a.temperature:g}, cached "
          f"mini_batch_size={a.mini_batch}")
    for k, v in best.items():
        print(f"{k:14s}: {v:8.2f} query groups/s (best of {a.repeats})")
    print(f"ratio bgekit / ST (MultipleNegativesRankingLoss)       : {best['bgekit'] / best['st']:6.2f}x")
    print(f"ratio bgekit cached / ST (CachedMultipleNegativesRanking): {best['bgekit cached'] / best['st cached']:6.2f}x")


if __name__ == "__main__":
    main()

"""Benchmark: bgekit ``Reranker.compute_score`` vs sentence-transformers ``CrossEncoder.predict``.

    python bench/rerank.py                       # 2,000 mixed-length pairs, 2 alternating runs each
    python bench/rerank.py --n 500               # quicker (a CPU scores some 30-60 pairs/s with MiniLM)
    python bench/rerank.py --model _work/reranker

Both score the same pairs with the same model folder, in the same process, alternating runs; the
best run of each is reported in pairs/s with the ratio (bgekit / sentence-transformers), and the
two sets of raw logits are compared. The folder is ``--model`` if given (e.g. the course-trained
``notebooks/_work/reranker``), else a cross-encoder made from the bundled all-MiniLM-L6-v2 with a
seeded head (``bench/_out/minilm_reranker``, 512 tokens): its scores mean nothing, but the work per
pair is the same as for a trained one. Pairs longer than the model's limit are cut differently by the
two libraries (bgekit caps a long query so the passage keeps most of the budget; sentence-transformers
trims the longer side), so their scores may differ on such pairs; with the default folder none is cut. Pairs are course
queries with one to three course passages (about 30 to 350 tokens; a trained course reranker reads 64 of them), so batches really mix
lengths; without the course data, generated sentences of the same lengths are used.
On CUDA both run in fp16.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bgekit import models  # noqa: E402
from bgekit.config import default_device  # noqa: E402
from bgekit.reranker import Reranker  # noqa: E402


def default_model() -> Path:
    out = ROOT / "bench" / "_out" / "minilm_reranker"
    if not (out / "config.json").is_file():
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from bgekit._io import atomic_dir

        torch.manual_seed(0)
        src = models.offline_model_path()
        model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=1)
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp)
            AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
    return out


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    try:
        from bgekit.data import course_data_dir, doc_text, load_beir

        data = load_beir(course_data_dir(), "test")
        queries = list(data.queries.values())
        docs = [doc_text(d) for d in data.corpus.values()]
    except (FileNotFoundError, ValueError):
        words = ("water soil root leaf light pot compost seed prune frost sun shade drain bloom pest "
                 "mulch feed grow stem bud").split()
        queries = [" ".join(rng.choices(words, k=rng.randint(4, 14))) + "?" for _ in range(200)]
        docs = [" ".join(rng.choices(words, k=rng.randint(30, 70))) + "." for _ in range(500)]
    return [(rng.choice(queries), " ".join(rng.choice(docs) for _ in range(rng.randint(1, 3)))) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="pairs")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model", default=None, help="cross-encoder folder or hub id")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    from sentence_transformers import CrossEncoder

    device = args.device or default_device()
    model = str(args.model or default_model())
    pairs = make_pairs(args.n)
    rr = Reranker(model, device=device, batch_size=args.batch_size, show_progress=False)
    kw = {"model_kwargs": {"dtype": torch.float16}} if device == "cuda" else {}
    ce = CrossEncoder(model, device=device, max_length=rr.max_length, **kw)
    identity = torch.nn.Identity()
    lengths = [len(ids) for ids in rr.tokenizer(
        [q for q, _ in pairs], [p for _, p in pairs], truncation=True, max_length=rr.max_length)["input_ids"]]
    print(f"model: {model}\ndevice: {device} | torch threads: {torch.get_num_threads()} | pairs: {len(pairs)} | "
          f"tokens per pair: min {min(lengths)}, median {int(np.median(lengths))}, max {max(lengths)} | "
          f"batch size {args.batch_size}")

    def run_bgekit() -> list[float]:
        return rr.compute_score(pairs, batch_size=args.batch_size)

    def run_st() -> np.ndarray:
        return ce.predict(pairs, batch_size=args.batch_size, activation_fn=identity, show_progress_bar=False)

    warm = pairs[:64]
    rr.compute_score(warm)
    ce.predict(warm, activation_fn=identity, show_progress_bar=False)
    times: dict[str, list[float]] = {"bgekit": [], "sentence-transformers": []}
    outs = {}
    for r in range(args.repeats):
        for name, fn in (("bgekit", run_bgekit), ("sentence-transformers", run_st))[:: 1 if r % 2 == 0 else -1]:
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            outs[name] = np.asarray(fn(), dtype=np.float32)
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
            print(f"  run {r + 1} {name:22s} {len(pairs) / times[name][-1]:8.1f} pairs/s")
    best = {k: len(pairs) / min(v) for k, v in times.items()}
    diff = float(np.abs(outs["bgekit"] - outs["sentence-transformers"]).max())
    tol = 5e-2 if device == "cuda" else 1e-4
    print(f"bgekit Reranker.compute_score:     {best['bgekit']:8.1f} pairs/s (best of {args.repeats})")
    print(f"sentence-transformers predict:     {best['sentence-transformers']:8.1f} pairs/s (best of {args.repeats})")
    print(f"ratio bgekit / sentence-transformers: {best['bgekit'] / best['sentence-transformers']:.2f}x")
    print(f"max |logit difference|: {diff:.2e} ({'agree' if diff <= tol else 'DISAGREE'}, tolerance {tol:g})")
    if diff > tol:
        sys.exit(1)


if __name__ == "__main__":
    main()

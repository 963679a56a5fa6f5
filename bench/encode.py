"""Encoding throughput: bgekit.Embedder vs sentence-transformers (and FlagEmbedding's FlagModel if installed).

Same model, same texts, one process, alternating runs; prints docs/s for each, the ratio, and the largest
difference between the embeddings.

    python bench/encode.py                      # bundled all-MiniLM-L6-v2 on CPU, 2,000 mixed-length texts
    python bench/encode.py --rounds 5 --batch-size 64
    python bench/encode.py --gpu-bert-large     # on a CUDA machine: BERT-large shape (bge-large), fp16, 256 tokens
    python bench/encode.py --course --backends torch,onnx,onnx-int8,openvino,openvino-int8
        # course passages, every bgekit backend, with nDCG@10 on the course test split for each
    python bench/encode.py --course --backends torch,onnx,onnx-int8,openvino,openvino-int8 \
        --st-python ../stenv/bin/python
        # and sentence-transformers' own onnx / openvino backends, from a second environment (bench/st_backends.py)
"""
from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time

import numpy as np
import torch

WORDS = ("water soil leaf root light pot drain mist fern cactus orchid repot fertiliser pest mite gnat spray prune "
         "cutting node stem humidity window winter summer bright shade yellow brown crisp droop wilt rot mould "
         "compost bark perlite grow lamp season bloom flower bud seed tray warm cold draught the a of and to in "
         "is it my when why how should does keep").split()


def make_texts(n: int, seed: int = 0, lo: int = 5, hi: int = 250) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) + "." for _ in range(n)]


def timed(fn) -> tuple[float, np.ndarray]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def bert_large_folder(pooling: str = "cls", tokenizer: str | None = None) -> str:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from bgekit.models import ModelSpec, offline_model_path, save_model_metadata

    cfg = BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                     max_position_embeddings=512, vocab_size=30522)
    torch.manual_seed(0)
    folder = tempfile.mkdtemp(prefix="bert-large-random-")
    BertModel(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer or offline_model_path()).save_pretrained(folder)
    save_model_metadata(folder, ModelSpec("bert-large-random", pooling=pooling, dim=1024, max_length=512))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder or hub id (default: the bundled all-MiniLM-L6-v2)")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--gpu-bert-large", action="store_true",
                    help="randomly initialised BERT-large-shaped model in fp16, texts of about 256 tokens")
    ap.add_argument("--tokenizer", default=None, help="with --gpu-bert-large: a BERT tokenizer folder (default: the "
                    "bundled all-MiniLM-L6-v2's, the same WordPiece vocabulary as bge-large-en-v1.5's)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="with --gpu-bert-large: the GPU's datasheet "
                    "dense fp16 tensor peak, to report the share reached (e.g. 989 for an H100/H200 SXM)")
    ap.add_argument("--course", action="store_true", help="time the course passages (data/corpus.jsonl) and print "
                    "nDCG@10 on the course test split for each path")
    ap.add_argument("--backends", default="torch",
                    help="bgekit paths, comma-separated: torch, onnx, onnx-int8, openvino, openvino-int8")
    ap.add_argument("--st-python", default=None,
                    help="Python of an environment with sentence-transformers[onnx,openvino] (their pins conflict "
                         "with bgekit's): time its backends there on the same model and texts (bench/st_backends.py)")
    ap.add_argument("--st-backends", default="torch,onnx,onnx-int8,openvino,openvino-int8")
    args = ap.parse_args()
    import logging

    logging.getLogger("bgekit").setLevel(logging.ERROR)  # the truncation notes are expected here

    from sentence_transformers import SentenceTransformer

    from bgekit import Embedder
    from bgekit.models import offline_model_path

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.gpu_bert_large:
        model = bert_large_folder(tokenizer=args.tokenizer)
        texts = make_texts(args.n, lo=200, hi=200)  # ~256 word pieces each
        half = True
    elif args.course:
        from bgekit.data import course_data_dir, doc_text, load_beir

        course = load_beir(course_data_dir(), "test")
        model = args.model or str(offline_model_path())
        texts = [doc_text(d) for d in course.corpus.values()]
        half = False
    else:
        model = args.model or str(offline_model_path())
        texts = make_texts(args.n)
        half = False
    torch.set_grad_enabled(False)
    ours = Embedder(model, device=device, dtype="fp16" if half else None, batch_size=args.batch_size)
    st = SentenceTransformer(model, device=device)
    st.max_seq_length = ours.max_length
    if half:
        st.half()
    encoders = {"bgekit": ours}
    for path in [b.strip() for b in args.backends.split(",") if b.strip() and b.strip() != "torch"]:
        backend, _, q = path.partition("-")
        encoders[f"bgekit {path}"] = Embedder(model, backend=backend, quantize=q or None, batch_size=args.batch_size)
    runners = {
        name: (lambda e=e: e.encode(texts, batch_size=args.batch_size, show_progress=False))
        for name, e in encoders.items()}
    runners.update({
        "sentence-transformers": lambda: st.encode(texts, batch_size=args.batch_size, convert_to_numpy=True,
                                                   normalize_embeddings=ours.normalize, show_progress_bar=False),
    })
    try:
        from FlagEmbedding import FlagModel  # optional: only if it installs on this machine

        fm = FlagModel(model, use_fp16=half, devices=[device], pooling_method=ours.pooling,
                       normalize_embeddings=ours.normalize)
        runners["FlagEmbedding"] = lambda: fm.encode(texts, batch_size=args.batch_size, max_length=ours.max_length,
                                                     convert_to_numpy=True)
    except Exception as e:  # noqa: BLE001 - report and go on
        print(f"FlagEmbedding skipped: {type(e).__name__}: {str(e)[:80]}")

    ours.encode(texts[:64], batch_size=args.batch_size)
    st.encode(texts[:64], batch_size=args.batch_size)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in runners}
    outs: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        for name, fn in (runners.items() if r % 2 == 0 else reversed(runners.items())):
            dt, out = timed(fn)
            times[name].append(dt)
            outs[name] = np.asarray(out, dtype=np.float32)
    print(f"model: {model} | device: {device} | fp16: {half} | texts: {len(texts)} | batch: {args.batch_size} | "
          f"rounds: {args.rounds} | torch threads: {torch.get_num_threads()}")
    ndcg = course_ndcg(course, encoders, outs, ids=list(course.corpus)) if args.course else {}
    if args.st_python:
        queries = [course.queries[q] for q in course.queries] if args.course else []
        for name, (ts, docs, qv) in st_backends(args, model, texts, queries, ours.max_length).items():
            times[name], outs[name] = ts, docs
            if args.course and qv is not None:
                ndcg[name] = ndcg_of(course, list(course.corpus), docs, qv)
    for name, ts in times.items():
        med, best = statistics.median(ts), min(ts)
        cos = (outs[name] * outs["bgekit"]).sum(1) / np.linalg.norm(outs[name], axis=1) / np.linalg.norm(
            outs["bgekit"], axis=1)
        extra = f"  nDCG@10 {ndcg[name]:.4f}" if name in ndcg else ""
        print(f"{name:<26} {len(texts) / best:9.1f} docs/s best (median {len(texts) / med:7.1f})  "
              f"ratio vs ST torch {statistics.median(times['sentence-transformers']) / med:5.2f}x (best "
              f"{min(times['sentence-transformers']) / best:5.2f}x)  min cos vs bgekit torch {cos.min():.5f}{extra}")
    if args.gpu_bert_large:
        gpu_share(ours, texts, times, args.peak_tflops)
    ours_best = {k: min(v) for k, v in times.items() if k.startswith("bgekit")}
    st_best = {k: min(v) for k, v in times.items() if not k.startswith("bgekit") and k != "FlagEmbedding"}
    fast, st_fast = min(ours_best, key=ours_best.get), min(st_best, key=st_best.get)
    loss = f", nDCG@10 loss vs bgekit fp32 {ndcg['bgekit'] - ndcg[fast]:+.4f} (goal <= 0.005)" if fast in ndcg else ""
    print(f"goals (best runs): bgekit's fastest path ({fast}) is {min(times['sentence-transformers']) / ours_best[fast]:.2f}x "
          f"sentence-transformers torch (goal 2.0x) and {st_best[st_fast] / ours_best[fast]:.2f}x sentence-transformers' "
          f"fastest ({st_fast}; goal 1.0x){loss}")


def encoder_flops(config, lengths: list[int]) -> float:
    """Forward FLOPs of a BERT-style encoder over sequences of these token lengths (2 per multiply-add): per layer
    and token, the Q/K/V/output projections (4 d^2), the feed-forward pair (2 d f) and attention (2 L d); the
    embeddings, layer norms, softmax and pooling are left out (under 1% at this size)."""
    d, f, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return float(sum(2 * n * L * (4 * d * d + 2 * d * f + 2 * L * d) for L in lengths))


def gpu_share(ours, texts: list[str], times: dict[str, list[float]], peak_tflops: float | None) -> None:
    """Print TFLOP/s reached by each path, against a measured fp16 matrix product and the datasheet peak."""
    lengths = [len(ids) for ids in ours.tokenizer(texts, truncation=True, max_length=ours.max_length)["input_ids"]]
    flops = encoder_flops(ours.model.config, lengths)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    for _ in range(3):
        a @ a
    dt, _ = timed(lambda: [a @ a for _ in range(10)])
    matmul = 10 * 2 * 8192 ** 3 / dt / 1e12
    print(f"{torch.cuda.get_device_name()}: an 8192^3 fp16 matrix product runs at {matmul:.0f} TFLOP/s here"
          + (f" (datasheet dense fp16 peak {peak_tflops:.0f})" if peak_tflops else "")
          + f"; the texts hold {sum(lengths)} tokens (mean {sum(lengths) / len(lengths):.0f}), "
          f"{flops / len(texts) / 1e9:.0f} GFLOP per text")
    for name, ts in times.items():
        tflops = flops / min(ts) / 1e12
        print(f"{name:<26} {tflops:6.0f} TFLOP/s = {tflops / matmul:5.1%} of the measured matrix product"
              + (f", {tflops / peak_tflops:5.1%} of the datasheet peak" if peak_tflops else ""))


def st_backends(args, model: str, texts: list[str], queries: list[str], max_length: int) -> dict:
    """Run bench/st_backends.py with ``--st-python``; ``{name: (seconds per round, doc vectors, query vectors)}``."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs.json"
        inputs.write_text(json.dumps({"texts": texts, "queries": queries}), encoding="utf-8")
        cmd = [args.st_python, os.path.join(os.path.dirname(os.path.abspath(__file__)), "st_backends.py"),
               "--model", model, "--inputs", str(inputs), "--out", tmp, "--backends", args.st_backends,
               "--batch-size", str(args.batch_size), "--rounds", str(args.rounds), "--max-seq-length", str(max_length)]
        print("running sentence-transformers' backends in", args.st_python, flush=True)
        subprocess.run(cmd, check=True, stdout=sys.stdout, stderr=subprocess.DEVNULL)
        res = json.loads((Path(tmp) / "results.json").read_text(encoding="utf-8"))
        print("second environment:", ", ".join(f"{k} {v}" for k, v in res["versions"].items()))
        for backend, r in res["backends"].items():
            if "skipped" in r:
                print(f"ST {backend} skipped: {r['skipped']}")
                continue
            qpath = Path(tmp) / f"{backend}-queries.npy"
            out[f"ST env2 {backend}"] = (r["seconds"], np.load(Path(tmp) / f"{backend}-docs.npy"),
                                         np.load(qpath) if qpath.exists() else None)
    return out


def ndcg_of(course, ids: list[str], docs: np.ndarray, queries: np.ndarray) -> float:
    """nDCG@10 on the course test split of exact search with these corpus and query vectors."""
    from bgekit.index import DenseIndex
    from bgekit.metrics import evaluate

    qids = list(course.queries)
    index = DenseIndex(docs.shape[1])
    index.add(ids, docs)
    found, scores = index.search(queries, 10)
    run = {q: {d: float(x) for d, x in zip(r, sc)} for q, r, sc in zip(qids, found, scores)}
    return evaluate(run, course.qrels, ks=(10,), metrics=("ndcg",))["ndcg@10"]


def course_ndcg(course, encoders, outs, ids) -> dict[str, float]:
    """nDCG@10 on the course test split: each path's own corpus vectors (from the timed runs) and queries."""
    queries = [course.queries[q] for q in course.queries]
    return {name: ndcg_of(course, ids, outs[name], enc.encode_queries(queries, show_progress=False))
            for name, enc in encoders.items()}


if __name__ == "__main__":
    main()

"""Benchmark: DenseIndex exact search vs a plain numpy matrix product + top-k, and HNSW vs exact.

    python bench/search.py                      # 100,000 x 1024 corpus, 1,000 queries
    python bench/search.py --n 20000 --dim 384  # smaller

Both exact searches run in the same process, alternating, ``--repeats`` times each; the best
run of each is reported (queries/s) with their ratio, and their top-10 ids are compared.
HNSW: build time, queries/s, recall@10 against exact search and speed-up over exact search.
Data are random unit vectors: isotropic by default (HNSW's worst case: nothing to exploit), or
with ``--latent 32`` a low-dimensional structure plus noise, closer to real embeddings.

Compressed vectors (``--skip-compressed`` to leave out): for float (flat), int8 (``sq8``), binary
with and without rescoring, binary HNSW and IVF-PQ: bytes per vector, index size on disk, build
time, queries/s and recall@10 against exact float search, on the same vectors. Then the same
kinds on the course test split (real embeddings of the mode's model, ``--ndcg-only`` for just
this part): nDCG@10 and its ratio to float search (goal: binary with rescoring >= 0.99).

    python bench/search.py --n 100000 --dim 1024 --skip-hnsw      # compressed kinds, a few minutes
    python bench/search.py --ndcg-only                             # just the course nDCG@10 table
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bgekit.index import DenseIndex  # noqa: E402


def unit_vectors(
    rng: np.random.Generator, n: int, dim: int, latent: int | None = None, chunk: int = 20_000
) -> np.ndarray:
    """n random unit vectors. ``latent=None``: isotropic. ``latent=d``: a d-dimensional signal
    spread over ``dim`` by a fixed random rotation, plus 30% isotropic noise (real sentence
    embeddings have a low intrinsic dimension like this; isotropic data is HNSW's worst case)."""
    proj = None
    if latent:
        proj = np.linalg.qr(np.random.default_rng(12345).standard_normal((dim, latent)))[0].T.astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        if proj is None:
            x = rng.standard_normal((m, dim), dtype=np.float32)
        else:
            z = rng.standard_normal((m, latent), dtype=np.float32) @ proj
            z /= np.linalg.norm(z, axis=1, keepdims=True)
            noise = rng.standard_normal((m, dim), dtype=np.float32)
            x = z + 0.3 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def numpy_topk(docs: np.ndarray, queries: np.ndarray, k: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product: matrix product, argpartition, then sort the k survivors."""
    ids = np.empty((len(queries), k), dtype=np.int64)
    scores = np.empty((len(queries), k), dtype=np.float32)
    for s in range(0, len(queries), chunk):
        sim = queries[s : s + chunk] @ docs.T
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        part_scores = np.take_along_axis(sim, part, axis=1)
        order = np.argsort(-part_scores, axis=1)
        ids[s : s + chunk] = np.take_along_axis(part, order, axis=1)
        scores[s : s + chunk] = np.take_along_axis(part_scores, order, axis=1)
    return ids, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="corpus vectors")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--queries", type=int, default=1_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hnsw-m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=64)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--skip-hnsw", action="store_true")
    ap.add_argument("--skip-compressed", action="store_true", help="leave out the compressed kinds")
    ap.add_argument("--ndcg-only", action="store_true", help="only the nDCG@10 table on the course test split")
    ap.add_argument("--rescore", type=int, nargs="+", default=[4, 10], help="rescoring factors to try")
    ap.add_argument(
        "--latent", type=int, default=32,
        help="d > 0: random vectors with a d-dim structure plus noise (default 32); 0: isotropic random vectors",
    )
    args = ap.parse_args()
    if args.ndcg_only:
        course_ndcg(args)
        return

    import faiss

    rng = np.random.default_rng(0)
    docs = unit_vectors(rng, args.n, args.dim, args.latent or None)
    queries = unit_vectors(rng, args.queries, args.dim, args.latent or None)
    ids = [str(i) for i in range(args.n)]
    data = f"{args.latent}-dim structure + noise" if args.latent else "isotropic random"
    print(
        f"corpus {args.n:,} x {args.dim}, {args.queries:,} queries, k={args.k}; "
        f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs; data: {data}"
    )

    flat = DenseIndex(args.dim)
    flat.add(ids, docs)

    t_faiss, t_numpy = [], []
    for _ in range(args.repeats):  # alternate so that both see the same machine load
        t0 = time.perf_counter()
        f_ids, f_scores = flat.search(queries, args.k)
        t_faiss.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        n_ids, n_scores = numpy_topk(docs, queries, args.k)
        t_numpy.append(time.perf_counter() - t0)

    qps_faiss = args.queries / min(t_faiss)
    qps_numpy = args.queries / min(t_numpy)
    print(f"\nexact search (best of {args.repeats} runs)")
    print(f"  DenseIndex flat : {qps_faiss:10,.0f} queries/s   (runs: {', '.join(f'{t:.2f}s' for t in t_faiss)})")
    print(f"  numpy matmul+top-k: {qps_numpy:8,.0f} queries/s   (runs: {', '.join(f'{t:.2f}s' for t in t_numpy)})")
    print(f"  ratio DenseIndex / numpy: {qps_faiss / qps_numpy:.2f}x")

    exact_rows = [[int(i) for i in row] for row in f_ids]
    same = sum(row == list(n) for row, n in zip(exact_rows, n_ids.tolist()))
    same_sets = sum(set(row) == set(n) for row, n in zip(exact_rows, n_ids.tolist()))
    max_diff = float(np.abs(f_scores - n_scores).max())
    print(
        f"  same top-{args.k} ids: {same}/{args.queries} queries in the same order, "
        f"{same_sets}/{args.queries} as sets; max score difference {max_diff:.2e}"
    )
    if same_sets < args.queries:
        # differences can only come from float rounding between near-equal scores at the cut
        bad = [i for i, (row, n) in enumerate(zip(exact_rows, n_ids.tolist())) if set(row) != set(n)]
        gaps = [abs(float(f_scores[i, -1]) - float(n_scores[i, -1])) for i in bad]
        print(f"  differing queries: {bad[:10]}, score gap at rank {args.k}: max {max(gaps):.2e}")

    if not args.skip_compressed:
        compressed(args, ids, docs, queries, f_ids, qps_faiss)
        course_ndcg(args)
    if args.skip_hnsw:
        return
    print(f"\nHNSW (m={args.hnsw_m}, ef_construction={args.ef_construction})")
    t0 = time.perf_counter()
    hnsw = DenseIndex(args.dim, kind="hnsw", m=args.hnsw_m, ef_construction=args.ef_construction)
    hnsw.add(ids, docs)
    print(f"  build: {time.perf_counter() - t0:.1f}s")
    exact_sets = [set(row) for row in f_ids]
    for ef in args.ef_search:
        hnsw.knobs["ef_search"] = ef
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            h_ids, _ = hnsw.search(queries, args.k)
            times.append(time.perf_counter() - t0)
        qps = args.queries / min(times)
        recall = np.mean([len(set(h) & e) / args.k for h, e in zip(h_ids, exact_sets)])
        print(
            f"  ef_search={ef:4d}: {qps:10,.0f} queries/s, recall@{args.k} vs exact {recall:.3f}, "
            f"speed-up over flat {qps / qps_faiss:.1f}x"
        )


def compressed_kinds(n: int, dim: int, rescore: list[int]) -> list[tuple[str, str, dict]]:
    """(label, kind, knobs) of every compressed configuration the benchmark compares."""
    nlist = max(1, min(256, int(4 * np.sqrt(n)), n // 39))  # at most 256 lists: training stays under a minute or two
    rows = [("float32 flat (exact)", "flat", {}), ("int8 sq8", "sq8", {})]
    rows += [(f"int8 sq8 + rescore x{r}", "sq8", {"rescore": r}) for r in rescore[:1]]
    rows += [("binary flat", "binary", {})]
    rows += [(f"binary flat + rescore x{r}", "binary", {"rescore": r}) for r in rescore]
    rows += [(f"binary flat + rescore x{rescore[-1]} (int8 copy)", "binary",
              {"rescore": rescore[-1], "rescore_dtype": "int8"})]
    rows += [(f"binary hnsw + rescore x{rescore[-1]}", "binary_hnsw",
              {"m": 32, "ef_construction": 64, "rescore": rescore[-1]})]
    rows += [("ivfpq", "ivfpq", {"nlist": nlist, "nprobe": 32})]
    rows += [(f"ivfpq + rescore x{rescore[-1]}", "ivfpq", {"nlist": nlist, "nprobe": 32, "rescore": rescore[-1]})]
    return rows


def _disk_size(index: DenseIndex) -> tuple[int, int]:
    """Bytes on disk of (index.faiss, the whole saved folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = index.save(Path(tmp) / "idx")
        sizes = {p.name: p.stat().st_size for p in path.iterdir()}
    return sizes["index.faiss"], sum(sizes.values())


def compressed(args, ids, docs, queries, exact_ids, qps_flat) -> None:
    """Memory, size, speed and recall@k of every compressed kind against exact float search."""
    exact_sets = [set(row) for row in exact_ids]
    print(f"\ncompressed vectors on the same {args.n:,} x {args.dim} vectors (best of {args.repeats} runs; "
          "bytes/vector = search codes + rescoring copy)")
    print(f"  {'kind':<40} {'bytes/vec':>12} {'index.faiss':>12} {'folder':>10} {'build':>7} {'queries/s':>10} "
          f"{'recall@' + str(args.k):>9}")
    for label, kind, knobs in compressed_kinds(args.n, args.dim, args.rescore):
        t0 = time.perf_counter()
        index = DenseIndex(args.dim, kind=kind, **knobs)
        index.add(ids, docs)
        build = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            got, _ = index.search(queries, args.k)
            times.append(time.perf_counter() - t0)
        recall = np.mean([len(set(g) & e) / args.k for g, e in zip(got, exact_sets)])
        faiss_bytes, folder = _disk_size(index)
        per_vec = f"{index.code_size}" + (f"+{index.rescore_size}" if index.rescore_size else "")
        print(f"  {label:<40} {per_vec:>12} {faiss_bytes / 2**20:10.1f}MB {folder / 2**20:8.1f}MB {build:6.1f}s "
              f"{args.queries / min(times):10,.0f} {recall:9.3f}")
        del index
    print(f"  (exact float flat search: {qps_flat:,.0f} queries/s)")


def course_ndcg(args) -> None:
    """nDCG@10 of every compressed kind on the course test split, with real embeddings of the mode's model."""
    from bgekit import Embedder
    from bgekit.cache import cached_embeddings, corpus_key
    from bgekit.data import course_data_dir, doc_text, load_beir
    from bgekit.metrics import evaluate

    data = load_beir(course_data_dir(), split="test")
    enc = Embedder()
    texts = [doc_text(d) for d in data.corpus.values()]
    cache = Path(__file__).resolve().parent / "_out" / "embeddings"
    docs = cached_embeddings(cache, corpus_key(enc, texts), len(texts), lambda: enc.encode_corpus(texts))
    qids = list(data.queries)
    queries = enc.encode_queries([data.queries[q] for q in qids])
    doc_ids = list(data.corpus)
    print(f"\ncourse test split: {len(doc_ids)} passages, {len(qids)} queries, {enc.name} ({enc.dim}-d)")
    results = {}
    for label, kind, knobs in compressed_kinds(len(doc_ids), enc.dim, args.rescore):
        if kind == "ivfpq":  # a 642-passage corpus: few lists, 4 bits per sub-vector (16 centroids)
            knobs = {**knobs, "nlist": 4, "nprobe": 4, "pq_nbits": 4}
            label = label.replace("ivfpq", "ivfpq (nlist 4, 4-bit)")
        index = DenseIndex(enc.dim, kind=kind, **knobs)
        index.add(doc_ids, docs)
        got, scores = index.search(queries, 11)
        run = {q: {d: float(s) for d, s in zip(row, srow) if d != q} for q, row, srow in zip(qids, got, scores)}
        results[label] = evaluate(run, data.qrels, ks=(10,), metrics=("ndcg", "recall"))
    base = results["float32 flat (exact)"]["ndcg@10"]
    print(f"  {'kind':<46} {'nDCG@10':>8} {'of float':>9} {'recall@10':>10}")
    for label, r in results.items():
        print(f"  {label:<46} {r['ndcg@10']:8.4f} {r['ndcg@10'] / base:9.4f} {r['recall@10']:10.4f}")
    best = max(v["ndcg@10"] for k, v in results.items() if k.startswith("binary flat + rescore"))
    print(f"  binary with rescoring keeps {best / base:.4f} of float nDCG@10 (goal >= 0.99): "
          + ("met" if best / base >= 0.99 else "MISSED"))


if __name__ == "__main__":
    main()

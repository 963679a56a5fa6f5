"""Benchmark: ``bgekit.mining.mine_hard_negatives`` vs sentence-transformers' ``util.mine_hard_negatives``.

    python bench/mine.py                   # course train split if data/corpus.jsonl exists, else synthetic
    python bench/mine.py --synthetic --n 4000 --queries 800 --repeats 3

Same model (the bundled all-MiniLM-L6-v2, loaded once by each library before timing), same
queries, positives and corpus, same batch size. Settings made comparable:

* ranks ``range_min``-``range_max`` = bgekit's ``range_for_sampling`` ``a-b``; ``num_negatives`` =
  ``negative_number``; ST ``sampling_strategy="random"`` (bgekit samples at random too);
* exact search on both sides: ST ``use_faiss=True`` (a faiss ``IndexFlatIP``), bgekit a flat
  ``DenseIndex`` (faiss ``IndexFlatIP``);
* no margin, no cross-encoder; ST ``output_format="n-tuple"`` (one row per query with all its
  negatives, like bgekit's JSONL). bgekit also writes the JSONL file (atomically); ST returns a Dataset.

The timed calls include encoding, search, sampling and (bgekit) the write. Runs alternate in one
process, ``--repeats`` times each; the best of each is reported with the ratio (ST time / bgekit time;
> 1 means bgekit is faster).

ST's function needs the ``datasets`` package. Without it, the script times the part of ST's function
that is certain to run (``encode_document`` over the corpus + ``encode_query`` over the queries with
the same settings), which is a lower bound of ST's time, and says so.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

WORDS = ("water light soil root leaf pot fern cactus orchid repot drain mist humid fungus gnat aphid scale "
         "prune cutting propagate fertiliser winter summer window north south bright shade yellow brown "
         "spot crisp droop wilt rot bark perlite peat compost tray saucer grow lamp").split()


def synthetic(n_docs: int, n_queries: int, seed: int = 0) -> tuple[list[dict], list[str]]:
    """Random passages from a small gardening vocabulary; each query's positive is a passage it paraphrases."""
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(25, 70))) + "." for _ in range(n_docs)]
    rows = []
    for i in rng.sample(range(n_docs), n_queries):
        words = docs[i].split()
        q = "how to " + " ".join(rng.sample(words, min(6, len(words))))
        rows.append({"query": q, "pos": [docs[i]], "neg": []})
    return rows, docs


def course() -> tuple[list[dict], list[str]] | None:
    from bgekit.data import course_data_dir
    from bgekit.mining import course_train_rows

    try:
        course_data_dir()
    except FileNotFoundError:
        return None
    return course_train_rows()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synthetic", action="store_true", help="use synthetic data even if the course data exists")
    ap.add_argument("--n", type=int, default=2000, help="synthetic corpus size")
    ap.add_argument("--queries", type=int, default=400, help="synthetic queries")
    ap.add_argument("--range", default="10-100", help="ranks a-b to sample from")
    ap.add_argument("--negatives", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer, util

    from bgekit import Embedder
    from bgekit.mining import mine_hard_negatives, parse_range
    from bgekit.models import offline_model_path

    a, b = parse_range(args.range)
    data = None if args.synthetic else course()
    if data is None:
        rows, pool = synthetic(args.n, args.queries)
        source = f"synthetic ({args.n} passages, {args.queries} queries)"
    else:
        rows, pool = data
        source = f"course train split ({len(rows)} queries, {len(pool)} passages)"
    print(f"data: {source} | ranks {a}-{b} | {args.negatives} negatives | batch {args.batch_size} | "
          f"torch threads {torch.get_num_threads()}")

    path = str(offline_model_path())
    enc = Embedder(path, batch_size=args.batch_size, show_progress=False)
    st = SentenceTransformer(path, device="cpu")
    try:
        from datasets import Dataset
        pairs = {"anchor": [r["query"] for r in rows for _ in r["pos"]],
                 "positive": [p for r in rows for p in r["pos"]]}
        dataset = Dataset.from_dict(pairs)
        full_st = True
    except ImportError:
        full_st = False
        print("note: `datasets` is not installed, so sentence-transformers' mine_hard_negatives cannot run; "
              "timing its encoding step alone (a lower bound of its time).")

    tmp = tempfile.mkdtemp(prefix="bench_mine_")
    out = os.path.join(tmp, "mined.jsonl")

    def run_bgekit() -> None:
        mine_hard_negatives(enc, rows, out, (a, b), args.negatives, pool, seed=0, batch_size=args.batch_size,
                            show_progress=False)

    def run_st() -> None:
        if full_st:
            util.mine_hard_negatives(dataset, st, corpus=pool, range_min=a, range_max=b,
                                     num_negatives=args.negatives, sampling_strategy="random", use_faiss=True,
                                     output_format="n-tuple", batch_size=args.batch_size, verbose=False)
        else:
            corpus = list(dict.fromkeys(pool + [p for r in rows for p in r["pos"]]))
            st.encode_document(corpus, batch_size=args.batch_size, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)
            st.encode_query(list(dict.fromkeys(r["query"] for r in rows)), batch_size=args.batch_size,
                            normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)

    # warm-up (first-call costs: faiss import, kernels)
    mine_hard_negatives(enc, rows[:8], out, (0, 2), 1, pool[:50], show_progress=False)
    st.encode(pool[:50], batch_size=args.batch_size, show_progress_bar=False)

    times: dict[str, list[float]] = {"bgekit": [], "st": []}
    for r in range(args.repeats):
        for name, fn in (("bgekit", run_bgekit), ("st", run_st)) if r % 2 == 0 else (("st", run_st),
                                                                                   ("bgekit", run_bgekit)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            print(f"  run {r + 1}: {name:7s} {times[name][-1]:.2f} s")
    tb, ts = min(times["bgekit"]), min(times["st"])
    st_label = "sentence-transformers mine_hard_negatives" if full_st else "sentence-transformers encode only"
    print(f"bgekit mine_hard_negatives: {tb:.2f} s (best of {args.repeats})")
    print(f"{st_label}: {ts:.2f} s (best of {args.repeats})")
    print(f"ratio (ST / bgekit): {ts / tb:.2f}x" + ("" if full_st else "  (ST side is a lower bound)"))
    n_rows = len(rows)
    print(f"throughput: bgekit {n_rows / tb:.1f} queries/s, ST {n_rows / ts:.1f} queries/s")


if __name__ == "__main__":
    main()

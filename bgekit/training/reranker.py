"""Train a small cross-encoder reranker, offline, in a couple of minutes on a CPU.

No pretrained cross-encoder can be had offline, so the course makes its own: the bundled
all-MiniLM-L6-v2 encoder with a fresh one-logit classification head
(``AutoModelForSequenceClassification(num_labels=1)``), trained on the course's train split.

Each training query brings a *group* of ``train_group_size`` passages: one positive (drawn from its
relevant passages) at index 0 and ``train_group_size - 1`` negatives drawn from its *hard
candidates* (the top hits of a retriever, positives removed), topped up with random passages
when there are too few. The model scores the whole group and the loss is the cross-entropy of
picking index 0 (a softmax over the group's logits), FlagEmbedding's reranker loss.

>>> from bgekit.training import RerankerTrainArgs, train_reranker
>>> res = train_reranker(RerankerTrainArgs(output_dir="_work/reranker"))   # doctest: +SKIP
>>> res.losses[:3], res.output_dir                                          # doctest: +SKIP
>>> bgekit.Reranker(res).rerank("tiny flies in my pots", passages)         # doctest: +SKIP

The saved folder is a plain Hugging Face model folder (model, tokenizer, ``bgekit.json`` with
``kind="reranker"``) that ``bgekit.Reranker``, ``transformers`` and sentence-transformers' ``CrossEncoder``
all load; its token limit is the training ``max_len``, so pairs are read at inference as in training.
Training data can also be FlagEmbedding JSONL (``{query, pos, neg}``), for example a file written by
``bgekit.mining.mine_hard_negatives``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import models
from .._batching import model_inputs
from .._io import atomic_dir, atomic_write_json

logger = logging.getLogger(__name__)

__all__ = ["RerankerTrainArgs", "RerankerTrainResult", "RerankerExample", "train_reranker", "holdout_split",
           "build_reranker_examples", "group_loss", "TRAIN_INFO_FILE"]

#: file in the saved folder with the arguments, the data stamp and the loss history
TRAIN_INFO_FILE = "train_reranker.json"
NEGATIVE_SOURCES = ("dense", "bm25", "random")


@dataclass
class RerankerTrainArgs:
    """Arguments of :func:`train_reranker` (names follow FlagEmbedding / HF ``TrainingArguments``).

    >>> RerankerTrainArgs(output_dir="rr").train_group_size
    8
    """

    output_dir: str = field(default="", metadata={"help": "where the trained model folder goes (required)"})
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "encoder to start from; default: the bundled all-MiniLM-L6-v2 (a fresh 1-logit head is added)"})
    train_data: str | None = field(default=None, metadata={
        "help": "FlagEmbedding JSONL ({query, pos, neg}); default: the BEIR folder data_dir, split `split`"})
    data_dir: str | None = field(default=None, metadata={"help": "BEIR folder; default: the course data"})
    split: str = field(default="train", metadata={"help": "qrels split to train on (BEIR data)"})
    max_queries: int | None = field(default=None, metadata={"help": "use at most this many training queries"})
    holdout_queries: int = field(default=0, metadata={
        "help": "keep this many training queries (drawn with the seed) out of training, for validation: tuning "
                "the rerank depth or a fusion weight on them keeps the test split unseen (result.holdout_qids)"})
    train_group_size: int = field(default=8, metadata={"help": "passages per query: 1 positive + N-1 negatives"})
    hard_negatives: str = field(default="dense", metadata={
        "help": "where negatives come from for BEIR data: 'dense' (bundled encoder), 'bm25' or 'random'"})
    negative_range: tuple[int, int] = field(default=(0, 50), metadata={
        "help": "sample hard negatives among these retriever ranks (positives removed)"})
    num_train_epochs: float = field(default=2.0, metadata={"help": "passes over the queries (fractions allowed)"})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "queries per step (x group size pairs)"})
    learning_rate: float = field(default=6e-5, metadata={"help": "peak AdamW learning rate of the encoder"})
    head_learning_rate: float | None = field(default=1e-3, metadata={
        "help": "peak learning rate of the fresh head (pooler + classifier); None: learning_rate. A fresh "
                "head needs larger steps than the pretrained encoder to learn within a few dozen steps"})
    freeze_embeddings: bool = field(default=True, metadata={
        "help": "keep the word embeddings fixed: fewer weights to update (faster on CPU), less overfitting"})
    freeze_layers: int = field(default=0, metadata={
        "help": "also keep the first N transformer layers fixed: the backward pass stops above them, so each "
                "step is cheaper (the lower layers of a pretrained encoder change little in a short run)"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "share of steps with linear warm-up"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases/LayerNorm)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0: off)"})
    bf16: bool = field(default=False, metadata={
        "help": "bfloat16 autocast: about 2x faster on a CPU with bf16 instructions (see bgekit.config.fast_bf16) "
                "or a recent GPU; the loss and the optimizer stay in fp32"})
    max_len: int = field(default=192, metadata={"help": "max tokens per (query, passage) pair while training"})
    seed: int = field(default=42, metadata={"help": "seed for the head, data order, sampling and dropout"})
    logging_steps: int = field(default=10, metadata={"help": "log the mean loss every N steps"})
    device: str | None = field(default=None, metadata={"help": "cuda / cpu / mps; default: best available"})
    show_progress: bool = field(default=True, metadata={"help": "tqdm progress bar"})

    def __post_init__(self) -> None:
        problems = []
        if not self.output_dir:
            problems.append("output_dir is required")
        for name in ("per_device_train_batch_size", "logging_steps"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.train_group_size) < 2:
            problems.append(f"train_group_size must be >= 2 (a positive and at least one negative), "
                            f"got {self.train_group_size}")
        if int(self.max_len) < 16:
            problems.append(f"max_len must be >= 16, got {self.max_len}")
        if not self.num_train_epochs > 0:
            problems.append(f"num_train_epochs must be > 0, got {self.num_train_epochs}")
        if not 0 <= self.warmup_ratio <= 1:
            problems.append(f"warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        if self.hard_negatives not in NEGATIVE_SOURCES:
            problems.append(f"hard_negatives must be one of {NEGATIVE_SOURCES}, got {self.hard_negatives!r}")
        lo, hi = self.negative_range
        if not 0 <= int(lo) < int(hi):
            problems.append(f"negative_range must be (start, end) with 0 <= start < end, got {self.negative_range}")
        if int(self.freeze_layers) < 0:
            problems.append(f"freeze_layers must be >= 0, got {self.freeze_layers}")
        if int(self.holdout_queries) < 0:
            problems.append(f"holdout_queries must be >= 0, got {self.holdout_queries}")
        if self.max_queries is not None and self.max_queries < 1:
            problems.append(f"max_queries must be >= 1 or None, got {self.max_queries}")
        if problems:
            raise ValueError("Invalid reranker training arguments: " + "; ".join(problems))
        self.negative_range = (int(lo), int(hi))


@dataclass
class RerankerExample:
    """One training query: its text, its positives, and its candidate (hard) negatives."""

    query: str
    pos: list[str]
    neg: list[str]


@dataclass
class RerankerTrainResult:
    """What :func:`train_reranker` returns; usable as a path (``Reranker(result)``, ``os.fspath(result)``).

    ``losses`` holds the loss of every optimizer step, for plotting.
    """

    output_dir: Path
    losses: list[float]
    n_queries: int
    n_steps: int
    seconds: float
    reused: bool = False
    stamp: str = ""
    #: training-split queries kept out of training (``holdout_queries``), for validation
    holdout_qids: list[str] = field(default_factory=list)

    def __fspath__(self) -> str:
        return str(self.output_dir)

    def __str__(self) -> str:
        return str(self.output_dir)


def group_loss(logits: torch.Tensor) -> torch.Tensor:
    """Group-wise softmax cross-entropy: ``logits`` is (queries, group) with the positive at index 0.

    >>> round(float(group_loss(torch.zeros(2, 4))), 4) == round(math.log(4), 4)
    True
    """
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (queries, group >= 2), got shape {tuple(logits.shape)}")
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float(), target)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def _file_digest(h: Any, path: Path) -> None:
    h.update(path.name.encode())
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def _stamp(args: RerankerTrainArgs, base_model: str, negatives_from: str) -> str:
    """A digest of everything that decides the trained weights: arguments, data files, base model."""
    from .. import __version__

    keep = {k: v for k, v in dataclasses.asdict(args).items()
            if k not in ("output_dir", "show_progress", "logging_steps", "device")}
    h = hashlib.sha256(json.dumps([keep, __version__, negatives_from], sort_keys=True, default=str).encode())
    if args.train_data:
        _file_digest(h, Path(args.train_data))
    else:
        root = Path(args.data_dir)
        for p in (root / "corpus.jsonl", root / "queries.jsonl", root / "qrels" / f"{args.split}.tsv"):
            _file_digest(h, p)
    base = Path(base_model)
    if base.is_dir():
        for p in sorted(base.glob("*.json")) + sorted(base.glob("*.safetensors")):
            h.update(f"{p.name}:{p.stat().st_size}".encode())
    else:
        h.update(base_model.encode())
    return h.hexdigest()[:16]


def _examples_from_jsonl(path: str) -> tuple[list[RerankerExample], list[str]]:
    from ..data import load_training_jsonl

    rows = load_training_jsonl(path)
    examples = [RerankerExample(r["query"], list(r["pos"]), list(r.get("neg") or [])) for r in rows]
    pool = list(dict.fromkeys(t for e in examples for t in (*e.pos, *e.neg)))
    return examples, pool


def build_reranker_examples(data_dir: str | os.PathLike, split: str = "train", hard_negatives: str = "dense",
                            negative_range: tuple[int, int] = (0, 50), retriever: Any = None,
                            max_queries: int | None = None, seed: int = 42,
                            exclude: Sequence[str] = ()) -> tuple[list[RerankerExample], list[str]]:
    """Training examples from a BEIR split: positives from the qrels (relevance > 0), hard negatives
    from a retriever's top hits at ranks ``negative_range`` (positives and judged documents removed).

    ``retriever`` (anything with ``.search(texts, k)``, e.g. a :class:`bgekit.retrieval.DenseRetriever`
    over the same corpus) is used when given; otherwise one is built: ``"dense"`` with the bundled
    encoder, ``"bm25"`` with BM25, ``"random"`` none. Returns the examples and the corpus texts
    (the pool random negatives are drawn from). Query ids in ``exclude`` are left out (a validation set).
    """
    from ..data import doc_text, load_beir

    data = load_beir(data_dir, split)
    skip = set(exclude)
    qids = sorted(q for q, judged in data.qrels.items() if q not in skip and any(r > 0 for r in judged.values()))
    if max_queries is not None and len(qids) > max_queries:
        qids = sorted(random.Random(seed).sample(qids, max_queries))
    if not qids:
        raise ValueError(f"{data_dir}: split {split!r} has no query with a relevant document")
    texts = {d: doc_text(doc) for d, doc in data.corpus.items()}
    pool = list(texts.values())
    hits: list[list[str]] = [[] for _ in qids]
    lo, hi = negative_range
    if retriever is None and hard_negatives != "random":
        from ..retrieval import BM25Retriever, DenseRetriever

        if hard_negatives == "bm25":
            retriever = BM25Retriever(data.corpus)
        else:
            from ..encoder import Encoder

            retriever = DenseRetriever(Encoder(models.offline_model_path()), data.corpus, show_progress=False)
    if retriever is not None:
        max_judged = max(len(data.qrels[q]) for q in qids)
        found = retriever.search([data.queries[q] for q in qids], k=min(hi + max_judged, len(texts)))
        hits = [[d for d, _ in row] for row in found]
    examples = []
    for qid, row in zip(qids, hits):
        judged = data.qrels[qid]
        pos = [texts[d] for d, r in sorted(judged.items(), key=lambda kv: (-kv[1], kv[0])) if r > 0]
        # judged documents are never negatives (a partly relevant passage is not a wrong answer)
        cands = [d for d in row if d not in judged and d in texts][lo:hi]
        examples.append(RerankerExample(data.queries[qid], pos, [texts[d] for d in cands]))
    return examples, pool


def holdout_split(data_dir: str | os.PathLike, split: str, n: int, seed: int = 42) -> list[str]:
    """The ``n`` query ids of a BEIR split that :func:`train_reranker` keeps out with ``holdout_queries=n``
    (queries with a relevant document, drawn with ``seed``), sorted.

    >>> holdout_split(course_data_dir(), "train", 3)   # doctest: +SKIP
    ['q0107', 'q0301', 'q0460']
    """
    if n <= 0:
        return []
    from ..data import load_beir

    data = load_beir(data_dir, split)
    qids = sorted(q for q, judged in data.qrels.items() if any(r > 0 for r in judged.values()))
    if n >= len(qids):
        raise ValueError(f"holdout_queries={n} leaves nothing to train on: split {split!r} of {data_dir} has "
                         f"{len(qids)} queries with a relevant document")
    return sorted(random.Random(f"holdout-{seed}").sample(qids, n))


def _make_group(ex: RerankerExample, size: int, pool: Sequence[str], rng: random.Random) -> list[str]:
    """[positive, negative, ...] of length ``size``: hard negatives first, random passages to fill up."""
    pos = rng.choice(ex.pos)
    n = size - 1
    negs = rng.sample(ex.neg, n) if len(ex.neg) >= n else list(ex.neg)
    banned = set(ex.pos) | set(negs)
    tries = 0
    while len(negs) < n and tries < 50 * n:
        cand = pool[rng.randrange(len(pool))]
        tries += 1
        if cand not in banned:
            negs.append(cand)
            banned.add(cand)
    while len(negs) < n:  # a tiny pool: repeat negatives rather than fail
        negs.append(rng.choice(ex.neg or [p for p in pool if p not in ex.pos] or ["[empty]"]))
    return [pos, *negs]


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def _load_info(folder: Path) -> dict | None:
    try:
        return json.loads((folder / TRAIN_INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    base = getattr(model, model.base_model_prefix, None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"freeze_layers needs a BERT-style encoder (model.encoder.layer); {type(model).__name__} "
                         "has none")
    return layers


def train_reranker(args: RerankerTrainArgs | None = None, *, retriever: Any = None, reuse: bool = False,
                   **kwargs: Any) -> RerankerTrainResult:
    """Train the course's cross-encoder and save it to ``args.output_dir`` (atomically).

    Args:
        args: a :class:`RerankerTrainArgs`, or pass its fields as keyword arguments.
        retriever: optional retriever over the same corpus to draw hard negatives from (saves
            re-encoding the corpus when the caller already has a ``DenseRetriever``).
        reuse: when ``output_dir`` already holds a reranker trained with the same arguments, data and
            base model (same stamp), return it without training (``result.reused`` is True).

    >>> res = train_reranker(output_dir="_work/reranker", num_train_epochs=2)   # doctest: +SKIP
    >>> len(res.losses) == res.n_steps                                           # doctest: +SKIP
    True
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup
    from transformers.utils import logging as hf_logging

    from ..config import default_device, seed_everything
    from ..reranker import tokenize_pairs

    if args is None:
        args = RerankerTrainArgs(**kwargs)
    elif kwargs:
        args = dataclasses.replace(args, **kwargs)
    if not args.train_data and args.data_dir is None:
        from ..data import course_data_dir

        args = dataclasses.replace(args, data_dir=str(course_data_dir()))
    if args.train_data and not Path(args.train_data).is_file():
        raise FileNotFoundError(f"train_data {args.train_data!r} not found (expected FlagEmbedding JSONL)")
    base = str(args.model_name_or_path or models.offline_model_path())
    out_dir = Path(args.output_dir)
    neg_from = "jsonl" if args.train_data else ("retriever" if retriever is not None else args.hard_negatives)
    stamp = _stamp(args, base, neg_from)
    if reuse:
        info = _load_info(out_dir)
        if info and info.get("stamp") == stamp and (out_dir / "config.json").is_file():
            logger.info("reusing the reranker in %s (same arguments and data, stamp %s)", out_dir, stamp)
            return RerankerTrainResult(out_dir, [float(x) for x in info.get("losses", [])], info.get("n_queries", 0),
                                       info.get("n_steps", 0), float(info.get("seconds", 0.0)), True, stamp,
                                       list(info.get("holdout_qids", [])))

    t0 = time.perf_counter()
    seed_everything(args.seed)
    holdout_qids: list[str] = []
    if args.train_data and args.holdout_queries:
        raise ValueError("holdout_queries works on BEIR data (data_dir + split), not on a JSONL train_data file: "
                         "split the file yourself")
    if args.train_data:
        examples, pool = _examples_from_jsonl(args.train_data)
        if args.max_queries is not None and len(examples) > args.max_queries:
            examples = random.Random(args.seed).sample(examples, args.max_queries)
    else:
        holdout_qids = holdout_split(args.data_dir, args.split, args.holdout_queries, args.seed)
        examples, pool = build_reranker_examples(args.data_dir, args.split, args.hard_negatives, args.negative_range,
                                                 retriever, args.max_queries, args.seed, exclude=holdout_qids)
    if not examples:
        raise ValueError("no training examples")
    n_hard = sum(len(e.neg) for e in examples) / len(examples)
    logger.info("reranker training data: %d queries, %.1f hard negative candidates per query (%s), pool %d passages",
                len(examples), n_hard, neg_from, len(pool))

    device = torch.device(args.device or default_device())
    path = models.resolve_model(base)
    seed_everything(args.seed)  # the fresh head's initial weights depend on the seed only
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialised classifier" notice is expected here
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, trust_remote_code=False,
                                                                   dtype=torch.float32)
    except Exception as e:
        raise models.load_error(base, e) from e
    finally:
        hf_logging.set_verbosity(verbosity)
    model.to(device).train()

    bs, gs = int(args.per_device_train_batch_size), int(args.train_group_size)
    steps_per_epoch = math.ceil(len(examples) / bs)
    total = max(1, math.ceil(steps_per_epoch * args.num_train_epochs))
    if args.freeze_embeddings or args.freeze_layers:
        model.get_input_embeddings().weight.requires_grad_(False)
    if args.freeze_layers:
        layers = _encoder_layers(model)
        if args.freeze_layers >= len(layers):
            raise ValueError(f"freeze_layers={args.freeze_layers} would freeze all {len(layers)} layers of {base}")
        frozen = [p for layer in layers[: args.freeze_layers] for p in layer.parameters()]
        frozen += list(getattr(model, model.base_model_prefix).embeddings.parameters())
        for p in frozen:
            p.requires_grad_(False)
    head_lr = args.learning_rate if args.head_learning_rate is None else args.head_learning_rate
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            is_head = not n.startswith(model.base_model_prefix + ".embeddings") and (
                n.startswith(("classifier", "score")) or ".pooler." in n or n.startswith("pooler"))
            groups.setdefault((is_head, p.ndim >= 2 and "LayerNorm" not in n), []).append(p)
    opt = torch.optim.AdamW(
        [{"params": ps, "lr": head_lr if head else args.learning_rate,
          "weight_decay": args.weight_decay if decay else 0.0} for (head, decay), ps in groups.items()],
        lr=args.learning_rate, **({"fused": True} if device.type in ("cpu", "cuda") else {}))
    sched = get_linear_schedule_with_warmup(opt, int(round(args.warmup_ratio * total)), total)
    logger.info("training %s -> reranker: %d steps (%d queries x %d passages per step), lr %g, max_len %d, on %s",
                os.path.basename(base.rstrip("/")) or base, total, bs, gs, args.learning_rate, args.max_len, device)

    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 and device.type in ("cpu", "cuda")
                else contextlib.nullcontext())
    if args.bf16 and device.type not in ("cpu", "cuda"):
        logger.warning("bf16 autocast is not available on %s; training in fp32", device)
    losses: list[float] = []
    step, epoch = 0, 0
    bar = tqdm(total=total, desc="train reranker", unit="step", disable=not args.show_progress, leave=False)
    while step < total:
        rng = random.Random(args.seed * 1_000_003 + epoch)  # data order and groups depend on (seed, epoch)
        order = list(range(len(examples)))
        rng.shuffle(order)
        for s in range(0, len(order), bs):
            if step >= total:
                break
            batch_ex = [examples[i] for i in order[s:s + bs]]
            pairs = [(e.query, p) for e in batch_ex for p in _make_group(e, gs, pool, rng)]
            feats, _ = tokenize_pairs(tokenizer, pairs, args.max_len)
            batch = tokenizer.pad(feats, padding=True, return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast:
                logits = model(**model_inputs(batch), return_dict=True).logits[:, 0].float().view(len(batch_ex), gs)
            loss = group_loss(logits)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss became {loss.item()} at step {step}: lower learning_rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], args.max_grad_norm)
            opt.step()
            sched.step()
            losses.append(float(loss.item()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if step % args.logging_steps == 0 or step == total:
                recent = losses[-args.logging_steps:]
                logger.info("step %d/%d  loss %.4f  lr %.2e", step, total, sum(recent) / len(recent),
                            sched.get_last_lr()[-1])
        epoch += 1
    bar.close()
    model.eval()
    seconds = time.perf_counter() - t0

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        # the model reads pairs of at most max_len tokens at inference too (bgekit and sentence-transformers)
        tokenizer.model_max_length = int(args.max_len)
        tokenizer.save_pretrained(tmp)
        spec = models.ModelSpec(name=str(out_dir), kind="reranker", pooling="cls", query_instruction="",
                                dim=None, max_length=int(args.max_len), normalize=False)
        models.save_model_metadata(tmp, spec)
        atomic_write_json(tmp / TRAIN_INFO_FILE, {
            "stamp": stamp, "base_model": base, "negatives": neg_from, "n_queries": len(examples),
            "n_steps": step, "seconds": round(seconds, 2), "losses": losses, "holdout_qids": holdout_qids,
            "args": {k: v for k, v in dataclasses.asdict(args).items()},
        }, indent=None)
    logger.info("saved the reranker to %s (%d steps, %.0f s, loss %.3f -> %.3f)", out_dir, step, seconds,
                losses[0], sum(losses[-5:]) / len(losses[-5:]))
    return RerankerTrainResult(out_dir, losses, len(examples), step, seconds, False, stamp, holdout_qids)

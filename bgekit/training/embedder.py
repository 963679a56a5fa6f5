"""Fine-tune an embedder with a contrastive (InfoNCE) loss, with FlagEmbedding's arguments and data.

Each training query comes with a *group* of passages: one positive (drawn from its ``pos`` list)
and ``train_group_size - 1`` negatives (drawn from its ``neg`` list, topped up from ``corpus`` when
the list is short). The score of a query and a passage is ``q · p / temperature``; the loss is the
cross-entropy of picking the query's own positive among **every passage in the batch** (its own
hard negatives plus all the other queries' passages: *in-batch negatives*). Under ``torchrun``
with ``negatives_cross_device=True`` the passages (and queries) of all processes are gathered, so
each query competes against the passages of the global batch.

>>> from bgekit.training import TrainArgs, train_embedder
>>> out = train_embedder(TrainArgs(                                   # doctest: +SKIP
...     output_dir="ft", model_name_or_path="BAAI/bge-large-en-v1.5", train_data="train_mined.jsonl",
...     query_instruction_for_retrieval="Represent this sentence for searching relevant passages: ",
...     learning_rate=1e-5, num_train_epochs=1, per_device_train_batch_size=32, train_group_size=8,
...     temperature=0.02, fp16=True))
>>> bgekit.Encoder(out).encode_queries(["..."])                        # doctest: +SKIP

The same from a shell, on one GPU or many::

    python -m bgekit.train --output_dir ft --model_name_or_path BAAI/bge-large-en-v1.5 --train_data t.jsonl
    torchrun --nproc_per_node 2 -m bgekit.train ... --negatives_cross_device --dataloader_drop_last

Determinism: the order of the data is a function of ``(seed, epoch)`` only, and each query's group
of a function of ``(seed, epoch, query index)``, so a run resumed from a checkpoint (which also
restores optimizer, scheduler, grad-scaler and RNG states) ends with the same weights as an
uninterrupted run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import models
from .._io import atomic_dir, atomic_write_json, read_jsonl
from ..encoder import pool

logger = logging.getLogger(__name__)

__all__ = ["TrainArgs", "train_embedder", "info_nce_loss", "gather_with_grad", "contrastive_loss",
           "load_train_examples", "latest_checkpoint", "TrainExample"]

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
LOSS_HISTORY_FILE = "loss_history.json"
TRAINER_STATE_FILE = "trainer_state.json"


# ---------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainArgs:
    """Training arguments. Names and meanings follow FlagEmbedding (and HF ``TrainingArguments``).

    >>> TrainArgs(output_dir="ft", train_data="train.jsonl", train_group_size=4).temperature
    0.02
    """

    output_dir: str = field(default="", metadata={"help": "where checkpoints and the final model go"})
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "hub id or folder; default: the course mode's embedder"})
    train_data: str = field(default="", metadata={
        "help": "FlagEmbedding JSONL ({query, pos: [...], neg: [...]}) or a folder of such files"})
    learning_rate: float = field(default=5e-5, metadata={"help": "peak AdamW learning rate"})
    fp16: bool = field(default=False, metadata={"help": "fp16 autocast + grad scaling (CUDA only)"})
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast (CUDA only)"})
    num_train_epochs: float = field(default=3.0, metadata={"help": "passes over the data (fractions allowed)"})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "queries per process per micro-batch"})
    dataloader_drop_last: bool = field(default=False, metadata={"help": "drop the last incomplete batch"})
    normlized: bool = field(default=True, metadata={
        "help": "L2-normalise embeddings (FlagEmbedding's spelling); when False the temperature is 1"})
    temperature: float = field(default=0.02, metadata={"help": "scores are q.p / temperature"})
    query_max_len: int = field(default=32, metadata={"help": "max tokens per query (with instruction)"})
    passage_max_len: int = field(default=128, metadata={"help": "max tokens per passage"})
    train_group_size: int = field(default=8, metadata={"help": "passages per query: 1 positive + N-1 negatives"})
    negatives_cross_device: bool = field(default=False, metadata={
        "help": "gather passages of all processes as negatives (under torchrun)"})
    logging_steps: int = field(default=500, metadata={"help": "log the loss every N optimizer steps"})
    save_steps: int = field(default=500, metadata={"help": "write output_dir/checkpoint-<step> every N steps (0: never)"})
    query_instruction_for_retrieval: str | None = field(default=None, metadata={
        "help": "prefix added to every query (BGE: 'Represent this sentence for searching relevant passages: ')"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "trade compute for activation memory"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    warmup_ratio: float = field(default=0.0, metadata={"help": "share of steps with linear warm-up"})
    seed: int = field(default=42, metadata={"help": "seed for data order, sampling, dropout"})
    # bgekit additions
    resume_from_checkpoint: str | None = field(default=None, metadata={
        "help": "a checkpoint folder, or 'latest' for the newest checkpoint in output_dir"})
    max_steps: int = field(default=-1, metadata={"help": "total optimizer steps; overrides num_train_epochs when > 0"})
    corpus: str | None = field(default=None, metadata={
        "help": "JSONL ({text[, title]} per line) or BEIR folder to sample negatives from when a query has too few"})
    pooling: str | None = field(default=None, metadata={"help": "'cls' or 'mean'; default: from the model registry/folder"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (not on biases and LayerNorms)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0: off)"})
    save_total_limit: int | None = field(default=None, metadata={"help": "keep only the newest N checkpoints"})
    device: str | None = field(default=None, metadata={"help": "cuda / cpu / mps; default: best available"})
    show_progress: bool = field(default=True, metadata={"help": "tqdm progress bar"})

    def __post_init__(self) -> None:
        problems = []
        if not self.output_dir:
            problems.append("output_dir is required")
        if not self.train_data:
            problems.append("train_data is required")
        for name in ("per_device_train_batch_size", "train_group_size", "gradient_accumulation_steps",
                     "query_max_len", "passage_max_len"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            problems.append(f"temperature must be > 0, got {self.temperature}")
        if not 0 <= self.warmup_ratio <= 1:
            problems.append(f"warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        if self.max_steps <= 0 and not self.num_train_epochs > 0:
            problems.append("num_train_epochs must be > 0 (or set max_steps)")
        if self.fp16 and self.bf16:
            problems.append("choose one of fp16 and bf16")
        if self.pooling not in (None, "cls", "mean"):
            problems.append(f"pooling must be 'cls' or 'mean', got {self.pooling!r}")
        if self.logging_steps < 1:
            problems.append(f"logging_steps must be >= 1, got {self.logging_steps}")
        if self.save_steps < 0:
            problems.append(f"save_steps must be >= 0, got {self.save_steps}")
        if problems:
            raise ValueError("Invalid training arguments: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainExample:
    """One training query: its text, positives, negatives and where it came from (``file:line``)."""

    query: str
    pos: list[str]
    neg: list[str]
    where: str


def _data_files(train_data: str | os.PathLike) -> list[Path]:
    path = Path(train_data)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".jsonl" and p.is_file())
        if not files:
            raise FileNotFoundError(f"{path}: no *.jsonl training files in this folder")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"training data not found: {path}")
    return [path]


def load_corpus_texts(corpus: str | os.PathLike) -> list[str]:
    """Passage texts to sample negatives from: a JSONL file (``{"text"[, "title"]}`` or
    ``{"_id", "title", "text"}`` per line) or a BEIR folder holding ``corpus.jsonl``. Duplicates dropped."""
    from ..data import doc_text

    path = Path(corpus)
    if path.is_dir():
        path = path / "corpus.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"corpus not found: {path}")
    seen: dict[str, None] = {}
    for lineno, obj in read_jsonl(path):
        text = obj.get("text")
        if not isinstance(text, str):
            raise ValueError(f"{path}:{lineno}: expected a string 'text' field")
        title = obj.get("title") or ""
        if not isinstance(title, str):
            raise ValueError(f"{path}:{lineno}: 'title' must be a string")
        t = doc_text({"title": title, "text": text})
        if t:
            seen[t] = None
    if not seen:
        raise ValueError(f"{path}: the corpus has no passages")
    return list(seen)


def load_train_examples(train_data: str | os.PathLike, train_group_size: int,
                        corpus: Sequence[str] | None = None) -> list[TrainExample]:
    """Read and check FlagEmbedding training data before any training starts.

    Raises ``ValueError("file:line: ...")`` naming every bad line (up to 10): missing keys, an empty
    ``pos``, or fewer than ``train_group_size - 1`` negatives when no ``corpus`` can top them up.
    """
    from ..data import load_training_jsonl

    need = train_group_size - 1
    examples: list[TrainExample] = []
    problems: list[str] = []
    for path in _data_files(train_data):
        rows = load_training_jsonl(path)  # format errors: "path:line: ..."
        linenos = [ln for ln, _ in read_jsonl(path)]
        for lineno, row in zip(linenos, rows):
            where = f"{path}:{lineno}"
            query, pos, neg = row.get("query"), row.get("pos"), row.get("neg", [])
            if not isinstance(query, str) or not query.strip():
                problems.append(f"{where}: 'query' must be a non-empty string")
                continue
            if not isinstance(pos, list) or not pos or not all(isinstance(p, str) and p.strip() for p in pos):
                problems.append(f"{where}: 'pos' must be a non-empty list of non-empty strings")
                continue
            if not isinstance(neg, list) or not all(isinstance(n, str) for n in neg):
                problems.append(f"{where}: 'neg' must be a list of strings")
                continue
            neg = list(dict.fromkeys(n for n in neg if n.strip() and n not in pos))
            if len(neg) < need and not corpus:
                problems.append(
                    f"{where}: {len(neg)} usable negative(s) but train_group_size={train_group_size} needs "
                    f"{need}; lower --train_group_size, mine more negatives (python -m bgekit.mine), or pass "
                    f"--corpus to sample the missing ones from a corpus")
                continue
            examples.append(TrainExample(query, list(pos), neg, where))
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise ValueError("Bad training data:\n  " + "\n  ".join(problems[:10]) + more)
    if not examples:
        raise ValueError(f"{train_data}: no training examples")
    return examples


def _sample_group(ex: TrainExample, rng: np.random.Generator, group_size: int,
                  corpus: Sequence[str] | None) -> list[str]:
    """``[positive, negative_1, ..., negative_{group_size-1}]`` for one query."""
    group = [ex.pos[int(rng.integers(len(ex.pos)))]]
    need = group_size - 1
    if need == 0:
        return group
    if len(ex.neg) >= need:
        return group + [ex.neg[i] for i in rng.choice(len(ex.neg), need, replace=False)]
    negs = [ex.neg[i] for i in rng.permutation(len(ex.neg))]
    assert corpus, "checked in load_train_examples"
    taken, skip = set(negs), set(ex.pos)
    tries = 0
    while len(negs) < need:
        cand = corpus[int(rng.integers(len(corpus)))]
        tries += 1
        if cand in skip or cand in taken:
            if tries > 100 * group_size + len(corpus):
                raise ValueError(f"{ex.where}: the corpus has too few passages to sample {need} negatives")
            continue
        taken.add(cand)
        negs.append(cand)
    return group + negs


# ---------------------------------------------------------------------------------------------
# loss
# ---------------------------------------------------------------------------------------------
def info_nce_loss(q: torch.Tensor, p: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with in-batch negatives.

    ``q``: ``(B, d)`` query embeddings; ``p``: ``(B * G, d)`` passage embeddings where rows
    ``i*G .. i*G+G-1`` are query ``i``'s group with its positive first. Every query is scored
    against every passage (``q @ p.T / temperature``) and the target is the index of its positive,
    ``i * G``. Returns the mean cross-entropy over the ``B`` queries (computed in float32).

    >>> q = torch.eye(2); p = torch.eye(2).repeat_interleave(2, 0)   # groups [e0, e0], [e1, e1]
    >>> round(info_nce_loss(q, p, 1.0).item(), 4)
    1.0064
    """
    if q.ndim != 2 or p.ndim != 2 or q.shape[1] != p.shape[1]:
        raise ValueError(f"expected q (B, d) and p (B*G, d), got {tuple(q.shape)} and {tuple(p.shape)}")
    b = q.shape[0]
    if b == 0 or p.shape[0] % b:
        raise ValueError(f"{p.shape[0]} passages is not a whole group per query for {b} queries")
    g = p.shape[0] // b
    scores = q.float() @ p.float().T / temperature
    target = torch.arange(b, device=q.device) * g
    return F.cross_entropy(scores, target)


def _dist_on() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` from all processes (rank order); gradients flow into the local part only.

    Every rank must pass a tensor of the same shape. Without a process group, returns ``t``.
    """
    if not _dist_on() or torch.distributed.get_world_size() == 1:
        return t
    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    parts = [torch.empty_like(t) for _ in range(world)]
    torch.distributed.all_gather(parts, t.detach().contiguous())
    parts[rank] = t  # the local slot keeps its autograd history
    return torch.cat(parts, dim=0)


def contrastive_loss(q: torch.Tensor, p: torch.Tensor, temperature: float,
                     negatives_cross_device: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(loss_to_backward, loss_value)`` for this process's queries ``q`` and groups ``p``.

    Cross-device: queries and passages of all ranks are gathered and each rank computes the loss of
    the *global* batch; its gradient reaches only the local embeddings, so rank ``r`` holds the
    global loss's gradient through its own part. DDP averages gradients over ``W`` ranks, hence the
    ``* W``: the summed parts then equal single-process training on the global batch.
    """
    if negatives_cross_device and _dist_on() and torch.distributed.get_world_size() > 1:
        loss = info_nce_loss(gather_with_grad(q), gather_with_grad(p), temperature)
        return loss * torch.distributed.get_world_size(), loss.detach()
    loss = info_nce_loss(q, p, temperature)
    return loss, loss.detach()


class BiEncoder(torch.nn.Module):
    """Wraps an HF ``AutoModel``: ``forward(query_batch, passage_batch) -> (q_emb, p_emb)`` (one call, for DDP)."""

    def __init__(self, model: torch.nn.Module, pooling: str, normalize: bool) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.normalize = normalize

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model(**batch, return_dict=True)
        emb = pool(out.last_hidden_state, batch["attention_mask"], self.pooling).float()
        return F.normalize(emb, p=2, dim=-1) if self.normalize else emb

    def forward(self, q: dict[str, torch.Tensor], p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(q), self.encode(p)


# ---------------------------------------------------------------------------------------------
# checkpoints and RNG
# ---------------------------------------------------------------------------------------------
def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The ``checkpoint-<step>`` folder with the highest step in ``output_dir`` (or ``None``)."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return max(found)[1] if found else None


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------
class _Dist:
    """Process-group bookkeeping: starts one under torchrun (gloo on CPU, nccl on CUDA)."""

    def __init__(self, device: str | None) -> None:
        from ..config import default_device

        self.owned = False
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not _dist_on():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            use_cuda = torch.cuda.is_available() and (device or "cuda").startswith("cuda")
            if use_cuda:
                torch.cuda.set_device(local)
            torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
            self.owned = True
        self.world = torch.distributed.get_world_size() if _dist_on() else 1
        self.rank = torch.distributed.get_rank() if _dist_on() else 0
        dev = device or default_device()
        if dev == "cuda" and self.world > 1:
            dev = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        self.device = torch.device(dev)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def mean(self, x: float) -> float:
        if self.world == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world

    def gather_objects(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.owned and _dist_on():
            torch.distributed.destroy_process_group()


def _load_auto_model(path: str) -> torch.nn.Module:
    import transformers
    from transformers import AutoModel

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    kw = {"dtype": torch.float32} if (major, minor) >= (4, 56) else {"torch_dtype": torch.float32}
    return AutoModel.from_pretrained(path, **kw)


def _final_spec(args: TrainArgs, model: torch.nn.Module) -> models.ModelSpec:
    base = models.get_spec(args.model_name_or_path)
    cfg = model.config
    max_pos = int(getattr(cfg, "max_position_embeddings", 0) or 0)
    max_len = min(int(base.max_length), max_pos) if max_pos > 0 else int(base.max_length)
    return replace(base, name=str(args.output_dir), kind="embedder", pooling=args.pooling or base.pooling,
                   normalize=bool(args.normlized), query_instruction=args.query_instruction_for_retrieval or "",
                   dim=int(cfg.hidden_size), max_length=max_len, known=True)


class _Trainer:
    def __init__(self, args: TrainArgs, dist: _Dist) -> None:
        from transformers import AutoTokenizer

        from ..config import default_embedder

        self.args = args
        self.dist = dist
        self.out = Path(args.output_dir)
        if args.model_name_or_path is None:
            args.model_name_or_path = default_embedder()
        self.temperature = float(args.temperature)
        if not args.normlized and self.temperature != 1.0:
            logger.warning("normlized=False: using temperature 1.0 (as FlagEmbedding does) instead of %s",
                           args.temperature)
            self.temperature = 1.0

        # data first: bad data must fail before a model is loaded
        corpus = load_corpus_texts(args.corpus) if args.corpus else None
        self.corpus = corpus
        self.examples = load_train_examples(args.train_data, args.train_group_size, corpus)
        self.n = len(self.examples)
        self.b = int(args.per_device_train_batch_size)
        self.global_batch = self.b * dist.world
        if args.dataloader_drop_last:
            self.micro_per_epoch = self.n // self.global_batch
            if self.micro_per_epoch == 0:
                raise ValueError(f"{self.n} training queries are fewer than one global batch "
                                 f"({self.b} x {dist.world} processes) with dataloader_drop_last=True")
        else:
            self.micro_per_epoch = math.ceil(self.n / self.global_batch)
        self.accum = int(args.gradient_accumulation_steps)
        self.updates_per_epoch = math.ceil(self.micro_per_epoch / self.accum)
        self.total_steps = int(args.max_steps) if args.max_steps > 0 else \
            math.ceil(args.num_train_epochs * self.updates_per_epoch)

        # model
        _seed_all(args.seed)
        name = args.model_name_or_path
        path = models.resolve_model(name)
        resume_dir = self._resume_dir()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            model = _load_auto_model(str(resume_dir) if resume_dir else path)
        except Exception as e:
            raise models.load_error(name, e) from e
        self.spec = _final_spec(args, model)
        # a pooler head (BERT) is not used by CLS/mean pooling: freeze it so DDP sees no unused parameters
        pooler = getattr(model, "pooler", None)
        if isinstance(pooler, torch.nn.Module):
            for prm in pooler.parameters():
                prm.requires_grad_(False)
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.to(dist.device).train()
        self.model = model
        self.module = BiEncoder(model, self.spec.pooling, bool(args.normlized))
        if dist.world > 1:
            ids = [dist.device.index] if dist.device.type == "cuda" else None
            self.ddp: torch.nn.Module | None = torch.nn.parallel.DistributedDataParallel(self.module, device_ids=ids)
        else:
            self.ddp = None

        # precision
        cuda = dist.device.type == "cuda"
        self.amp_dtype = None
        if args.fp16 or args.bf16:
            if cuda:
                self.amp_dtype = torch.float16 if args.fp16 else torch.bfloat16
            else:
                logger.warning("fp16/bf16 need a CUDA GPU; training in fp32 on %s", dist.device)
        self.scaler = torch.amp.GradScaler("cuda") if (self.amp_dtype == torch.float16) else None

        # optimizer and schedule
        from transformers import get_linear_schedule_with_warmup

        decay, no_decay = [], []
        for n_, prm in model.named_parameters():
            if prm.requires_grad:
                (no_decay if prm.ndim < 2 or "LayerNorm" in n_ or "layernorm" in n_ else decay).append(prm)
        groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.params = decay + no_decay
        self.optimizer = torch.optim.AdamW(groups, lr=args.learning_rate)
        warmup = math.ceil(args.warmup_ratio * self.total_steps)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, warmup, self.total_steps)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self._order_cache: tuple[int, np.ndarray] | None = None
        if resume_dir:
            self._load_checkpoint(resume_dir)

    # -- data order -------------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order_cache is None or self._order_cache[0] != epoch:
            order = np.random.default_rng([self.args.seed, epoch]).permutation(self.n)
            if not self.args.dataloader_drop_last:
                # like DistributedSampler: pad so every process gets the same number of queries
                total = self.micro_per_epoch * self.global_batch
                last = self.n - (self.micro_per_epoch - 1) * self.global_batch
                pad = (-last) % self.dist.world
                order = np.concatenate([order, order[:pad]]) if pad else order
                assert len(order) <= total
            self._order_cache = (epoch, order)
        return self._order_cache[1]

    def _local_groups(self, epoch: int, micro: int) -> tuple[list[str], list[str]]:
        order = self._epoch_order(epoch)
        glob = order[micro * self.global_batch:(micro + 1) * self.global_batch]
        per = len(glob) // self.dist.world
        local = glob[self.dist.rank * per:(self.dist.rank + 1) * per]
        instr = self.args.query_instruction_for_retrieval or ""
        queries, passages = [], []
        for idx in local:
            ex = self.examples[int(idx)]
            rng = np.random.default_rng([self.args.seed, epoch, int(idx), 1])
            queries.append(instr + ex.query)
            passages.extend(_sample_group(ex, rng, self.args.train_group_size, self.corpus))
        return queries, passages

    def _tokenize(self, texts: list[str], max_len: int) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return {k: v.to(self.dist.device) for k, v in enc.items()}

    # -- checkpoints ------------------------------------------------------------------------
    def _resume_dir(self) -> Path | None:
        r = self.args.resume_from_checkpoint
        if not r:
            return None
        if r == "latest":
            found = latest_checkpoint(self.out)
            if found is None:
                raise FileNotFoundError(f"resume_from_checkpoint='latest' but {self.out} has no checkpoint-<step> folder")
            return found
        p = Path(r)
        if not (p / TRAINER_STATE_FILE).is_file():
            raise FileNotFoundError(f"{p} is not a bgekit training checkpoint (no {TRAINER_STATE_FILE})")
        return p

    def _load_checkpoint(self, ckpt: Path) -> None:
        state = json.loads((ckpt / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
        same = {k: (state.get(k), v) for k, v in dict(
            world_size=self.dist.world, global_batch=self.global_batch, total_steps=self.total_steps,
            seed=self.args.seed, gradient_accumulation_steps=self.accum,
            train_group_size=self.args.train_group_size, n_examples=self.n).items()}
        differ = {k: v for k, v in same.items() if v[0] != v[1]}
        if differ:
            logger.warning("resuming %s with different settings (checkpoint vs now): %s; the run will not "
                           "match an uninterrupted one", ckpt, differ)
        dev = self.dist.device
        self.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=dev, weights_only=False))
        self.scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
        if self.scaler is not None and (ckpt / "scaler.pt").is_file():
            self.scaler.load_state_dict(torch.load(ckpt / "scaler.pt", weights_only=False))
        self.step = int(state["step"])
        self.history = list(state.get("loss_history", []))
        rng_file = ckpt / f"rng_state_{self.dist.rank}.pth"
        self._resume_rng = torch.load(rng_file, weights_only=False) if rng_file.is_file() else None
        if self._resume_rng is None:
            logger.warning("%s has no RNG state for rank %d: dropout will differ from the original run",
                           ckpt, self.dist.rank)
        logger.info("resumed from %s at step %d/%d", ckpt, self.step, self.total_steps)

    def _save_checkpoint(self) -> Path:
        rngs = self.dist.gather_objects(_rng_state())
        path = self.out / f"checkpoint-{self.step}"
        if self.dist.main:
            with atomic_dir(path) as tmp:
                self.model.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
                models.save_model_metadata(tmp, self.spec, self.spec.dim)
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
                if self.scaler is not None:
                    torch.save(self.scaler.state_dict(), tmp / "scaler.pt")
                for r, st in enumerate(rngs):
                    torch.save(st, tmp / f"rng_state_{r}.pth")
                epoch, pos = divmod(self.step, self.updates_per_epoch)
                atomic_write_json(tmp / TRAINER_STATE_FILE, {
                    "step": self.step, "epoch": epoch, "update_in_epoch": pos,
                    "micro_batch_in_epoch": min(pos * self.accum, self.micro_per_epoch),
                    "total_steps": self.total_steps, "world_size": self.dist.world,
                    "global_batch": self.global_batch, "seed": self.args.seed,
                    "gradient_accumulation_steps": self.accum, "train_group_size": self.args.train_group_size,
                    "n_examples": self.n, "args": self.args.to_dict(), "loss_history": self.history})
            logger.info("saved %s", path)
            if self.args.save_total_limit:
                ckpts = sorted((int(m.group(1)), p) for p in self.out.iterdir()
                               if p.is_dir() and (m := CHECKPOINT_RE.match(p.name)))
                for _, old in ckpts[:-int(self.args.save_total_limit)]:
                    shutil.rmtree(old, ignore_errors=True)
        self.dist.barrier()
        return path

    def _save_final(self) -> None:
        if not self.dist.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = Path(self.out) / f".final-{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            models.save_model_metadata(tmp, self.spec, self.spec.dim)
            atomic_write_json(tmp / "training_args.json", self.args.to_dict())
            atomic_write_json(tmp / LOSS_HISTORY_FILE, self.history)
            # move each finished file into place (each os.replace is atomic; weights before metadata)
            entries = sorted(tmp.iterdir(), key=lambda p: (p.name == models.METADATA_FILE, p.name))
            for src in entries:
                dst = self.out / src.name
                if src.is_dir():
                    if dst.exists():
                        shutil.rmtree(dst)
                    os.replace(src, dst)
                else:
                    os.replace(src, dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # -- the loop ---------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.dist.device.type, dtype=self.amp_dtype)

    def train(self) -> Path:
        args, dist = self.args, self.dist
        if dist.main:
            logger.info("training %s: %d queries, %d process(es) x %d queries x %d passages, %d step(s) "
                        "(%d per epoch), lr %g, temperature %g, %s pooling, cross-device negatives %s",
                        args.model_name_or_path, self.n, dist.world, self.b, args.train_group_size,
                        self.total_steps, self.updates_per_epoch, args.learning_rate, self.temperature,
                        self.spec.pooling, args.negatives_cross_device and dist.world > 1)
        if getattr(self, "_resume_rng", None) is not None:
            _set_rng_state(self._resume_rng)
        net = self.ddp if self.ddp is not None else self.module
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step",
                   disable=not (args.show_progress and dist.main))
        t0 = time.perf_counter()
        while self.step < self.total_steps:
            epoch, u = divmod(self.step, self.updates_per_epoch)
            micros = range(u * self.accum, min(self.micro_per_epoch, (u + 1) * self.accum))
            step_loss = 0.0
            for k, j in enumerate(micros):
                queries, passages = self._local_groups(epoch, j)
                qb = self._tokenize(queries, args.query_max_len)
                pb = self._tokenize(passages, args.passage_max_len)
                last = k == len(micros) - 1
                sync = contextlib.nullcontext() if (self.ddp is None or last) else self.ddp.no_sync()
                with sync:
                    with self._autocast():
                        q, p = net(qb, pb)
                    loss, value = contrastive_loss(q, p, self.temperature, args.negatives_cross_device)
                    loss = loss / len(micros)
                    (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
                step_loss += float(value) / len(micros)
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            if args.max_grad_norm and args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.params, args.max_grad_norm)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            lr = self.scheduler.get_last_lr()[0]
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            if not (args.negatives_cross_device and dist.world > 1):
                step_loss = dist.mean(step_loss)
            self.history.append({"step": self.step, "epoch": round(self.step / self.updates_per_epoch, 4),
                                 "loss": step_loss, "learning_rate": lr})
            bar.update(1)
            if self.step % args.logging_steps == 0 or self.step == self.total_steps:
                recent = [h["loss"] for h in self.history[-args.logging_steps:]]
                bar.set_postfix(loss=f"{np.mean(recent):.4f}")
                if dist.main:
                    logger.info("step %d/%d  epoch %.2f  loss %.4f  lr %.2e", self.step, self.total_steps,
                                self.step / self.updates_per_epoch, float(np.mean(recent)), lr)
            if args.save_steps and self.step % args.save_steps == 0 and self.step < self.total_steps:
                self._save_checkpoint()
        bar.close()
        elapsed = time.perf_counter() - t0
        self._save_final()
        dist.barrier()
        if dist.main:
            logger.info("finished %d step(s) in %.1fs; model saved to %s", self.total_steps, elapsed, self.out)
        return self.out


def train_embedder(args: TrainArgs | None = None, **kwargs: Any) -> Path:
    """Fine-tune an embedder contrastively and save it as a plain HF folder; returns ``output_dir``.

    Pass a :class:`TrainArgs` or its fields as keywords. The folder holds the model, the tokenizer,
    ``bgekit.json`` + sentence-transformers metadata (pooling, instruction), ``loss_history.json``
    and ``training_args.json``; ``checkpoint-<step>/`` folders appear every ``save_steps``.

    >>> out = train_embedder(output_dir="ft", train_data="train.jsonl", num_train_epochs=1,  # doctest: +SKIP
    ...                      per_device_train_batch_size=16, train_group_size=4)
    >>> Encoder(out)                                                                         # doctest: +SKIP
    """
    if args is None:
        args = TrainArgs(**kwargs)
    elif kwargs:
        args = replace(args, **kwargs)
    elif not isinstance(args, TrainArgs):
        raise TypeError(f"args must be TrainArgs, got {type(args).__name__}")
    else:
        args = replace(args)  # the trainer fills in defaults; leave the caller's object alone
    dist = _Dist(args.device)
    try:
        return _Trainer(args, dist).train()
    finally:
        dist.close()


def iter_loss_history(output_dir: str | os.PathLike) -> Iterator[dict[str, float]]:
    """The per-step records (``step``, ``epoch``, ``loss``, ``learning_rate``) a training run saved."""
    yield from json.loads((Path(output_dir) / LOSS_HISTORY_FILE).read_text(encoding="utf-8"))

"""Training data: FlagEmbedding JSONL ``{query, pos, neg}``, query groups, and the batches the trainers read.

Rows are checked by :func:`bgekit.data.validate_training_row` (the one row check of bgekit) before any
model is loaded, errors naming file and line.

**Rows with too few negatives** (fewer than ``train_group_size - 1``, common after mining with a
margin) are kept and topped up: the missing negatives are drawn at random from ``corpus`` when one
is given, else from the other passages of the training data (never one of the row's positives).
How many rows were topped up is logged. (FlagEmbedding repeats the row's negatives instead, which
fails on a row with none; dropping the rows would lose their positives.)

Each query's group is a function of ``(seed, epoch, row index)`` only, so the data of a run resumed
from a checkpoint is the data of the uninterrupted run.
"""
from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from .._io import read_jsonl
from ..data import missing_positives, normalize_text, validate_training_row
from .losses import text_ids

logger = logging.getLogger(__name__)

__all__ = ["EmbedderCollator", "GroupDataset", "EpochCallback", "RerankerCollator", "TrainExample",
           "build_reranker_examples", "holdout_split", "load_train_examples", "sample_group"]


@dataclass
class TrainExample:
    """One training query: its text, positives, negatives (positives and duplicates removed), ``file:line``."""

    query: str
    pos: list[str]
    neg: list[str]
    where: str = ""


def load_train_examples(train_data: str | os.PathLike, train_group_size: int = 1,
                        corpus: Sequence[str] | None = None,
                        max_example_num_per_dataset: int | None = None) -> tuple[list[TrainExample], list[str]]:
    """Read and check FlagEmbedding training data (a file or a folder of ``*.jsonl``).

    Args:
        train_data: the JSONL file or folder.
        train_group_size: passages per query; rows with fewer than ``train_group_size - 1`` negatives
            are counted (logged) and topped up when sampled.
        corpus: passages to top up from; default: every ``pos``/``neg`` text of the training data.
        max_example_num_per_dataset: keep at most this many rows per file (the first ones).

    Returns:
        ``(examples, pool)``: the rows, and the passages missing negatives are drawn from.

    Raises:
        FileNotFoundError: no such file or folder.
        ValueError: ``"path:line: what is wrong"`` for the first bad row; too small a pool.
    """
    root = Path(train_data)
    files = sorted(p for p in root.glob("*.jsonl") if p.is_file()) if root.is_dir() else [root]
    if not files or not files[0].is_file():
        raise FileNotFoundError(f"{root}: no *.jsonl training files in this folder" if root.is_dir() else
                                f"training data not found: {root}")
    examples: list[TrainExample] = []
    for path in files:
        n_file = 0
        for lineno, obj in read_jsonl(path):
            if max_example_num_per_dataset and n_file >= max_example_num_per_dataset:
                break
            where = f"{path}:{lineno}"
            row = validate_training_row(obj, where)
            pos = list(dict.fromkeys(row["pos"]))
            keys = {normalize_text(t) for t in pos}
            neg = [n for n in dict.fromkeys(row.get("neg") or []) if normalize_text(n) not in keys]
            examples.append(TrainExample(row["query"], pos, neg, where))
            n_file += 1
    if not examples:
        raise ValueError(f"{train_data}: no training rows")
    pool = list(corpus) if corpus else list(dict.fromkeys(t for e in examples for t in (*e.pos, *e.neg)))
    in_pool = {normalize_text(t) for t in pool}
    if corpus:
        missing_positives((t for e in examples for t in e.pos), in_pool, "corpus")
    need = train_group_size - 1
    short = [e for e in examples if len(e.neg) < need]
    if short:
        worst = min(short, key=lambda e: len(e.neg))
        if len(in_pool - {normalize_text(t) for t in (*worst.pos, *worst.neg)}) < need - len(worst.neg):
            raise ValueError(f"{worst.where}: {len(worst.neg)} negative(s), train_group_size={train_group_size} "
                             f"needs {need}, and the {'corpus' if corpus else 'training data'} has too few other "
                             f"passages to draw the rest from; lower --train_group_size or pass --corpus")
        logger.warning("%d of %d training rows have fewer than train_group_size-1=%d negatives (fewest: %d, %s): "
                       "the missing ones are drawn at random from %s", len(short), len(examples), need,
                       len(worst.neg), worst.where, "the corpus" if corpus else "the other passages of the data")
    return examples, pool


def sample_group(ex: TrainExample, rng: np.random.Generator, group_size: int, pool: Sequence[str]) -> list[str]:
    """``[positive, negative_1, ..., negative_{group_size-1}]`` for one query.

    The positive is one of ``ex.pos``; negatives come from ``ex.neg`` (without repetition) and, when
    there are too few, from ``pool``; a negative is never one of the query's positives (the softmax would push a
    right answer down) nor a repeat, texts compared after whitespace normalisation
    (:func:`bgekit.data.normalize_text`). The embedder and the reranker trainers both draw their groups here.

    Raises:
        ValueError: the pool has too few other passages.
    """
    group = [ex.pos[int(rng.integers(len(ex.pos)))]]
    need = group_size - 1
    positives = {normalize_text(t) for t in ex.pos}
    hard = [n for n in ex.neg if normalize_text(n) not in positives]
    if len(hard) >= need:
        return group + [hard[i] for i in rng.choice(len(hard), need, replace=False)]
    negs = [hard[i] for i in rng.permutation(len(hard))]
    taken = positives | {normalize_text(t) for t in negs}
    for i in rng.permutation(len(pool)):
        if len(negs) == need:
            break
        if (key := normalize_text(pool[i])) not in taken:
            taken.add(key)
            negs.append(pool[i])
    if len(negs) < need:
        raise ValueError(f"{ex.where}: too few passages to draw {need} negatives from")
    return group + negs


class GroupDataset(torch.utils.data.Dataset):
    """Item ``i``: ``{"query", "passages" (group, positive first), "pos"}`` for row ``i``, drawn with
    ``(seed, epoch, i)``: the training data of both trainers (a bi-encoder's groups, a cross-encoder's pairs)."""

    def __init__(self, examples: Sequence[TrainExample], pool: Sequence[str], group_size: int, seed: int) -> None:
        self.examples, self.pool, self.group_size, self.seed = list(examples), list(pool), group_size, seed
        self.epoch = 0
        self.max_pos = max(len(e.pos) for e in self.examples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.examples[i]
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        return {"query": ex.query, "passages": sample_group(ex, rng, self.group_size, self.pool), "pos": ex.pos}


class EmbedderCollator:
    """Tokenises a list of :class:`GroupDataset` items into ``{"query", "passage", "query_pos_ids", "passage_ids"}``.

    ``query``/``passage`` are tokenizer outputs (instructions prepended); the ids are :func:`text_ids` of
    each query's positives ``(B, max_pos)`` (0-padded) and of the passages ``(B * G,)``, for masking.
    """

    def __init__(self, tokenizer: Any, query_max_len: int, passage_max_len: int, max_pos: int,
                 query_instruction_for_retrieval: str | None = None, passage_instruction: str | None = None) -> None:
        self.tokenizer, self.qlen, self.plen, self.max_pos = tokenizer, query_max_len, passage_max_len, max_pos
        self.qi, self.pi = query_instruction_for_retrieval or "", passage_instruction or ""

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        queries = [self.qi + it["query"] for it in items]
        passages = [p for it in items for p in it["passages"]]
        tok = self.tokenizer
        q = tok(queries, padding=True, truncation=True, max_length=self.qlen, return_tensors="pt")
        p = tok([self.pi + t for t in passages], padding=True, truncation=True, max_length=self.plen,
                return_tensors="pt")
        pos_ids = torch.zeros(len(items), self.max_pos, dtype=torch.long)
        for i, it in enumerate(items):
            pos_ids[i, :len(it["pos"])] = text_ids(it["pos"])
        return {"query": dict(q), "passage": dict(p), "query_pos_ids": pos_ids, "passage_ids": text_ids(passages)}


class EpochCallback(TrainerCallback):
    """Tells the dataset which epoch starts (its groups depend on it), also after resuming mid-epoch."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch + 1e-9) if state.epoch else 0)


# --------------------------------------------------------------------------------------------- reranker
def _answered(data: Any) -> list[str]:
    """The query ids of a :class:`bgekit.data.BeirData` with at least one relevant document, sorted."""
    return sorted(q for q, judged in data.qrels.items() if any(r > 0 for r in judged.values()))


def build_reranker_examples(data_dir: str | os.PathLike, split: str = "train", hard_negatives: str = "dense",
                            negative_range: tuple[int, int] = (0, 50), retriever: Any = None,
                            max_queries: int | None = None, seed: int = 42,
                            exclude: Sequence[str] = ()) -> tuple[list[TrainExample], list[str]]:
    """Training examples from a BEIR split: positives from the qrels (relevance > 0), hard negatives
    from a retriever's top hits at ranks ``negative_range`` (positives and judged documents removed).

    ``retriever`` (anything with ``.search(texts, k)``, e.g. a :class:`bgekit.retrieval.DenseRetriever`
    over the same corpus) is used when given; otherwise one is built: ``"dense"`` with the bundled
    encoder, ``"bm25"`` with BM25, ``"random"`` none. Returns the examples and the corpus texts
    (the pool random negatives are drawn from). Query ids in ``exclude`` are left out (a validation set).

    Raises:
        ValueError: the split has no query with a relevant document.
    """
    from .. import models
    from ..data import doc_text, load_beir

    data = load_beir(data_dir, split)
    qids = sorted(set(_answered(data)) - set(exclude))
    if max_queries is not None and len(qids) > max_queries:
        qids = sorted(random.Random(seed).sample(qids, max_queries))
    if not qids:
        raise ValueError(f"{data_dir}: split {split!r} has no query with a relevant document")
    texts = {d: doc_text(doc) for d, doc in data.corpus.items()}
    hits: list[list[str]] = [[] for _ in qids]
    lo, hi = negative_range
    if retriever is None and hard_negatives != "random":
        from ..retrieval import BM25Retriever, DenseRetriever

        if hard_negatives == "bm25":
            retriever = BM25Retriever(data.corpus)
        else:
            from ..embedder import Embedder

            retriever = DenseRetriever(Embedder(models.offline_model_path()), data.corpus, show_progress=False)
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
        examples.append(TrainExample(data.queries[qid], pos, [texts[d] for d in cands], f"{split}:{qid}"))
    return examples, list(texts.values())


def holdout_split(data_dir: str | os.PathLike, split: str, n: int, seed: int = 42) -> list[str]:
    """The ``n`` query ids of a BEIR split that :func:`bgekit.training.train_reranker` keeps out with
    ``holdout_queries=n`` (queries with a relevant document, drawn with ``seed``), sorted.

    Raises:
        ValueError: ``n`` leaves no query to train on.

    >>> from bgekit.data import course_data_dir
    >>> holdout_split(course_data_dir(), "train", 3)
    ['q0148', 'q0155', 'q0552']
    """
    if n <= 0:
        return []
    from ..data import load_beir

    qids = _answered(load_beir(data_dir, split))
    if n >= len(qids):
        raise ValueError(f"holdout_queries={n} leaves nothing to train on: split {split!r} of {data_dir} has "
                         f"{len(qids)} queries with a relevant document")
    return sorted(random.Random(f"holdout-{seed}").sample(qids, n))


class RerankerCollator:
    """:class:`GroupDataset` items -> the padded pair batch of ``bgekit.reranker.tokenize_pairs`` (query-major)."""

    def __init__(self, tokenizer: Any, max_len: int) -> None:
        self.tokenizer, self.max_len = tokenizer, max_len

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        from ..reranker import tokenize_pairs

        pairs = [(it["query"], p) for it in items for p in it["passages"]]
        feats, _ = tokenize_pairs(self.tokenizer, pairs, self.max_len)
        return dict(self.tokenizer.pad(feats, padding=True, return_tensors="pt"))

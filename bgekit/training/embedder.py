"""Fine-tune an embedder contrastively: a ``transformers.Trainer`` whose ``compute_loss`` is InfoNCE.

Each training query comes with a *group* of passages, one positive and ``train_group_size - 1``
negatives (:mod:`bgekit.training.data`); the loss (:mod:`bgekit.training.losses`) scores every
query against every passage of the batch, and under ``torchrun`` with ``negatives_cross_device``
against every passage of the global batch. Everything else (optimizer, schedule, fp16/bf16, DDP,
DeepSpeed, gradient accumulation and checkpointing, checkpoints and resuming, logging, ``report_to``)
is the ``Trainer``'s.

>>> from bgekit.training import TrainArgs, train_embedder
>>> out = train_embedder(TrainArgs(                                   # doctest: +SKIP
...     output_dir="ft", model_name_or_path="BAAI/bge-large-en-v1.5", train_data="train_mined.jsonl",
...     query_instruction_for_retrieval="Represent this sentence for searching relevant passages: ",
...     learning_rate=1e-5, num_train_epochs=1, per_device_train_batch_size=32, train_group_size=8,
...     temperature=0.02, fp16=True))

The same from a shell, on one GPU or many: :mod:`bgekit.train`. The final folder is a plain Hugging Face
folder with bgekit's and sentence-transformers' metadata (pooling, normalisation, query instruction), and
``trainer_state.json`` whose ``log_history`` holds the loss curve.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import models
from .._batching import forward_sorted, model_inputs
from ..embedder import pool
from .arguments import EmbedderTrainingArguments
from .data import EmbedderCollator, EpochCallback, GroupDataset, load_train_examples
from .losses import CachedEmbeddings, contrastive_loss
from .trainer import FolderTrainer, TrainingOutOfMemory, fit, is_oom, load_for_training, oom_advice, with_fields

logger = logging.getLogger(__name__)

__all__ = ["EmbedderTrainer", "EmbedderTrainingArguments", "TrainArgs", "TrainingOutOfMemory", "is_oom",
           "oom_advice", "train_embedder"]

#: the public name bgekit has always exported
TrainArgs = EmbedderTrainingArguments


def _final_spec(args: EmbedderTrainingArguments, model: torch.nn.Module) -> models.ModelSpec:
    base = models.get_spec(args.model_name_or_path)
    cfg = model.config
    max_pos = int(getattr(cfg, "max_position_embeddings", 0) or 0)
    max_len = min(int(base.max_length), max_pos) if max_pos > 0 else int(base.max_length)
    return dataclasses.replace(
        base, name=str(args.output_dir), kind="embedder", pooling=args.sentence_pooling_method or base.pooling,
        normalize=bool(args.normalize_embeddings),
        query_instruction_for_retrieval=args.query_instruction_for_retrieval or "",
        dim=int(cfg.hidden_size), max_length=max_len, known=True)


class EmbedderTrainer(FolderTrainer):
    """``transformers.Trainer`` for a bi-encoder: ``compute_loss`` embeds queries and passages and returns InfoNCE.

    The model is the plain ``AutoModel``; pooling, normalisation and temperature come from
    ``args`` (:class:`EmbedderTrainingArguments`) and ``spec``; the saved folder is a plain HF folder.
    """

    def __init__(self, *args: Any, spec: models.ModelSpec, **kwargs: Any) -> None:
        super().__init__(*args, spec=spec, **kwargs)
        self.temperature = float(self.args.temperature) if self.args.normalize_embeddings else 1.0

    def embed(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(n, d)`` float32 embeddings of a tokenised batch: pooled, L2-normalised when configured.

        The model runs on length-sorted sub-batches (``sub_batch_size``); the rows come back in batch order.
        """
        return forward_sorted(lambda b: self.embed_once(model, b), batch, *self.sub_batch)

    def embed_once(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """:meth:`embed` in one forward of the whole batch (a cached-loss chunk, or one sub-batch)."""
        out = model(**model_inputs(batch), return_dict=True)
        emb = pool(out.last_hidden_state, batch["attention_mask"], self.spec.pooling).float()
        return F.normalize(emb, p=2, dim=-1) if self.args.normalize_embeddings else emb

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        a = self.args
        ids = (inputs["query_pos_ids"], inputs["passage_ids"]) if a.mask_shared_positives else (None, None)

        def loss_fn(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
            return contrastive_loss(q, p, self.temperature, a.negatives_cross_device, *ids, in_batch=a.use_inbatch_neg)

        if a.cached_mini_batch_size:
            cache = CachedEmbeddings(lambda b: self.embed_once(model, b), a.cached_mini_batch_size,
                                     getattr(model, "no_sync", None))
            loss = cache.loss([inputs["query"], inputs["passage"]], loss_fn)
            return (loss, {}) if return_outputs else loss
        q, p = self.embed(model, inputs["query"]), self.embed(model, inputs["passage"])
        loss = loss_fn(q, p)
        return (loss, {"query": q, "passage": p}) if return_outputs else loss


def _prepare_model(args: EmbedderTrainingArguments) -> tuple[Any, torch.nn.Module]:
    from transformers import AutoModel

    tokenizer, model = load_for_training(args.model_name_or_path, AutoModel, args.tokenizer_name)
    # a pooler head (BERT) is not used by CLS/mean pooling: frozen, so DDP sees no unused parameters
    pooler = getattr(model, "pooler", None)
    if isinstance(pooler, torch.nn.Module):
        pooler.requires_grad_(False)
    if args.fix_position_embedding:
        for n, prm in model.named_parameters():
            if "position_embeddings" in n:
                prm.requires_grad_(False)
    return tokenizer, model


def build_embedder_trainer(args: EmbedderTrainingArguments) -> EmbedderTrainer:
    """Check the data (before any model is loaded), load the model, and return the ready :class:`EmbedderTrainer`.

    Raises:
        FileNotFoundError, ValueError: missing or bad training data (``file:line: ...``).
    """
    from ..config import default_embedder
    from ..data import load_passages

    if not args.train_data:
        raise ValueError("train_data is required (--train_data FILE.jsonl)")
    if args.model_name_or_path is None:
        args.model_name_or_path = default_embedder()
    corpus = list(dict.fromkeys(load_passages(args.corpus))) if args.corpus else None
    examples, pool_texts = load_train_examples(args.train_data, args.train_group_size, corpus,
                                               args.max_example_num_per_dataset)
    if not args.normalize_embeddings and args.temperature != 1.0:
        logger.warning("normalize_embeddings=False: using temperature 1.0 (as FlagEmbedding does) instead of %s",
                       args.temperature)
    tokenizer, model = _prepare_model(args)
    spec = _final_spec(args, model)
    dataset = GroupDataset(examples, pool_texts, args.train_group_size, args.seed)
    collator = EmbedderCollator(tokenizer, args.query_max_len, args.passage_max_len, dataset.max_pos,
                                args.query_instruction_for_retrieval, args.passage_instruction_for_retrieval)
    trainer = EmbedderTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                              processing_class=tokenizer, callbacks=[EpochCallback(dataset)], spec=spec)
    logger.info("training %s: %d queries x %d passages, %s pooling, temperature %g, cross-device negatives %s%s",
                args.model_name_or_path, len(examples), args.train_group_size, spec.pooling, trainer.temperature,
                args.negatives_cross_device and args.world_size > 1,
                f", cached InfoNCE in chunks of {args.cached_mini_batch_size}" if args.cached_mini_batch_size else "")
    return trainer


def train_embedder(args: EmbedderTrainingArguments | None = None, **kwargs: Any) -> Path:
    """Fine-tune an embedder contrastively and save it as a plain HF folder; returns ``output_dir``.

    Args:
        args: an :class:`EmbedderTrainingArguments` (alias ``TrainArgs``); or pass its fields as keywords.
        **kwargs: fields to set (on a copy of ``args`` when both are given).

    Returns:
        the output folder: model, tokenizer, ``bgekit.json`` + sentence-transformers metadata,
        ``trainer_state.json`` (``log_history``: the loss curve); ``checkpoint-<step>/`` every ``save_steps``.
        ``resume_from_checkpoint="latest"`` (or a folder) continues an interrupted run.

    Raises:
        FileNotFoundError, ValueError: bad data, before training. TrainingOutOfMemory: with advice.

    >>> out = train_embedder(output_dir="ft", train_data="train.jsonl", num_train_epochs=1,  # doctest: +SKIP
    ...                      per_device_train_batch_size=16, train_group_size=4)
    >>> Embedder(out)                                                                         # doctest: +SKIP
    """
    args = with_fields(EmbedderTrainingArguments, args, kwargs)
    trainer = build_embedder_trainer(args)
    fit(trainer, args.resume_from_checkpoint)
    trainer.save_model(args.output_dir)
    trainer.save_state()
    return Path(args.output_dir)

"""Fine-tuning on ``transformers.Trainer``: the embedder (InfoNCE) and the course's cross-encoder reranker.

- :mod:`~bgekit.training.arguments`: ``TrainingArguments`` subclasses with FlagEmbedding's names;
- :mod:`~bgekit.training.data`: FlagEmbedding JSONL, query groups, collators;
- :mod:`~bgekit.training.losses`: InfoNCE (in-batch, cross-device, cached), the reranker's group loss;
- :mod:`~bgekit.training.embedder` / :mod:`~bgekit.training.reranker`: the two ``Trainer`` subclasses.

>>> from bgekit.training import train_embedder, train_reranker  # doctest: +SKIP
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainArgs": "embedder", "EmbedderTrainingArguments": "arguments", "EmbedderTrainer": "embedder",
    "train_embedder": "embedder", "TrainingOutOfMemory": "embedder",
    "RerankerTrainArgs": "reranker", "RerankerTrainingArguments": "arguments", "RerankerTrainer": "reranker",
    "train_reranker": "reranker", "info_nce_loss": "losses", "contrastive_loss": "losses",
    "group_loss": "losses", "load_train_examples": "data",
}
__all__ = ["EmbedderTrainer", "EmbedderTrainingArguments", "RerankerTrainArgs", "RerankerTrainer",
           "RerankerTrainingArguments", "TrainArgs", "TrainingOutOfMemory", "contrastive_loss", "group_loss",
           "info_nce_loss", "load_train_examples", "train_embedder", "train_reranker"]


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'bgekit.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{mod}", __name__), name)

"""Fine-tuning on ``transformers.Trainer``: the embedder (InfoNCE) and the course's cross-encoder reranker.

- :mod:`~bgekit.training.arguments`: ``TrainingArguments`` subclasses with FlagEmbedding's names;
- :mod:`~bgekit.training.data`: FlagEmbedding JSONL, query groups, collators;
- :mod:`~bgekit.training.losses`: InfoNCE (in-batch, cross-device, cached), the reranker's group loss;
- :mod:`~bgekit.training.trainer`: the ``Trainer`` both share (a plain model folder on save), :func:`fit`;
- :mod:`~bgekit.training.embedder` / :mod:`~bgekit.training.reranker`: the two ``Trainer`` subclasses.

>>> from bgekit.training import train_embedder, train_reranker  # doctest: +SKIP
"""
from .arguments import EmbedderTrainingArguments, RerankerTrainingArguments
from .data import load_train_examples
from .embedder import EmbedderTrainer, TrainArgs, TrainingOutOfMemory, train_embedder
from .losses import contrastive_loss, group_loss, info_nce_loss
from .reranker import RerankerTrainArgs, RerankerTrainer, train_reranker

__all__ = ["EmbedderTrainer", "EmbedderTrainingArguments", "RerankerTrainArgs", "RerankerTrainer",
           "RerankerTrainingArguments", "TrainArgs", "TrainingOutOfMemory", "contrastive_loss", "group_loss",
           "info_nce_loss", "load_train_examples", "train_embedder", "train_reranker"]

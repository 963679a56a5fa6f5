"""Fine-tuning: the embedder (contrastive InfoNCE) and the course's cross-encoder reranker.

>>> from bgekit.training import train_embedder, train_reranker  # doctest: +SKIP
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainArgs": "embedder", "train_embedder": "embedder",
    "RerankerTrainArgs": "reranker", "train_reranker": "reranker",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'bgekit.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{mod}", __name__), name)

"""bgekit: the companion package of the BGE embedding course.

>>> import bgekit
>>> cfg = bgekit.setup()                        # prints mode, device, versions  # doctest: +SKIP
>>> enc = bgekit.Embedder(cfg.embedder)          # doctest: +SKIP
>>> vecs = enc.encode_corpus(["Water when the top inch of soil is dry."])  # doctest: +SKIP

Public names are imported lazily, so ``import bgekit`` is fast and a module's heavy dependencies
(torch, faiss, openai) load only when used.
"""
from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:  # one version number: pyproject.toml's, read from the installed package's metadata
    __version__ = version("bgekit")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

_EXPORTS: dict[str, str] = {
    # config
    "setup": "config", "CourseConfig": "config", "get_mode": "config", "seed_everything": "config",
    # models and encoder
    "ModelSpec": "models", "get_spec": "models", "resolve_model": "models", "offline_model_path": "models",
    "ModelLoadError": "models",
    "Embedder": "embedder", "Encoder": "embedder",   # Encoder: the legacy name, an alias
    # data, index, metrics, retrieval
    "BeirData": "data", "load_beir": "data", "course_data_dir": "data", "doc_text": "data",
    "load_training_jsonl": "data", "write_jsonl": "data",
    "DenseIndex": "index",
    "evaluate": "metrics", "format_table": "metrics",
    "DenseRetriever": "retrieval", "BM25Retriever": "retrieval", "HybridRetriever": "retrieval",
    "evaluate_retrieval": "retrieval",
    # fusion: rank fusion and score interpolation
    "rrf": "fusion", "fuse_scores": "fusion", "tune_fusion_weight": "fusion",
    # reranking, mining, training, merging
    "Reranker": "reranker",
    "mine_hard_negatives": "mining", "MiningReport": "mining", "HardNegativeMiner": "mining",
    "TrainArgs": "training", "train_embedder": "training", "RerankerTrainArgs": "training",
    "train_reranker": "training",
    "merge_models": "merging",
    # LLM and RAG
    "LLMClient": "llm", "LLMError": "llm", "local_server": "llm", "default_client": "llm",
    "RAGResult": "rag",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'bgekit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs
    from .config import CourseConfig, get_mode, seed_everything, setup
    from .data import BeirData, course_data_dir, doc_text, load_beir, load_training_jsonl, write_jsonl
    from .embedder import Embedder, Encoder
    from .fusion import fuse_scores, rrf, tune_fusion_weight
    from .index import DenseIndex
    from .llm import LLMClient, LLMError, default_client, local_server
    from .merging import merge_models
    from .metrics import evaluate, format_table
    from .mining import HardNegativeMiner, MiningReport, mine_hard_negatives
    from .models import ModelLoadError, ModelSpec, get_spec, offline_model_path, resolve_model
    from .rag import RAGResult
    from .reranker import Reranker
    from .retrieval import BM25Retriever, DenseRetriever, HybridRetriever, evaluate_retrieval
    from .training import RerankerTrainArgs, TrainArgs, train_embedder, train_reranker

"""An on-disk cache of corpus embeddings, keyed by what determines them.

Embedding a corpus is the slow part of building a dense index; the vectors depend only on the model's
weights and tokenizer, the encoding settings (pooling, normalisation, token budget, dtype) and the
texts. :func:`corpus_key` hashes exactly those, so a cached matrix is reused only when it would come
out the same, and a fine-tuned model or an edited passage gets a new entry::

    >>> dense = DenseRetriever(Embedder(), data.corpus, cache_dir="_work/embeddings")   # doctest: +SKIP
    # first time: encodes and saves _work/embeddings/<key>.npy; next time (any notebook): loads it

Files are written atomically; an unreadable or wrong-shaped file is reported and recomputed.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._io import atomic_write_bytes

logger = logging.getLogger(__name__)

__all__ = ["model_fingerprint", "corpus_key", "cached_embeddings"]


def model_fingerprint(model: torch.nn.Module, tokenizer: Any = None) -> str:
    """SHA-256 of a model's parameters and buffers (names, dtypes, shapes, bytes) and its tokenizer.

    Two models give the same fingerprint only if they compute the same function on the same tokens;
    any training step changes it. Costs one pass over the weights (about 0.1 s for MiniLM).
    """
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"\0{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
        h.update(memoryview(t.view(-1).view(torch.uint8).numpy()))
    if tokenizer is not None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            spec = json.loads(backend.to_str())
            spec.pop("truncation", None)   # call-time settings: every encode() call sets them
            spec.pop("padding", None)
            desc = json.dumps(spec, sort_keys=True)
        else:
            desc = repr(sorted(tokenizer.get_vocab().items()))
        h.update(f"\0tokenizer:{type(tokenizer).__name__}:{desc}".encode())
    return h.hexdigest()


def corpus_key(encoder: Any, texts: Sequence[str], **settings: Any) -> str:
    """Cache key of ``encoder.encode(texts, **settings)``: model fingerprint + settings + texts."""
    needed = ("model", "tokenizer", "pooling", "normalize", "max_length", "dtype")
    missing = [a for a in needed if not hasattr(encoder, a)]
    if missing:
        raise TypeError(f"caching embeddings needs a bgekit.Embedder; {type(encoder).__name__} has no "
                        f"{', '.join(missing)}")
    h = hashlib.sha256(model_fingerprint(encoder.model, encoder.tokenizer).encode())
    fixed = dict(pooling=encoder.pooling, normalize=encoder.normalize, max_length=encoder.max_length,
                 dtype=str(encoder.dtype))
    if getattr(encoder, "truncate_dim", None) is not None:  # only when set: keys of untruncated encoders unchanged
        fixed["truncate_dim"] = encoder.truncate_dim
    if getattr(encoder, "backend", "torch") != "torch":  # onnx/openvino (int8) vectors differ from torch's
        fixed.update(backend=encoder.backend, quantize=getattr(encoder, "quantize", None))
    fixed.update({k: v for k, v in settings.items() if v is not None})
    h.update(repr(sorted(fixed.items())).encode())
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def cached_embeddings(cache_dir: str | os.PathLike, key: str, n: int,
                      compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Load ``cache_dir/<key>.npy`` if it holds a finite float32 ``(n, dim)`` matrix, else run
    ``compute()`` and save its result there atomically."""
    path = Path(cache_dir) / f"{key[:40]}.npy"
    if path.is_file():
        try:
            emb = np.load(path, allow_pickle=False)
            if emb.dtype != np.float32 or emb.ndim != 2 or emb.shape[0] != n or not np.isfinite(emb).all():
                raise ValueError(f"holds a {emb.dtype} array of shape {emb.shape}, expected float32 ({n}, dim)")
        except (OSError, ValueError, EOFError) as e:
            logger.warning("ignoring the embedding cache file %s (%s); encoding again", path, e)
        else:
            logger.info("reused %d cached embeddings from %s", n, path)
            return emb
    emb = np.ascontiguousarray(compute(), dtype=np.float32)
    buf = io.BytesIO()
    np.save(buf, emb, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())
    logger.info("saved %d embeddings to %s", n, path)
    return emb

"""Merge models by a weighted average of their parameters (the idea behind LM-Cocktail).

A model fine-tuned on one domain tends to lose some of what it knew about others. Averaging its
weights with the base model's (``0.5 * fine_tuned + 0.5 * base``) often keeps most of the
in-domain gain and most of the general ability. All models must share one architecture (same
parameter names and shapes), e.g. a base model and fine-tunes of it.

>>> from bgekit.merging import merge_models
>>> out = merge_models(["ft_model", "BAAI/bge-large-en-v1.5"], [0.5, 0.5], "merged")  # doctest: +SKIP
>>> bgekit.Encoder(out)                                                                 # doctest: +SKIP
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Sequence

import torch

from . import models as _models
from ._io import atomic_dir

logger = logging.getLogger(__name__)

__all__ = ["merge_models", "merge_state_dicts"]


def _normalise_weights(weights: Sequence[float], n: int) -> list[float]:
    if len(weights) != n:
        raise ValueError(f"got {n} models but {len(weights)} weights: give one weight per model")
    w = [float(x) for x in weights]
    for i, x in enumerate(w):
        if not math.isfinite(x) or x < 0:
            raise ValueError(f"weights[{i}] = {weights[i]!r}: weights must be finite and >= 0")
    total = sum(w)
    if total <= 0:
        raise ValueError("weights sum to 0: at least one model needs a positive weight")
    return [x / total for x in w]


def merge_state_dicts(state_dicts: Sequence[dict[str, torch.Tensor]], weights: Sequence[float],
                      names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Weighted average of floating-point tensors (weights normalised to sum to 1); other tensors
    (integer buffers such as ``position_ids``) are taken from the first state dict.

    Raises ``ValueError`` naming the first parameter whose name or shape differs between models.

    >>> a, b = {"w": torch.tensor([0.0, 2.0])}, {"w": torch.tensor([2.0, 4.0])}
    >>> merge_state_dicts([a, b], [1, 1])["w"].tolist()
    [1.0, 3.0]
    """
    if not state_dicts:
        raise ValueError("nothing to merge: give at least one model")
    names = list(names) if names is not None else [f"model {i}" for i in range(len(state_dicts))]
    w = _normalise_weights(weights, len(state_dicts))
    ref = state_dicts[0]
    for i, sd in enumerate(state_dicts[1:], 1):
        missing, extra = sorted(set(ref) - set(sd)), sorted(set(sd) - set(ref))
        if missing or extra:
            raise ValueError(
                f"{names[i]} does not have the same architecture as {names[0]}: "
                + (f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''} " if missing else "")
                + (f"unexpected {extra[:3]}{' ...' if len(extra) > 3 else ''}" if extra else "")
                + "; only models with the same parameter names and shapes (fine-tunes of one base) can be merged")
        for k, t in ref.items():
            if sd[k].shape != t.shape:
                raise ValueError(f"{names[i]} does not have the same architecture as {names[0]}: parameter {k!r} "
                                 f"has shape {tuple(sd[k].shape)} vs {tuple(t.shape)}")
    merged: dict[str, torch.Tensor] = {}
    for k, t in ref.items():
        if not torch.is_floating_point(t):
            merged[k] = t.clone()
            continue
        acc_dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
        acc = torch.zeros(t.shape, dtype=acc_dtype)
        for wi, sd in zip(w, state_dicts):
            if wi:
                acc += wi * sd[k].detach().to("cpu", acc_dtype)
        merged[k] = acc.to(t.dtype)
    return merged


def _load(name: str, kind: str) -> torch.nn.Module:
    from transformers import AutoModel, AutoModelForSequenceClassification

    from .training.embedder import _load_auto_model

    path = _models.resolve_model(name)
    try:
        if kind == "reranker":
            return AutoModelForSequenceClassification.from_pretrained(path)
        return _load_auto_model(path)
    except Exception as e:
        raise _models.load_error(name, e) from e


def merge_models(models: Sequence[str | os.PathLike], weights: Sequence[float],
                 output_dir: str | os.PathLike) -> Path:
    """Average the parameters of ``models`` with ``weights`` and save a loadable folder.

    ``weights`` are normalised to sum to 1. The tokenizer and the pooling/instruction metadata are
    taken from the first model. The folder is written atomically (a failed merge leaves any old
    ``output_dir`` untouched) and loads with ``bgekit.Encoder``, ``transformers`` and
    sentence-transformers.

    >>> merge_models(["ft", "base"], [0.7, 0.3], "merged")  # doctest: +SKIP
    PosixPath('merged')
    """
    from transformers import AutoTokenizer

    names = [str(m) for m in models]
    if not names:
        raise ValueError("nothing to merge: give at least one model")
    w = _normalise_weights(weights, len(names))
    spec = _models.get_spec(names[0])
    loaded = [_load(n, spec.kind) for n in names]
    first = loaded[0]
    kinds = {type(m).__name__ for m in loaded}
    if len(kinds) > 1:
        raise ValueError(f"models have different architectures ({sorted(kinds)}); they cannot be merged")
    merged = merge_state_dicts([m.state_dict() for m in loaded], w, names)
    first.load_state_dict(merged)
    tokenizer = AutoTokenizer.from_pretrained(_models.resolve_model(names[0]))
    out = Path(output_dir)
    with atomic_dir(out) as tmp:
        first.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        dim = getattr(first.config, "hidden_size", None) if spec.kind == "embedder" else None
        _models.save_model_metadata(tmp, spec, dim)
    logger.info("merged %s with weights %s into %s", names, [round(x, 4) for x in w], out)
    return out

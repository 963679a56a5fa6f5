"""Merge models by a weighted average of their parameters (the idea behind LM-Cocktail).

A model fine-tuned on one domain tends to lose some of what it knew about others. Averaging its
weights with the base model's (``0.5 * fine_tuned + 0.5 * base``) often keeps most of the
in-domain gain and most of the general ability. All models must share one architecture (same
parameter names and shapes), e.g. a base model and fine-tunes of it, and one tokenizer: row ``i`` of
the embedding matrix means token id ``i``, so two models whose tokenizers map ids to other word pieces
(even with the same vocabulary size) would be averaged row by row into garbage. :func:`merge_models`
refuses them, naming the difference (vocabulary, normaliser, special tokens). When the pooling,
normalisation or query instruction recorded in the folders differ it warns, and the merged folder keeps
the first model's.

>>> import bgekit
>>> from bgekit.merging import merge_models
>>> out = merge_models(["ft_model", "BAAI/bge-large-en-v1.5"], [0.5, 0.5], "merged")  # doctest: +SKIP
>>> bgekit.Embedder(out)                                                                 # doctest: +SKIP
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import models as _models
from ._io import atomic_dir

logger = logging.getLogger(__name__)

__all__ = ["merge_models", "merge_state_dicts", "tokenizer_difference"]


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


def _short(x: object, n: int = 120) -> str:
    r = repr(x)
    return r if len(r) <= n else r[: n - 3] + "..."


def tokenizer_difference(tok_a: Any, tok_b: Any) -> str | None:
    """How two tokenizers differ (vocabulary, normaliser/pre-tokeniser, special tokens), or ``None``.

    Two tokenizers are the same for merging when they map every text to the same token ids: the
    same token -> id table, the same text normalisation (lower-casing, accents, ...) and
    pre-tokenisation, and the same special tokens with the same ids.

    Args:
        tok_a, tok_b: ``transformers`` tokenizers (fast or slow).

    Returns:
        One line naming the first difference found, e.g. ``"vocabulary: 2 of 30522 token ids map to
        other word pieces (id 1000: '!' vs '\"')"``; ``None`` when they agree.
    """
    va, vb = tok_a.get_vocab(), tok_b.get_vocab()
    if va != vb:
        if len(va) != len(vb):
            return f"vocabulary: {len(va)} vs {len(vb)} tokens"
        ia, ib = {i: t for t, i in va.items()}, {i: t for t, i in vb.items()}
        ids = sorted(set(ia) | set(ib))
        diff = [i for i in ids if ia.get(i) != ib.get(i)]
        i = diff[0]
        return (f"vocabulary: {len(diff)} of {len(ids)} token ids map to other word pieces "
                f"(id {i}: {ia.get(i)!r} vs {ib.get(i)!r}), although both have {len(va)} tokens")
    for part in ("normalizer", "pre_tokenizer"):
        pa, pb = _backend_part(tok_a, part), _backend_part(tok_b, part)
        if pa != pb:
            return f"{part.replace('_', '-')}: {_short(pa)} vs {_short(pb)}"
    for attr in ("do_lower_case", "strip_accents", "tokenize_chinese_chars"):
        a, b = getattr(tok_a, attr, None), getattr(tok_b, attr, None)
        if a != b:
            return f"normaliser setting {attr}: {a!r} vs {b!r}"
    sa = dict(zip(tok_a.all_special_tokens, tok_a.all_special_ids))
    sb = dict(zip(tok_b.all_special_tokens, tok_b.all_special_ids))
    roles_a = {k: v for k, v in tok_a.special_tokens_map.items() if isinstance(v, str)}
    roles_b = {k: v for k, v in tok_b.special_tokens_map.items() if isinstance(v, str)}
    if sa != sb or roles_a != roles_b:
        roles = sorted(set(roles_a) | set(roles_b))
        which = [r for r in roles if roles_a.get(r) != roles_b.get(r)]
        if which:
            r = which[0]
            return f"special tokens: {r} is {roles_a.get(r)!r} vs {roles_b.get(r)!r}"
        return f"special tokens: {_short(sa)} vs {_short(sb)}"
    return None


def _backend_part(tok: Any, part: str) -> Any:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return None
    return json.loads(backend.to_str()).get(part)


def _check_tokenizers(names: Sequence[str]) -> Any:
    """Load every model's tokenizer; raise ValueError naming the first that differs from the first model's."""
    from transformers import AutoTokenizer

    toks = []
    for n in names:
        try:
            toks.append(AutoTokenizer.from_pretrained(_models.resolve_model(n)))
        except Exception as e:  # missing folder, no tokenizer files, network
            raise _models.load_error(n, e) from e
    for name, tok in zip(names[1:], toks[1:]):
        diff = tokenizer_difference(toks[0], tok)
        if diff is not None:
            raise ValueError(
                f"cannot merge {name!r} into {names[0]!r}: their tokenizers differ ({diff}). Row i of the "
                "embedding matrix means token id i, so averaging models with different tokenizers gives "
                "garbage; only merge fine-tunes of one base model that kept its tokenizer."
            )
    return toks[0]


def _check_settings(names: Sequence[str], specs: Sequence[_models.ModelSpec]) -> None:
    """Warn when pooling, normalisation or query instruction differ; the merged folder keeps the first's."""
    for field in ("pooling", "normalize", "query_instruction_for_retrieval"):
        values = [getattr(sp, field) for sp in specs]
        if any(v != values[0] for v in values[1:]):
            listed = ", ".join(f"{n!r}: {v!r}" for n, v in zip(names, values))
            logger.warning(
                "the models record different %s (%s); the merged folder keeps the first model's, %r. "
                "Check that this is what the merged model should use.", field, listed, values[0]
            )


def _load(name: str, kind: str) -> torch.nn.Module:
    from transformers import AutoModel, AutoModelForSequenceClassification

    path = _models.resolve_model(name)
    try:
        auto = AutoModelForSequenceClassification if kind == "reranker" else AutoModel
        return auto.from_pretrained(path, dtype=torch.float32)
    except Exception as e:
        raise _models.load_error(name, e) from e


def merge_models(models: Sequence[str | os.PathLike], weights: Sequence[float],
                 output_dir: str | os.PathLike) -> Path:
    """Average the parameters of ``models`` with ``weights`` and save a loadable folder.

    ``weights`` are normalised to sum to 1. The tokenizer and the pooling/instruction metadata are
    taken from the first model. The folder is written atomically (a failed merge leaves any old
    ``output_dir`` untouched) and loads with ``bgekit.Embedder``, ``transformers`` and
    sentence-transformers.

    Raises:
        ValueError: different tokenizers (the message names the difference: vocabulary, normaliser,
            special tokens), different architectures or parameter shapes, bad weights.

    Models whose recorded pooling, normalisation or query instruction differ are merged with a
    warning that names them; the merged folder keeps the first model's settings.

    >>> merge_models(["ft", "base"], [0.7, 0.3], "merged")  # doctest: +SKIP
    PosixPath('merged')
    """
    names = [str(m) for m in models]
    if not names:
        raise ValueError("nothing to merge: give at least one model")
    w = _normalise_weights(weights, len(names))
    tokenizer = _check_tokenizers(names)
    specs = [_models.get_spec(n) for n in names]
    spec = specs[0]
    _check_settings(names, specs)
    loaded = [_load(n, spec.kind) for n in names]
    first = loaded[0]
    kinds = {type(m).__name__ for m in loaded}
    if len(kinds) > 1:
        raise ValueError(f"models have different architectures ({sorted(kinds)}); they cannot be merged")
    merged = merge_state_dicts([m.state_dict() for m in loaded], w, names)
    first.load_state_dict(merged)
    out = Path(output_dir)
    with atomic_dir(out) as tmp:
        first.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        dim = getattr(first.config, "hidden_size", None) if spec.kind == "embedder" else None
        _models.save_model_metadata(tmp, spec, dim)
    logger.info("merged %s with weights %s into %s", names, [round(x, 4) for x in w], out)
    return out

"""The batching the encoder, the reranker and both trainers share: inputs sorted by length, little padding.

Inference (:func:`run_length_sorted`): tokenised inputs are sorted by length (longest first, so an
out-of-memory error shows up at once), padded per batch to that batch's longest input, run through
``forward``, and written back in input order. On CUDA out-of-memory the batch is halved and retried.

Training (:func:`length_sorted_chunks`, :func:`forward_sorted`): a padded training batch is split into
length-sorted sub-batches, each cut to its own longest row, and the outputs are put back in batch order,
with their autograd graph. A model attends only to unmasked tokens, so the outputs are the same; the
padded tokens the model computes for nothing are fewer.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``batch`` without its ``attention_mask`` when the mask is all ones (no padding in the batch).

    The model then attends to every token either way, so the output is the same, but PyTorch's
    scaled-dot-product attention can take its unmasked (flash) kernel: 5-10% faster on a CPU.
    Length-sorted batches are often padding-free (every pair cut at ``max_length``, say).
    """
    mask = batch.get("attention_mask")
    if mask is not None and bool(mask.all()):
        return {k: v for k, v in batch.items() if k != "attention_mask"}
    return batch


#: padded tokens per training sub-batch on a CPU when ``sub_batch_size`` is not set. Measured on 2 cores with a
#: scratch script (forward + backward of all-MiniLM-L6-v2 on 128 course passages, 16 queries x 8, cut at 256 tokens):
#: 2k-4k-token sub-batches ran fastest, 8k slower, the whole batch in one forward 1.5x slower (a long padded batch's
#: attention leaves the CPU's caches); ``python bench/train.py`` then measured it against sentence-transformers
#: (README, Performance)
CPU_SUB_BATCH_TOKENS = 4096


def length_sorted_chunks(batch: dict[str, torch.Tensor], rows: int = 0,
                         tokens: int = 0) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Split a padded batch into sub-batches of rows sorted by length, longest first, each cut to its longest row.

    A row's length here is its last token's column + 1: its number of tokens with right padding (the usual
    side for encoders), the full width with left padding (nothing can be cut then, and nothing is saved).

    Args:
        batch: tokenizer output, every tensor ``(n, L)`` with an ``attention_mask`` (1 = token, 0 = padding).
        rows: at most this many rows per sub-batch (0: no limit).
        tokens: at most this many padded tokens (rows x width) per sub-batch (0: no limit); a row longer than
            that still makes a sub-batch of its own.

    Returns:
        ``[(index, sub_batch)]``: ``index`` ``(m,)`` int64, the rows of ``batch`` in the sub-batch (in order);
        ``sub_batch`` holds those rows without the trailing columns that are padding in all of them (leading
        padding stays, so positions do not move). The indices of all sub-batches together are a permutation of
        ``range(n)``; rows of equal length keep their order.

    Raises:
        ValueError: ``batch`` has no 2-D ``attention_mask``, or a value that is not an ``(n, L)`` tensor.

    >>> b = {"input_ids": torch.tensor([[5, 0, 0], [5, 6, 7], [5, 6, 0]]),
    ...      "attention_mask": torch.tensor([[1, 0, 0], [1, 1, 1], [1, 1, 0]])}
    >>> [(i.tolist(), tuple(c["input_ids"].shape)) for i, c in length_sorted_chunks(b, rows=2)]
    [([1, 2], (2, 3)), ([0], (1, 1))]
    """
    mask = batch.get("attention_mask")
    if mask is None or mask.ndim != 2:
        raise ValueError(f"expected an (n, L) attention_mask in the batch, got keys {sorted(batch)}")
    n, width = mask.shape
    bad = [k for k, v in batch.items() if not isinstance(v, torch.Tensor) or tuple(v.shape) != (n, width)]
    if bad:
        raise ValueError(f"every tensor of the batch must be ({n}, {width}) like attention_mask; not: {bad}")
    lens = ((mask != 0) * torch.arange(1, width + 1, device=mask.device)).amax(1) if n else mask.sum(1)
    order = torch.argsort(lens, descending=True, stable=True)
    chunks, start = [], 0
    while start < n:
        size = n - start
        if rows > 0:
            size = min(size, rows)
        if tokens > 0:   # the first row is the sub-batch's longest
            size = min(size, max(1, tokens // max(1, int(lens[order[start]]))))
        idx = order[start:start + size]
        cols = max(1, int(lens[idx[0]]))
        chunks.append((idx, {k: v[idx, :cols] for k, v in batch.items()}))
        start += size
    return chunks


def forward_sorted(forward: Callable[[dict[str, torch.Tensor]], torch.Tensor], batch: dict[str, torch.Tensor],
                   rows: int = 0, tokens: int = 0) -> torch.Tensor:
    """``forward`` of each :func:`length_sorted_chunks` sub-batch, concatenated back in the rows' batch order.

    The result keeps its autograd graph (one backward reaches every sub-batch) and equals ``forward(batch)``
    up to float round-off, for a model whose output for a row ignores its padding (BERT-style encoders), dropout
    aside: in training each sub-batch draws its own dropout masks (the same distribution, other draws).

    >>> b = {"input_ids": torch.tensor([[5, 0], [5, 6], [7, 0]]),
    ...      "attention_mask": torch.tensor([[1, 0], [1, 1], [1, 0]])}
    >>> forward_sorted(lambda c: c["input_ids"].sum(1), b, rows=1).tolist()
    [5, 11, 7]
    """
    chunks = length_sorted_chunks(batch, rows, tokens)
    if not chunks:   # an empty batch
        return forward(batch)
    out = torch.cat([forward(sub) for _, sub in chunks])
    order = torch.cat([idx for idx, _ in chunks])
    return out[torch.argsort(order).to(out.device)]


def run_length_sorted(feats: Sequence[dict], tokenizer, device: torch.device,
                      forward: Callable[[dict[str, torch.Tensor]], torch.Tensor], out: np.ndarray,
                      batch_size: int, *, desc: str, unit: str, show: bool) -> None:
    """Fill ``out[i]`` with ``forward`` of input ``feats[i]`` for every i, batching by length."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.argsort([-len(f["input_ids"]) for f in feats], kind="stable")
    bs = batch_size
    bar = tqdm(total=len(feats), desc=desc, unit=unit, disable=not show, leave=False)
    start = 0
    while start < len(feats):
        idx = order[start:start + bs]
        batch = tokenizer.pad([feats[i] for i in idx], padding=True, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        try:
            result = forward(batch)
        except torch.cuda.OutOfMemoryError:
            if bs == 1:
                raise
            torch.cuda.empty_cache()
            bs = max(1, bs // 2)
            logger.warning("CUDA out of memory: retrying with batch_size=%d", bs)
            continue
        out[idx] = result.cpu().numpy()
        start += len(idx)
        bar.update(len(idx))
    bar.close()

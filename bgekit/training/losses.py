"""Losses: InfoNCE with in-batch and cross-device negatives (and its cached form), the reranker's group loss.

Embedder: query ``i`` comes with a group of ``G`` passages, its positive first. Every query is scored
against every passage of the batch (``q @ p.T / temperature``) and the loss is the cross-entropy of
picking its own positive, column ``i * G`` (FlagEmbedding's and sentence-transformers' InfoNCE).
Columns holding the *same text* as one of the query's own positives (another query's copy of a
shared answer) are masked out: they are not negatives.

Reranker: the cross-encoder scores each query's group; the loss is the cross-entropy of index 0.
"""
from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

__all__ = ["CachedEmbeddings", "contrastive_loss", "gather_with_grad", "group_loss", "info_nce_loss",
           "shared_positive_mask", "text_ids"]


def text_ids(texts: Sequence[str]) -> torch.Tensor:
    """A 63-bit id per text (blake2b of its UTF-8 bytes; the same in every process, never 0): ``(n,)`` int64.

    >>> bool(text_ids(["a", "b", "a"])[0] == text_ids(["a"])[0])
    True
    """
    ids = [int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little") >> 1 for t in texts]
    return torch.tensor([i or 1 for i in ids], dtype=torch.long)


def shared_positive_mask(query_pos_ids: torch.Tensor, passage_ids: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(B, N)`` bool: True where passage ``j`` holds the text of one of query ``i``'s positives, except its target.

    Args:
        query_pos_ids: ``(B, P)`` int64, the :func:`text_ids` of each query's positives, padded with 0.
        passage_ids: ``(N,)`` int64, the :func:`text_ids` of the passages (``N = B * group_size``).
        group_size: passages per query; query ``i``'s target is column ``i * group_size``.
    """
    hit = (passage_ids[None, :, None] == query_pos_ids[:, None, :]).any(-1)
    rows = torch.arange(query_pos_ids.shape[0], device=hit.device)
    hit[rows, rows * group_size] = False
    return hit


def info_nce_loss(q: torch.Tensor, p: torch.Tensor, temperature: float, mask: torch.Tensor | None = None,
                  in_batch: bool = True) -> torch.Tensor:
    """InfoNCE over the batch: mean cross-entropy of each query's own positive, in float32.

    Args:
        q: ``(B, d)`` query embeddings.
        p: ``(B * G, d)`` passage embeddings; rows ``i*G .. i*G+G-1`` are query ``i``'s group, positive first.
        temperature: scores are ``q @ p.T / temperature``.
        mask: optional ``(B, B * G)`` bool, True for columns to leave out (see :func:`shared_positive_mask`).
        in_batch: False scores each query against its own group only (FlagEmbedding's ``use_inbatch_neg``).

    Returns:
        a scalar tensor.

    Raises:
        ValueError: on shapes that are not ``(B, d)`` and ``(B * G, d)``.

    >>> q = torch.eye(2); p = torch.eye(2).repeat_interleave(2, 0)   # groups [e0, e0], [e1, e1]
    >>> round(info_nce_loss(q, p, 1.0).item(), 4)
    1.0064
    """
    if q.ndim != 2 or p.ndim != 2 or q.shape[1] != p.shape[1]:
        raise ValueError(f"expected q (B, d) and p (B*G, d), got {tuple(q.shape)} and {tuple(p.shape)}")
    b = q.shape[0]
    if b == 0 or p.shape[0] % b:
        raise ValueError(f"{p.shape[0]} passages is not a whole group per query for {b} queries")
    g = p.shape[0] // b
    scores = q.float() @ p.float().T / temperature
    if not in_batch:   # the query's own group only: the other queries' passages are left out
        other = torch.arange(b * g, device=q.device)[None, :] // g != torch.arange(b, device=q.device)[:, None]
        mask = other if mask is None else mask | other
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    return F.cross_entropy(scores, torch.arange(b, device=q.device) * g)


def _dist_world() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` from all processes (rank order); gradients flow into the local part only.

    Every rank must pass a tensor of the same shape. Without a process group, returns ``t``.
    """
    if _dist_world() == 1:
        return t
    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    parts = [torch.empty_like(t) for _ in range(world)]
    torch.distributed.all_gather(parts, t.detach().contiguous())
    parts[rank] = t  # the local slot keeps its autograd history
    return torch.cat(parts, dim=0)


def contrastive_loss(q: torch.Tensor, p: torch.Tensor, temperature: float, negatives_cross_device: bool = False,
                     query_pos_ids: torch.Tensor | None = None, passage_ids: torch.Tensor | None = None,
                     in_batch: bool = True) -> torch.Tensor:
    """The training loss of this process's queries ``q`` and groups ``p``, shared positives masked.

    Cross-device: queries, passages and their text ids are gathered from all ranks and each rank
    computes the loss of the *global* batch, so its value is the single-process loss on that batch.
    Its gradient reaches only the local embeddings; DDP averages gradients over the ``W`` ranks, so
    the returned tensor carries ``W`` times the gradient (and the plain value): the summed parts then
    equal single-process training on the global batch.

    Args:
        q, p: as in :func:`info_nce_loss`; under cross-device negatives every rank's must have the same shapes.
        query_pos_ids, passage_ids: :func:`text_ids` of each query's positives ``(B, P)`` (0-padded) and
            of the passages ``(B * G,)``; when given, shared positives are masked.
    """
    world = _dist_world() if negatives_cross_device else 1
    if world > 1:
        q, p = gather_with_grad(q), gather_with_grad(p)
        if query_pos_ids is not None and passage_ids is not None:
            query_pos_ids, passage_ids = gather_with_grad(query_pos_ids), gather_with_grad(passage_ids)
    mask = None
    if query_pos_ids is not None and passage_ids is not None:
        mask = shared_positive_mask(query_pos_ids.to(q.device), passage_ids.to(q.device), p.shape[0] // q.shape[0])
    loss = info_nce_loss(q, p, temperature, mask, in_batch)
    if world > 1:
        loss = loss * world - loss.detach() * (world - 1)  # value: the global loss; gradient: x world
    return loss


def group_loss(logits: torch.Tensor) -> torch.Tensor:
    """Group-wise softmax cross-entropy: ``logits`` is ``(queries, group)`` with the positive at index 0.

    Raises:
        ValueError: unless ``logits`` is 2-D with at least 2 columns.

    >>> import math
    >>> round(float(group_loss(torch.zeros(2, 4))), 4) == round(math.log(4), 4)
    True
    """
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (queries, group >= 2), got shape {tuple(logits.shape)}")
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float(), target)


def _rng_module(device: torch.device) -> object:
    mod = getattr(torch, device.type, None)
    if not hasattr(mod, "get_rng_state"):
        raise ValueError(f"the cached loss replays dropout through torch.{device.type}.get_rng_state, which {device} "
                         "lacks: train without --cached_mini_batch_size on this device")
    return mod


def _rng_state(device: torch.device) -> tuple:
    """The CPU RNG state and that of ``device``'s accelerator (``torch.cuda``, ``torch.xpu``, ``torch.mps``, ...)."""
    mod = None if device.type == "cpu" else _rng_module(device)
    acc = None if mod is None else mod.get_rng_state(*_device_arg(device))
    return device, torch.get_rng_state(), acc


def _device_arg(device: torch.device) -> list:
    return [] if device.type == "mps" else [device]   # MPS has one device, and older torch takes no argument there


def _set_rng_state(state: tuple) -> None:
    device, cpu, acc = state
    torch.set_rng_state(cpu)
    if acc is not None:
        _rng_module(device).set_rng_state(acc, *_device_arg(device))


@contextlib.contextmanager
def _replayed(state: tuple) -> Iterator[None]:
    """Run the block from a saved :func:`_rng_state` (to replay a chunk's dropout), then put the RNG back."""
    before = _rng_state(state[0])
    _set_rng_state(state)
    try:
        yield
    finally:
        _set_rng_state(before)


class CachedEmbeddings:
    """GradCache: embed a big batch in chunks without graphs, then backpropagate chunk by chunk.

    1. ``embed(chunk)`` runs under ``no_grad`` for every chunk of ``mini_batch_size`` texts (memory:
       one chunk's activations), the RNG state before each chunk is kept. The chunks hold texts of
       similar length (:func:`bgekit._batching.length_sorted_chunks`), each padded only to its longest;
    2. the loss is computed on the embeddings (leaves, put back in batch order), and its gradient with
       respect to them is cached (``loss.backward()`` on that small graph);
    3. the returned loss is a leaf with a hook: when the caller (the ``Trainer``) backpropagates it,
       each chunk is embedded again *with* a graph (same dropout: RNG replayed) and
       ``(emb * cached_grad * upstream).sum()`` is backpropagated into the model, one chunk at a time.

    The loss value and the model's gradients equal the uncached ones (up to float round-off) when the model has no
    dropout; with dropout they equal those of a forward with a graph over the same chunks in the same order (the
    replay draws each chunk's masks again; a one-forward batch draws others, as two runs of a dropout model do).
    Under DDP every chunk but the last backpropagates in ``no_sync``, so gradients are reduced once.
    Each batch is a tokenizer output (every tensor ``(n, L)``, with an ``attention_mask``), and ``embed``
    returns ``(n, d)`` with the same ``d`` for all of them.
    Source: Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"
    (GradCache); sentence-transformers' ``CachedMultipleNegativesRankingLoss`` does the same without sorting.
    """

    def __init__(self, embed: Callable[[dict], torch.Tensor], mini_batch_size: int, no_sync: Callable | None = None):
        if mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be >= 1, got {mini_batch_size}")
        self.embed = embed
        self.m = int(mini_batch_size)
        self.no_sync = no_sync

    def loss(self, batches: Sequence[dict[str, torch.Tensor]],
             loss_fn: Callable[..., torch.Tensor]) -> torch.Tensor:
        """``loss_fn(*embeddings)`` for the embeddings of ``batches`` (e.g. queries, passages), cached."""
        from .._batching import length_sorted_chunks

        todo: list[tuple[dict, tuple]] = []     # (chunk, RNG state before its forward), in the leaves' row order
        leaves, orders = [], []
        with torch.no_grad():
            for batch in batches:
                chunks = length_sorted_chunks(batch, rows=self.m)
                reps = []
                for _, c in chunks:
                    todo.append((c, _rng_state(next(iter(c.values())).device)))
                    reps.append(self.embed(c))
                leaves.append(torch.cat(reps).detach().requires_grad_())
                orders.append(torch.argsort(torch.cat([i for i, _ in chunks])).to(leaves[-1].device))
        with torch.enable_grad():
            loss = loss_fn(*[leaf[o] for leaf, o in zip(leaves, orders)])   # rows back in batch order
            loss.backward()
        grads = torch.cat([leaf.grad for leaf in leaves])
        out = loss.detach().clone().requires_grad_()
        out.register_hook(lambda upstream: self._backward(todo, grads, upstream))
        return out

    def _backward(self, todo: list[tuple[dict, tuple]], grads: torch.Tensor, upstream: torch.Tensor) -> None:
        start = 0
        for k, (chunk, state) in enumerate(todo):
            n = next(iter(chunk.values())).shape[0]
            grad, start = grads[start:start + n], start + n
            last = k == len(todo) - 1
            with self.no_sync() if (self.no_sync is not None and not last) else contextlib.nullcontext():
                with _replayed(state), torch.enable_grad():   # hooks run with grad mode off
                    surrogate = (self.embed(chunk).float() * (grad * upstream).float()).sum()
                surrogate.backward()

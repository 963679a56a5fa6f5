"""Rerank passages with a cross-encoder: the query and a passage are read *together*, one score per pair.

In full mode (the hub model; scores are raw logits, higher = more relevant; ``normalize=True`` gives
their sigmoid, in [0, 1]):

>>> from bgekit import Reranker
>>> rr = Reranker("BAAI/bge-reranker-large")                       # doctest: +SKIP
>>> rr.compute_score([("what is a cactus?", "A cactus is a succulent plant."),
...                   ("what is a cactus?", "Tomatoes need full sun.")])      # doctest: +SKIP
[5.31, -7.96]
>>> rr.compute_score([("what is a cactus?", "A cactus is a succulent plant.")], normalize=True)  # doctest: +SKIP
[0.995]
>>> passages = ["Tomatoes need full sun.", "A cactus is a succulent plant."]
>>> hits = rr.rerank("what is a cactus?", passages)  # doctest: +SKIP
>>> hits[0]  # doctest: +SKIP
{'index': 1, 'text': 'A cactus is a succulent plant.', 'score': 5.31}
>>> [(h["index"], h["score"]) for h in hits]  # doctest: +SKIP
[(1, 5.31), (0, -7.96)]

In small (offline) mode no pretrained cross-encoder is available: notebook 03 trains one with
:func:`bgekit.training.train_reranker`; pass its folder, ``Reranker(path)``.

Two-stage retrieval over a whole query set: ``Reranker.rerank_run`` scores the top ``k`` candidates
of a first-stage run in one length-sorted pass; :func:`fuse_scores` adds ``weight x`` the first-stage
score to the reranker's logit (score interpolation), and :func:`tune_fusion_weight` picks the weight
on validation queries (never on the test queries); both live in :mod:`bgekit.fusion`:

>>> rr_run = rr.rerank_run(dense_run, queries, corpus, k=100)              # doctest: +SKIP
>>> w, table = tune_fusion_weight(dense_dev, rr.rerank_run(dense_dev, queries, corpus), dev_qrels)  # doctest: +SKIP
>>> final = fuse_scores(dense_run, rr_run, w)                             # doctest: +SKIP

How a pair is tokenised: ``[CLS] query [SEP] passage [SEP]`` (the model's own pair template),
at most ``max_length`` tokens. When a pair is too long the passage is cut first; the query keeps
all its tokens unless it is itself longer than ``max_query_length`` (default: a quarter of
``max_length``) *and* the passage needs the room, in which case the query is cut to
``max(max_query_length, room left by the passage)``. So the passage always keeps at least three
quarters of the budget, and nothing is cut when the pair fits.

How it batches: every pair is tokenised once, pairs are sorted by token length so each batch is
padded only to its own longest pair, and scores come back in input order. On CUDA the weights run
in fp16, elsewhere in fp32; logits (and the sigmoid) are computed in fp32. On a CPU with bf16
instructions (``bgekit.config.fast_bf16()``), ``dtype="bf16"`` is about twice as fast as fp32.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from . import models
from ._batching import model_inputs, run_length_sorted
from .config import default_device, get_mode, model_dtype
from .data import doc_text
from .embedder import warn_truncated
from .fusion import FUSION_WEIGHTS, fuse_scores, tune_fusion_weight  # their home is bgekit.fusion; importable here too
from .metrics import rank_documents, rank_order

logger = logging.getLogger(__name__)

__all__ = ["Reranker", "tokenize_pairs", "default_reranker", "fuse_scores", "tune_fusion_weight", "FUSION_WEIGHTS"]

#: show a progress bar when scoring at least this many pairs (unless told otherwise)
PROGRESS_MIN_PAIRS = 512


Pair = tuple[str, str]


def default_reranker(mode: str | None = None) -> str:
    """The reranker a mode uses: ``BAAI/bge-reranker-large`` in full mode.

    Small (offline) mode has no pretrained cross-encoder, so this raises
    :class:`~bgekit.models.ModelLoadError` saying how to get one.
    """
    m, _ = get_mode(mode)
    if m == "full":
        return models.FULL_RERANKER
    raise models.ModelLoadError(
        "No pretrained reranker is available in small (offline) mode. Train the course's cross-encoder "
        "and pass its folder: `from bgekit.training import train_reranker; rr = Reranker(train_reranker("
        "output_dir='_work/reranker'))` (notebook 03 does this), or set BGEKIT_MODE=full to use "
        f"{models.FULL_RERANKER!r} from the Hugging Face hub."
    )


def _check_pairs(pairs: Any) -> list[Pair]:
    """Validate ``pairs``; a single ``(query, passage)`` pair becomes a list of one."""
    if isinstance(pairs, (str, bytes)):
        raise TypeError("pairs must be a list of (query, passage) pairs, got a single string")
    if isinstance(pairs, Mapping) or not isinstance(pairs, Iterable):
        raise TypeError(f"pairs must be a list of (query, passage) pairs, got {type(pairs).__name__}")
    if isinstance(pairs, (tuple, list)) and len(pairs) == 2 and all(isinstance(x, str) for x in pairs):
        return [(pairs[0], pairs[1])]  # one pair given on its own
    out: list[Pair] = []
    for i, p in enumerate(pairs):
        if isinstance(p, (str, bytes)) or not isinstance(p, (tuple, list)) or len(p) != 2:
            what = f"a string {p[:40]!r}" if isinstance(p, str) else (
                f"a {type(p).__name__} of length {len(p)}" if isinstance(p, (tuple, list)) else type(p).__name__)
            raise TypeError(f"pairs[{i}] is {what}: expected a (query, passage) pair of two strings")
        q, d = p
        for j, (name, x) in enumerate((("query", q), ("passage", d))):
            if not isinstance(x, str):
                raise TypeError(f"pairs[{i}][{j}] (the {name}) is {type(x).__name__}, expected str"
                                + (" (None is not text: drop or replace it)" if x is None else ""))
        out.append((q, d))
    return out


def tokenize_pairs(tokenizer: Any, pairs: Sequence[Pair], max_length: int,
                   max_query_length: int | None = None) -> tuple[list[dict[str, list[int]]], int]:
    """Tokenise ``(query, passage)`` pairs with the model's pair template, unpadded, within ``max_length``.

    The passage is cut first; a query longer than ``max_query_length`` (default ``max_length // 4``)
    is cut to ``max(max_query_length, room the passage leaves)``. Returns the features (one dict per
    pair, keys ``input_ids``/``attention_mask``/``token_type_ids`` as the tokenizer makes them) and
    how many pairs were cut.

    >>> feats, n_cut = tokenize_pairs(tok, [("a question", "a passage")], 512)  # doctest: +SKIP
    """
    n_special = tokenizer.num_special_tokens_to_add(pair=True)
    budget = int(max_length) - n_special
    if budget < 2:
        raise ValueError(f"max_length={max_length} leaves no room for a query and a passage "
                         f"({n_special} special tokens)")
    q_cap = max(1, min(int(max_query_length or max_length // 4), budget - 1))
    queries = [q for q, _ in pairs]
    passages = [d for _, d in pairs]
    long_q: dict[str, tuple[int, list[tuple[int, int]]]] = {}
    if getattr(tokenizer, "is_fast", False):
        # tokenise each distinct query once (a rerank call repeats one query for every passage)
        uniq = list(dict.fromkeys(queries))
        qenc = tokenizer(uniq, add_special_tokens=False, truncation=True, max_length=budget,
                         return_offsets_mapping=True)
        for q, ids, offs in zip(uniq, qenc["input_ids"], qenc["offset_mapping"]):
            if len(ids) > q_cap:
                long_q[q] = (len(ids), offs)
    if long_q:  # rare: the query itself is long; give it what the passage leaves, at least q_cap
        rows = [i for i, q in enumerate(queries) if q in long_q]
        penc = tokenizer([passages[i] for i in rows], add_special_tokens=False, truncation=True, max_length=budget)
        for i, p_ids in zip(rows, penc["input_ids"]):
            n_q, offs = long_q[queries[i]]
            keep = min(n_q, max(q_cap, budget - len(p_ids)))
            if keep < n_q:
                queries[i] = queries[i][: offs[keep - 1][1]]  # cut at the end of the keep-th token
    # "longest_first" trims the longer side token by token: with the query already within its cap,
    # that is the passage, and it never fails the way "only_second" does when a query is too long
    enc = tokenizer(queries, passages, truncation="longest_first", max_length=int(max_length), padding=False)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    feats = [{k: enc[k][i] for k in keys} for i in range(len(pairs))]
    # a pair that fills max_length may just fit: one token more tells (the query as given, uncut)
    full = [i for i, f in enumerate(feats) if len(f["input_ids"]) >= max_length]
    if full:
        longer = tokenizer([pairs[i][0] for i in full], [passages[i] for i in full], truncation="longest_first",
                           max_length=int(max_length) + 1, padding=False)["input_ids"]
        n_cut = sum(len(ids) > max_length for ids in longer)
    else:
        n_cut = 0
    return feats, n_cut


class Reranker:
    """A cross-encoder that scores ``(query, passage)`` pairs with one logit.

    Args:
        model_name_or_path: hub id (``BAAI/bge-reranker-large``, ``BAAI/bge-reranker-base``, ...) or a
            local folder (e.g. the one :func:`bgekit.training.train_reranker` saves). ``None``:
            ``BAAI/bge-reranker-large`` in full mode; in small mode there is none, so it must be given.
        device: ``"cuda"``, ``"mps"``, ``"cpu"``; ``None`` picks the best available.
        max_length: token budget per pair (query + passage + special tokens); ``None``: the model's
            (512 for the BGE rerankers, capped at the model's position limit).
        dtype: ``"fp16"``/``"bf16"``/``"fp32"``; ``None``: fp16 on CUDA, fp32 elsewhere.
        batch_size: pairs per forward pass (halved automatically on CUDA out-of-memory).
        max_query_length: tokens a long query may keep when the pair does not fit (``None``: ``max_length // 4``).
        show_progress: progress bar (``None``: only for at least 512 pairs).
        backend: ``"torch"`` (default), ``"onnx"`` or ``"openvino"`` (the model exported once and cached,
            see :mod:`bgekit.backends`; CPU, fp32). quantize: ``None`` or ``"int8"`` (onnx/openvino only).
        cache_dir: where exported models are kept; calibration_texts: OpenVINO int8 calibration texts
            (``None``: course passages).

    >>> rr = Reranker("_work/reranker", device="cpu")                  # doctest: +SKIP
    >>> rr.compute_score([("how do I water a cactus", "Water cacti when the soil is dry.")])  # doctest: +SKIP
    [3.2]
    """

    def __init__(self, model_name_or_path: str | os.PathLike | None = None, device: str | None = None,
                 max_length: int | None = None, dtype: str | torch.dtype | None = None, batch_size: int = 32, *,
                 max_query_length: int | None = None, show_progress: bool | None = None,
                 backend: str = "torch", quantize: str | None = None,
                 cache_dir: str | os.PathLike | None = None, calibration_texts: Sequence[str] | None = None) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from . import backends

        backend, quantize, device = backends.resolve_backend(backend, quantize, device, dtype)
        self.backend, self.quantize = backend, quantize

        name = os.fspath(model_name_or_path) if model_name_or_path is not None else default_reranker()
        name = str(name)
        self.name = name
        spec = models.get_spec(name) if (name in models.REGISTRY or os.path.isdir(name)) else None
        if spec is not None and spec.kind == "embedder" and spec.known:
            raise ValueError(
                f"{name!r} is an embedder (a bi-encoder: one vector per text), not a cross-encoder: it has no "
                "trained head to score (query, passage) pairs. Use bgekit.Embedder for it, or train a reranker "
                "from it with bgekit.training.train_reranker."
            )
        self.device = torch.device(device or default_device())
        dtype = model_dtype(self.device, dtype)   # fp16 on CUDA (or BGEKIT_FORCE_FP16=1), else fp32
        self.dtype = dtype
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.show_progress = show_progress
        path = models.resolve_model(name)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
            self.model, info = AutoModelForSequenceClassification.from_pretrained(
                path, trust_remote_code=False, **models.dtype_kwarg(dtype), output_loading_info=True)
        except Exception as e:  # network, missing files, wrong repo id
            raise models.load_error(name, e) from e
        missing = sorted(info.get("missing_keys") or [])
        if missing:
            raise ValueError(
                f"{name!r} is not a trained cross-encoder: its classification head was missing from the "
                f"checkpoint ({', '.join(missing[:4])}) and would be random. Pass a reranker (e.g. "
                f"{models.FULL_RERANKER!r} or a folder saved by bgekit.training.train_reranker)."
            )
        n_labels = int(getattr(self.model.config, "num_labels", 1))
        if n_labels != 1:
            raise ValueError(f"{name!r} has {n_labels} output labels; a reranker needs exactly one (a relevance logit)")
        self.model.to(self.device).eval()
        model_max = int(getattr(self.model.config, "max_position_embeddings", 512) or 512)
        if getattr(self.model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            model_max -= 2  # RoBERTa-style position ids start after the padding index
        default_max = spec.max_length if spec is not None else 512
        self.model_max_length = model_max
        self.max_length = min(int(max_length or default_max), model_max)
        self.max_query_length = max_query_length
        self._runner = None
        if backend != "torch":
            self._runner = backends.load_exported(self.model, self.tokenizer, backend, quantize, output="logits",
                                                  cache_dir=cache_dir, calibration_texts=calibration_texts,
                                                  max_length=self.max_length)
        logger.info("Reranker %s on %s (%s), max_length=%d",
                    os.path.basename(name.rstrip("/")) if os.path.isdir(name) else name, self.device,
                    str(dtype).replace("torch.", ""), self.max_length)

    def __repr__(self) -> str:
        return f"Reranker({self.name!r}, device={str(self.device)!r}, max_length={self.max_length})"

    @torch.inference_mode()
    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self._runner is not None:  # onnx / openvino
            return self._runner(batch)[:, 0].float()
        return self.model(**model_inputs(batch), return_dict=True).logits[:, 0].float()

    def compute_score(self, pairs: Sequence[Pair] | Pair, normalize: bool = False, batch_size: int | None = None,
                      max_length: int | None = None, show_progress: bool | None = None) -> list[float]:
        """One score per ``(query, passage)`` pair, in input order: the raw logit, or with
        ``normalize=True`` its sigmoid in [0, 1] (same ranking, easier to threshold).

        A single pair given on its own, ``("q", "p")``, is scored as a list of one (the result is
        always a list). An empty list gives ``[]``. A bad item raises ``TypeError`` naming its index.

        >>> rr.compute_score([("q", "relevant passage"), ("q", "off-topic passage")])  # doctest: +SKIP
        [4.1, -6.3]
        """
        pairs = _check_pairs(pairs)
        if not pairs:
            return []
        max_length = min(int(max_length or self.max_length), self.model_max_length)
        bs = int(batch_size or self.batch_size)
        feats, n_cut = tokenize_pairs(self.tokenizer, pairs, max_length, self.max_query_length)
        warn_truncated(logger, n_cut, len(pairs), max_length, "pairs")
        out = np.empty(len(pairs), dtype=np.float32)
        show = show_progress if show_progress is not None else (
            self.show_progress if self.show_progress is not None else len(pairs) >= PROGRESS_MIN_PAIRS)

        def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            logits = self._forward(batch)
            return torch.sigmoid(logits) if normalize else logits

        run_length_sorted(feats, self.tokenizer, self.device, forward, out, bs, desc="rerank", unit="pair", show=show)
        return out.tolist()

    def rerank(self, query: str, passages: Sequence[str | Mapping[str, Any]], top_k: int | None = None, *,
               normalize: bool = False, batch_size: int | None = None,
               max_length: int | None = None, ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Score every passage against ``query`` and return them best first:
        ``[{"index": position in passages, "text": passage, "score": float}, ...]``, at most ``top_k``.

        A passage is a string or a ``{"title", "text"}`` record (scored as ``title + " " + text``).
        Ties: with ``ids`` (one doc id per passage; each result then also carries ``"id"``) equal scores
        are ordered as :func:`bgekit.metrics.rank_documents` ranks them (doc id descending), so the
        ``top_k`` kept is the one the metrics would score; without ``ids`` equal scores keep input order.
        Either way the order does not depend on ``top_k``: a ``top_k`` list is the prefix of a longer one.

        >>> rr.rerank("tiny flies in my pots", ["Aphids on roses ...", "Fungus gnats ..."], top_k=1)  # doctest: +SKIP
        [{'index': 1, 'text': 'Fungus gnats ...', 'score': 2.7}]
        """
        if not isinstance(query, str):
            raise TypeError(f"query is {type(query).__name__}, expected str")
        if isinstance(passages, (str, bytes, Mapping)) or not isinstance(passages, Iterable):
            raise TypeError("passages must be a list of strings (or {'title', 'text'} records)")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        texts = [doc_text(p, f"passages[{i}]") for i, p in enumerate(passages)]
        if ids is not None:
            if isinstance(ids, str):
                raise TypeError("ids must be a list of doc ids (one per passage), not a single string")
            ids = list(ids)
            if len(ids) != len(texts):
                raise ValueError(f"got {len(ids)} ids for {len(texts)} passages: give one doc id per passage")
            if not all(isinstance(d, str) for d in ids) or len(set(ids)) != len(ids):
                raise ValueError("ids must be distinct strings (doc ids)")
        if not texts:
            return []
        scores = self.compute_score([(query, t) for t in texts], normalize=normalize, batch_size=batch_size,
                                    max_length=max_length)
        k = None if top_k is None else int(top_k)
        if ids is not None:
            order = rank_order(ids, scores, k)
            return [{"index": i, "id": ids[i], "text": texts[i], "score": scores[i]} for i in order]
        order = sorted(range(len(texts)), key=lambda i: -scores[i])[:k]  # stable: ties keep input order
        return [{"index": i, "text": texts[i], "score": scores[i]} for i in order]

    def rerank_run(self, run: Mapping[str, Mapping[str, float]], queries: Mapping[str, str],
                   corpus: Mapping[str, Any] | Callable[[str], str], k: int | None = None, *,
                   batch_size: int | None = None, show_progress: bool | None = None) -> dict[str, dict[str, float]]:
        """Rerank a whole first-stage run: ``{qid: {doc_id: reranker logit}}`` for the top ``k``
        candidates of every query (all of them when ``k`` is None).

        The top ``k`` is cut by :func:`bgekit.metrics.rank_documents`' order (first-stage score, ties
        by doc id descending), the order the metrics rank the first stage by, and each query's output
        comes best first in the same order of the reranker's scores.

        ``run`` is ``{qid: {doc_id: first-stage score}}`` (as from ``DenseRetriever.run``); ``queries``
        maps query ids to texts; ``corpus`` maps doc ids to texts or ``{"title", "text"}`` records (or
        is a function ``doc_id -> text``). All pairs go through one :meth:`compute_score` call, so
        batches are filled across queries. Scores are the same as per-query :meth:`rerank` calls.

        >>> rr.rerank_run(dense.run(queries, k=100), queries, corpus)   # doctest: +SKIP
        {'q1': {'p17': 3.2, 'p4': -1.5, ...}, ...}
        """
        from .data import doc_text

        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
            raise ValueError(f"k must be a positive int or None, got {k!r}")
        text_of = corpus if callable(corpus) else None
        keys: list[tuple[str, str]] = []
        pairs: list[Pair] = []
        for qid, hits in run.items():
            if qid not in queries:
                raise KeyError(f"query {qid!r} of the run is not in queries")
            for doc_id in rank_documents(hits, None if k is None else int(k)):
                if text_of is not None:
                    text = text_of(doc_id)
                elif doc_id in corpus:
                    text = doc_text(corpus[doc_id])
                else:
                    raise KeyError(f"document {doc_id!r} (query {qid!r}) of the run is not in the corpus")
                keys.append((qid, doc_id))
                pairs.append((queries[qid], text))
        scores = self.compute_score(pairs, batch_size=batch_size, show_progress=show_progress)
        by_query: dict[str, dict[str, float]] = {qid: {} for qid in run}
        for (qid, doc_id), score in zip(keys, scores):
            by_query[qid][doc_id] = float(score)
        return {qid: {d: row[d] for d in rank_documents(row)} for qid, row in by_query.items()}

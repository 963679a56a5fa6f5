"""Retrieval in one call: dense search (Embedder + faiss), BM25 (``bm25s``) and hybrid fusion (RRF).

Every retriever has the same two entry points::

    retriever.search(["why are my tomato leaves yellow?"], k=10)
    # -> [[("doc17", 0.71), ("doc4", 0.66), ...]]            (doc id, score) best first, one list per query
    retriever.run({"q1": "why are my tomato leaves yellow?"}, k=100)
    # -> {"q1": {"doc17": 0.71, "doc4": 0.66, ...}}          a run dict for :func:`bgekit.metrics.evaluate`

and keeps ``corpus`` (doc id -> document) and ``doc_ids`` so that later stages (a reranker, a RAG
prompt) can fetch the text of a hit with ``retriever.doc_text(doc_id)``.

Evaluation follows MTEB's retrieval conventions, so numbers on a public BEIR dataset match the
published ones: a document is ``title + " " + text`` (:func:`bgekit.data.doc_text`), queries get the
model's query instruction (documents none), and relevance > 0 counts as relevant (:mod:`bgekit.metrics`).

**Hits whose doc id equals the query id** are kept unless you ask otherwise (``ignore_identical_ids``).
Query ids and doc ids are separate namespaces in most collections, and numeric ids overlap often, so
dropping such hits would throw away real answers. The filter belongs to datasets whose queries are
drawn from the corpus itself, where a query would otherwise find its own copy first: ArguAna (an
argument is the query, its counter-argument the answer, and the argument is also a document) and
Quora (a question is the query, its duplicates the answers, and the question is also in the corpus).
Their published (BEIR / MTEB) protocol drops the self-hit, and :data:`IGNORE_IDENTICAL_IDS` lists them:
:func:`evaluate_retrieval` turns the filter on by itself for a folder of that name. (MTEB also sets it
for MSMARCO and a few other tasks only to reproduce older scores; pass ``ignore_identical_ids=True``
to match those.) Whenever a dropped hit is judged relevant in the qrels, a warning names the query
and the document.

**Ties.** Every retriever cuts its list by :func:`bgekit.metrics.rank_documents`' order (score,
then doc id descending, as ``trec_eval``), so ``search(q, k)`` is always the first ``k`` hits of
``search(q, k2)`` for any ``k2 > k``, and nDCG@k does not depend on how deep you retrieved.

Example::

    >>> from bgekit import Embedder, load_beir
    >>> from bgekit.retrieval import DenseRetriever, BM25Retriever, HybridRetriever
    >>> data = load_beir("data", split="test")                       # doctest: +SKIP
    >>> dense = DenseRetriever(Embedder(), data.corpus)               # doctest: +SKIP
    >>> bm25 = BM25Retriever(data.corpus)                            # doctest: +SKIP
    >>> hybrid = HybridRetriever([dense, bm25])                      # doctest: +SKIP
    >>> hybrid.search(["my basil keeps wilting"], k=3)               # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bgekit.metrics import rank_order

from .data import check_texts, doc_text
from .fusion import rrf
from .types import Document, Hits, Run

logger = logging.getLogger(__name__)

__all__ = [
    "IGNORE_IDENTICAL_IDS",
    "BM25Retriever",
    "DenseRetriever",
    "HybridRetriever",
    "Retriever",
    "evaluate_retrieval",
    "ignore_identical_ids_for",
    "retrieve_runs",
    "rrf",
]

METHODS: tuple[str, ...] = ("dense", "bm25", "hybrid")

#: Public datasets whose published protocol drops a hit whose doc id equals the query id, and why
#: (keys: the dataset name lower-cased, without "-", "_" or spaces, as its BEIR folder is named).
IGNORE_IDENTICAL_IDS: dict[str, str] = {
    "arguana": "ArguAna's queries are arguments taken from the corpus: each would find itself first",
    "quora": "Quora's queries are questions taken from the corpus: each would find itself first",
    "quoraretrieval": "MTEB's name for Quora (queries taken from the corpus)",
    "nanoarguana": "NanoBEIR's ArguAna subset (queries taken from the corpus)",
    "nanoquoraretrieval": "NanoBEIR's Quora subset (queries taken from the corpus)",
}


def ignore_identical_ids_for(dataset: str | Path) -> bool:
    """Whether the published protocol of ``dataset`` (a name or a BEIR folder) drops self-hits.

    >>> ignore_identical_ids_for("datasets/arguana"), ignore_identical_ids_for("Quora")
    (True, True)
    >>> ignore_identical_ids_for("scifact")
    False
    """
    name = Path(str(dataset).rstrip("/\\")).name.lower()
    for ch in "-_ .":
        name = name.replace(ch, "")
    return name in IGNORE_IDENTICAL_IDS


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _as_corpus(corpus: Mapping[str, Document] | Sequence[str]) -> dict[str, Document]:
    """Check a corpus and return it as ``{doc_id: doc}`` (a list of strings gets ids "0", "1", ...)."""
    if isinstance(corpus, Mapping):
        out = dict(corpus)
    elif isinstance(corpus, Sequence) and not isinstance(corpus, (str, bytes)):
        out = {str(i): d for i, d in enumerate(corpus)}
    else:
        raise TypeError(
            f"corpus must be a dict {{doc_id: {{'title', 'text'}} or str}} or a list of strings, "
            f"got {type(corpus).__name__}"
        )
    if not out:
        raise ValueError("corpus is empty: nothing to search")
    for i, (doc_id, doc) in enumerate(out.items()):
        if not isinstance(doc_id, str):
            raise TypeError(f"corpus key #{i} is {type(doc_id).__name__} {doc_id!r}: doc ids must be str")
        if not isinstance(doc, (str, Mapping)):
            raise TypeError(
                f"corpus[{doc_id!r}] is {type(doc).__name__}: expected a str or a dict with 'title'/'text'"
            )
    return out


def _check_k(k: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{name} must be a positive int, got {k!r}")
    return int(k)


def _warn_if_relevant(qid: str, qrels: Mapping[str, Mapping[str, int]] | None) -> None:
    """Warn when the hit dropped for being the query's own id is judged relevant to that query."""
    rel = (qrels or {}).get(qid, {}).get(qid, 0)
    if rel > 0:
        logger.warning(
            "ignore_identical_ids dropped doc %r from the hits of query %r although the qrels judge it "
            "relevant (relevance %s): the query and doc ids are probably separate namespaces here; "
            "turn ignore_identical_ids off for this dataset",
            qid, qid, rel,
        )


# --------------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------------
class Retriever:
    """Shared part of every retriever: ``corpus``, ``doc_ids``, ``doc_text`` and ``run``.

    Subclasses implement :meth:`search`.
    """

    corpus: dict[str, Document]
    doc_ids: list[str]

    def __len__(self) -> int:
        return len(self.doc_ids)

    def doc_text(self, doc_id: str) -> str:
        """The text of a document as the retriever saw it (``title + " " + text``).

        >>> bm25 = BM25Retriever({"d1": {"title": "Basil", "text": "Pinch the tips."}})
        >>> bm25.doc_text("d1")
        'Basil Pinch the tips.'
        """
        try:
            doc = self.corpus[doc_id]
        except KeyError:
            raise KeyError(f"doc id {doc_id!r} is not in this retriever's corpus ({len(self.corpus)} docs)") from None
        return doc_text(doc)

    def search(self, query_texts: Sequence[str], k: int = 10) -> Hits:  # pragma: no cover - abstract
        """``[[(doc_id, score), ...] per query]``, best first, at most ``k`` hits each."""
        raise NotImplementedError

    def run(
        self,
        queries: Mapping[str, str],
        k: int = 100,
        ignore_identical_ids: bool = False,
        qrels: Mapping[str, Mapping[str, int]] | None = None,
    ) -> Run:
        """Search every query and return a run dict ``{qid: {doc_id: score}}`` of at most ``k`` hits.

        Args:
            queries: ``{qid: text}``.
            k: hits per query.
            ignore_identical_ids: drop a hit whose doc id equals the query id (``k + 1`` hits are
                fetched so that ``k`` remain). Off by default: only for collections whose queries are
                drawn from the corpus (ArguAna, Quora; see the module docstring).
            qrels: optional judgements ``{qid: {doc_id: relevance}}``: a dropped hit judged relevant
                (> 0) there is logged as a warning naming the query and the document.

        Returns:
            ``{qid: {doc_id: score}}``, each query's hits best first.

        >>> bm25 = BM25Retriever({"a": "water the basil", "b": "prune the roses"})
        >>> list(bm25.run({"a": "basil water"}, k=1)["a"])
        ['a']
        >>> bm25.run({"a": "basil water"}, k=1, ignore_identical_ids=True)   # ArguAna-style self-hit dropped
        {'a': {}}
        """
        k = _check_k(k)
        if not isinstance(queries, Mapping):
            raise TypeError(f"queries must be a dict {{qid: text}}, got {type(queries).__name__}")
        qids = list(queries)
        hits = self.search([queries[q] for q in qids], k + 1 if ignore_identical_ids else k)
        out: Run = {}
        for qid, row in zip(qids, hits):
            if ignore_identical_ids:
                kept = [(d, s) for d, s in row[: k + 1] if d != qid]
                if len(kept) < len(row[: k + 1]):
                    _warn_if_relevant(qid, qrels)
                row = kept
            out[qid] = {d: float(s) for d, s in row[:k]}
        return out


# --------------------------------------------------------------------------------------------
# dense
# --------------------------------------------------------------------------------------------
class DenseRetriever(Retriever):
    """Embed a corpus with an :class:`~bgekit.embedder.Embedder`, index it in a :class:`~bgekit.index.DenseIndex`,
    and search it with embedded queries (inner product of L2-normalised vectors = cosine similarity).

    Args:
        encoder: an ``Embedder``, or a model name / folder to build one from (``None``: the default model).
        corpus: ``{doc_id: {"title", "text"}}`` or ``{doc_id: str}`` (or a list of strings, ids "0", "1", ...).
        index_kind: ``"flat"`` (exact), ``"hnsw"`` or ``"ivf"`` (approximate); ``index_knobs`` go to ``DenseIndex``.
        batch_size: encoding batch size (``None``: the encoder's).
        query_instruction_for_retrieval: overrides the model's query instruction (``""``: none; ``None``: the model's).
        show_progress: progress bar while encoding the corpus (``None``: the encoder's default).
        embeddings: precomputed corpus embeddings (n, dim) in corpus order, to skip encoding.
        cache_dir: keep the corpus embeddings in this folder (:mod:`bgekit.cache`): they are reused
            whenever the same model weights, settings and texts come again (another notebook, a rerun).

    >>> dense = DenseRetriever(Embedder(), {"d1": "Water succulents sparingly."})  # doctest: +SKIP
    >>> dense.search(["how often do I water a cactus"], k=1)                     # doctest: +SKIP
    [[('d1', 0.58)]]
    """

    def __init__(
        self,
        encoder: Any,
        corpus: Mapping[str, Document] | Sequence[str],
        index_kind: str = "flat",
        batch_size: int | None = None,
        query_instruction_for_retrieval: str | None = None,
        show_progress: bool | None = None,
        embeddings: np.ndarray | None = None,
        cache_dir: str | Path | None = None,
        **index_knobs: Any,
    ) -> None:
        from bgekit.index import DenseIndex

        if encoder is None or isinstance(encoder, (str, Path)):
            from bgekit.embedder import Embedder

            encoder = Embedder(encoder)
        self.encoder = encoder
        self.corpus = _as_corpus(corpus)
        self.doc_ids = list(self.corpus)
        self.batch_size = batch_size
        self.query_instruction_for_retrieval = query_instruction_for_retrieval
        self.show_progress = show_progress
        self.index_kind = index_kind
        if embeddings is not None and cache_dir is not None:
            raise ValueError("pass either embeddings (precomputed) or cache_dir (compute once, then reuse), not both")
        if embeddings is None:
            texts = [doc_text(self.corpus[d]) for d in self.doc_ids]

            def compute() -> np.ndarray:
                logger.info("encoding %d documents with %s", len(texts), getattr(encoder, "name", encoder))
                return encoder.encode_corpus(texts, **self._encode_kwargs())

            if cache_dir is None:
                embeddings = compute()
            else:
                from bgekit.cache import cached_embeddings, corpus_key

                embeddings = cached_embeddings(cache_dir, corpus_key(encoder, texts), len(texts), compute)
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(self.doc_ids):
            raise ValueError(
                f"embeddings have shape {embeddings.shape}, expected ({len(self.doc_ids)}, dim): one row per document"
            )
        self.embeddings = embeddings
        self.index = DenseIndex(embeddings.shape[1], kind=index_kind, **index_knobs)
        self.index.add(self.doc_ids, embeddings)

    def _encode_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.batch_size is not None:
            kw["batch_size"] = self.batch_size
        if self.show_progress is not None:
            kw["show_progress"] = self.show_progress
        return kw

    def encode_queries(self, query_texts: Sequence[str]) -> np.ndarray:
        """Query embeddings (with the model's query instruction unless overridden)."""
        kw = self._encode_kwargs()
        kw["show_progress"] = False if self.show_progress is None else self.show_progress
        if self.query_instruction_for_retrieval is not None:
            kw["query_instruction_for_retrieval"] = self.query_instruction_for_retrieval
        return np.asarray(self.encoder.encode_queries(list(query_texts), **kw), dtype=np.float32)

    def search(self, query_texts: Sequence[str], k: int = 10) -> Hits:
        """Top ``k`` documents per query by cosine similarity, ``[[(doc_id, score), ...], ...]``.

        >>> dense.search(["yellow leaves on tomatoes"], k=2)   # doctest: +SKIP
        [[('d12', 0.71), ('d40', 0.63)]]
        """
        texts = check_texts(query_texts, "queries")
        k = _check_k(k)
        if not texts:
            return []
        ids, scores = self.index.search(self.encode_queries(texts), k)
        return [[(d, float(s)) for d, s in zip(row_ids, row_scores)] for row_ids, row_scores in zip(ids, scores)]

    def doc_vectors(self, doc_ids: Sequence[str]) -> np.ndarray:
        """The stored corpus embeddings of ``doc_ids``, in that order (no re-encoding).

        Args:
            doc_ids: ids of documents in this retriever's corpus (repeats allowed).

        Returns:
            float32 array ``(len(doc_ids), dim)``, rows as the encoder made them (L2-normalised).

        Raises:
            TypeError: ``doc_ids`` is a single string.
            KeyError: an id that is not in the corpus (its position is named).

        >>> dense.doc_vectors(["d12", "d40"]).shape        # doctest: +SKIP
        (2, 384)
        """
        if isinstance(doc_ids, str):
            raise TypeError("doc_ids must be a list of doc ids; wrap a single id as [doc_id]")
        rows = getattr(self, "_rows", None)
        if rows is None:  # built on first use: doc id -> row of self.embeddings
            rows = self._rows = {d: i for i, d in enumerate(self.doc_ids)}
        idx = []
        for i, d in enumerate(doc_ids):
            if d not in rows:
                raise KeyError(f"doc_ids[{i}] = {d!r} is not in this retriever's corpus ({len(rows)} docs)")
            idx.append(rows[d])
        return self.embeddings[np.asarray(idx, dtype=np.int64)]


# --------------------------------------------------------------------------------------------
# BM25
# --------------------------------------------------------------------------------------------
def _english_stemmer(stemmer: Any) -> Any:
    """``"auto"``: PyStemmer's English stemmer when installed, else ``None`` (plain tokens)."""
    if stemmer != "auto":
        return stemmer or None
    try:
        import Stemmer  # PyStemmer
    except ImportError:
        logger.info("PyStemmer is not installed: BM25 tokens are not stemmed (pip install PyStemmer)")
        return None
    return Stemmer.Stemmer("english")


class BM25Retriever(Retriever):
    """Lexical search with BM25 (the ``bm25s`` library): lower-cased word tokens, English stopwords
    removed, English stemming when PyStemmer is installed.

    Documents that share no token with the query (score 0) are not returned, so a query may get
    fewer than ``k`` hits.

    Args:
        corpus: ``{doc_id: {"title", "text"}}`` or ``{doc_id: str}`` (or a list of strings).
        k1, b, method: BM25 parameters and variant (``bm25s`` names; ``"lucene"`` is Lucene/Elasticsearch's).
        stemmer: ``"auto"`` (PyStemmer English if installed), ``None`` for none, or any object with
            ``stemWords(list[str])`` / a callable ``str -> str``.
        stopwords: ``"en"``, a list of words, or ``None``.

    >>> bm25 = BM25Retriever({"d1": "Prune tomato suckers weekly.", "d2": "Repot orchids in bark."})
    >>> [d for d, _ in bm25.search(["how do I prune tomatoes"], k=5)[0]]
    ['d1']
    """

    def __init__(
        self,
        corpus: Mapping[str, Document] | Sequence[str],
        k1: float = 1.5,
        b: float = 0.75,
        method: str = "lucene",
        stemmer: Any = "auto",
        stopwords: str | Sequence[str] | None = "en",
        show_progress: bool = False,
    ) -> None:
        import bm25s

        self.corpus = _as_corpus(corpus)
        self.doc_ids = list(self.corpus)
        self._id_array = np.array(self.doc_ids, dtype=object)
        self.stemmer = _english_stemmer(stemmer)
        self.stopwords = stopwords
        self.show_progress = show_progress
        self._bm25s = bm25s
        tokens = self._tokenize([doc_text(self.corpus[d]) for d in self.doc_ids])
        self.model = bm25s.BM25(k1=k1, b=b, method=method)
        self.model.index(tokens, show_progress=show_progress)

    def _tokenize(self, texts: list[str], return_ids: bool = True) -> Any:
        return self._bm25s.tokenize(
            texts,
            stopwords=self.stopwords,
            stemmer=self.stemmer,
            return_ids=return_ids,
            show_progress=self.show_progress,
        )

    def scores(self, query_text: str) -> np.ndarray:
        """BM25 score of every document (in ``doc_ids`` order) for one query.

        A query term counts once per occurrence (as in ``bm25s``); terms absent from the corpus add nothing.
        """
        words = self._tokenize([query_text], return_ids=False)[0]
        known = [w for w in words if w in self.model.vocab_dict]
        if not known:
            return np.zeros(len(self.doc_ids), dtype=np.float32)
        return np.asarray(self.model.get_scores(known), dtype=np.float32)

    def search(self, query_texts: Sequence[str], k: int = 10) -> Hits:
        """Top ``k`` documents per query by BM25 score (score 0 = no shared token = not returned)."""
        texts = check_texts(query_texts, "queries")
        k = _check_k(k)
        out: Hits = []
        for text in texts:
            s = self.scores(text)
            hit = np.flatnonzero(s > 0)
            ids = self._id_array[hit]
            # the package's one total order (score, then doc id descending): a prefix of any deeper top k
            top = rank_order(ids, s[hit], k)
            out.append([(ids[j], float(s[hit[j]])) for j in top])
        return out


# --------------------------------------------------------------------------------------------
# hybrid (the fusion functions live in bgekit.fusion)
# --------------------------------------------------------------------------------------------
class HybridRetriever(Retriever):
    """Fuse several retrievers (typically dense + BM25) with reciprocal-rank fusion.

    Each retriever is searched to ``depth`` hits and the lists are fused with :func:`rrf`;
    ``search(texts, k)`` returns the first ``k`` of that one fused list, so a top ``k`` is always
    the prefix of a deeper one. The fused list holds at most ``len(retrievers) * depth`` documents:
    for more hits than that, raise ``depth``. Scores are RRF scores (small numbers, only their order
    matters).

    Args:
        retrievers: two or more retrievers over the same corpus (the first one's corpus is kept).
        k_rrf: the RRF constant (60, as in the original paper).
        depth: hits taken from each retriever before fusion (the same for every ``k``).
        weights: optional per-retriever weights.

    >>> hybrid = HybridRetriever([dense, bm25])           # doctest: +SKIP
    >>> hybrid.search(["aphids on my peppers"], k=3)       # doctest: +SKIP
    """

    def __init__(
        self,
        retrievers: Sequence[Retriever],
        k_rrf: int = 60,
        depth: int = 100,
        weights: Sequence[float] | None = None,
    ) -> None:
        retrievers = list(retrievers)
        if not retrievers:
            raise ValueError("HybridRetriever needs at least one retriever")
        for i, r in enumerate(retrievers):
            if not hasattr(r, "search"):
                raise TypeError(f"retriever #{i} ({type(r).__name__}) has no .search(texts, k) method")
        if weights is not None and len(weights) != len(retrievers):
            raise ValueError(f"got {len(weights)} weights for {len(retrievers)} retrievers")
        first = getattr(retrievers[0], "corpus", None)
        for i, r in enumerate(retrievers[1:], 1):
            other = getattr(r, "corpus", None)
            if first is not None and other is not None and set(other) != set(first):
                raise ValueError(f"retriever #{i} searches a different corpus than retriever #0")
        self.retrievers = retrievers
        self.k_rrf = k_rrf
        self.depth = _check_k(depth, "depth")
        self.weights = weights
        self.corpus = dict(first) if first is not None else {}
        self.doc_ids = list(getattr(retrievers[0], "doc_ids", self.corpus))

    def search(self, query_texts: Sequence[str], k: int = 10) -> Hits:
        """Top ``k`` fused documents per query, ``[[(doc_id, rrf_score), ...], ...]``.

        Fuses each retriever's top ``depth`` whatever ``k`` is (a deeper member search would change
        the fused scores, and with them the order of the first hits).
        """
        texts = check_texts(query_texts, "queries")
        k = _check_k(k)
        keys = [str(i) for i in range(len(texts))]
        runs = []
        for r in self.retrievers:
            hits = r.search(texts, self.depth)
            runs.append({key: dict(row) for key, row in zip(keys, hits)})
        fused = rrf(runs, k_rrf=self.k_rrf, top_k=k, weights=self.weights)
        return [list(fused.get(key, {}).items()) for key in keys]


# --------------------------------------------------------------------------------------------
# one-call evaluation
# --------------------------------------------------------------------------------------------
def _check_methods(methods: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = tuple(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"unknown retrieval method(s) {bad or methods}; choose from {list(METHODS)}")
    return methods


def retrieve_runs(
    corpus: Mapping[str, Document],
    queries: Mapping[str, str],
    encoder_or_model: Any = None,
    methods: Iterable[str] | str = METHODS,
    k: int = 100,
    k_rrf: int = 60,
    index_kind: str = "flat",
    batch_size: int | None = None,
    ignore_identical_ids: bool = False,
    show_progress: bool | None = None,
    qrels: Mapping[str, Mapping[str, int]] | None = None,
    hybrid_depth: int = 100,
) -> dict[str, Run]:
    """Runs ``{method: {qid: {doc_id: score}}}`` of depth ``k`` for dense, BM25 and/or hybrid.

    The hybrid run fuses the top ``hybrid_depth`` of the dense and BM25 runs with :func:`rrf` (the
    same depth for every ``k``, as :class:`HybridRetriever`), so nothing is searched twice.
    ``encoder_or_model`` is an ``Embedder`` or a model name/folder (only needed for dense and hybrid).
    ``ignore_identical_ids`` and ``qrels``: see :meth:`Retriever.run` (off by default).

    >>> runs = retrieve_runs(data.corpus, data.queries, "BAAI/bge-small-en-v1.5")  # doctest: +SKIP
    >>> sorted(runs)                                                                # doctest: +SKIP
    ['bm25', 'dense', 'hybrid']
    """
    methods = _check_methods(methods)
    k = _check_k(k)
    hybrid_depth = _check_k(hybrid_depth, "hybrid_depth")
    depth = max(k, hybrid_depth) if "hybrid" in methods else k
    base: dict[str, Run] = {}
    kw = {"ignore_identical_ids": ignore_identical_ids, "qrels": qrels}
    if "dense" in methods or "hybrid" in methods:
        dense = DenseRetriever(
            encoder_or_model, corpus, index_kind=index_kind, batch_size=batch_size, show_progress=show_progress
        )
        base["dense"] = dense.run(queries, k=depth, **kw)
    if "bm25" in methods or "hybrid" in methods:
        bm25 = BM25Retriever(corpus)
        base["bm25"] = bm25.run(queries, k=depth, **kw)

    def cut(run: Run, n: int) -> Run:  # runs come best first (rank_documents' order): a cut is a prefix
        return {q: dict(list(hits.items())[:n]) for q, hits in run.items()}

    out: dict[str, Run] = {}
    for m in methods:
        if m == "hybrid":
            members = [cut(base["dense"], hybrid_depth), cut(base["bm25"], hybrid_depth)]
            out[m] = rrf(members, k_rrf=k_rrf, top_k=k)
        else:
            out[m] = cut(base[m], k)
    return out


def evaluate_retrieval(
    data_dir: str | Path,
    encoder_or_model: Any = None,
    split: str = "test",
    methods: Iterable[str] | str = METHODS,
    ks: Iterable[int] = (1, 3, 5, 10, 100),
    metrics: Iterable[str] | None = None,
    k_rrf: int = 60,
    index_kind: str = "flat",
    batch_size: int | None = None,
    ignore_identical_ids: bool | None = None,
    show_progress: bool | None = None,
) -> dict[str, dict[str, float]]:
    """Evaluate dense, BM25 and hybrid retrieval on a BEIR folder: ``{method: {"ndcg@10": ..., ...}}``.

    MTEB conventions throughout (see the module docstring), so on SciFact's test split
    ``BAAI/bge-large-en-v1.5`` gives nDCG@10 0.746 and all-MiniLM-L6-v2 0.645.
    ``ignore_identical_ids``: ``None`` (default) follows the dataset's published protocol,
    on only for the datasets in :data:`IGNORE_IDENTICAL_IDS` (recognised by the folder's name,
    e.g. ``arguana``); ``True``/``False`` force it. A dropped hit judged relevant is logged as a warning.

    >>> table = evaluate_retrieval("scifact", "BAAI/bge-large-en-v1.5", methods=["dense"])  # doctest: +SKIP
    >>> round(table["dense"]["ndcg@10"], 3)                                                  # doctest: +SKIP
    0.746
    """
    from bgekit.data import load_beir
    from bgekit.metrics import METRICS, evaluate

    ks = tuple(ks)
    data = load_beir(data_dir, split=split)
    if ignore_identical_ids is None:
        ignore_identical_ids = ignore_identical_ids_for(data_dir)
        if ignore_identical_ids:
            logger.info("%s: dropping hits whose id equals the query id (the dataset's published protocol)", data_dir)
    runs = retrieve_runs(
        data.corpus,
        data.queries,
        encoder_or_model,
        methods=methods,
        k=max(ks),
        k_rrf=k_rrf,
        index_kind=index_kind,
        batch_size=batch_size,
        ignore_identical_ids=ignore_identical_ids,
        show_progress=show_progress,
        qrels=data.qrels,
    )
    metrics = tuple(metrics) if metrics is not None else METRICS
    return {m: evaluate(run, data.qrels, ks=ks, metrics=metrics) for m, run in runs.items()}

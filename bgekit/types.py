"""The pipeline's interfaces, named once: the data that flows from a question to an answer, and its parts.

A question travels through four parts, each named here by what it must be able to do (a
:class:`typing.Protocol`: any object with these methods fits, bgekit's own classes or yours)::

    question --RetrieverLike.search--> Hits --RerankerLike.rerank--> sources
             --rag.build_prompt--> prompt --ChatModelLike.chat--> answer [1][3]
             --EmbedderLike.encode_corpus--> attribution (which sources the answer draws on)

- :data:`Document`: a passage, ``str`` or ``{"title", "text"}`` (:func:`bgekit.data.doc_text` makes its text);
- :data:`Run`: ``{qid: {doc_id: score}}`` (``Retriever.run``, :mod:`bgekit.fusion`, :mod:`bgekit.metrics`);
- :data:`Qrels`: ``{qid: {doc_id: relevance}}`` (:func:`bgekit.data.load_beir`);
- :data:`Hits`: ``[[(doc_id, score), ...] per query]`` (``Retriever.search``);
- :class:`EmbedderLike`: texts -> L2-normalised vectors (:class:`bgekit.embedder.Embedder`);
- :class:`RetrieverLike`: queries -> hits over a corpus (:mod:`bgekit.retrieval`);
  :class:`DenseRetrieverLike` also hands out its stored document vectors;
- :class:`RerankerLike`: (query, passages) -> passages best first (:class:`bgekit.reranker.Reranker`);
- :class:`ChatModelLike`: prompt -> reply text (:class:`bgekit.llm.LLMClient`).

The protocols are ``runtime_checkable``: ``isinstance(obj, RetrieverLike)`` checks that the methods
exist (not their signatures).

>>> from bgekit.types import RetrieverLike
>>> class Fixed:
...     corpus = {"d1": "Water cacti when the soil is dry."}
...     def search(self, query_texts, k=10):
...         return [[("d1", 1.0)] for _ in query_texts]
>>> isinstance(Fixed(), RetrieverLike)
True
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "Document",
    "Run",
    "Qrels",
    "Hits",
    "Message",
    "EmbedderLike",
    "RetrieverLike",
    "DenseRetrieverLike",
    "RerankerLike",
    "ChatModelLike",
]

#: a passage: a plain string, or a BEIR record ``{"title": ..., "text": ...}`` (its text is
#: ``title + " " + text``, :func:`bgekit.data.doc_text`)
Document = str | Mapping[str, Any]

#: retrieval results of many queries, ``{qid: {doc_id: score}}`` (higher = better); the format of
#: pytrec_eval and BEIR, read by :func:`bgekit.metrics.evaluate`
Run = Mapping[str, Mapping[str, float]]

#: relevance judgements, ``{qid: {doc_id: relevance}}``; relevance > 0 counts as relevant
Qrels = Mapping[str, Mapping[str, int]]

#: what ``search`` returns: one list per query of ``(doc_id, score)`` pairs, best first
Hits = list[list[tuple[str, float]]]

#: one chat message, ``{"role": "system" | "user" | "assistant", "content": str}``
Message = Mapping[str, Any]


@runtime_checkable
class EmbedderLike(Protocol):
    """Turns texts into vectors, queries and passages each their own way (a bi-encoder).

    Both methods return a float32 array of shape ``(len(texts), dim)``; rows are L2-normalised, so
    an inner product is a cosine.
    """

    def encode_queries(self, queries: Sequence[str], **kwargs: Any) -> np.ndarray:
        """Embed search queries (with the model's query instruction, if it has one)."""
        ...

    def encode_corpus(self, docs: Sequence[Document], **kwargs: Any) -> np.ndarray:
        """Embed passages (never with an instruction)."""
        ...


@runtime_checkable
class RetrieverLike(Protocol):
    """Finds the ``k`` best documents of a corpus for each query."""

    def search(self, query_texts: Sequence[str], k: int = 10) -> Hits:
        """``[[(doc_id, score), ...] per query]``, best first, at most ``k`` each."""
        ...


@runtime_checkable
class DenseRetrieverLike(RetrieverLike, Protocol):
    """A retriever that holds an embedding of each document, made by ``encoder``."""

    encoder: EmbedderLike

    def doc_vectors(self, doc_ids: Sequence[str]) -> np.ndarray:
        """The stored embeddings of ``doc_ids``, float32 ``(len(doc_ids), dim)``, in that order."""
        ...


@runtime_checkable
class RerankerLike(Protocol):
    """Scores each passage against a query (a cross-encoder) and returns them best first."""

    def rerank(self, query: str, passages: Sequence[Document], top_k: int | None = None) -> list[dict[str, Any]]:
        """``[{"index": position in passages, "text": str, "score": float}, ...]``, best first, at most ``top_k``."""
        ...


@runtime_checkable
class ChatModelLike(Protocol):
    """A chat model behind the OpenAI chat-completions API (or anything that answers like one)."""

    def chat(self, messages: str | Sequence[Message], system: str | None = None, temperature: float = 0.0,
             max_tokens: int = 256, **kwargs: Any) -> str:
        """Send a prompt (or messages) and return the reply text."""
        ...

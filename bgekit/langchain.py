"""A light LangChain adapter: bgekit's :class:`~bgekit.embedder.Embedder` as LangChain ``Embeddings``.

LangChain has its own BGE wrapper; this one uses the course's encoder, so the pooling, the
query instruction and the normalisation are exactly those the rest of the course uses.
Needs the optional extra ``pip install 'bgekit[langchain]'`` (``langchain-core``) to be a real
``langchain_core.embeddings.Embeddings``; without it the class still works on its own
(``embed_documents`` / ``embed_query``), it just is not a LangChain subclass.

Example::

    from bgekit.langchain import BGEEmbeddings
    emb = BGEEmbeddings()                         # the course's default embedder
    vecs = emb.embed_documents(["Water when the top 5 cm are dry."])
    q = emb.embed_query("when should I water?")   # with the model's query instruction
    # e.g. langchain_core.vectorstores.InMemoryVectorStore(emb).add_texts([...])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .types import EmbedderLike

try:  # optional dependency
    from langchain_core.embeddings import Embeddings as _Base

    HAVE_LANGCHAIN = True
except ImportError:  # pragma: no cover - depends on the environment
    _Base = object  # type: ignore[assignment,misc]
    HAVE_LANGCHAIN = False

__all__ = ["BGEEmbeddings", "HAVE_LANGCHAIN"]


class BGEEmbeddings(_Base):  # type: ignore[misc,valid-type]
    """LangChain ``Embeddings`` over a bgekit ``Embedder``.

    Args:
        encoder: an existing :class:`bgekit.Embedder` (or any :class:`~bgekit.types.EmbedderLike`); if None,
            one is built from ``model_name_or_path`` and ``encoder_kw`` (default: the course's embedder).
        query_instruction_for_retrieval: override the model's query instruction (``""`` for none).
        batch_size: texts per forward pass.

    Example::

        emb = BGEEmbeddings(model_name_or_path="BAAI/bge-large-en-v1.5")
        emb.embed_query("how deep should I plant tulip bulbs?")[:3]
    """

    def __init__(
        self,
        encoder: EmbedderLike | None = None,
        model_name_or_path: str | None = None,
        query_instruction_for_retrieval: str | None = None,
        batch_size: int | None = None,
        **encoder_kw: Any,
    ) -> None:
        if encoder is None:
            from .embedder import Embedder

            encoder = Embedder(model_name_or_path, **encoder_kw)
        elif model_name_or_path is not None or encoder_kw:
            raise ValueError("pass either encoder=... or model_name_or_path/encoder options, not both")
        self.encoder = encoder
        self.query_instruction_for_retrieval = query_instruction_for_retrieval
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"BGEEmbeddings(encoder={getattr(self.encoder, 'name', type(self.encoder).__name__)!r})"

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed passages (no instruction)."""
        texts = list(texts)
        if not texts:
            return []
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
        vecs = self.encoder.encode_corpus(texts, batch_size=self.batch_size)
        return [[float(x) for x in row] for row in vecs]

    def embed_query(self, text: str) -> list[float]:
        """Embed a search query (with the model's query instruction, unless overridden)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        vec = self.encoder.encode_queries([text], query_instruction_for_retrieval=self.query_instruction_for_retrieval,
                                          batch_size=self.batch_size)[0]
        return [float(x) for x in vec]

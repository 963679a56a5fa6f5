"""bgekit.types: bgekit's own classes fit the pipeline's protocols, by method names *and* parameters."""
from __future__ import annotations

import inspect

import pytest

from bgekit import types as T


def _protocol_methods(proto):
    """Public methods of a protocol, its base protocols' included."""
    names = {}
    for base in reversed(proto.__mro__):
        if getattr(base, "_is_protocol", False) and base.__module__ == "bgekit.types":
            names.update({n: None for n, v in vars(base).items() if callable(v) and not n.startswith("_")})
    return list(names)


def _fits(impl_cls, proto) -> list[str]:
    """What keeps ``impl_cls`` from being called the way the protocol promises (empty: it fits)."""
    problems = []
    for name in _protocol_methods(proto):
        impl = getattr(impl_cls, name, None)
        if impl is None:
            problems.append(f"no {name}()")
            continue
        want = list(inspect.signature(getattr(proto, name)).parameters.values())[1:]
        have = list(inspect.signature(impl).parameters.values())[1:]
        have_names = {p.name: p for p in have}
        var_kw = any(p.kind is p.VAR_KEYWORD for p in have)
        positional = [p for p in have if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        for i, p in enumerate(want):
            if p.kind is p.VAR_KEYWORD:
                continue
            if p.kind is p.POSITIONAL_OR_KEYWORD and (i >= len(positional) or positional[i].name != p.name):
                problems.append(f"{name}(): parameter #{i + 1} should be {p.name!r}")
            elif p.name not in have_names and not var_kw:
                problems.append(f"{name}(): no parameter {p.name!r}")
            elif p.default is not p.empty and p.name in have_names and have_names[p.name].default is p.empty:
                problems.append(f"{name}(): {p.name!r} must be optional")
    return problems


def test_protocol_methods_include_inherited_ones():
    assert _protocol_methods(T.DenseRetrieverLike) == ["search", "doc_vectors"]


def test_the_checker_catches_a_misfit():
    class Bad:
        def rerank(self, passages, query, top_k):  # wrong order, top_k required
            return []

    assert _fits(Bad, T.RerankerLike) == ["rerank(): parameter #1 should be 'query'",
                                          "rerank(): parameter #2 should be 'passages'",
                                          "rerank(): 'top_k' must be optional"]


@pytest.mark.parametrize("impl,proto", [
    ("bgekit.embedder:Embedder", T.EmbedderLike),
    ("bgekit.retrieval:DenseRetriever", T.DenseRetrieverLike),
    ("bgekit.retrieval:BM25Retriever", T.RetrieverLike),
    ("bgekit.retrieval:HybridRetriever", T.RetrieverLike),
    ("bgekit.reranker:Reranker", T.RerankerLike),
    ("bgekit.llm:LLMClient", T.ChatModelLike),
])
def test_bgekit_classes_fit_the_protocols(impl, proto):
    import importlib

    mod, name = impl.split(":")
    cls = getattr(importlib.import_module(mod), name)
    assert _fits(cls, proto) == []


def test_runtime_checks():
    class OnlySearch:
        def search(self, query_texts, k=10):
            return [[] for _ in query_texts]

    assert isinstance(OnlySearch(), T.RetrieverLike)
    assert not isinstance(OnlySearch(), T.DenseRetrieverLike)  # no encoder, no doc_vectors
    assert not isinstance(OnlySearch(), T.RerankerLike)
    from bgekit.llm import LLMClient

    assert isinstance(LLMClient(base_url="http://127.0.0.1:9/v1", model="m"), T.ChatModelLike)

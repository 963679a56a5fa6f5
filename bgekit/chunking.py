"""Long documents: split them into token windows, and score a document by its best chunk.

An encoder reads a bounded number of tokens (BGE v1.5: 512, including ``[CLS]`` and ``[SEP]``; the bundled
all-MiniLM-L6-v2: 256 as sentence-transformers configures it). Text past that is cut off and never seen. The usual
fix is to **chunk**: split the document into windows of at most ``max_tokens`` tokens, consecutive windows sharing
``overlap`` tokens so that a sentence cut at a border is whole in one of them, embed every chunk, and score a
document by its best chunk (*MaxP*, Dai and Callan, "Deeper Text Understanding for IR with Contextual Neural
Language Modeling", SIGIR 2019, arXiv:1905.09217).

Windows end and start on word boundaries (the tokenizer's own words, ``word_ids``), so a chunk is a piece of the
original text (case, accents and spacing kept) and re-tokenising it gives the same tokens: at most ``max_tokens``
of them for WordPiece tokenizers (BERT, BGE v1.5, MiniLM). A single word longer than ``max_tokens`` is cut inside.

>>> from transformers import AutoTokenizer                       # doctest: +SKIP
>>> tok = AutoTokenizer.from_pretrained("BAAI/bge-large-en-v1.5")  # doctest: +SKIP
>>> chunk_text("a long article ...", tok, max_tokens=128, overlap=32)  # doctest: +SKIP
['a long article ...']
>>> max_over_chunks({"q1": {"d1#0": 0.2, "d1#1": 0.7, "d2#0": 0.5}}, {"d1#0": "d1", "d1#1": "d1", "d2#0": "d2"})
{'q1': {'d1': 0.7, 'd2': 0.5}}
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["chunk_spans", "chunk_text", "chunk_corpus", "chunk_corpus_spans", "max_over_chunks", "build_long_documents",
           "course_long_documents", "passage_spans", "span_qrels"]

Span = tuple[str, int, int]   # (doc_id, start, end): characters start:end of doc_text(docs[doc_id])


def _check_window(max_tokens: int, overlap: int) -> None:
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
    if not isinstance(overlap, int) or isinstance(overlap, bool) or not 0 <= overlap < max_tokens:
        raise ValueError(f"overlap must be an integer with 0 <= overlap < max_tokens ({max_tokens}), got {overlap!r}")


def chunk_spans(text: str, tokenizer: Any, max_tokens: int, overlap: int = 0) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the chunks of ``text``, in order.

    Args:
        text: the document.
        tokenizer: a *fast* Hugging Face tokenizer (it must return offsets and word ids), the encoder's own.
        max_tokens: tokens per chunk, special tokens not counted. To fit a model that reads ``L`` tokens, use at
            most ``L - tokenizer.num_special_tokens_to_add()`` (BERT-style: ``L - 2``).
        overlap: tokens shared by consecutive chunks, ``0 <= overlap < max_tokens``. Windows snap to word
            boundaries, so the shared part can be a word longer.

    Returns:
        list of ``(start, end)`` character offsets; ``text[start:end]`` is a chunk. Empty for a text with no tokens.

    Raises:
        TypeError: ``text`` is not a str.
        ValueError: bad ``max_tokens``/``overlap``, or a slow tokenizer (no offsets).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    _check_window(max_tokens, overlap)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("chunking needs a fast tokenizer (offsets and word ids): load it with use_fast=True")
    # verbose=False: the whole document is tokenised on purpose; no "longer than the maximum" warning
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False)
    offsets = enc["offset_mapping"]
    words = enc.word_ids()
    n = len(offsets)
    if n == 0:
        return []

    def word_start(i: int) -> bool:  # token i begins a word (a window may start or end before it)
        return i == 0 or i >= n or words[i] is None or words[i] != words[i - 1]

    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        end = min(start + max_tokens, n)
        while end < n and end > start + 1 and not word_start(end):
            end -= 1  # do not end inside a word ...
        if end < n and not word_start(end):
            end = min(start + max_tokens, n)  # ... unless one word is longer than the window
        spans.append((offsets[start][0], offsets[end - 1][1]))
        if end == n:
            return spans
        want = max(end - overlap, start + 1)
        back = want
        while back > start + 1 and not word_start(back):
            back -= 1  # start on a word: the overlap grows by at most one word's head
        fwd = want
        while fwd < end and not word_start(fwd):
            fwd += 1  # ... or, if that goes back to the window's start, shrinks by one word's tail
        start = back if word_start(back) else fwd if word_start(fwd) else want


def chunk_text(text: str, tokenizer: Any, max_tokens: int, overlap: int = 0) -> list[str]:
    """The chunks of ``text`` (see :func:`chunk_spans` for the arguments): pieces of the original text, in order.

    Returns:
        list of str; empty for a text with no tokens.
    """
    return [text[s:e] for s, e in chunk_spans(text, tokenizer, max_tokens, overlap)]


def chunk_corpus_spans(corpus: Mapping[str, Mapping[str, str] | str], tokenizer: Any, max_tokens: int,
                       overlap: int = 0) -> dict[str, Span]:
    """Where every chunk of :func:`chunk_corpus` lies: ``{f"{doc_id}#{i}": (doc_id, start, end)}``, characters
    ``start:end`` of the document text :func:`bgekit.data.doc_text` (``title + " " + text``).

    Args:
        corpus, tokenizer, max_tokens, overlap: as for :func:`chunk_corpus`.
    """
    from .data import doc_text

    out: dict[str, Span] = {}
    for doc_id, doc in corpus.items():
        text = doc_text(doc, f"corpus[{doc_id!r}]")
        for i, (a, b) in enumerate(chunk_spans(text, tokenizer, max_tokens, overlap)):
            out[f"{doc_id}#{i}"] = (doc_id, a, b)
    return out


def chunk_corpus(corpus: Mapping[str, Mapping[str, str] | str], tokenizer: Any, max_tokens: int,
                 overlap: int = 0) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Chunk every document of a BEIR-style corpus.

    The text chunked is the document text of :func:`bgekit.data.doc_text` (``title + " " + text``), so the title
    is read with the first chunk and counted in its tokens.

    Args:
        corpus: ``{doc_id: {"title", "text"}}`` or ``{doc_id: text}``.
        tokenizer, max_tokens, overlap: as for :func:`chunk_spans`.

    Returns:
        ``(chunks, parent)``: ``chunks`` is ``{f"{doc_id}#{i}": {"title": "", "text": chunk}}`` (a corpus that
        ``DenseRetriever`` takes), ``parent`` maps each chunk id to its document id. Where each chunk lies in its
        document: :func:`chunk_corpus_spans`.
    """
    from .data import doc_text

    chunks: dict[str, dict[str, str]] = {}
    parent: dict[str, str] = {}
    text: dict[str, str] = {}
    for cid, (doc_id, a, b) in chunk_corpus_spans(corpus, tokenizer, max_tokens, overlap).items():
        if doc_id not in text:
            text[doc_id] = doc_text(corpus[doc_id])   # once per document, not once per chunk
        chunks[cid] = {"title": "", "text": text[doc_id][a:b]}
        parent[cid] = doc_id
    return chunks, parent


def max_over_chunks(run: Mapping[str, Mapping[str, float]], parent: Mapping[str, str],
                    k: int | None = None) -> dict[str, dict[str, float]]:
    """A document-level run from a chunk-level run: each document scores its best chunk's score (MaxP).

    Args:
        run: ``{query_id: {chunk_id: score}}``.
        parent: ``{chunk_id: doc_id}`` (from :func:`chunk_corpus`).
        k: keep the ``k`` best documents per query (``None``: all that have a retrieved chunk).

    Returns:
        ``{query_id: {doc_id: score}}``, each query's documents best first.

    Raises:
        KeyError: a chunk id of ``run`` has no entry in ``parent`` (the message names the query and the chunk).
    """
    out: dict[str, dict[str, float]] = {}
    for qid, hits in run.items():
        best: dict[str, float] = {}
        for cid, score in hits.items():
            if cid not in parent:
                raise KeyError(f"query {qid!r}: chunk {cid!r} has no parent document")
            d = parent[cid]
            if d not in best or score > best[d]:
                best[d] = float(score)
        ranked = sorted(best.items(), key=lambda kv: -kv[1])
        out[qid] = dict(ranked if k is None else ranked[:k])
    return out


def _paragraph(p: Mapping[str, str]) -> str:
    """A passage as a paragraph of a long document: ``"Title. text"``."""
    head = (p.get("title") or "").strip()
    return f"{head.rstrip('.')}. {p['text']}" if head else p["text"]


def build_long_documents(corpus: Mapping[str, Mapping[str, str]], qrels: Mapping[str, Mapping[str, int]],
                         groups: Iterable[tuple[str, str, Sequence[str]]], sep: str = "\n\n",
                         ) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, int]], dict[str, tuple[str, int]]]:
    """Long documents made by joining passages, with relevance judgements carried over.

    Each passage becomes a paragraph ``"Title. text"``; a document's grade for a query is the highest grade of its
    passages (a document that contains the answer answers the question).

    Args:
        corpus: ``{passage_id: {"title", "text"}}``.
        qrels: ``{query_id: {passage_id: grade}}``.
        groups: ``(doc_id, title, passage_ids)`` for each document, passages in reading order; every passage
            at most once.
        sep: text between paragraphs.

    Returns:
        ``(docs, doc_qrels, where)``: ``docs`` ``{doc_id: {"title", "text"}}``; ``doc_qrels`` ``{query_id:
        {doc_id: grade}}`` for the queries with a judged passage in some document; ``where`` maps each passage
        id to ``(doc_id, character offset of its paragraph in the document's text)``.

    Raises:
        KeyError: a passage id is not in ``corpus`` (names the document).
        ValueError: a passage is in two documents, or a document id repeats.
    """
    docs: dict[str, dict[str, str]] = {}
    where: dict[str, tuple[str, int]] = {}
    for doc_id, title, pids in groups:
        if doc_id in docs:
            raise ValueError(f"document id {doc_id!r} is used twice")
        parts, pos = [], 0
        for pid in pids:
            if pid not in corpus:
                raise KeyError(f"document {doc_id!r}: passage {pid!r} is not in the corpus")
            if pid in where:
                raise ValueError(f"passage {pid!r} is in {where[pid][0]!r} and {doc_id!r}")
            para = _paragraph(corpus[pid])
            where[pid] = (doc_id, pos)
            parts.append(para)
            pos += len(para) + len(sep)
        docs[doc_id] = {"title": title, "text": sep.join(parts)}
    doc_qrels: dict[str, dict[str, int]] = {}
    for qid, judged in qrels.items():
        for pid, grade in judged.items():
            if pid in where and grade > 0:
                d = where[pid][0]
                row = doc_qrels.setdefault(qid, {})
                row[d] = max(row.get(d, 0), int(grade))
    return docs, doc_qrels, where


def course_long_documents(corpus: Mapping[str, Mapping[str, str]], qrels: Mapping[str, Mapping[str, int]],
                          data_dir: str | Path, per_article: int = 8,
                          ) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, int]], dict[str, tuple[str, int]]]:
    """The course's long documents (notebooks 02 and 06): each topic's passages, in corpus order, joined into
    "articles" of about ``per_article`` paragraphs (:func:`build_long_documents`).

    The topic of a passage is read from the course's source files (``data_dir/source/passages_*.jsonl``,
    ``{"topic", "title", "text", ...}`` per line). A topic with ``n`` passages gives ``max(1, round(n /
    per_article))`` articles of near-equal length, with ids ``"<topic> <i>"`` and titles ``"<Topic>, part <i>"``.

    Args:
        corpus, qrels: a split of the course collection (``bgekit.data.load_beir``).
        data_dir: the course data folder (``bgekit.data.course_data_dir()``).
        per_article: paragraphs per article, about.

    Returns:
        ``(docs, doc_qrels, where)`` as :func:`build_long_documents`.

    Raises:
        FileNotFoundError: no source file in ``data_dir/source``.
        ValueError: ``per_article`` below 1, or a source line that is not a record (file and line named).
        KeyError: a corpus passage that no source file holds (its id named).
    """
    import collections

    import numpy as np

    from ._io import read_jsonl

    if not isinstance(per_article, int) or per_article < 1:
        raise ValueError(f"per_article must be an integer >= 1, got {per_article!r}")
    files = sorted((Path(data_dir) / "source").glob("passages_*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no passages_*.jsonl in {Path(data_dir) / 'source'}: the course's source files")
    topic_of: dict[tuple[str, str], str] = {}
    for path in files:
        for i, rec in read_jsonl(path):      # the package's JSONL reader: bad JSON is named by file and line
            if not (isinstance(rec.get("text"), str) and isinstance(rec.get("topic"), str)):
                raise ValueError(f"{path}, line {i}: not a {{'topic', 'title', 'text'}} record")
            topic_of[rec.get("title", ""), rec["text"]] = rec["topic"]
    by_topic: dict[str, list[str]] = collections.defaultdict(list)
    for pid, doc in corpus.items():
        key = (doc.get("title", ""), doc["text"])
        if key not in topic_of:
            raise KeyError(f"passage {pid!r} is in no source file of {Path(data_dir) / 'source'}")
        by_topic[topic_of[key]].append(pid)
    groups = []
    for topic, pids in sorted(by_topic.items()):
        parts = np.array_split(np.array(pids, dtype=object), max(1, round(len(pids) / per_article)))
        groups += [(f"{topic} {i}", f"{topic.capitalize()}, part {i}", [str(p) for p in part])
                   for i, part in enumerate(parts, start=1)]
    return build_long_documents(corpus, qrels, groups)


def passage_spans(docs: Mapping[str, Mapping[str, str]], corpus: Mapping[str, Mapping[str, str]],
                  where: Mapping[str, tuple[str, int]]) -> dict[str, Span]:
    """Where each passage of :func:`build_long_documents` lies in its document, as ``(doc_id, start, end)`` in
    the document text :func:`bgekit.data.doc_text` (the coordinates of :func:`chunk_corpus_spans`).

    >>> docs, _, where = build_long_documents({"p": {"title": "A", "text": "one."}, "r": {"title": "", "text": "two."}},
    ...                                       {}, [("d", "Doc", ["p", "r"])])
    >>> from bgekit.data import doc_text
    >>> spans = passage_spans(docs, {"p": {"title": "A", "text": "one."}, "r": {"title": "", "text": "two."}}, where)
    >>> [doc_text(docs["d"])[a:b] for _, a, b in spans.values()]
    ['A. one.', 'two.']
    """
    from .data import doc_text

    out: dict[str, Span] = {}
    for pid, (doc_id, offset) in where.items():
        if doc_id not in docs:
            raise KeyError(f"passage {pid!r} is placed in document {doc_id!r}, which is not in docs")
        if pid not in corpus:
            raise KeyError(f"passage {pid!r} is not in the corpus")
        doc = docs[doc_id]
        title = doc.get("title") or ""
        full = title + " " + doc["text"]                     # doc_text before it is stripped
        shift = len(title) + 1 - (len(full) - len(full.lstrip()))   # where the text starts in doc_text
        n = len(doc_text(doc, f"docs[{doc_id!r}]"))
        start = min(max(0, shift + offset), n)               # clipped to doc_text, which strips both ends
        out[pid] = (doc_id, start, min(max(start, shift + offset + len(_paragraph(corpus[pid]))), n))
    return out


def span_qrels(units: Mapping[str, Span], passages: Mapping[str, Span], qrels: Mapping[str, Mapping[str, int]],
               min_share: float = 0.5) -> dict[str, dict[str, int]]:
    """Relevance judgements for pieces of documents (chunks, or the part of a document a prompt shows): a unit
    gets a passage's grade for a query when it holds at least ``min_share`` of that passage's characters.

    Args:
        units: ``{unit_id: (doc_id, start, end)}`` (:func:`chunk_corpus_spans`).
        passages: ``{passage_id: (doc_id, start, end)}`` in the same coordinates (:func:`passage_spans`).
        qrels: ``{query_id: {passage_id: grade}}``; passages not in ``passages``, and empty spans, are ignored.
        min_share: the share of a passage's characters a unit must hold, in (0, 1].

    Returns:
        ``{query_id: {unit_id: grade}}`` with a row, perhaps empty, for every query of ``qrels``: a query whose
        answer no unit holds stays in (so a run that cannot reach its answer scores 0 on it, not "not asked").

    Raises:
        ValueError: ``min_share`` outside (0, 1].

    >>> units = {"a#0": ("a", 0, 100), "a#1": ("a", 80, 200), "b#0": ("b", 0, 300)}
    >>> span_qrels(units, {"p1": ("a", 90, 150)}, {"q": {"p1": 2}, "r": {"p9": 1}})
    {'q': {'a#1': 2}, 'r': {}}
    """
    if not 0 < min_share <= 1:
        raise ValueError(f"min_share must be in (0, 1], got {min_share!r}")
    by_doc: dict[str, list[tuple[str, int, int]]] = {}
    for uid, (doc_id, a, b) in units.items():
        by_doc.setdefault(doc_id, []).append((uid, a, b))
    out: dict[str, dict[str, int]] = {}
    for qid, judged in qrels.items():
        row = out.setdefault(qid, {})
        for pid, grade in judged.items():
            if grade <= 0 or pid not in passages:
                continue
            doc_id, start, end = passages[pid]
            if end <= start:   # an empty passage: nothing a unit could hold
                continue
            for uid, a, b in by_doc.get(doc_id, ()):
                if max(0, min(b, end) - max(a, start)) >= min_share * (end - start):
                    row[uid] = max(row.get(uid, 0), int(grade))
    return out

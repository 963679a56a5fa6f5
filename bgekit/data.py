"""Loading retrieval data: BEIR-format folders and FlagEmbedding training JSONL.

A BEIR folder (the course's ``data/`` or any dataset from the BEIR collection) holds::

    corpus.jsonl        {"_id": "d1", "title": "...", "text": "..."}   one passage per line
    queries.jsonl       {"_id": "q1", "text": "..."}                   one query per line
    qrels/test.tsv      query-id <TAB> corpus-id <TAB> score           a header line, then judgements
    qrels/train.tsv     (any split name works: qrels/{split}.tsv)

Every malformed line raises ``ValueError("path:line: what is wrong")``. Files are read as UTF-8, with
or without a byte-order mark (some Windows tools write one), through one JSONL reader
(:func:`bgekit._io.read_jsonl`).

Example::

    >>> from bgekit.data import load_beir, course_data_dir, doc_text
    >>> data = load_beir(course_data_dir(), split="test")          # doctest: +SKIP
    >>> corpus, queries, qrels = data                              # doctest: +SKIP
    >>> texts = [doc_text(d) for d in corpus.values()]             # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgekit._io import TEXT_ENCODING, atomic_write_text, read_jsonl

logger = logging.getLogger(__name__)

__all__ = [
    "BeirData",
    "course_data_dir",
    "doc_text",
    "load_beir",
    "load_passages",
    "missing_positives",
    "normalize_text",
    "load_training_jsonl",
    "save_beir",
    "validate_training_row",
    "write_jsonl",
    "write_training_jsonl",
]

QRELS_HEADER = ("query-id", "corpus-id", "score")


@dataclass
class BeirData:
    """A BEIR split: ``corpus`` {doc_id: {"title", "text"}}, ``queries`` {qid: text}, ``qrels`` {qid: {doc_id: rel}}.

    Unpacks like a tuple: ``corpus, queries, qrels = load_beir(path)``.
    """

    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    split: str = "test"
    path: Path | None = field(default=None, repr=False)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.corpus, self.queries, self.qrels))

    def __repr__(self) -> str:
        n_judged = sum(len(v) for v in self.qrels.values())
        return (
            f"BeirData(split={self.split!r}, corpus={len(self.corpus)} docs, "
            f"queries={len(self.queries)}, qrels={n_judged} judgements)"
        )


def _as_id(value: Any, where: str, key: str = "_id") -> str:
    # BEIR ids are strings; a few datasets write numbers. qrels ids are read as text, so use str.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
    s = str(value)
    if not s.strip():
        raise ValueError(f"{where}: '{key}' is empty")
    return s


def _text_field(obj: Mapping[str, Any], key: str, where: str, required: bool) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise ValueError(f"{where}: missing key '{key}'")
        return ""
    val = obj[key]
    if not isinstance(val, str):
        raise ValueError(f"{where}: '{key}' must be a string, got {type(val).__name__}")
    return val


def _records(path: Path, kind: str) -> Iterator[tuple[str, dict, str]]:
    """``(id, record, "file:line")`` for each line of a BEIR corpus or queries file; ids are checked and unique."""
    seen: set[str] = set()
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        if "_id" not in obj:
            raise ValueError(f"{where}: missing key '_id'")
        rid = _as_id(obj["_id"], where)
        if rid in seen:
            raise ValueError(f"{where}: duplicate {kind} id {rid!r}")
        seen.add(rid)
        yield rid, obj, where


def _read_corpus(path: Path) -> dict[str, dict[str, str]]:
    return {did: {"title": _text_field(obj, "title", where, required=False),
                  "text": _text_field(obj, "text", where, required=True)}
            for did, obj, where in _records(path, "document")}


def _read_queries(path: Path) -> dict[str, str]:
    return {qid: _text_field(obj, "text", where, required=True) for qid, obj, where in _records(path, "query")}


def _read_qrels(path: Path) -> tuple[dict[str, dict[str, int]], dict[tuple[str, str], int]]:
    """Returns qrels and the line number of each judgement (for later error messages)."""
    qrels: dict[str, dict[str, int]] = {}
    lines: dict[tuple[str, str], int] = {}
    with path.open(encoding=TEXT_ENCODING) as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) != 3:
                raise ValueError(
                    f"{path}:{lineno}: expected 3 tab-separated columns (query-id, corpus-id, score), "
                    f"got {len(cols)}: {line[:80]!r}"
                )
            cols = [c.strip() for c in cols]
            if tuple(c.lower() for c in cols) == QRELS_HEADER:
                if lines or qrels:
                    raise ValueError(f"{path}:{lineno}: header line in the middle of the file")
                continue
            qid, did, score_s = cols
            if not qid or not did:
                raise ValueError(f"{path}:{lineno}: empty query-id or corpus-id")
            try:
                score = int(score_s)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: score must be an integer, got {score_s!r}") from None
            if (qid, did) in lines:
                raise ValueError(
                    f"{path}:{lineno}: duplicate judgement for query {qid!r} and document {did!r} "
                    f"(first on line {lines[qid, did]})"
                )
            lines[qid, did] = lineno
            qrels.setdefault(qid, {})[did] = score
    return qrels, lines


def available_splits(data_dir: str | os.PathLike) -> list[str]:
    """Names of the splits with a ``qrels/{split}.tsv`` file, sorted."""
    qdir = Path(data_dir) / "qrels"
    return sorted(p.stem for p in qdir.glob("*.tsv")) if qdir.is_dir() else []


def load_beir(data_dir: str | os.PathLike, split: str = "test", strict: bool = True) -> BeirData:
    """Load a BEIR-format folder: corpus, the queries judged in ``split`` and their qrels.

    Only queries that appear in ``qrels/{split}.tsv`` are returned. A judgement that names a
    query or document missing from ``queries.jsonl``/``corpus.jsonl`` is an error; with
    ``strict=False`` it is dropped with a warning instead (some published datasets have a few).

    >>> corpus, queries, qrels = load_beir("data", split="test")   # doctest: +SKIP
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"BEIR folder not found: {root}")
    corpus_path, queries_path = root / "corpus.jsonl", root / "queries.jsonl"
    qrels_path = root / "qrels" / f"{split}.tsv"
    for p in (corpus_path, queries_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} not found: a BEIR folder needs corpus.jsonl, queries.jsonl and qrels/<split>.tsv"
            )
    if not qrels_path.is_file():
        raise FileNotFoundError(
            f"{qrels_path} not found: no split {split!r} in {root} (available: {available_splits(root) or 'none'})"
        )

    corpus = _read_corpus(corpus_path)
    all_queries = _read_queries(queries_path)
    qrels, lines = _read_qrels(qrels_path)

    problems = []
    for (qid, did), lineno in lines.items():
        if qid not in all_queries:
            problems.append(f"{qrels_path}:{lineno}: query-id {qid!r} is not in {queries_path.name}")
        if did not in corpus:
            problems.append(f"{qrels_path}:{lineno}: corpus-id {did!r} is not in {corpus_path.name}")
    if problems:
        if strict:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise ValueError("; ".join(problems[:5]) + more + "; pass strict=False to drop such judgements")
        logger.warning("%s: dropping %d judgement(s) that point to unknown ids, e.g. %s",
                       qrels_path, len(problems), problems[0])
        qrels = {
            qid: {did: rel for did, rel in judged.items() if did in corpus}
            for qid, judged in qrels.items()
            if qid in all_queries
        }
        qrels = {qid: judged for qid, judged in qrels.items() if judged}

    queries = {qid: all_queries[qid] for qid in qrels}
    logger.info("loaded %s split %r: %d docs, %d queries", root, split, len(corpus), len(queries))
    return BeirData(corpus=corpus, queries=queries, qrels=qrels, split=split, path=root)


def save_beir(
    data_dir: str | os.PathLike,
    corpus: Mapping[str, Mapping[str, str] | str],
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, Mapping[str, int]]],
) -> Path:
    """Write a BEIR folder (each file atomically). ``qrels`` maps split name -> {qid: {doc_id: rel}}.

    >>> save_beir("my_data", {"d1": {"title": "", "text": "hi"}}, {"q1": "hello?"},
    ...           {"test": {"q1": {"d1": 1}}})  # doctest: +SKIP
    """
    root = Path(data_dir)
    corpus_rows = []
    for did, doc in corpus.items():
        if isinstance(doc, str):
            doc = {"title": "", "text": doc}
        corpus_rows.append({"_id": str(did), "title": doc.get("title", ""), "text": doc["text"]})
    write_jsonl(root / "corpus.jsonl", corpus_rows)
    write_jsonl(root / "queries.jsonl", [{"_id": str(q), "text": t} for q, t in queries.items()])
    for split, judged in qrels.items():
        body = "".join(f"{q}\t{d}\t{int(r)}\n" for q, docs in judged.items() for d, r in docs.items())
        atomic_write_text(root / "qrels" / f"{split}.tsv", "\t".join(QRELS_HEADER) + "\n" + body)
    return root


def course_data_dir() -> Path:
    """The course's data folder: ``$BGEKIT_DATA`` if set, else ``data/`` at the root of the bgekit checkout.

    >>> course_data_dir() / "corpus.jsonl"   # doctest: +SKIP
    """
    env = os.environ.get("BGEKIT_DATA")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"BGEKIT_DATA={env!r} is not a folder; point it at a BEIR-format folder")
        return path
    path = Path(__file__).resolve().parent.parent / "data"
    if not (path / "corpus.jsonl").is_file():
        raise FileNotFoundError(
            f"course data not found at {path} (no corpus.jsonl). The data lives in the bgekit git repository, "
            f"not in the installed package: `git clone {_repository_url()}` and install the clone with "
            "`pip install -e <clone>`, or set BGEKIT_DATA to the folder holding corpus.jsonl, queries.jsonl and "
            "qrels/."
        )
    return path


def _repository_url() -> str:
    from .models import repository_url

    return repository_url()


def doc_text(doc: str | Mapping[str, str], where: str = "document") -> str:
    """The text to embed or score for a document: ``title + " " + text``, stripped (MTEB's convention).

    The one definition of a document's text: the encoder, the retrievers, the reranker, chunking and the
    index builder all call it.

    Args:
        doc: a string (returned as it is) or a ``{"title", "text"}`` record (``title`` optional).
        where: names the document in an error (``"docs[3]"``, ``"corpus['d7']"``).

    Returns:
        str

    Raises:
        TypeError: not a string or a record with a string ``text`` (and a string ``title`` when present).

    >>> doc_text({"title": "Fever", "text": "A raised temperature."})
    'Fever A raised temperature.'
    >>> doc_text({"title": "", "text": " plain "})
    'plain'
    >>> doc_text("already a string")
    'already a string'
    >>> doc_text({"title": "no text"}, "docs[2]")
    Traceback (most recent call last):
    ...
    TypeError: docs[2] has no string 'text' field: expected str or a {'title', 'text'} record
    """
    if isinstance(doc, str):
        return doc
    if not isinstance(doc, Mapping):
        raise TypeError(f"{where} is {type(doc).__name__}: expected str or a {{'title', 'text'}} record")
    text, title = doc.get("text"), doc.get("title") or ""
    if not isinstance(text, str):
        raise TypeError(f"{where} has no string 'text' field: expected str or a {{'title', 'text'}} record")
    if not isinstance(title, str):
        raise TypeError(f"{where}['title'] is {type(title).__name__}, expected str")
    return (title + " " + text).strip()


def check_texts(texts: Any, what: str = "texts") -> list[str]:
    """The one check of a list of texts (queries, passages): a list of ``str``, returned as a list.

    Raises:
        TypeError: a single string (wrap it in a list), not iterable, or an item that is not a string
            (names its index).

    >>> check_texts(("a", "b"))
    ['a', 'b']
    >>> check_texts(["a", None], "queries")
    Traceback (most recent call last):
    ...
    TypeError: queries[1] is NoneType, expected str (None is not text: drop or replace it)
    """
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a list of strings, got a single string: wrap it in a list, [text]")
    if not isinstance(texts, Iterable):
        raise TypeError(f"{what} must be a list of strings, got {type(texts).__name__}")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] is {type(t).__name__}, expected str"
                            + (" (None is not text: drop or replace it)" if t is None else ""))
    return texts


def _is_str_list(val: Any) -> bool:
    return isinstance(val, list) and all(isinstance(x, str) for x in val)


def validate_training_row(row: Any, where: str) -> dict:
    """Check one FlagEmbedding training row ``{"query": str, "pos": [str, ...], "neg": [str, ...]}``.

    THE row check of bgekit: :func:`load_training_jsonl`, :func:`write_training_jsonl`, the miner
    (:mod:`bgekit.mining`) and the trainers (:mod:`bgekit.training`) all call it, so a row is
    accepted or refused the same way everywhere. ``query`` must be a non-blank string, ``pos`` a
    non-empty list of non-blank strings, ``neg`` (optional) a list of non-blank strings; other keys
    (``pos_scores``, ``prompt``, ...) pass through.

    Args:
        row: one parsed JSON line.
        where: where it came from, put in front of the error (``"train.jsonl:12"``, ``"rows[3]"``).

    Returns:
        the row itself (a ``dict``).

    Raises:
        ValueError: ``"<where>: <what is wrong>"``.

    >>> validate_training_row({"query": "q", "pos": ["p"], "neg": []}, "rows[0]")["query"]
    'q'
    >>> validate_training_row({"query": "q", "pos": []}, "t.jsonl:3")
    Traceback (most recent call last):
    ...
    ValueError: t.jsonl:3: 'pos' must be a non-empty list of strings, got []
    """
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "query" not in row:
        raise ValueError(f"{where}: missing key 'query'")
    if not isinstance(row["query"], str):
        raise ValueError(f"{where}: 'query' must be a string, got {type(row['query']).__name__}")
    if not row["query"].strip():
        raise ValueError(f"{where}: 'query' is blank (it must be a non-empty string)")
    if "pos" not in row:
        raise ValueError(f"{where}: missing key 'pos' (a row needs at least one positive passage)")
    if not _is_str_list(row["pos"]) or not row["pos"]:
        raise ValueError(f"{where}: 'pos' must be a non-empty list of strings, got {json.dumps(row['pos'])[:60]}")
    if "neg" in row and not _is_str_list(row["neg"]):
        raise ValueError(f"{where}: 'neg' must be a list of strings, got {json.dumps(row['neg'])[:60]}")
    for key in ("pos", "neg"):
        for i, text in enumerate(row.get(key) or []):
            if not text.strip():
                raise ValueError(f"{where}: {key}[{i}] is blank (passages must be non-empty strings)")
    return row if isinstance(row, dict) else dict(row)


def load_training_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read FlagEmbedding training data: one ``{"query": str, "pos": [str, ...], "neg": [str, ...]}`` per line.

    ``neg`` is optional; other keys (``pos_scores``, ``prompt``, ...) are kept as they are.

    >>> rows = load_training_jsonl("train.jsonl")   # doctest: +SKIP
    >>> rows[0]["query"], len(rows[0]["pos"])       # doctest: +SKIP
    """
    path = Path(path)
    rows = []
    for lineno, obj in read_jsonl(path):
        validate_training_row(obj, f"{path}:{lineno}")
        rows.append(obj)
    return rows


def normalize_text(text: str) -> str:
    """Whitespace-normalised text, the key used to compare passages: ``" a  b\\n" -> "a b"``.

    >>> normalize_text(" a  b\\n")
    'a b'
    """
    return " ".join(text.split())


def missing_positives(positives: Iterable[str], pool_keys: Container[str], what: str) -> list[str]:
    """The positives that a pool of negatives lacks (compared by :func:`normalize_text`; first spelling, once each).

    When most positives are missing, the pool is probably written another way (titles joined, other words), and a
    pool copy of a positive cannot be told from a negative: a warning says so.

    Args:
        positives: the training rows' positive texts.
        pool_keys: the :func:`normalize_text` keys of the pool's passages.
        what: the pool's name in the warning (``"corpus"``, ``"candidate pool"``).
    """
    missing: dict[str, str] = {}
    keys: set[str] = set()
    for text in positives:
        keys.add(key := normalize_text(text))
        if key not in pool_keys:
            missing.setdefault(key, text)
    if len(missing) > len(keys) / 2:
        logger.warning("%d of %d positives are not in the %s: a %s passage that differs from a positive (a title "
                       "joined, other words) can be taken as its negative", len(missing), len(keys), what, what)
    return list(missing.values())


def load_passages(source: str | os.PathLike | Iterable[str], what: str = "corpus", join_title: bool = True
                  ) -> list[str]:
    """Passages to draw negatives from (the trainer's ``--corpus``, the miner's ``candidate_pool``), in order.

    Blank passages are skipped, with a warning that counts them and names the first.

    Args:
        source: a JSONL file of ``{"text"[, "title"]}`` lines (other keys ignored), a BEIR folder (its
            ``corpus.jsonl``), or a list of strings (kept as they are) or of such records.
        what: the argument's name, for errors.
        join_title: ``True``: a record's passage is :func:`doc_text` (title + text, stripped), the text the course
            embeds for a document. ``False``: its ``text`` verbatim, title ignored (FlagEmbedding's ``hn_mine``,
            whose pool texts must match the training rows' passages character for character).

    Returns:
        the passages, duplicates kept.

    Raises:
        FileNotFoundError: no such file (or no ``corpus.jsonl`` in the folder).
        TypeError: ``source`` is a mapping (pass ``list(corpus.values())``) or not iterable.
        ValueError: a record without a string ``text`` or (joining titles) with a non-string ``title``
            (``path:line: ...``), an item that is neither (``what[i] ...``), no passage at all.

    >>> load_passages(["a", " ", "b"])
    ['a', 'b']
    """
    texts: list[str] = []
    blank: list[str] = []
    if isinstance(source, (str, os.PathLike)):
        path = Path(source) / "corpus.jsonl" if Path(source).is_dir() else Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{what} not found: {path}")
        items = ((f"{path}:{lineno}", obj) for lineno, obj in read_jsonl(path))
        where = str(path)
    elif isinstance(source, Mapping) or not isinstance(source, Iterable):
        raise TypeError(f"{what} must be a path or a list of passages, got {type(source).__name__}"
                        + (" (a corpus dict? pass list(corpus.values()))" if isinstance(source, Mapping) else ""))
    else:
        items = ((f"{what}[{i}]", t) for i, t in enumerate(source))
        where = what
    for at, obj in items:
        if isinstance(obj, Mapping):
            if not isinstance(obj.get("text"), str) or (join_title and not isinstance(obj.get("title") or "", str)):
                raise ValueError(f"{at}: " + ("missing key 'text'" if "text" not in obj else
                                              "'text' (and 'title', when given) must be strings, got "
                                              f"{obj.get('text')!r:.40}, {obj.get('title')!r:.40}"))
            obj = doc_text(obj) if join_title else obj["text"]
        elif not isinstance(obj, str):
            raise ValueError(f"{at} must be a string or a {{'text'[, 'title']}} record, got {obj!r:.60}")
        if obj.strip():
            texts.append(obj)
        else:
            blank.append(at)
    if blank:
        logger.warning("%s: %d blank passage(s) skipped (the first: %s)", where, len(blank), blank[0])
    if not texts:
        raise ValueError(f"{where}: no passages (the {what} is empty)")
    return texts


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write one JSON object per line, atomically (readers see the old file or the complete new one).

    >>> write_jsonl("out.jsonl", [{"query": "q", "pos": ["p"]}])   # doctest: +SKIP
    """
    atomic_write_text(path, "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows))


def write_training_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> None:
    """Check rows against the training format (see :func:`load_training_jsonl`) and write them atomically."""
    rows = [dict(r) for r in rows]
    for i, row in enumerate(rows):
        validate_training_row(row, f"rows[{i}]")
    write_jsonl(path, rows)

"""Build the course collection (BEIR format) from the hand-written sources in ``data/source/``.

Sources (written for this course, one JSON object per line):

* ``source/passages_*.jsonl``: ``{"key": slug, "topic": str, "title": str, "text": str}``
* ``source/queries_*.jsonl``:  ``{"text": str, "relevant": {slug: grade}}`` with grade 2 (answers the
  question) or 1 (partly relevant).

Outputs, rebuilt deterministically: ``corpus.jsonl`` (``{_id, title, text}``), ``queries.jsonl``
(``{_id, text}``), ``qrels/train.tsv`` and ``qrels/test.tsv`` (``query-id  corpus-id  score``).

    python data/build.py            # validate and write
    python data/build.py --check    # validate only
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEST_SHARE = 0.28  # share of queries held out for the test split


def _read(path: Path) -> list[tuple[int, dict]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{lineno}: invalid JSON: {e}") from e
            if not isinstance(obj, dict):
                raise SystemExit(f"{path}:{lineno}: expected a JSON object")
            rows.append((lineno, obj))
    return rows


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def load_sources(src: Path = HERE / "source"):
    passages: dict[str, dict] = {}
    where: dict[str, str] = {}
    for path in sorted(src.glob("passages_*.jsonl")):
        for lineno, p in _read(path):
            loc = f"{path.name}:{lineno}"
            for k in ("key", "topic", "title", "text"):
                if not isinstance(p.get(k), str) or not p[k].strip():
                    raise SystemExit(f"{loc}: missing or empty '{k}'")
            if p["key"] in passages:
                raise SystemExit(f"{loc}: duplicate key {p['key']!r} (first at {where[p['key']]})")
            passages[p["key"]] = p
            where[p["key"]] = loc
    queries: list[dict] = []
    seen: dict[str, str] = {}
    for path in sorted(src.glob("queries_*.jsonl")):
        for lineno, q in _read(path):
            loc = f"{path.name}:{lineno}"
            if not isinstance(q.get("text"), str) or not q["text"].strip():
                raise SystemExit(f"{loc}: missing or empty 'text'")
            rel = q.get("relevant")
            if not isinstance(rel, dict) or not rel:
                raise SystemExit(f"{loc}: 'relevant' must be a non-empty object {{key: grade}}")
            for key, grade in rel.items():
                if key not in passages:
                    raise SystemExit(f"{loc}: relevant key {key!r} is not a passage key")
                if grade not in (1, 2):
                    raise SystemExit(f"{loc}: grade for {key!r} must be 1 or 2, got {grade!r}")
            if 2 not in rel.values():
                raise SystemExit(f"{loc}: at least one passage must have grade 2")
            n = _norm(q["text"])
            if n in seen:
                raise SystemExit(f"{loc}: duplicate query text (first at {seen[n]})")
            seen[n] = loc
            queries.append(q)
    return passages, queries


def _is_test(text: str) -> bool:
    h = int(hashlib.sha256(_norm(text).encode()).hexdigest()[:8], 16)
    return (h % 10_000) / 10_000 < TEST_SHARE


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def build(check_only: bool = False) -> None:
    passages, queries = load_sources()
    keys = sorted(passages, key=lambda k: (passages[k]["topic"], k))
    pid = {k: f"p{i + 1:04d}" for i, k in enumerate(keys)}
    corpus_lines = [json.dumps({"_id": pid[k], "title": passages[k]["title"], "text": passages[k]["text"]},
                               ensure_ascii=False) for k in keys]
    q_lines, qrels = [], {"train": [], "test": []}
    for i, q in enumerate(sorted(queries, key=lambda q: _norm(q["text"]))):
        qid = f"q{i + 1:04d}"
        q_lines.append(json.dumps({"_id": qid, "text": q["text"]}, ensure_ascii=False))
        split = "test" if _is_test(q["text"]) else "train"
        for key, grade in sorted(q["relevant"].items(), key=lambda kv: pid[kv[0]]):
            qrels[split].append(f"{qid}\t{pid[key]}\t{grade}")
    n_test = len({line.split('\t')[0] for line in qrels['test']})
    multi = sum(len(q["relevant"]) > 1 for q in queries)
    unused = len(set(passages) - {k for q in queries for k in q["relevant"]})
    print(f"passages {len(passages)}, queries {len(queries)} (train {len(queries) - n_test}, test {n_test}), "
          f"queries with several relevant passages {multi}, passages judged for no query {unused}")
    if check_only:
        return
    header = "query-id\tcorpus-id\tscore\n"
    _atomic_write(HERE / "corpus.jsonl", "\n".join(corpus_lines) + "\n")
    _atomic_write(HERE / "queries.jsonl", "\n".join(q_lines) + "\n")
    for split, lines in qrels.items():
        _atomic_write(HERE / "qrels" / f"{split}.tsv", header + "\n".join(lines) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="validate the sources only")
    build(ap.parse_args().check)
    sys.exit(0)

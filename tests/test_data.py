"""bgekit.data: BEIR folders, training JSONL, and their error messages (on temporary files)."""

import json
from pathlib import Path

import pytest

from bgekit.data import (
    BeirData,
    course_data_dir,
    doc_text,
    load_beir,
    load_passages,
    load_training_jsonl,
    save_beir,
    write_jsonl,
    write_training_jsonl,
)

CORPUS = [
    {"_id": "d1", "title": "Fever", "text": "A raised body temperature."},
    {"_id": "d2", "title": "", "text": "Rest and fluids help."},
    {"_id": "d3", "text": "No title key at all."},
]
QUERIES = [{"_id": "q1", "text": "why am I hot"}, {"_id": "q2", "text": "what helps"}, {"_id": "q3", "text": "unjudged"}]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.fixture
def beir(tmp_path):
    _write(tmp_path / "corpus.jsonl", _jsonl(CORPUS))
    _write(tmp_path / "queries.jsonl", _jsonl(QUERIES) + "\n")  # a trailing blank line is fine
    _write(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\n")
    _write(tmp_path / "qrels" / "train.tsv", "query-id\tcorpus-id\tscore\nq2\td2\t1\n")
    return tmp_path


def test_load_beir(beir):
    data = load_beir(beir, "test")
    assert isinstance(data, BeirData)
    corpus, queries, qrels = data
    assert corpus == {
        "d1": {"title": "Fever", "text": "A raised body temperature."},
        "d2": {"title": "", "text": "Rest and fluids help."},
        "d3": {"title": "", "text": "No title key at all."},
    }
    assert queries == {"q1": "why am I hot"}  # only the split's queries
    assert qrels == {"q1": {"d1": 2, "d2": 0}}
    assert load_beir(beir, "train").queries == {"q2": "what helps"}
    assert "3 docs" in repr(data)


def test_save_beir_round_trip(tmp_path, beir):
    a = load_beir(beir, "test")
    save_beir(tmp_path / "copy", a.corpus, {"q1": "why am I hot"}, {"test": a.qrels})
    b = load_beir(tmp_path / "copy", "test")
    assert (b.corpus, b.queries, b.qrels) == (a.corpus, a.queries, a.qrels)


def test_missing_split_lists_available(beir):
    with pytest.raises(FileNotFoundError, match=r"no split 'dev'.*\['test', 'train'\]"):
        load_beir(beir, "dev")
    with pytest.raises(FileNotFoundError, match="BEIR folder not found"):
        load_beir(beir / "nope")


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("corpus.jsonl", _jsonl(CORPUS[:1]) + "{not json\n", r"corpus.jsonl:2: invalid JSON"),
        ("corpus.jsonl", _jsonl(CORPUS[:2]) + '{"title": "t", "text": "x"}\n', r"corpus.jsonl:3: missing key '_id'"),
        ("corpus.jsonl", _jsonl(CORPUS + CORPUS[:1]), r"corpus.jsonl:4: duplicate document id 'd1'"),
        ("corpus.jsonl", _jsonl(CORPUS) + '{"_id": "d9", "title": "t"}\n', r"corpus.jsonl:4: missing key 'text'"),
        ("corpus.jsonl", _jsonl(CORPUS) + '{"_id": "d9", "text": 5}\n', r"corpus.jsonl:4: 'text' must be a string"),
        ("corpus.jsonl", '["d1", "text"]\n', r"corpus.jsonl:1: expected a JSON object"),
        ("queries.jsonl", _jsonl(QUERIES + QUERIES[1:2]), r"queries.jsonl:4: duplicate query id 'q2'"),
        ("queries.jsonl", '{"_id": "q1"}\n', r"queries.jsonl:1: missing key 'text'"),
        ("queries.jsonl", '{"_id": null, "text": "x"}\n', r"queries.jsonl:1: '_id' must be a string"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\n", r"test.tsv:2: expected 3 tab-separated columns .* got 2"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1 d1 1\n", r"test.tsv:2: expected 3 tab-separated columns"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t0.5\n", r"test.tsv:2: score must be an integer, got '0.5'"),
        ("qrels/test.tsv", "q1\td1\t1\nq1\td1\t2\n", r"test.tsv:2: duplicate judgement .* \(first on line 1\)"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq7\td1\t1\n", r"test.tsv:3: query-id 'q7' is not in queries.jsonl"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\tdX\t1\n", r"test.tsv:2: corpus-id 'dX' is not in corpus.jsonl"),
    ],
)
def test_malformed_beir(beir, name, content, message):
    _write(beir / name, content)
    with pytest.raises(ValueError, match=message):
        load_beir(beir, "test")


def test_non_strict_drops_dangling_judgements(beir, caplog):
    _write(beir / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tdX\t1\nq7\td1\t1\n")
    data = load_beir(beir, "test", strict=False)
    assert data.qrels == {"q1": {"d1": 1}} and data.queries == {"q1": "why am I hot"}
    assert "dropping 2 judgement" in caplog.text


def test_numeric_ids_become_strings(beir):
    _write(beir / "corpus.jsonl", '{"_id": 1, "title": "", "text": "x"}\n')
    _write(beir / "queries.jsonl", '{"_id": 5, "text": "y"}\n')
    _write(beir / "qrels" / "test.tsv", "5\t1\t1\n")  # no header line is accepted too
    data = load_beir(beir)
    assert data.qrels == {"5": {"1": 1}} and data.queries == {"5": "y"} and "1" in data.corpus


def test_doc_text():
    assert doc_text({"title": "Fever", "text": "Hot."}) == "Fever Hot."
    assert doc_text({"title": "", "text": " Hot. "}) == "Hot."
    assert doc_text({"text": "Hot."}) == "Hot."
    assert doc_text(" as is ") == " as is "


# ----------------------------------------------------------------------------- training JSONL
def test_training_jsonl_round_trip(tmp_path):
    rows = [
        {"query": "q", "pos": ["p1", "p2"], "neg": ["n1"], "pos_scores": [1.0, 0.9], "prompt": "x"},
        {"query": "r", "pos": ["p"]},  # neg is optional
        {"query": "s", "pos": ["p"], "neg": []},
    ]
    write_training_jsonl(tmp_path / "t.jsonl", rows)
    assert load_training_jsonl(tmp_path / "t.jsonl") == rows


@pytest.mark.parametrize(
    "row,message",
    [
        ({"pos": ["p"]}, "missing key 'query'"),
        ({"query": 3, "pos": ["p"]}, "'query' must be a string"),
        ({"query": "q"}, "missing key 'pos'"),
        ({"query": "q", "pos": []}, "'pos' must be a non-empty list of strings"),
        ({"query": "q", "pos": "p"}, "'pos' must be a non-empty list of strings"),
        ({"query": "q", "pos": ["p", 1]}, "'pos' must be a non-empty list of strings"),
        ({"query": "q", "pos": ["p"], "neg": "n"}, "'neg' must be a list of strings"),
    ],
)
def test_training_jsonl_errors(tmp_path, row, message):
    path = _write(tmp_path / "t.jsonl", _jsonl([{"query": "ok", "pos": ["p"]}]) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=rf"t.jsonl:3: {message}"):
        load_training_jsonl(path)
    with pytest.raises(ValueError, match=rf"rows\[0\]: {message}"):
        write_training_jsonl(tmp_path / "out.jsonl", [row])
    assert not (tmp_path / "out.jsonl").exists()


def test_write_jsonl_is_atomic(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"a": "é"}])
    assert path.read_text(encoding="utf-8") == '{"a": "é"}\n'
    with pytest.raises(TypeError):
        write_jsonl(path, [{"a": 1}, {"b": object()}])  # fails half way through the rows
    assert path.read_text(encoding="utf-8") == '{"a": "é"}\n'  # old content intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temp file left


# ----------------------------------------------------------------------------- course data location
def test_course_data_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("BGEKIT_DATA", str(tmp_path))
    assert course_data_dir() == tmp_path
    monkeypatch.setenv("BGEKIT_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="BGEKIT_DATA"):
        course_data_dir()


def test_course_data_dir_default(monkeypatch):
    monkeypatch.delenv("BGEKIT_DATA", raising=False)
    repo_data = Path(__file__).resolve().parent.parent / "data"
    if (repo_data / "corpus.jsonl").is_file():
        assert course_data_dir() == repo_data
    else:
        with pytest.raises(FileNotFoundError, match="BGEKIT_DATA"):
            course_data_dir()


# --------------------------------------------------------------------- byte-order mark (Windows tools)
BOM = "\ufeff"


def test_every_text_input_accepts_a_byte_order_mark(tmp_path, beir):
    plain = load_beir(beir, "test")
    bom = tmp_path / "bom"
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        _write(bom / name, BOM + (beir / name).read_text(encoding="utf-8"))
    got = load_beir(bom, "test")
    assert (got.corpus, got.queries, got.qrels) == (plain.corpus, plain.queries, plain.qrels)
    assert "\ufeff" not in "".join(got.corpus) + "".join(got.queries)  # the mark never becomes part of an id
    rows = [{"query": "q", "pos": ["p"], "neg": ["n"]}, {"query": "q2", "pos": ["p2"]}]
    train = _write(tmp_path / "train.jsonl", BOM + _jsonl(rows))
    assert load_training_jsonl(train) == rows


def test_a_byte_order_mark_inside_a_file_is_still_an_error(tmp_path):
    path = _write(tmp_path / "train.jsonl", _jsonl([{"query": "q", "pos": ["p"]}]) + BOM + _jsonl([{"query": "q"}]))
    with pytest.raises(ValueError, match=r"train.jsonl:2: invalid JSON"):
        load_training_jsonl(path)


def test_load_passages_reads_a_pool_file_a_beir_folder_or_a_list(tmp_path, beir, caplog):
    """The one reader of 'passages to draw negatives from' (the trainer's --corpus, the miner's candidate_pool)."""
    want = ["Fever A raised body temperature.", "Rest and fluids help.", "No title key at all."]
    assert load_passages(beir) == want == [doc_text(d) for d in CORPUS]   # a BEIR folder: its corpus.jsonl
    rows = [{"text": " as it is "}, {"text": "t", "title": "T", "id": 3}, {"text": "", "title": "Title only"},
            {"text": "  ", "title": ""}]
    pool = _write(tmp_path / "pool.jsonl", _jsonl(rows))
    with caplog.at_level("WARNING"):
        assert load_passages(pool) == ["as it is", "T t", "Title only"]   # the course's doc_text
    assert "1 blank passage(s) skipped (the first: " + f"{pool}:4)" in caplog.text
    assert load_passages(pool, join_title=False) == [" as it is ", "t"]   # hn_mine's pool texts: verbatim
    assert load_passages(("a", "b")) == ["a", "b"]
    for rows, message in [([{"text": "ok"}, {"title": "x"}], r"pool.jsonl:2: missing key 'text'"),
                          ([{"text": 5}], r"pool.jsonl:1: 'text' \(and 'title', when given\) must be strings, got 5"),
                          ([{"text": "a", "title": 7}], r"pool.jsonl:1: .* must be strings, got 'a', 7")]:
        _write(pool, _jsonl(rows))
        with pytest.raises(ValueError, match=message):
            load_passages(pool)
    with pytest.raises(ValueError, match=r"corpus\[1\] must be a string or a .* record, got None"):
        load_passages(["a", None])
    assert load_passages([{"title": "T", "text": "a"}, {"text": "b", "title": 3}], join_title=False) == ["a", "b"]
    with pytest.raises(TypeError, match=r"a corpus dict\? pass list\(corpus.values\(\)\)"):
        load_passages({"d1": {"text": "a"}})
    with pytest.raises(TypeError, match="must be a path or a list of passages, got int"):
        load_passages(5)
    with pytest.raises(ValueError, match="no passages"):
        load_passages([" "], "candidate_pool")
    with pytest.raises(FileNotFoundError, match="candidate_pool not found"):
        load_passages(tmp_path / "nope.jsonl", "candidate_pool")

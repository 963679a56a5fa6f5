"""bgekit.mining / python -m bgekit.mine, on small synthetic data with the bundled MiniLM.

Rankings are checked against a brute-force numpy cosine ranking with the same encoder.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bgekit.mining import HardNegativeMiner, mine_course_train_split, mine_hard_negatives, normalize_text, parse_range

TOPICS = {
    "cactus": ("how often should I water a cactus?",
               "Water a cactus about once every two weeks in summer and once a month in winter."),
    "bread": ("why did my sourdough bread not rise?",
              "Sourdough fails to rise when the starter is weak or the dough is too cold to ferment."),
    "bike": ("how do I fix a flat bicycle tyre?",
             "To fix a flat bicycle tyre, remove the wheel, find the hole in the tube and glue a patch over it."),
    "sleep": ("how can I fall asleep faster at night?",
              "Keeping a fixed bedtime and avoiding screens for an hour before bed helps you fall asleep sooner."),
    "rust": ("how do I remove rust from a cast iron pan?",
             "Scrub rust off cast iron with steel wool, rinse, dry on the stove and rub in a thin layer of oil."),
    "guitar": ("how do I tune a guitar by ear?",
               "Tune the low E string to a reference note, then match each string to the fifth fret of the one below."),
}
FILLER_SUBJECTS = ["gardening", "baking", "cycling", "sleep", "cooking", "music", "travel", "weather", "football",
                   "painting", "chess", "knitting"]


def filler(n: int) -> list[str]:
    out = []
    for i in range(n):
        s = FILLER_SUBJECTS[i % len(FILLER_SUBJECTS)]
        out.append(f"Note {i} about {s}: people who enjoy {s} often spend weekend number {i} on it.")
    return out


def make_rows() -> list[dict]:
    rows = []
    for key, (q, p) in TOPICS.items():
        rows.append({"query": q, "pos": [p], "neg": [f"An unrelated remark on {key}, number {i}." for i in range(3)],
                     "id": key, "source": {"k": [1, 2]}})
    # a second row sharing the cactus positive (duplicate positives across rows)
    rows.append({"query": "cactus watering schedule", "pos": [TOPICS["cactus"][1], "  Cacti   need little water. "],
                 "neg": [], "id": "cactus2"})
    return rows


def make_pool() -> list[str]:
    pool = [p for _, p in TOPICS.values()] + filler(40)
    # whitespace variants of positives and queries, and exact duplicates
    pool += ["  " + TOPICS["bike"][1].replace(" ", "  ") + "\n", TOPICS["sleep"][0], " " + TOPICS["rust"][0] + " ",
             TOPICS["bread"][1], "Cacti need little water.", filler(1)[0]]
    return pool


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def enc():
    from bgekit import Embedder

    return Embedder(show_progress=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mining")
    return (write_jsonl(d / "train.jsonl", make_rows()),
            write_jsonl(d / "pool.jsonl", [{"text": t, "id": i} for i, t in enumerate(make_pool())]))


@pytest.fixture
def train_file(files):
    return files[0]


@pytest.fixture
def pool_file(files):
    return files[1]


@pytest.fixture(scope="module")
def miner(enc, files):
    """Rows and pool encoded once; ``miner.mine`` is what ``mine_hard_negatives`` runs after encoding."""
    return HardNegativeMiner(enc, files[0], files[1])


def vectors_of(enc, texts):
    """Un-normalised vectors keyed by normalised text (duplicates encoded once), for brute-force rankings."""
    texts = list({normalize_text(t): t for t in texts}.values())
    return dict(zip((normalize_text(t) for t in texts), enc.encode(texts, normalize=False)))


@pytest.fixture(scope="module")
def pool_vectors(enc):
    return vectors_of(enc, make_pool())


def brute_force_ranking(enc, query: str, vectors: dict, exclude: set[str], instruction: str = ""):
    """(texts, scores) best first by numpy cosine over ``vectors``, the excluded (normalised) texts removed."""
    keys = [k for k in vectors if k not in exclude]
    pv = np.stack([vectors[k] for k in keys])
    qv = enc.encode([instruction + query], normalize=False)[0]
    cos = pv @ qv / (np.linalg.norm(pv, axis=1) * np.linalg.norm(qv))
    order = np.argsort(-cos, kind="stable")
    return [keys[i] for i in order], cos[order]


# ------------------------------------------------------------------------------------ properties
def check_no_banned_negatives(rows, n=None, pool=None):
    for row in rows:
        banned = {normalize_text(p) for p in row["pos"]} | {normalize_text(row["query"])}
        negs = [normalize_text(t) for t in row["neg"]]
        assert not banned & set(negs), (row["query"], banned & set(negs))
        assert len(set(negs)) == len(negs)
        if n is not None:  # n, or every allowed pool text when the pool is too small
            allowed = {normalize_text(t) for t in pool} - banned
            assert len(negs) == min(n, len(allowed))


def test_no_positive_or_query_among_negatives(enc, miner, train_file, tmp_path):
    settings = (("0-6", 4), ("0-60", 8), ("3-5", 6), ("0-100", 60))  # "3-5" pads from the whole pool
    for seed in range(6):
        for rng, n in settings:
            report = miner.mine(rng, n, seed)
            assert report.rows == len(make_rows())
            check_no_banned_negatives(report.output_rows, n, miner.pool)
    # end to end through the file, with the default pool (the input's pos and neg texts)
    default_pool = HardNegativeMiner(enc, train_file)
    for seed in range(6):
        for rng, n in settings:
            check_no_banned_negatives(default_pool.mine(rng, min(n, 20), seed).output_rows)
    out = tmp_path / "out.jsonl"
    mine_hard_negatives(enc, train_file, out, "3-5", 6, seed=0)
    check_no_banned_negatives(read_jsonl(out), 6, default_pool.pool)


def test_same_seed_same_output(enc, miner, train_file, pool_file, tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    mine_hard_negatives(enc, train_file, a, "1-30", 5, pool_file, seed=7)
    mine_hard_negatives(enc, train_file, b, "1-30", 5, pool_file, seed=7)
    assert a.read_bytes() == b.read_bytes()
    assert miner.mine("1-30", 5, 7).output_rows == read_jsonl(a)
    # 29 candidates, 5 drawn per row: another seed draws others
    assert miner.mine("1-30", 5, 8).output_rows != read_jsonl(a)


@pytest.mark.parametrize("rng", [(2, 9), (0, 4), (5, 20), (30, 60)])
def test_range_matches_brute_force_ranking(enc, miner, pool_vectors, rng):
    a, b = rng
    n = 3
    report = miner.mine(f"{a}-{b}", n, seed=0)
    assert report.padded_rows == 0 and report.dropped_by_margin == 0
    check_range(enc, report.output_rows, pool_vectors, a, b, n, "")


def check_range(enc, rows, pool_vectors, a, b, n, instruction):
    for row in rows:
        banned = {normalize_text(p) for p in row["pos"]} | {normalize_text(row["query"])}
        ranked, scores = brute_force_ranking(enc, row["query"], pool_vectors, banned, instruction)
        assert len(row["neg"]) == n
        lo, hi = scores[min(b, len(scores)) - 1], scores[a]
        for neg in row["neg"]:
            r = ranked.index(normalize_text(neg))
            # rank in [a, b), or tied (to float precision) with a score at the range's edge
            assert a <= r < b or lo - 1e-5 <= scores[r] <= hi + 1e-5, (row["query"], neg, r)


def test_range_with_query_instruction(enc, train_file, pool_file, pool_vectors, tmp_path):
    out = tmp_path / "out.jsonl"
    report = mine_hard_negatives(enc, train_file, out, "5-20", 3, pool_file, seed=0,
                                 query_instruction_for_retrieval="query: ")
    assert report.padded_rows == 0
    check_range(enc, read_jsonl(out), pool_vectors, 5, 20, 3, "query: ")


def test_ranked_candidates_agree_with_brute_force(enc, miner, pool_vectors):
    for i, row in enumerate(miner.rows):
        banned = {normalize_text(p) for p in row["pos"]} | {normalize_text(row["query"])}
        ranked, scores = brute_force_ranking(enc, row["query"], pool_vectors, banned)
        pos, sc = miner.ranked_candidates(i)
        assert len(pos) == len(ranked)
        np.testing.assert_allclose(sc, scores, atol=1e-5)
        assert [normalize_text(miner.pool[p]) for p in pos][:5] == ranked[:5]


def test_padding_is_reported_when_the_range_is_short(miner):
    rows = make_rows()
    report = miner.mine("4-6", 5, seed=3)
    assert report.padded_rows == len(rows)
    assert report.padded_negatives == 3 * len(rows)  # 2 from ranks 4-5, 3 random ones per row
    assert len(report.padded_scores) == 3 * len(rows) and len(report.negative_scores) == 2 * len(rows)
    assert report.short_rows == 0 and list(report.negatives_per_row) == [5] * len(rows)
    assert "padded rows: 7" in report.summary()


def test_pool_too_small_reports_short_rows(enc, tmp_path):
    rows = [{"query": "how often should I water a cactus?", "pos": [TOPICS["cactus"][1]]},
            {"query": "how do I fix a flat bicycle tyre?", "pos": [TOPICS["bike"][1]]}]
    pool = [TOPICS["cactus"][1], TOPICS["bike"][1], "A note about chess.", "A note about knitting."]
    report = mine_hard_negatives(enc, rows, tmp_path / "o.jsonl", "0-10", 5, pool, seed=0)
    # each row can use the 3 pool texts that are not its own positive
    assert list(report.negatives_per_row) == [3, 3]
    assert report.short_rows == 2 and report.padded_rows == 0
    report = mine_hard_negatives(enc, rows, tmp_path / "o.jsonl", "1-2", 3, pool, seed=0)
    assert list(report.negatives_per_row) == [3, 3] and report.padded_rows == 2 and report.padded_negatives == 4


def test_extra_keys_kept_and_neg_replaced(miner, tmp_path):
    out = tmp_path / "out.jsonl"
    miner.mine("0-10", 2, seed=0, output_file=out)
    rows_in, rows_out = make_rows(), read_jsonl(out)
    for a, b in zip(rows_in, rows_out):
        assert {k: v for k, v in a.items() if k != "neg"} == {k: v for k, v in b.items() if k != "neg"}
        assert not set(a["neg"]) & set(b["neg"])  # the input's negatives are not in this pool: replaced


# ------------------------------------------------------------------------------------ bad input
def test_bad_rows_name_file_and_line(enc, tmp_path):
    good = {"query": "q", "pos": ["p"]}
    cases = [
        ([good, {"pos": ["p"]}], ":2: missing key 'query'"),
        ([good, good, {"query": "q", "pos": []}], ":3: 'pos' must be a non-empty list"),
        ([{"query": "q"}], ":1: missing key 'pos'"),
        ([good, {"query": "q", "pos": ["p"], "neg": "n"}], ":2: 'neg' must be a list"),
    ]
    for rows, msg in cases:
        f = write_jsonl(tmp_path / "bad.jsonl", rows)
        with pytest.raises(ValueError) as e:
            mine_hard_negatives(enc, f, tmp_path / "o.jsonl", "0-5", 1)
        assert str(f) + msg in str(e.value)
    f = tmp_path / "broken.jsonl"
    f.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"broken.jsonl:2: invalid JSON"):
        mine_hard_negatives(enc, f, tmp_path / "o.jsonl", "0-5", 1)
    with pytest.raises(ValueError, match=r"rows\[1\]: missing key 'query'"):
        mine_hard_negatives(enc, [good, {"pos": ["p"]}], None, "0-5", 1)


def test_bad_candidate_pool_line(enc, train_file, tmp_path):
    f = tmp_path / "pool.jsonl"
    f.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"title": "no text"}) + "\n")
    with pytest.raises(ValueError, match=r"pool.jsonl:2: missing key 'text'"):
        mine_hard_negatives(enc, train_file, tmp_path / "o.jsonl", "0-5", 1, f)
    f.write_text(json.dumps({"text": "fine"}) + "\n\n" + json.dumps({"text": 3}) + "\n")
    with pytest.raises(ValueError, match=r"pool.jsonl:3: 'text' \(and 'title', when given\) must be strings, got 3"):
        mine_hard_negatives(enc, train_file, tmp_path / "o.jsonl", "0-5", 1, f)


def test_pool_texts_are_used_verbatim_and_a_mismatched_pool_is_reported(enc, train_file, tmp_path, caplog):
    """hn_mine's pool format: 'text' as it is, a title ignored; else a titled pool copy of a positive would no longer
    match the positive and be mined as its negative. A pool that misses most positives is reported."""
    rows = read_jsonl(train_file)
    f = write_jsonl(tmp_path / "pool.jsonl", [{"title": "Title", "text": p} for r in rows for p in r["pos"]]
                    + [{"text": "   "}] + [{"text": t} for t in filler(20)])
    with caplog.at_level("WARNING"):
        report = mine_hard_negatives(enc, train_file, tmp_path / "o.jsonl", "0-10", 3, f, seed=0)
    assert "1 blank passage(s) skipped" in caplog.text and "pool.jsonl:" in caplog.text
    assert "positives are not in the candidate pool" not in caplog.text
    check_no_banned_negatives(report.output_rows)
    for row in report.output_rows:   # no "Title <positive>" either
        assert not any(normalize_text(p) in normalize_text(n) for p in row["pos"] for n in row["neg"]), row
    titled = write_jsonl(tmp_path / "titled.jsonl", [{"text": "Title " + p} for r in rows for p in r["pos"]])
    with caplog.at_level("WARNING"):
        mine_hard_negatives(enc, train_file, tmp_path / "o2.jsonl", "0-10", 3, titled, seed=0)
    assert "positives are not in the candidate pool" in caplog.text


@pytest.mark.parametrize("value,msg", [
    ("50-10", "start must be below the end"), ("10-10", "start must be below"), ("-5-10", "must look like 'a-b'"),
    ("a-b", "must look like 'a-b'"), ("10", "must look like 'a-b'"), ((-1, 5), "cannot be negative"),
    ((1.5, 3), "whole numbers"),
])
def test_parse_range_errors(value, msg):
    with pytest.raises(ValueError, match="range_for_sampling") as e:
        parse_range(value)
    assert msg in str(e.value)


def test_range_beyond_pool_and_failed_run_keeps_old_output(enc, miner, train_file, pool_file, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    n_pool = len({normalize_text(t) for t in make_pool()})
    with pytest.raises(ValueError, match=rf"range_for_sampling: the start rank {n_pool} is beyond the candidate "
                                         rf"pool \({n_pool} texts\)"):
        mine_hard_negatives(enc, train_file, out, f"{n_pool}-{n_pool + 10}", 2, pool_file)
    with pytest.raises(ValueError, match="negative_number"):
        mine_hard_negatives(enc, train_file, out, "0-10", 0, pool_file)
    with pytest.raises(ValueError, match="margin"):
        mine_hard_negatives(enc, train_file, out, "0-10", 2, pool_file, margin=1.5)
    assert out.read_text() == "old\n"
    assert len(miner.pool) == n_pool
    miner.mine(f"{n_pool - 1}-{n_pool + 10}", 2, output_file=out)  # the last rank: fine (and padded)
    assert len(read_jsonl(out)) == 7


# ------------------------------------------------------------------------------------ guard
def test_margin_drops_a_paraphrase_of_the_positive(enc, tmp_path):
    q, p = TOPICS["cactus"]
    paraphrase = "In summer give a cactus water roughly every second week, and in winter about once a month."
    rows = [{"query": q, "pos": [p]}]
    pool = [p, paraphrase] + filler(30)
    ranked, scores = brute_force_ranking(enc, q, vectors_of(enc, pool), {normalize_text(p), normalize_text(q)})
    pos_score = float(enc.encode([q])[0] @ enc.encode([p])[0])
    assert ranked[0] == normalize_text(paraphrase)  # without a guard it is the top "negative"
    para_score = float(scores[0])
    margin = 0.1
    assert para_score >= (1 - margin) * pos_score > scores[1]  # the set-up: only the paraphrase is that close

    # with every in-range candidate kept, the paraphrase is mined
    assert paraphrase in mine_hard_negatives(enc, rows, None, "0-5", 5, pool, seed=0).output_rows[0]["neg"]

    guarded = mine_hard_negatives(enc, rows, None, "0-5", 5, pool, seed=0, margin=margin)
    assert paraphrase not in guarded.output_rows[0]["neg"]
    assert guarded.dropped_by_margin == 1 and guarded.padded_rows == 1  # 4 left in range, one random pad
    d = guarded.dropped[0]
    assert (d["text"], d["reason"], d["rank"]) == (paraphrase, "margin", 0)
    assert d["score"] == pytest.approx(para_score, abs=1e-5)
    assert d["positive_score"] == pytest.approx(pos_score, abs=1e-5)
    thr = (1 - margin) * pos_score
    assert all(s < thr for s in guarded.negative_scores) and all(s < thr for s in guarded.padded_scores)
    assert "margin 0.1: 1" in guarded.summary()


def test_margin_reference_min_or_max(enc):
    q, p = TOPICS["cactus"]
    weak = "Cacti are plants."
    pool = [p, weak] + filler(20)
    rows = [{"query": q, "pos": [p, weak]}]
    sp = float(enc.encode([q])[0] @ enc.encode([p])[0])
    sw = float(enc.encode([q])[0] @ enc.encode([weak])[0])
    assert sw < sp
    vectors = vectors_of(enc, pool)
    for ref, expected in (("min", sw), ("max", sp)):
        r = mine_hard_negatives(enc, rows, None, "0-20", 20, pool, seed=0, margin=0.0, margin_reference=ref)
        _, scores = brute_force_ranking(enc, q, vectors, {normalize_text(p), normalize_text(weak), normalize_text(q)})
        assert r.dropped_by_margin == int((scores >= expected - 1e-6).sum())
        assert all(s < expected + 1e-6 for s in r.negative_scores)


class EncoderScorer:
    """A real scorer with the Reranker's ``compute_score`` interface, backed by the bundled bi-encoder
    (no cross-encoder is bundled; the course trains its own in notebook 03). ``normalize=True`` maps
    cosine to [0, 1] as (cos + 1) / 2. Counts the pairs it scores."""

    def __init__(self, enc):
        self.enc = enc
        self.calls = 0

    def compute_score(self, pairs, normalize=False, **kw):
        self.calls += len(pairs)
        q = self.enc.encode([a for a, _ in pairs])
        d = self.enc.encode([b for _, b in pairs])
        cos = (q * d).sum(1)
        return ((cos + 1) / 2 if normalize else cos).tolist()


def test_reranker_guard_drops_high_scoring_candidates(enc, miner):
    scorer = EncoderScorer(enc)
    threshold = 0.6  # cosine 0.2
    r = miner.mine("0-30", 4, seed=0, reranker=scorer, reranker_threshold=threshold)
    assert r.dropped_by_reranker > 0
    assert all(d["reason"] == "reranker" and d["reranker_score"] > threshold for d in r.dropped)
    for row in r.output_rows:
        s = scorer.compute_score([(row["query"], n) for n in row["neg"]], normalize=True)
        assert max(s) <= threshold + 1e-6 and len(row["neg"]) == 4
    # the reranker only scores what is needed: fewer pairs than the whole range
    assert scorer.calls - 4 * len(r.output_rows) < len(r.output_rows) * 30


# ------------------------------------------------------------------------------------ helpers and CLI
def test_mine_course_train_split_on_a_tiny_beir_folder(enc, tmp_path):
    from bgekit.data import save_beir

    corpus = {f"d{i}": {"title": f"T{i}", "text": t} for i, t in enumerate([p for _, p in TOPICS.values()] + filler(20))}
    queries = {"q1": TOPICS["cactus"][0], "q2": TOPICS["bike"][0], "q3": "only partly judged"}
    qrels = {"train": {"q1": {"d0": 2, "d3": 1}, "q2": {"d2": 2}, "q3": {"d4": 1}}, "test": {"q1": {"d0": 2}}}
    save_beir(tmp_path / "beir", corpus, queries, qrels)
    out = tmp_path / "mined.jsonl"
    report = mine_course_train_split(enc, out, data_dir=tmp_path / "beir", range_for_sampling="0-10",
                                     negative_number=3, margin=None)
    rows = read_jsonl(out)
    assert [r["query_id"] for r in rows] == ["q1", "q2"]  # q3 has no grade-2 passage
    assert rows[0]["pos"] == [f"T0 {TOPICS['cactus'][1]}"] and rows[0]["pos_ids"] == ["d0"]
    assert report.pool_size == len(corpus) and all(len(r["neg"]) == 3 for r in rows)


def _run_cli(*args, cwd):
    env = dict(os.environ, BGEKIT_MODE="small")
    return subprocess.run([sys.executable, "-m", "bgekit.mine", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_cli(train_file, pool_file, tmp_path):
    out = tmp_path / "cli.jsonl"
    p = _run_cli("--input_file", str(train_file), "--output_file", str(out), "--candidate_pool", str(pool_file),
                 "--range_for_sampling", "1-20", "--negative_number", "3", "--seed", "5", "--margin", "0.05",
                 cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "rows: 7" in p.stdout and "negatives per row: 3 wanted" in p.stdout
    rows = read_jsonl(out)
    assert len(rows) == 7 and all(len(r["neg"]) == 3 for r in rows)
    p = _run_cli("--input_file", str(train_file), "--output_file", str(out), "--range_for_sampling", "50-10",
                 cwd=tmp_path)
    assert p.returncode == 2 and "--range_for_sampling: the start must be below the end" in p.stderr


def test_cli_takes_flagembedding_current_names_and_the_blogs_as_aliases():
    from bgekit.mine import build_parser

    base = ["--input_file", "in.jsonl", "--output_file", "out.jsonl"]
    current = build_parser().parse_args(base + ["--embedder_name_or_path", "m", "--embedder_batch_size", "8",
                                                "--reranker_name_or_path", "r"])
    legacy = build_parser().parse_args(base + ["--model_name_or_path", "m", "--batch_size", "8", "--reranker", "r"])
    assert vars(current) == vars(legacy)
    assert (current.embedder_name_or_path, current.embedder_batch_size, current.reranker_name_or_path) == ("m", 8, "r")


def test_use_gpu_for_searching_without_a_gpu_warns_and_mines_the_same(enc, miner, caplog):
    import faiss

    if faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is visible to faiss")
    rows = make_rows()
    gpu = HardNegativeMiner(enc, rows, make_pool(), use_gpu_for_searching=True)
    with caplog.at_level("WARNING", logger="bgekit.mining"):
        report = gpu.mine("1-20", 3, seed=1)
    assert "use_gpu_for_searching" in caplog.text and not gpu.on_gpu
    assert report.output_rows == miner.mine("1-20", 3, seed=1).output_rows


# ------------------------------------------------------------------ ties: one order for every cut
def test_rank_cut_is_a_prefix_of_a_deeper_cut_under_ties(enc):
    from bgekit.metrics import rank_order

    base = ["Water a cactus every two weeks in summer.", "Basil likes warm sun and moist soil.",
            "Prune roses in early spring.", "Tune the low string first."]
    # four spellings of each text: different strings (kept apart by the de-duplication), the same
    # tokens for the lower-casing tokenizer, so the same vector: exact ties
    pool = [v for t in base for v in (t, t.upper(), t.lower(), t.title())]
    rows = [{"query": "how often should I water my cactus", "pos": ["Cacti need little water."]},
            {"query": "when do I cut back my roses", "pos": ["Rose care."]}]
    deep = HardNegativeMiner(enc, rows, pool)
    ranked = [deep.ranked_candidates(r) for r in range(len(rows))]
    for pos, scores in ranked:
        assert len(pos) == len(pool) and len(set(scores)) == len(base), "the test needs ties"
        # the metrics' order over the index's ids (pool positions as strings)
        assert [pos[i] for i in rank_order([str(p) for p in pos], scores)] == pos
    for k in (1, 2, 3, 4, 5, 7, 11, 16):
        fresh = HardNegativeMiner(enc, rows, pool)  # nothing cached: a search of depth k
        for r, (pos, scores) in enumerate(ranked):
            assert fresh.ranked_candidates(r, k) == (pos[:k], scores[:k]), (r, k)
    # a range cut [0, k) with k negatives takes exactly the first k of the deep ranking
    for k in (1, 3, 5, 9):
        report = HardNegativeMiner(enc, rows, pool).mine(f"0-{k}", negative_number=k, seed=0)
        for r, row in enumerate(report.output_rows):
            assert sorted(row["neg"]) == sorted(pool[p] for p in ranked[r][0][:k]), (r, k)


def test_training_file_and_candidate_pool_with_a_byte_order_mark(enc, tmp_path):
    rows, pool = make_rows(), make_pool()
    train = tmp_path / "train.jsonl"
    train.write_text("\ufeff" + "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    pool_file = tmp_path / "pool.jsonl"
    pool_file.write_text("\ufeff" + "".join(json.dumps({"text": t}) + "\n" for t in pool), encoding="utf-8")
    with_bom = HardNegativeMiner(enc, train, pool_file)
    plain = HardNegativeMiner(enc, rows, pool)
    assert with_bom.rows == plain.rows and with_bom.pool == plain.pool
    a = with_bom.mine("0-10", negative_number=3, seed=1)
    b = plain.mine("0-10", negative_number=3, seed=1)
    assert a.output_rows == b.output_rows

"""bgekit.index.DenseIndex: exact results vs numpy, approximate recall, errors, save/load."""

import json

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from bgekit.index import DenseIndex  # noqa: E402


def _unit(rng, n, dim):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _numpy_topk(docs, queries, k):
    s = queries @ docs.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(s, order, axis=1)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return [f"doc-{i}" for i in range(300)], _unit(rng, 300, 16), _unit(rng, 20, 16)


# ----------------------------------------------------------------------------- exact search
def test_flat_matches_numpy(data):
    ids, docs, queries = data
    index = DenseIndex(16)
    index.add(ids, docs)
    got_ids, got_scores = index.search(queries, k=10)
    order, scores = _numpy_topk(docs, queries, 10)
    assert got_ids == [[ids[j] for j in row] for row in order]
    assert got_scores.dtype == np.float32 and got_scores.shape == (20, 10)
    np.testing.assert_allclose(got_scores, scores, atol=1e-5)


def test_batches_equal_one_add(data):
    ids, docs, queries = data
    one = DenseIndex(16)
    one.add(ids, docs)
    many = DenseIndex(16)
    for start in range(0, 300, 70):
        many.add(ids[start : start + 70], docs[start : start + 70])
    assert len(many) == 300 and many.ids == ids
    assert one.search(queries, 7)[0] == many.search(queries, 7)[0]


def test_single_query_and_k_larger_than_index():
    index = DenseIndex(4)
    index.add(["a", "b", "c"], np.eye(4, dtype=np.float32)[:3])
    ids, scores = index.search(np.array([0, 0, 1, 0], dtype=np.float32), k=10)
    assert ids[0][0] == "c" and sorted(ids[0]) == ["a", "b", "c"]
    assert scores.shape == (1, 3)
    ids, scores = DenseIndex(4).search(np.ones((2, 4), np.float32), k=5)
    assert ids == [[], []] and scores.shape == (2, 0)


def test_float64_is_converted():
    index = DenseIndex(3)
    index.add(["x"], np.array([[1.0, 2.0, 3.0]]))  # float64
    assert index.reconstruct(["x"]).dtype == np.float32
    ids, scores = index.search(np.array([1.0, 0.0, 0.0]), 1)
    assert ids == [["x"]] and scores[0, 0] == 1.0


# ----------------------------------------------------------------------------- errors
def test_errors_are_clear(data):
    ids, docs, _ = data
    index = DenseIndex(16)
    with pytest.raises(ValueError, match=r"shape \(n, 16\), got \(300, 8\)"):
        index.add(ids, docs[:, :8])
    with pytest.raises(ValueError, match=r"shape \(16,\) or \(n, 16\), got \(2, 15\)"):
        index.search(np.zeros((2, 15), np.float32), 3)
    with pytest.raises(TypeError, match="floating-point.*int64"):
        index.add(["a"], np.ones((1, 16), dtype=np.int64))
    with pytest.raises(TypeError, match="floating-point"):
        index.search(np.ones(16, dtype=np.int32), 3)
    bad = docs[:5].copy()
    bad[3, 7] = np.nan
    with pytest.raises(ValueError, match=r"vectors\[3\] contains NaN"):
        index.add(ids[:5], bad)
    bad[3, 7] = np.inf
    with pytest.raises(ValueError, match=r"vectors\[3\] contains inf"):
        index.add(ids[:5], bad)
    with pytest.raises(ValueError, match=r"queries\[0\] contains NaN"):
        index.search(np.full(16, np.nan, np.float32), 3)
    with pytest.raises(ValueError, match="2 ids for 3 vectors"):
        index.add(["a", "b"], docs[:3])
    with pytest.raises(ValueError, match=r"duplicate id 'a' \(ids\[2\]\): repeated"):
        index.add(["a", "b", "a"], docs[:3])
    with pytest.raises(TypeError, match=r"ids\[1\] must be a str"):
        index.add(["a", 7], docs[:2])
    with pytest.raises(ValueError, match="k must be a positive int"):
        index.search(docs[:1], 0)
    assert len(index) == 0  # nothing was added by the failed calls
    index.add(["a", "b"], docs[:2])
    with pytest.raises(ValueError, match=r"duplicate id 'b' \(ids\[1\]\): already in the index"):
        index.add(["c", "b"], docs[2:4])
    assert index.ids == ["a", "b"]
    with pytest.raises(ValueError, match="kind must be one of"):
        DenseIndex(16, kind="lsh")
    with pytest.raises(ValueError, match="unknown knob"):
        DenseIndex(16, kind="flat", nprobe=3)


# ----------------------------------------------------------------------------- ties at the cut
def _tied(seed, n_distinct=6, copies=25, dim=8):
    """Few distinct vectors, many exact copies each, ids in shuffled order: most scores tie."""
    rng = np.random.default_rng(seed)
    base = _unit(rng, n_distinct, dim)
    docs = np.repeat(base, copies, axis=0)
    perm = rng.permutation(len(docs))
    ids = [f"v{i}" for i in rng.permutation(len(docs))]  # string order != insertion order ("v9" > "v10")
    return [ids[i] for i in perm], docs[perm], _unit(rng, 24, dim)


# (HNSW is left out: its graph search finds a different set of hits as its effort grows with k, and
# with exact duplicate vectors it misses most of them; the tie order of what it finds is the same)
@pytest.mark.parametrize("kind,knobs", [("flat", {}), ("ivf", {"nlist": 4, "nprobe": 4})])
@pytest.mark.parametrize("n_queries", [1, 24])  # faiss switches to BLAS from 20 queries on
def test_top_k_is_a_prefix_of_a_deeper_top_k_under_ties(kind, knobs, n_queries):
    from bgekit.metrics import rank_order

    ids, docs, queries = _tied(0)
    queries = queries[:n_queries]
    index = DenseIndex(8, kind=kind, **knobs)
    index.add(ids, docs)
    n = len(ids)
    full_ids, full_scores = index.search(queries, k=n)
    for row_ids, row_scores in zip(full_ids, full_scores):
        assert len(row_ids) == n and len(set(row_scores.tolist())) == 6  # every doc found, 6 tie groups
        # the order bgekit.metrics ranks by: score descending, then id descending
        assert [row_ids[i] for i in rank_order(row_ids, row_scores)] == row_ids
    for k in (1, 2, 3, 10, 24, 25, 26, 60, 149, n):
        got_ids, got_scores = index.search(queries, k=k)
        assert got_ids == [r[:k] for r in full_ids], k
        np.testing.assert_array_equal(got_scores, full_scores[:, :k])


def test_six_identical_vectors_same_first_hit_at_every_k():
    index = DenseIndex(4)
    index.add([f"p{i}" for i in range(1, 7)], np.tile(np.float32([0.6, 0.8, 0, 0]), (6, 1)))
    q = np.float32([1, 0, 0, 0])
    assert [index.search(q, k=k)[0][0] for k in range(1, 7)] == [["p6", "p5", "p4", "p3", "p2", "p1"][:k]
                                                                 for k in range(1, 7)]


# ----------------------------------------------------------------------------- approximate search
def test_hnsw_recall_against_flat():
    rng = np.random.default_rng(1)
    docs, queries = _unit(rng, 3000, 32), _unit(rng, 100, 32)
    ids = [str(i) for i in range(3000)]
    flat, hnsw = DenseIndex(32), DenseIndex(32, kind="hnsw", m=16, ef_construction=100, ef_search=64)
    flat.add(ids, docs)
    hnsw.add(ids, docs)
    exact, _ = flat.search(queries, 10)
    approx, scores = hnsw.search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall > 0.9
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_ivf_training_rules_and_exactness():
    rng = np.random.default_rng(2)
    docs, queries = _unit(rng, 800, 16), _unit(rng, 30, 16)
    ids = [f"d{i}" for i in range(800)]
    small = DenseIndex(16, kind="ivf", nlist=50)
    with pytest.raises(ValueError, match="at least nlist=50 vectors, got 10"):
        small.add(ids[:10], docs[:10])
    assert len(small) == 0 and not small.is_trained
    small.train(docs)  # explicit training on a sample, then add in batches
    small.add(ids[:10], docs[:10])
    small.add(ids[10:], docs[10:])
    # visiting every list makes IVF exact
    full = DenseIndex(16, kind="ivf", nlist=8, nprobe=8)
    full.add(ids, docs)  # trains on the first add
    flat = DenseIndex(16)
    flat.add(ids, docs)
    assert full.search(queries, 10)[0] == flat.search(queries, 10)[0]
    auto = DenseIndex(16, kind="ivf")
    auto.add(ids, docs)
    assert auto.knobs["nlist"] == min(int(4 * np.sqrt(800)), 800 // 39)


def test_approximate_search_never_returns_padding():
    rng = np.random.default_rng(3)
    docs = _unit(rng, 200, 8)
    index = DenseIndex(8, kind="ivf", nlist=8, nprobe=1)
    index.add([f"d{i}" for i in range(200)], docs)
    ids, scores = index.search(docs[:5], k=200)
    assert scores.shape == (5, 200)
    for row_ids, row_scores in zip(ids, scores):
        assert 0 < len(row_ids) < 200  # one list of 8 was visited
        assert all(isinstance(i, str) and i in index for i in row_ids)
        assert np.isfinite(row_scores[: len(row_ids)]).all()
        assert np.all(row_scores[len(row_ids) :] == -np.inf)


# ----------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("kind,knobs", [("flat", {}), ("hnsw", {"m": 8, "ef_search": 40}), ("ivf", {"nlist": 4, "nprobe": 2})])
def test_round_trip(tmp_path, data, kind, knobs):
    ids, docs, queries = data
    index = DenseIndex(16, kind=kind, **knobs)
    index.add(ids, docs)
    index.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["ids.json", "index.faiss", "meta.json"]
    back = DenseIndex.load(tmp_path / "idx")
    assert back.ids == ids and back.kind == kind and back.dim == 16 and back.knobs == index.knobs
    np.testing.assert_array_equal(back.reconstruct(), docs)  # vectors bit for bit
    np.testing.assert_array_equal(back.reconstruct(["doc-7"]), docs[7:8])
    a_ids, a_scores = index.search(queries, 10)
    b_ids, b_scores = back.search(queries, 10)
    assert a_ids == b_ids
    np.testing.assert_array_equal(a_scores, b_scores)
    back.add(["new"], docs[:1])  # a loaded index keeps working
    assert len(back) == 301


def test_unicode_ids_round_trip(tmp_path):
    index = DenseIndex(2)
    index.add(["café", "naïve/ id", ""], np.eye(2, dtype=np.float32)[[0, 1, 1]] * [[1], [1], [0.5]])
    index.save(tmp_path / "u")
    assert DenseIndex.load(tmp_path / "u").ids == ["café", "naïve/ id", ""]


def test_save_is_atomic_under_a_crash(tmp_path, data, monkeypatch):
    ids, docs, queries = data
    old = DenseIndex(16)
    old.add(ids[:100], docs[:100])
    old.save(tmp_path / "idx")
    new = DenseIndex(16)
    new.add(ids, docs)

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    # crash in the middle of writing the new folder (after index.faiss, while writing ids.json)
    import pathlib

    real_write_text = pathlib.Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name == "ids.json":
            real_write_text(self, "[\"half", encoding="utf-8")
            crash()
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    with pytest.raises(OSError, match="simulated"):
        new.save(tmp_path / "idx")
    monkeypatch.undo()
    # and a crash inside faiss' own writer
    monkeypatch.setattr(faiss, "write_index", crash)
    with pytest.raises(OSError, match="simulated"):
        new.save(tmp_path / "idx")
    monkeypatch.undo()

    back = DenseIndex.load(tmp_path / "idx")
    assert back.ids == ids[:100]
    np.testing.assert_array_equal(back.reconstruct(), docs[:100])
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no temporary folders left behind
    new.save(tmp_path / "idx")  # a later save replaces it
    assert len(DenseIndex.load(tmp_path / "idx")) == 300


def test_save_refuses_to_overwrite_other_folders(tmp_path, data):
    ids, docs, _ = data
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    index = DenseIndex(16)
    index.add(ids[:3], docs[:3])
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        index.save(tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    index.save(tmp_path / "empty")  # an empty folder is fine
    with pytest.raises(ValueError, match="not trained"):
        DenseIndex(16, kind="ivf").save(tmp_path / "ivf")


@pytest.fixture
def saved(tmp_path, data):
    ids, docs, _ = data
    index = DenseIndex(16)
    index.add(ids[:50], docs[:50])
    return index.save(tmp_path / "idx")


def _edit_json(path, fn):
    obj = json.loads(path.read_text())
    path.write_text(json.dumps(fn(obj)))


def test_load_refuses_ids_count_mismatch(saved):
    _edit_json(saved / "ids.json", lambda ids: ids[:-1])
    with pytest.raises(ValueError, match="count=50 but ids.json holds 49"):
        DenseIndex.load(saved)


def test_load_refuses_meta_count_mismatch(saved):
    _edit_json(saved / "meta.json", lambda m: {**m, "count": 51})
    _edit_json(saved / "ids.json", lambda ids: ids + ["extra"])
    with pytest.raises(ValueError, match="index.faiss holds 50 vectors but ids.json holds 51"):
        DenseIndex.load(saved)


def test_load_refuses_dim_mismatch(saved):
    _edit_json(saved / "meta.json", lambda m: {**m, "dim": 32})
    with pytest.raises(ValueError, match="dimension 16 but meta.json says dim=32"):
        DenseIndex.load(saved)


def test_load_refuses_kind_mismatch(saved):
    _edit_json(saved / "meta.json", lambda m: {**m, "kind": "hnsw", "knobs": {}})
    with pytest.raises(ValueError, match="IndexFlat.*kind='hnsw'"):
        DenseIndex.load(saved)


def test_load_refuses_duplicate_ids_and_missing_files(saved):
    _edit_json(saved / "ids.json", lambda ids: ids[:-1] + [ids[0]])
    with pytest.raises(ValueError, match="duplicate id 'doc-0'"):
        DenseIndex.load(saved)
    (saved / "index.faiss").unlink()
    with pytest.raises(FileNotFoundError, match="missing index.faiss"):
        DenseIndex.load(saved)


def test_load_refuses_foreign_meta(saved):
    (saved / "meta.json").write_text("{}")
    with pytest.raises(ValueError, match="not a bgekit DenseIndex"):
        DenseIndex.load(saved)

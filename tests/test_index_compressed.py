"""DenseIndex's compressed kinds (sq8, binary, binary_hnsw, ivfpq) and rescoring.

Each kind is checked against brute force in plain numpy over the *same* quantised vectors (what the
index stores, decoded), so a test fails if faiss is used wrongly, not because compression loses
quality; rescoring is checked against exact float search over the candidates.
"""
import json

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from bgekit.index import COMPRESSED_KINDS, DenseIndex  # noqa: E402

DIM = 64


def _unit(rng, n, dim=DIM):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    docs = _unit(rng, 1200)
    queries = _unit(rng, 25)
    return [f"d{i}" for i in range(len(docs))], docs, queries


def _check_against(brute, ids_all, got_ids, got_scores, atol):
    """Every returned score equals the brute-force score of that id and the brute-force k-th best
    scores (so the cut is right even where scores tie); rows are sorted best first."""
    pos = {d: i for i, d in enumerate(ids_all)}
    k = got_scores.shape[1]
    for qi, (row_ids, row_scores) in enumerate(zip(got_ids, got_scores)):
        assert len(row_ids) == k
        own = brute[qi, [pos[d] for d in row_ids]]
        np.testing.assert_allclose(row_scores, own, atol=atol)
        np.testing.assert_allclose(row_scores, np.sort(brute[qi])[::-1][:k], atol=atol)
        assert len(set(row_ids)) == k


def test_sq8_equals_brute_force_on_its_decoded_vectors(data):
    ids, docs, queries = data
    index = DenseIndex(DIM, kind="sq8")
    index.add(ids, docs)
    decoded = index.reconstruct()
    assert np.abs(decoded - docs).max() < (docs.max(0) - docs.min(0)).max() / 255  # within one int8 step
    got_ids, got_scores = index.search(queries, 10)
    _check_against(queries @ decoded.T, ids, got_ids, got_scores, atol=1e-5)
    assert index.code_size == DIM


def test_binary_equals_hamming_brute_force(data):
    ids, docs, queries = data
    index = DenseIndex(DIM, kind="binary")
    index.add(ids, docs)
    hamming = ((queries > 0)[:, None, :] != (docs > 0)[None, :, :]).sum(-1)  # plain numpy
    brute = 1.0 - 2.0 * hamming / DIM
    got_ids, got_scores = index.search(queries, 10)
    _check_against(brute, ids, got_ids, got_scores, atol=0)
    # ties (common for Hamming distances) are listed in the metrics' order: score, then doc id descending
    from bgekit.metrics import rank_documents

    for row_ids, row_scores in zip(got_ids, got_scores):
        assert list(row_ids) == rank_documents(dict(zip(row_ids, map(float, row_scores))))
    np.testing.assert_array_equal(index.reconstruct(ids[:3]), np.where(docs[:3] > 0, 1.0, -1.0))
    assert index.code_size == DIM // 8


def test_binary_hnsw_finds_the_binary_neighbours(data):
    ids, docs, queries = data
    flat, hnsw = DenseIndex(DIM, kind="binary"), DenseIndex(DIM, kind="binary_hnsw", m=16, ef_search=64)
    flat.add(ids, docs)
    hnsw.add(ids, docs)
    _, exact = flat.search(queries, 10)
    _, approx = hnsw.search(queries, 10)
    # compare score profiles (ties make id sets ambiguous): the HNSW k-th score is rarely worse
    assert np.mean(approx[:, -1] >= exact[:, -1]) >= 0.9
    assert np.all(approx <= exact[:, :1] + 1e-9)


def test_ivfpq_with_every_list_equals_brute_force_on_its_decoded_vectors(data):
    ids, docs, queries = data
    index = DenseIndex(DIM, kind="ivfpq", nlist=4, nprobe=4, pq_m=8, pq_nbits=6)
    index.add(ids, docs)
    assert index.code_size == 6 and index.knobs["pq_m"] == 8
    decoded = index.reconstruct()
    got_ids, got_scores = index.search(queries, 10)
    _check_against(queries @ decoded.T, ids, got_ids, got_scores, atol=1e-4)
    assert DenseIndex(384, kind="ivfpq").knobs["pq_m"] == 48  # default: dim / 8 bytes


@pytest.mark.parametrize("kind", COMPRESSED_KINDS)
def test_rescoring_every_candidate_is_exact_float_search(data, kind):
    ids, docs, queries = data
    knobs = {"nlist": 4, "nprobe": 4, "pq_nbits": 6} if kind == "ivfpq" else {}
    index = DenseIndex(DIM, kind=kind, rescore=len(ids), **knobs)  # k * rescore >= n: every vector rescored
    index.add(ids, docs)
    got_ids, got_scores = index.search(queries, 10)
    if kind == "binary_hnsw":  # a graph can miss a few even with ef_search = n; scores are still exact
        _check_against(queries @ docs.T, ids, [r[:5] for r in got_ids], got_scores[:, :5], atol=1e-5)
        return
    order = np.argsort(-(queries @ docs.T), axis=1, kind="stable")[:, :10]
    assert got_ids == [[ids[j] for j in row] for row in order]
    np.testing.assert_allclose(got_scores, np.take_along_axis(queries @ docs.T, order, 1), atol=1e-6)


def test_rescoring_reorders_the_candidates_by_the_float_query(data):
    ids, docs, queries = data
    index = DenseIndex(DIM, kind="binary", rescore=4)
    index.add(ids, docs)
    index.knobs["rescore"] = 0
    cand_ids, _ = index.search(queries, 40)  # the binary candidates
    index.knobs["rescore"] = 4
    got_ids, got_scores = index.search(queries, 10)
    pos = {d: i for i, d in enumerate(ids)}
    for qi, cands in enumerate(cand_ids):
        s = docs[[pos[d] for d in cands]] @ queries[qi]
        order = np.argsort(-s, kind="stable")[:10]
        assert set(got_ids[qi]) == {cands[j] for j in order}
        np.testing.assert_allclose(got_scores[qi], s[order], atol=1e-6)


def test_int8_rescoring_copy_equals_brute_force_on_dequantised_vectors(data):
    from bgekit.quantization import calibrate_int8, dequantize_int8, quantize_int8

    ids, docs, queries = data
    index = DenseIndex(DIM, kind="binary", rescore=len(ids), rescore_dtype="int8")
    index.add(ids[:600], docs[:600])  # ranges are calibrated on the first add (training vectors)
    index.add(ids[600:], docs[600:])
    ranges = calibrate_int8(docs[:600])
    approx = dequantize_int8(quantize_int8(docs, ranges), ranges)
    got_ids, got_scores = index.search(queries, 10)
    _check_against(queries @ approx.T, ids, got_ids, got_scores, atol=1e-5)
    assert index.rescore_size == DIM and DenseIndex(DIM, kind="sq8", rescore=2).rescore_size == 4 * DIM


CASES = [
    ("sq8", {}),
    ("sq8", {"rescore": 3, "rescore_dtype": "int8"}),
    ("binary", {}),
    ("binary", {"rescore": 5}),
    ("binary_hnsw", {"m": 8, "ef_search": 32, "rescore": 2}),
    ("ivfpq", {"nlist": 4, "nprobe": 2, "pq_nbits": 6}),
    ("ivfpq", {"nlist": 4, "nprobe": 2, "pq_nbits": 6, "rescore": 3, "rescore_dtype": "int8"}),
]


@pytest.mark.parametrize("kind,knobs", CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES)])
def test_round_trip(tmp_path, data, kind, knobs):
    ids, docs, queries = data
    index = DenseIndex(DIM, kind=kind, **knobs)
    index.add(ids, docs)
    index.save(tmp_path / "idx")
    files = sorted(p.name for p in (tmp_path / "idx").iterdir())
    extra = ["rescore.npy"] * bool(knobs.get("rescore")) + ["rescore_ranges.npy"] * ("rescore_dtype" in knobs)
    assert files == sorted(["ids.json", "index.faiss", "meta.json", *extra])
    back = DenseIndex.load(tmp_path / "idx")
    assert back.ids == ids and back.kind == kind and back.knobs == index.knobs
    np.testing.assert_array_equal(back.reconstruct(), index.reconstruct())
    a_ids, a_scores = index.search(queries, 10)
    b_ids, b_scores = back.search(queries, 10)
    assert a_ids == b_ids
    np.testing.assert_array_equal(a_scores, b_scores)
    if knobs.get("rescore"):
        assert isinstance(back._rescore_parts[0], np.memmap)  # the copy stays on disk
    back.add(["new"], docs[:1])  # a loaded index keeps working
    assert len(back) == len(ids) + 1 and back.search(docs[:1], 2)[0][0][:2] in (["d0", "new"], ["new", "d0"])


def test_bad_input_is_named_and_changes_nothing(tmp_path, data):
    ids, docs, queries = data
    with pytest.raises(ValueError, match="kind must be one of"):
        DenseIndex(DIM, kind="pq")
    with pytest.raises(ValueError, match="dim must be a multiple of 8, got 60"):
        DenseIndex(60, kind="binary")
    with pytest.raises(ValueError, match="pq_m=7 must divide dim=64"):
        DenseIndex(DIM, kind="ivfpq", pq_m=7)
    with pytest.raises(ValueError, match="rescore_dtype must be one of"):
        DenseIndex(DIM, kind="sq8", rescore=2, rescore_dtype="float16")
    with pytest.raises(ValueError, match="rescore must be an int >= 0"):
        DenseIndex(DIM, kind="binary", rescore=-1)
    with pytest.raises(ValueError, match="unknown knob"):
        DenseIndex(DIM, kind="flat", rescore=2)

    pq = DenseIndex(DIM, kind="ivfpq", nlist=4)
    with pytest.raises(ValueError, match=r"at least max\(nlist=4, 2\*\*pq_nbits=256\) = 256 vectors, got 100"):
        pq.add(ids[:100], docs[:100])
    assert len(pq) == 0 and not pq.is_trained

    index = DenseIndex(DIM, kind="binary")
    index.add(ids, docs)
    with pytest.raises(ValueError, match=r"shape \(64,\) or \(n, 64\), got \(2, 32\)"):
        index.search(queries[:2, :32], 3)
    with pytest.raises(ValueError, match=r"shape \(n, 64\), got \(3, 32\)"):
        index.add(["x", "y", "z"], docs[:3, :32])
    index.knobs["rescore"] = 3
    with pytest.raises(ValueError, match="built without one"):
        index.search(queries, 3)
    index.knobs["rescore"] = 0
    assert len(index) == len(ids)

    # a damaged saved index: clear errors, and a failed save keeps the previous folder
    index.save(tmp_path / "idx")
    good = (tmp_path / "idx" / "index.faiss").read_bytes()
    (tmp_path / "idx" / "index.faiss").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="index.faiss is not a readable faiss binary index"):
        DenseIndex.load(tmp_path / "idx")
    (tmp_path / "idx" / "index.faiss").write_bytes(good)
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    (tmp_path / "idx" / "meta.json").write_text(json.dumps({**meta, "kind": "sq8", "knobs": {}}))
    with pytest.raises(ValueError, match="not a readable faiss index for kind='sq8'"):
        DenseIndex.load(tmp_path / "idx")


def test_damaged_rescoring_copy_and_atomic_save(tmp_path, data, monkeypatch):
    ids, docs, queries = data
    index = DenseIndex(DIM, kind="sq8", rescore=2)
    index.add(ids, docs)
    index.save(tmp_path / "idx")
    np.save(tmp_path / "idx" / "rescore.npy", docs[:10])
    with pytest.raises(ValueError, match=r"rescore.npy holds float32 \(10, 64\), expected float32 \(1200, 64\)"):
        DenseIndex.load(tmp_path / "idx")
    (tmp_path / "idx" / "rescore.npy").unlink()
    with pytest.raises(FileNotFoundError, match="missing rescore.npy"):
        DenseIndex.load(tmp_path / "idx")
    index.save(tmp_path / "idx")  # a complete save replaces the damaged folder

    bigger = DenseIndex(DIM, kind="sq8", rescore=2)
    bigger.add(ids + ["extra"], np.vstack([docs, docs[:1]]))

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(np, "save", crash)
    with pytest.raises(OSError, match="simulated"):
        bigger.save(tmp_path / "idx")
    monkeypatch.undo()
    back = DenseIndex.load(tmp_path / "idx")
    assert back.ids == ids
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]

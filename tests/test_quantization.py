"""bgekit.quantization against hand-worked cases, plain numpy and sentence-transformers' quantize_embeddings."""
import numpy as np
import pytest

from bgekit.quantization import (
    bytes_per_vector,
    calibrate_int8,
    dequantize_int8,
    hamming_distance,
    quantize_binary,
    quantize_embeddings,
    quantize_int8,
    unpack_binary,
)


def _unit(rng, n, dim):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_int8_hand_worked():
    ranges = np.array([[0.0, -1.0], [2.55, 1.0]], dtype=np.float32)  # steps 0.01 and 2/255
    x = np.array([[0.0, -1.0], [2.55, 1.0], [1.0, 0.5], [-5.0, 9.0]], dtype=np.float32)
    codes = quantize_int8(x, ranges)
    # 1.0 / 0.01 = 100 -> 100 - 128 = -28; (0.5 + 1) * 255 / 2 = 191.25 -> 191 - 128 = 63; out of range clips
    assert codes.tolist() == [[-128, -128], [127, 127], [-28, 63], [-128, 127]]
    back = dequantize_int8(codes, ranges)
    np.testing.assert_allclose(back[:3], [[0.0, -1.0], [2.55, 1.0], [1.0, -1 + 191 * 2 / 255]], atol=1e-6)


def test_int8_error_is_at_most_half_a_step():
    rng = np.random.default_rng(0)
    x = _unit(rng, 500, 48)
    ranges = calibrate_int8(x)
    np.testing.assert_array_equal(ranges, np.stack([x.min(0), x.max(0)]))
    err = np.abs(dequantize_int8(quantize_int8(x, ranges), ranges) - x)
    half_step = (ranges[1] - ranges[0]) / 510
    assert np.all(err <= half_step + 1e-6)
    # quantile ranges clip the tails: values beyond them map to the end codes
    inner = calibrate_int8(x, quantile=0.05)
    np.testing.assert_allclose(inner, np.quantile(x, [0.05, 0.95], axis=0), rtol=1e-6)
    codes = quantize_int8(x, inner)
    assert (codes[x <= inner[0]] == -128).all() and (codes[x >= inner[1]] == 127).all()


def test_int8_against_sentence_transformers():
    st = pytest.importorskip("sentence_transformers.quantization")
    rng = np.random.default_rng(1)
    calib, x = _unit(rng, 300, 32), _unit(rng, 50, 32)
    ranges = calibrate_int8(calib)
    ours = quantize_int8(x, ranges).astype(int)
    theirs = st.quantize_embeddings(x, precision="int8", ranges=ranges).astype(int)
    # same mapping; sentence-transformers truncates where we round, so codes differ by at most one step
    inside = (x >= ranges[0]) & (x <= ranges[1])
    assert np.all(np.abs(ours - theirs)[inside] <= 1)
    for precision in ("ubinary", "binary"):
        np.testing.assert_array_equal(quantize_embeddings(x, precision), st.quantize_embeddings(x, precision=precision))


def test_binary_packing_and_hamming_against_plain_numpy():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((7, 20)).astype(np.float32), rng.standard_normal((9, 20)).astype(np.float32)
    pa, pb = quantize_binary(a), quantize_binary(b)
    assert pa.shape == (7, 3) and pa.dtype == np.uint8
    np.testing.assert_array_equal(unpack_binary(pa, 20), np.where(a > 0, 1.0, -1.0))
    want = ((a > 0)[:, None, :] != (b > 0)[None, :, :]).sum(-1)
    np.testing.assert_array_equal(hamming_distance(pa, pb), want)
    signs_a, signs_b = np.where(a > 0, 1, -1), np.where(b > 0, 1, -1)
    np.testing.assert_array_equal(signs_a @ signs_b.T, 20 - 2 * want)


def test_quantize_embeddings_and_sizes():
    rng = np.random.default_rng(3)
    x = _unit(rng, 40, 16)
    ranges = calibrate_int8(x)
    np.testing.assert_array_equal(quantize_embeddings(x, "int8", ranges=ranges), quantize_int8(x, ranges))
    u8 = quantize_embeddings(x, "uint8", calibration_embeddings=x)
    np.testing.assert_array_equal(u8.astype(int) - 128, quantize_int8(x, ranges))
    assert quantize_embeddings(x, "float32").dtype == np.float32
    sizes = [bytes_per_vector(384, p) for p in ("float32", "int8", "uint8", "binary", "ubinary")]
    assert sizes == [1536, 384, 384, 48, 48]


def test_bad_input_is_named():
    x = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match="precision must be one of"):
        quantize_embeddings(x, "int4")
    with pytest.raises(ValueError, match=r"ranges must have shape \(2, 4\)"):
        quantize_int8(x, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"ranges\[:, 1\]"):
        quantize_int8(x, np.array([[0, 1, 0, 0], [1, 0, 1, 1]], np.float32))
    with pytest.raises(TypeError, match="floating-point"):
        quantize_binary(np.ones((2, 4), np.int32))
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"embeddings\[1\] contains NaN"):
        quantize_binary(bad)
    with pytest.raises(ValueError, match="codes must be uint8"):
        unpack_binary(np.zeros((1, 2), np.uint8), 24)
    with pytest.raises(ValueError, match="quantile"):
        calibrate_int8(x, quantile=0.5)

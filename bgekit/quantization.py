"""Compressed embeddings: int8 with calibrated ranges and binary (one packed bit per dimension).

A float32 embedding costs 4 bytes per dimension (4 KiB for a 1,024-d BGE-large vector). Two standard
compressions keep most of its retrieval quality:

* **int8** (``precision="int8"``, 4x smaller): each dimension is mapped linearly from a range
  ``[low, high]`` onto the 256 integers -128..127. The ranges are *calibrated*: taken per dimension
  from a sample of real embeddings (their minimum and maximum, or inner quantiles to ignore
  outliers), because the values of one dimension cover only a small part of [-1, 1].
  Values outside the range are clipped.
* **binary** (``precision="ubinary"``, 32x smaller): each dimension keeps only its sign (``x > 0``)
  and eight dimensions are packed into one byte (``numpy.packbits``, most significant bit first).
  Two binary vectors are compared by their Hamming distance (number of differing bits), which a CPU
  computes with a XOR and a population count. ``precision="binary"`` is the same bytes shifted to
  int8 (``byte - 128``), the layout sentence-transformers and some vector databases use.

Neither is a good *final* score: both lose the fine differences between the best candidates. The
usual recipe (and what :class:`bgekit.index.DenseIndex` does with ``rescore=``) is to search the
compressed vectors for a few times ``k`` candidates and rescore only those with the float query.

The precision names follow ``sentence_transformers.quantization.quantize_embeddings``
("float32", "int8", "uint8", "binary", "ubinary").

Example::

    >>> import numpy as np
    >>> x = np.array([[0.5, -0.2, 0.1, -0.9, 0.3, 0.0, 0.7, -0.1, 0.2]], dtype=np.float32)
    >>> quantize_binary(x)            # 9 signs -> 2 bytes: 0b10101010, 0b10000000
    array([[170, 128]], dtype=uint8)
    >>> ranges = calibrate_int8(np.array([[-1.0, 0.0], [1.0, 2.0]], dtype=np.float32))
    >>> ranges.tolist()
    [[-1.0, 0.0], [1.0, 2.0]]
    >>> quantize_int8(np.array([[-1.0, 2.0], [1.0, 0.0]], dtype=np.float32), ranges).tolist()
    [[-128, 127], [127, -128]]
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "PRECISIONS",
    "calibrate_int8",
    "quantize_int8",
    "dequantize_int8",
    "quantize_binary",
    "unpack_binary",
    "hamming_distance",
    "quantize_embeddings",
    "bytes_per_vector",
]

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")

# number of set bits of every byte value: Hamming distances by table look-up (works on every numpy)
_POPCOUNT = np.array([i.bit_count() for i in range(256)], dtype=np.uint8)


def _as_float_matrix(x: Any, name: str = "embeddings") -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (n, dim), got {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{name}[{bad}] contains NaN or inf")
    return arr


def _check_ranges(ranges: Any, dim: int) -> np.ndarray:
    r = np.asarray(ranges, dtype=np.float32)
    if r.shape != (2, dim):
        raise ValueError(f"ranges must have shape (2, {dim}) (row 0: low, row 1: high per dimension), got {r.shape}")
    if not np.isfinite(r).all() or (r[1] < r[0]).any():
        bad = int(np.flatnonzero(~(np.isfinite(r).all(0) & (r[1] >= r[0])))[0])
        raise ValueError(f"ranges[:, {bad}] = {r[:, bad].tolist()} is not a finite interval low <= high")
    return r


def calibrate_int8(calibration: np.ndarray, quantile: float = 0.0) -> np.ndarray:
    """Per-dimension ranges for :func:`quantize_int8`, from a sample of embeddings.

    Args:
        calibration: float array ``(n, dim)``: real embeddings of the kind you will quantise
            (a few thousand are plenty; corpus passages for a corpus).
        quantile: ``0.0`` takes each dimension's minimum and maximum; ``q > 0`` takes its
            ``q`` and ``1 - q`` quantiles, so that a few outliers do not stretch the range
            (values beyond it are clipped).

    Returns:
        float32 ``(2, dim)``: row 0 the low end, row 1 the high end of each dimension.

    Raises:
        ValueError: empty sample, NaN/inf, or ``quantile`` outside ``[0, 0.5)``.
    """
    x = _as_float_matrix(calibration, "calibration")
    if x.shape[0] == 0:
        raise ValueError("calibration needs at least one embedding")
    if not 0.0 <= quantile < 0.5:
        raise ValueError(f"quantile must be in [0, 0.5), got {quantile}")
    if quantile == 0.0:
        low, high = x.min(axis=0), x.max(axis=0)
    else:
        low, high = np.quantile(x, [quantile, 1.0 - quantile], axis=0)
    return np.stack([low, high]).astype(np.float32)


def _steps(ranges: np.ndarray) -> np.ndarray:
    width = ranges[1] - ranges[0]
    return np.where(width > 0, width / 255.0, 1.0).astype(np.float32)  # a constant dimension: any step works


def quantize_int8(embeddings: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """Map each dimension linearly from ``[low, high]`` onto -128..127 (rounded, clipped).

    Args:
        embeddings: float array ``(n, dim)``.
        ranges: float ``(2, dim)`` from :func:`calibrate_int8`.

    Returns:
        int8 ``(n, dim)``. :func:`dequantize_int8` maps it back (error at most half a step,
        ``(high - low) / 510``, inside the range).
    """
    x = _as_float_matrix(embeddings)
    r = _check_ranges(ranges, x.shape[1])
    codes = np.rint((x - r[0]) / _steps(r)) - 128.0
    return np.clip(codes, -128, 127).astype(np.int8)


def dequantize_int8(codes: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """The float32 values int8 ``codes`` stand for: ``low + (code + 128) * step`` per dimension."""
    c = np.asarray(codes)
    if c.dtype != np.int8 or c.ndim != 2:
        raise ValueError(f"codes must be an int8 array (n, dim), got {c.dtype} {c.shape}")
    r = _check_ranges(ranges, c.shape[1])
    return (r[0] + (c.astype(np.float32) + 128.0) * _steps(r)).astype(np.float32)


def quantize_binary(embeddings: np.ndarray) -> np.ndarray:
    """One bit per dimension (1 where ``x > 0``), packed 8 to a byte: uint8 ``(n, ceil(dim / 8))``.

    A dimension count that is not a multiple of 8 is padded with zero bits (which then agree for
    every vector and add nothing to a Hamming distance).
    """
    x = _as_float_matrix(embeddings)
    return np.packbits(x > 0, axis=1)


def unpack_binary(codes: np.ndarray, dim: int) -> np.ndarray:
    """The sign vectors packed by :func:`quantize_binary`: float32 ``(n, dim)`` of +1 / -1."""
    c = np.asarray(codes)
    if c.dtype != np.uint8 or c.ndim != 2 or c.shape[1] != (dim + 7) // 8:
        raise ValueError(f"codes must be uint8 (n, {(dim + 7) // 8}) for dim={dim}, got {c.dtype} {c.shape}")
    bits = np.unpackbits(c, axis=1, count=dim)
    return (bits.astype(np.float32) * 2.0 - 1.0)


def hamming_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between packed binary codes: int32 ``(len(a), len(b))``.

    For sign vectors of ``dim`` dimensions, ``dot(sign_a, sign_b) = dim - 2 * hamming``.

    >>> a = quantize_binary(np.array([[1.0, -1.0, 1.0, 1.0]], dtype=np.float32))
    >>> b = quantize_binary(np.array([[1.0, 1.0, -1.0, 1.0], [1.0, -1.0, 1.0, 1.0]], dtype=np.float32))
    >>> hamming_distance(a, b).tolist()
    [[2, 0]]
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != np.uint8 or b.dtype != np.uint8 or a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two uint8 code arrays with the same number of bytes, got {a.shape} and {b.shape}")
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.int32)
    for i in range(a.shape[0]):  # one row at a time keeps memory at len(b) * bytes
        out[i] = _POPCOUNT[np.bitwise_xor(b, a[i])].sum(axis=1, dtype=np.int32)
    return out


def quantize_embeddings(embeddings: np.ndarray, precision: str = "int8", *, ranges: np.ndarray | None = None,
                        calibration_embeddings: np.ndarray | None = None) -> np.ndarray:
    """Quantise embeddings to one of :data:`PRECISIONS` (sentence-transformers' names).

    Args:
        embeddings: float array ``(n, dim)``.
        precision: ``"float32"`` (a float32 copy), ``"int8"`` (int8, calibrated ranges),
            ``"uint8"`` (the same codes shifted to 0..255), ``"ubinary"`` (packed bits, uint8
            ``(n, ceil(dim/8))``) or ``"binary"`` (the packed bytes shifted to int8).
        ranges: int8/uint8 ranges ``(2, dim)`` (:func:`calibrate_int8`); else they are calibrated
            on ``calibration_embeddings``, else on ``embeddings`` themselves (with a warning: ranges
            from the data being quantised do not carry over to other data, e.g. queries).

    Returns:
        The quantised array (dtype as above).

    Raises:
        ValueError: an unknown ``precision`` or shapes that do not match.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    x = _as_float_matrix(embeddings)
    if precision == "float32":
        return x.copy()
    if precision in ("binary", "ubinary"):
        packed = quantize_binary(x)
        return (packed.astype(np.int16) - 128).astype(np.int8) if precision == "binary" else packed
    if ranges is None:
        if calibration_embeddings is None:
            logger.warning("int8 ranges calibrated on the embeddings being quantised; pass ranges= or "
                           "calibration_embeddings= to quantise other data on the same scale")
            calibration_embeddings = x
        ranges = calibrate_int8(calibration_embeddings)
    codes = quantize_int8(x, ranges)
    return (codes.astype(np.int16) + 128).astype(np.uint8) if precision == "uint8" else codes


def bytes_per_vector(dim: int, precision: str) -> int:
    """Memory of one vector of ``dim`` dimensions at ``precision`` (bytes).

    >>> [bytes_per_vector(1024, p) for p in ("float32", "int8", "ubinary")]
    [4096, 1024, 128]
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return {"float32": 4 * dim, "int8": dim, "uint8": dim}.get(precision, (dim + 7) // 8)

"""Exact integer GEMM, the one place that decides how accumulations are computed.

``exact_matmul(a, b)`` returns the exact int64 product of two small-integer matrices.
It runs float32 BLAS on chunks of the K dimension small enough that every partial sum
is an integer below 2**24 in magnitude, so float32 represents every intermediate
value exactly and the result does not depend on summation order, thread count or
the BLAS build. Chunks are then added in int64. ``tests/test_gemm.py`` checks this
against int64 matmul, including the worst-case magnitudes.
"""
from __future__ import annotations

import numpy as np

_FLOAT32_EXACT = 1 << 24


def chunk_size(max_abs_a: int, max_abs_b: int) -> int:
    """Largest K chunk whose partial sums stay exactly representable in float32."""
    per_product = max(1, max_abs_a * max_abs_b)
    return max(1, _FLOAT32_EXACT // per_product)


def exact_matmul(a: np.ndarray, b: np.ndarray, max_abs_a: int = 255, max_abs_b: int = 128,
                 out_dtype: type = np.int64) -> np.ndarray:
    """Exact ``a @ b`` for integer matrices with |a| <= max_abs_a and |b| <= max_abs_b.

    ``a`` is (..., M, K), ``b`` is (K, N) or (..., K, N); returns ``out_dtype`` (int64, or
    float64 holding the exact integers, which is exact while |a @ b| < 2^53).
    Accepts integer or already-float32 inputs holding integer values.
    """
    k = a.shape[-1]
    step = chunk_size(max_abs_a, max_abs_b)
    a32 = a if a.dtype == np.float32 else a.astype(np.float32)
    b32 = b if b.dtype == np.float32 else b.astype(np.float32)
    if k <= step:
        return np.matmul(a32, b32).astype(out_dtype, copy=False)
    out = None
    for start in range(0, k, step):
        part = np.matmul(a32[..., start:start + step], b32[..., start:start + step, :]).astype(out_dtype, copy=False)
        out = part if out is None else out + part
    return out

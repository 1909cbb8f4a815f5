"""Gemm and MatMul."""
from __future__ import annotations

import numpy as np

from qverify.simulator.ops.cpu._util import optional
from qverify.simulator.ops.registry import register_cpu


@register_cpu("Gemm")
def gemm(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """alpha * A' @ B' + beta * C, A' and B' optionally transposed, C broadcast."""
    a, b = np.asarray(inputs[0]), np.asarray(inputs[1])
    c = optional(inputs, 2)
    if attrs.get("transA", 0):
        a = a.T
    if attrs.get("transB", 0):
        b = b.T
    y = a @ b
    dtype = y.dtype.type
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    # Skip multiplications by 1 so the common case is exact.
    if alpha != 1.0:
        y = y * dtype(alpha)
    if c is not None and beta != 0.0:
        c = np.asarray(c, dtype=y.dtype)
        y = y + (c if beta == 1.0 else c * dtype(beta))
    return [np.ascontiguousarray(y)]


@register_cpu("MatMul")
def matmul(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """numpy.matmul semantics, which ONNX MatMul follows (batch broadcast, 1-D promotion)."""
    return [np.asarray(np.matmul(np.asarray(inputs[0]), np.asarray(inputs[1])))]

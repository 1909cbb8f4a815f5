"""Variadic elementwise ops with broadcasting: Min, Max, Sum, Mean."""
from __future__ import annotations

from functools import reduce

import numpy as np

from qverify.simulator.ops.registry import register_cpu


def _fold(inputs: list[np.ndarray | None], fn: np.ufunc) -> np.ndarray:
    """Left fold of ``fn`` over the given inputs, in order, as onnxruntime does."""
    arrays = [np.asarray(v) for v in inputs if v is not None]
    out = reduce(fn, arrays[1:], arrays[0])
    return np.array(np.broadcast_to(out, np.broadcast_shapes(*(a.shape for a in arrays))))


@register_cpu("Min")
def min_(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Min of any number of inputs."""
    return [_fold(inputs, np.minimum)]


@register_cpu("Max")
def max_(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Max of any number of inputs."""
    return [_fold(inputs, np.maximum)]


@register_cpu("Sum")
def sum_(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Sum of any number of inputs."""
    return [_fold(inputs, np.add)]


@register_cpu("Mean")
def mean(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Mean: the sum divided by the number of inputs."""
    total = _fold(inputs, np.add)
    count = sum(v is not None for v in inputs)
    return [(total / np.asarray(count, dtype=total.dtype)).astype(total.dtype, copy=False)]

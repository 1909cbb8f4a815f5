"""Softmax, LogSoftmax, Hardmax (opset 13 per-axis; older opsets coerce to 2-D)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from qverify.simulator.ops.cpu._util import axis_of
from qverify.simulator.ops.registry import register_cpu


def _along(x: np.ndarray, attrs: dict, fn: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """Apply ``fn(x, axis)`` along the op's axis, or on the 2-D coerced view below opset 13."""
    x = np.asarray(x, dtype=np.float32)
    if int(attrs.get("_opset", 13)) >= 13:
        return fn(x, axis_of(int(attrs.get("axis", -1)), x.ndim))
    axis = axis_of(int(attrs.get("axis", 1)), x.ndim)
    rows = int(np.prod(x.shape[:axis]))
    return fn(x.reshape(rows, -1), 1).reshape(x.shape)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _hardmax(x: np.ndarray, axis: int) -> np.ndarray:
    # 1 at the first maximum along the axis, 0 elsewhere.
    index = np.expand_dims(x.argmax(axis=axis), axis)
    y = np.zeros_like(x)
    np.put_along_axis(y, index, np.float32(1), axis=axis)
    return y


@register_cpu("Softmax")
def softmax(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """exp(x - max) / sum(exp(x - max))."""
    return [_along(inputs[0], attrs, _softmax)]


@register_cpu("LogSoftmax")
def log_softmax(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """x - max - log(sum(exp(x - max)))."""
    return [_along(inputs[0], attrs, _log_softmax)]


@register_cpu("Hardmax")
def hardmax(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """One-hot of the first arg max."""
    return [_along(inputs[0], attrs, _hardmax)]

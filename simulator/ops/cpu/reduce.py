"""Reductions (ReduceMean/Sum/Max/Min and kin) and ArgMax/ArgMin."""
from __future__ import annotations

from typing import Callable

import numpy as np

from qverify.simulator.ops.cpu._util import axes_input_or_attr, axis_of
from qverify.simulator.ops.registry import register_cpu


def _sum(x: np.ndarray, axes: tuple, keep: bool) -> np.ndarray:
    return np.sum(x, axis=axes, keepdims=keep, dtype=x.dtype)


def _log_sum_exp(x: np.ndarray, axes: tuple, keep: bool) -> np.ndarray:
    # Shift by the max so exp cannot overflow.
    top = np.max(x, axis=axes, keepdims=True)
    y = np.log(np.sum(np.exp(x - top), axis=axes, keepdims=True)) + top
    return y if keep else np.squeeze(y, axis=axes)


REDUCTIONS: dict[str, Callable[[np.ndarray, tuple, bool], np.ndarray]] = {
    "ReduceSum": _sum,
    "ReduceMean": lambda x, a, k: np.mean(x, axis=a, keepdims=k, dtype=x.dtype),
    "ReduceMax": lambda x, a, k: np.max(x, axis=a, keepdims=k),
    "ReduceMin": lambda x, a, k: np.min(x, axis=a, keepdims=k),
    "ReduceProd": lambda x, a, k: np.prod(x, axis=a, keepdims=k, dtype=x.dtype),
    "ReduceL1": lambda x, a, k: _sum(np.abs(x), a, k),
    "ReduceL2": lambda x, a, k: np.sqrt(_sum(x * x, a, k)),
    "ReduceSumSquare": lambda x, a, k: _sum(x * x, a, k),
    "ReduceLogSum": lambda x, a, k: np.log(_sum(x, a, k)),
    "ReduceLogSumExp": _log_sum_exp,
}


def _reducer(name: str, fn: Callable) -> Callable:
    def kernel(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
        x = np.asarray(inputs[0])
        axes = axes_input_or_attr(inputs, attrs, 1)
        if not axes:
            # noop still maps each element alone (ReduceL1 gives |x|, ReduceSumSquare x^2).
            axes = [] if attrs.get("noop_with_empty_axes", 0) else list(range(x.ndim))
        axes = tuple(sorted({axis_of(a, x.ndim) for a in axes}))
        with np.errstate(all="ignore"):
            return [np.asarray(fn(x, axes, bool(attrs.get("keepdims", 1))))]
    kernel.__doc__ = f"ONNX {name}: axes from input 1 or the attribute, keepdims, noop_with_empty_axes."
    kernel.__name__ = name.lower()
    return kernel


for _name, _fn in REDUCTIONS.items():
    register_cpu(_name)(_reducer(_name, _fn))


def _arg(x: np.ndarray, attrs: dict, fn: Callable) -> np.ndarray:
    """Index of the extreme along ``axis``; select_last_index scans a reversed copy."""
    axis = axis_of(int(attrs.get("axis", 0)), x.ndim)
    if attrs.get("select_last_index", 0):
        index = x.shape[axis] - 1 - fn(np.flip(x, axis), axis=axis)
    else:
        index = fn(x, axis=axis)
    index = index.astype(np.int64)
    return np.expand_dims(index, axis) if attrs.get("keepdims", 1) else index


@register_cpu("ArgMax")
def arg_max(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX ArgMax (int64)."""
    return [_arg(np.asarray(inputs[0]), attrs, np.argmax)]


@register_cpu("ArgMin")
def arg_min(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX ArgMin (int64)."""
    return [_arg(np.asarray(inputs[0]), attrs, np.argmin)]

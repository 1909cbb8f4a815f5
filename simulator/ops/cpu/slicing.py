"""Slice, Split, Concat, Gather, GatherElements."""
from __future__ import annotations

import numpy as np

from qverify.simulator.ops.cpu._util import axis_of, ints_of, optional
from qverify.simulator.ops.registry import register_cpu


def _bound(value: int, dim: int, step: int, is_end: bool) -> int | None:
    """Clamp a start/end as ONNX does (which differs from Python for negative steps)."""
    value = value + dim if value < 0 else value
    if step > 0:
        return min(max(value, 0), dim)
    value = min(max(value, -1), dim - 1)
    # End -1 means "through index 0"; Python would read -1 as the last element.
    return None if is_end and value < 0 else value


@register_cpu("Slice")
def slice_(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Slice: starts, ends, axes, steps as inputs (opset 10+) or attributes (opset 1)."""
    x = np.asarray(inputs[0])
    if len(inputs) > 1:
        starts, ends = ints_of(inputs[1]), ints_of(inputs[2])
        axes, steps = ints_of(optional(inputs, 3)), ints_of(optional(inputs, 4))
    else:
        starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
    axes = list(range(len(starts))) if axes is None else [axis_of(a, x.ndim) for a in axes]
    steps = steps or [1] * len(starts)
    picks = [slice(None)] * x.ndim
    for axis, start, end, step in zip(axes, starts, ends, steps):
        dim = x.shape[axis]
        picks[axis] = slice(_bound(start, dim, step, False), _bound(end, dim, step, True), step)
    return [np.array(x[tuple(picks)])]


@register_cpu("Split")
def split(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Split by ``split`` (input 1 or attribute), ``num_outputs``, or ``_num_outputs``.

    Without either, ONNX splits equally into as many parts as the node has outputs;
    kernels do not see the node, so the caller passes that count as ``_num_outputs``.
    """
    x = np.asarray(inputs[0])
    axis = axis_of(int(attrs.get("axis", 0)), x.ndim)
    parts = ints_of(optional(inputs, 1)) or ints_of(attrs.get("split"))
    dim = x.shape[axis]
    if not parts:
        count = attrs.get("num_outputs", attrs.get("_num_outputs"))
        if count is None:
            raise ValueError("Split needs 'split', 'num_outputs' or '_num_outputs'")
        chunk = -(-dim // int(count))  # opset 18: equal chunks, the last one smaller
        parts = [min(chunk, dim - i * chunk) for i in range(int(count))]
    edges = np.cumsum(parts)[:-1]
    return [np.array(p) for p in np.split(x, edges, axis=axis)]


@register_cpu("Concat")
def concat(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Concat along ``axis``."""
    arrays = [np.asarray(v) for v in inputs if v is not None]
    return [np.concatenate(arrays, axis=axis_of(int(attrs["axis"]), arrays[0].ndim))]


@register_cpu("Gather")
def gather(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Gather along ``axis`` (default 0); negative indices count from the end."""
    x, indices = np.asarray(inputs[0]), np.asarray(inputs[1]).astype(np.int64)
    axis = axis_of(int(attrs.get("axis", 0)), x.ndim)
    return [np.take(x, indices, axis=axis)]


@register_cpu("GatherElements")
def gather_elements(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX GatherElements: numpy.take_along_axis, with negative indices wrapped."""
    x, indices = np.asarray(inputs[0]), np.asarray(inputs[1]).astype(np.int64)
    axis = axis_of(int(attrs.get("axis", 0)), x.ndim)
    indices = np.where(indices < 0, indices + x.shape[axis], indices)
    return [np.take_along_axis(x, indices, axis=axis)]

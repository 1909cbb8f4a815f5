"""Ops that only move data: Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Expand, Tile, Shape."""
from __future__ import annotations

import numpy as np

from qverify.simulator.ops.cpu._util import axes_input_or_attr, axis_of, ints_of
from qverify.simulator.ops.registry import register_cpu


@register_cpu("Identity")
def identity(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Identity (a copy, so callers may mutate the result)."""
    return [np.array(inputs[0])]


@register_cpu("Dropout")
def dropout(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Dropout at inference: Y = X and an all-true mask."""
    x = np.array(inputs[0])
    return [x, np.ones(x.shape, dtype=bool)]


@register_cpu("Reshape")
def reshape(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Reshape: 0 copies the input dim (unless allowzero=1), -1 is inferred."""
    x = np.asarray(inputs[0])
    shape = ints_of(inputs[1] if len(inputs) > 1 and inputs[1] is not None else attrs["shape"])
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [np.array(x.reshape(shape))]


@register_cpu("Flatten")
def flatten(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Flatten to 2-D: dims before ``axis`` (default 1) times dims from it on."""
    x = np.asarray(inputs[0])
    axis = int(attrs.get("axis", 1))
    axis = axis + x.ndim if axis < 0 else axis
    rows = int(np.prod(x.shape[:axis]))
    return [np.array(x.reshape(rows, int(np.prod(x.shape[axis:]))))]


@register_cpu("Transpose")
def transpose(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Transpose; without ``perm`` the axes are reversed."""
    x = np.asarray(inputs[0])
    perm = attrs.get("perm")
    return [np.ascontiguousarray(np.transpose(x, perm if perm else None))]


@register_cpu("Squeeze")
def squeeze(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Squeeze: axes from input 1 (opset 13+) or attribute; none means every size-1 axis."""
    x = np.asarray(inputs[0])
    axes = axes_input_or_attr(inputs, attrs, 1)
    if not axes:
        return [np.array(np.squeeze(x))]
    return [np.array(np.squeeze(x, axis=tuple(axis_of(a, x.ndim) for a in axes)))]


@register_cpu("Unsqueeze")
def unsqueeze(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Unsqueeze: axes (input 1 or attribute) index the output's rank."""
    x = np.asarray(inputs[0])
    axes = axes_input_or_attr(inputs, attrs, 1) or []
    rank = x.ndim + len(axes)
    return [np.array(np.expand_dims(x, tuple(sorted(axis_of(a, rank) for a in axes))))]


@register_cpu("Expand")
def expand(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Expand: broadcast X against ``shape`` in both directions."""
    x = np.asarray(inputs[0])
    shape = np.broadcast_shapes(x.shape, tuple(ints_of(inputs[1])))
    return [np.array(np.broadcast_to(x, shape))]


@register_cpu("Tile")
def tile(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Tile: repeat X ``repeats[i]`` times along axis i."""
    return [np.tile(np.asarray(inputs[0]), ints_of(inputs[1]))]


@register_cpu("Shape")
def shape(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Shape (int64), sliced by the opset-15 ``start``/``end`` attributes."""
    dims = np.asarray(inputs[0]).shape
    end = attrs.get("end")
    return [np.array(dims[slice(int(attrs.get("start", 0)), None if end is None else int(end))],
                     dtype=np.int64)]


@register_cpu("Size")
def size(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Size: element count as an int64 scalar."""
    return [np.array(np.asarray(inputs[0]).size, dtype=np.int64)]


@register_cpu("ConstantOfShape")
def constant_of_shape(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX ConstantOfShape; ``value`` may be a scalar, a 1-element list or array (default 0.0f)."""
    value = np.asarray(attrs.get("value", np.zeros(1, dtype=np.float32)))
    if value.dtype == np.float64:
        value = value.astype(np.float32)  # a plain Python float stands for a float32 tensor
    return [np.full(ints_of(inputs[0]), value.reshape(-1)[0], dtype=value.dtype)]


@register_cpu("Range")
def range_(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Range: start, limit, delta scalars; the output keeps their dtype."""
    start, limit, delta = (np.asarray(v).reshape(-1)[0] for v in inputs[:3])
    count = max(int(np.ceil((limit - start) / delta)), 0)
    return [(start + np.arange(count, dtype=start.dtype) * delta).astype(start.dtype)]

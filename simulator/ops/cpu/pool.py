"""MaxPool and AveragePool (any spatial rank, pads, strides, dilations, ceil_mode)."""
from __future__ import annotations

import numpy as np

from qverify.simulator.ops.cpu._util import out_size, spatial_pads, window_view
from qverify.simulator.ops.registry import register_cpu


def _geometry(x: np.ndarray, attrs: dict) -> tuple:
    """Kernel, strides, dilations, begin pads, end pads (ceil-extended) and output shape."""
    rank = x.ndim - 2
    kernel = list(attrs["kernel_shape"])
    strides = list(attrs.get("strides") or [1] * rank)
    dilations = list(attrs.get("dilations") or [1] * rank)
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    begin, end = spatial_pads(attrs, x.shape[2:], kernel, strides, dilations)
    outs, ends = [], []
    for size, k, s, d, pb, pe in zip(x.shape[2:], kernel, strides, dilations, begin, end):
        eff = (k - 1) * d + 1
        out = out_size(size, eff, s, pb + pe, ceil_mode)
        # ceil_mode never starts a window in the right padding (onnx/onnx#5741).
        if ceil_mode and (out - 1) * s >= size + pb:
            out -= 1
        outs.append(out)
        ends.append(max(pe, (out - 1) * s + eff - size - pb))
    return kernel, strides, dilations, begin, end, ends, outs


def _windows(x: np.ndarray, value: float, begin: list, ends: list, geometry: tuple) -> np.ndarray:
    """Windows (N, C, *out, *kernel) of ``x`` padded with ``value``."""
    kernel, strides, dilations, _, _, _, outs = geometry
    padded = np.pad(x, [(0, 0), (0, 0)] + list(zip(begin, ends)), constant_values=value)
    return window_view(padded, kernel, strides, dilations, outs)


def max_pool_nd(x: np.ndarray, attrs: dict) -> np.ndarray:
    """ONNX MaxPool output Y (the Indices output is not computed)."""
    geometry = _geometry(x, attrs)
    kernel, _, _, begin, _, ends, _ = geometry
    low = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    windows = _windows(x, low, begin, ends, geometry)
    axes = tuple(range(x.ndim, x.ndim + len(kernel)))
    return np.ascontiguousarray(windows.max(axis=axes))


def average_pool_nd(x: np.ndarray, attrs: dict) -> np.ndarray:
    """ONNX AveragePool; count_include_pad counts explicit pads but never ceil_mode's overhang."""
    x = np.asarray(x, dtype=np.float32)
    geometry = _geometry(x, attrs)
    kernel, _, _, begin, end, ends, _ = geometry
    axes = tuple(range(x.ndim, x.ndim + len(kernel)))
    sums = _windows(x, 0.0, begin, ends, geometry).sum(axis=axes, dtype=np.float32)
    # Divisor per output: how many counted positions each window covers.
    spatial = x.shape[2:]
    if attrs.get("count_include_pad", 0):
        valid = np.ones([s + b + e for s, b, e in zip(spatial, begin, end)], dtype=np.float32)
        mask_begin, mask_ends = [0] * len(spatial), [e2 - e for e, e2 in zip(end, ends)]
    else:
        valid = np.ones(spatial, dtype=np.float32)
        mask_begin, mask_ends = begin, ends
    valid = valid.reshape((1, 1) + valid.shape)
    counts = _windows(valid, 0.0, mask_begin, mask_ends, geometry).sum(axis=axes, dtype=np.float32)
    return np.ascontiguousarray(sums / counts, dtype=np.float32)


@register_cpu("MaxPool")
def max_pool(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX MaxPool: returns only Y; storage_order is irrelevant without Indices."""
    return [max_pool_nd(inputs[0], attrs)]


@register_cpu("AveragePool")
def average_pool(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX AveragePool."""
    return [average_pool_nd(inputs[0], attrs)]

"""Helpers shared by the CPU kernels: attribute defaults, axes, and spatial padding."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def f32(x: np.ndarray) -> np.ndarray:
    """Return ``x`` as a float32 array (no copy when it already is one)."""
    return np.asarray(x, dtype=np.float32)


def axis_of(axis: int, rank: int) -> int:
    """Normalize a possibly negative ONNX axis against ``rank``."""
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def ints_of(value: np.ndarray | Sequence[int] | None) -> list[int] | None:
    """Turn an int tensor input (or attribute list) into a Python list, keeping None."""
    if value is None:
        return None
    return [int(v) for v in np.asarray(value).reshape(-1)]


def optional(inputs: list, index: int) -> np.ndarray | None:
    """Input ``index`` of a node, or None when omitted (missing or passed as None)."""
    if index < len(inputs) and inputs[index] is not None:
        return inputs[index]
    return None


def axes_input_or_attr(inputs: list, attrs: dict, index: int) -> list[int] | None:
    """Axes from input ``index`` (newer opsets) or from the ``axes`` attribute (older ones)."""
    axes = optional(inputs, index)
    if axes is not None:
        return ints_of(axes)
    return ints_of(attrs.get("axes"))


def out_size(size: int, kernel: int, stride: int, pad_total: int, ceil_mode: bool) -> int:
    """Output length along one axis for a window of length ``kernel`` (dilation applied)."""
    span = size + pad_total - kernel
    if ceil_mode:
        return -(-span // stride) + 1
    return span // stride + 1


def spatial_pads(attrs: dict, in_shape: Sequence[int], kernel: Sequence[int],
                 strides: Sequence[int], dilations: Sequence[int]) -> tuple[list[int], list[int]]:
    """Begin/end pads of a Conv or pool, resolving ``auto_pad`` the way onnxruntime does."""
    rank = len(in_shape)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(in_shape, kernel, strides, dilations):
            eff = (k - 1) * d + 1
            total = max(0, (math.ceil(size / s) - 1) * s + eff - size)
            # SAME_UPPER puts the odd extra pixel at the end, SAME_LOWER at the beginning.
            small = total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
        return begin, end
    if auto_pad == "VALID":
        return [0] * rank, [0] * rank
    pads = list(attrs.get("pads") or [0] * (2 * rank))
    return pads[:rank], pads[rank:]


def window_view(x: np.ndarray, kernel: Sequence[int], strides: Sequence[int],
                dilations: Sequence[int], out_shape: Sequence[int]) -> np.ndarray:
    """Strided view (N, C, *out, *kernel) of an already padded (N, C, *spatial) array."""
    rank = len(kernel)
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    view = np.lib.stride_tricks.sliding_window_view(x, eff, axis=tuple(range(2, 2 + rank)))
    picks = (slice(None), slice(None))
    picks += tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out_shape, strides))
    picks += tuple(slice(None, None, d) for d in dilations)
    return view[picks]

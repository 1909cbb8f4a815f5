"""Conv (any spatial rank, groups, dilations, auto_pad) as im2col + matmul."""
from __future__ import annotations

import numpy as np

from qverify.simulator.ops.cpu._util import f32, optional, out_size, spatial_pads, window_view
from qverify.simulator.ops.registry import register_cpu


def conv_nd(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, attrs: dict) -> np.ndarray:
    """Float32 ONNX Conv of ``x`` (N, C, *S) with ``w`` (M, C/group, *K) and optional bias."""
    x, w = f32(x), f32(w)
    rank = x.ndim - 2
    kernel = list(attrs.get("kernel_shape") or w.shape[2:])
    strides = list(attrs.get("strides") or [1] * rank)
    dilations = list(attrs.get("dilations") or [1] * rank)
    group = int(attrs.get("group", 1))
    begin, end = spatial_pads(attrs, x.shape[2:], kernel, strides, dilations)
    out_shape = [out_size(size, (k - 1) * d + 1, s, pb + pe, False)
                 for size, k, s, d, pb, pe in zip(x.shape[2:], kernel, strides, dilations, begin, end)]
    padded = np.pad(x, [(0, 0), (0, 0)] + list(zip(begin, end)))
    cols = window_view(padded, kernel, strides, dilations, out_shape)  # (N, C, *O, *K)
    n, c = x.shape[:2]
    m = w.shape[0]
    cg, mg = c // group, m // group
    n_out, n_k = int(np.prod(out_shape)), int(np.prod(kernel))
    # (N, G, Cg, *O, *K) -> (G, N, *O, Cg, *K): the im2col matrix of every group.
    cols = cols.reshape((n, group, cg) + tuple(out_shape) + tuple(kernel))
    order = (1, 0) + tuple(range(3, 3 + rank)) + (2,) + tuple(range(3 + rank, 3 + 2 * rank))
    cols = cols.transpose(order).reshape(group, n * n_out, cg * n_k)
    weights = w.reshape(group, mg, cg * n_k)
    y = np.matmul(cols, weights.transpose(0, 2, 1))  # (G, N*O, Mg)
    y = y.reshape((group, n, n_out, mg)).transpose(1, 0, 3, 2).reshape((n, m) + tuple(out_shape))
    if b is not None:
        y = y + f32(b).reshape((1, m) + (1,) * rank)
    return np.ascontiguousarray(y, dtype=np.float32)


@register_cpu("Conv")
def conv(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX Conv: X, W, optional B."""
    return [conv_nd(inputs[0], inputs[1], optional(inputs, 2), attrs)]

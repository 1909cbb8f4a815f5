"""ConvTranspose (any spatial rank, groups, dilations, output_padding, output_shape)."""
from __future__ import annotations

import numpy as np

from qverify.simulator.ops.cpu._util import f32, optional
from qverify.simulator.ops.registry import register_cpu


def _pads(attrs: dict, in_shape: list[int], kernel: list[int], strides: list[int],
          dilations: list[int], adjs: list[int]) -> tuple[list[int], list[int]]:
    """Head pad and output length per axis, resolved as onnxruntime's CPU provider does."""
    rank = len(in_shape)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    pads = list(attrs.get("pads") or [0] * (2 * rank))
    wanted = list(attrs.get("output_shape") or [])
    if len(wanted) == rank + 2:  # also accepted: the full N, C, *spatial shape
        wanted = wanted[2:]
    heads, outs = [], []
    for i, (size, k, s, d, adj) in enumerate(zip(in_shape, kernel, strides, dilations, adjs)):
        natural = (size - 1) * s + adj + (k - 1) * d + 1
        if wanted or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = wanted[i] if wanted else size * s
            total = max(0, natural - out)
            # As in the ONNX spec: SAME_UPPER puts the odd extra pad at the tail, all others at the head.
            head = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            if not wanted:
                out = natural - total
        elif auto_pad == "VALID":
            head, out = 0, natural
        else:
            head, out = pads[i], natural - pads[i] - pads[rank + i]
        heads.append(head)
        outs.append(out)
    return heads, outs


def conv_transpose_nd(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, attrs: dict) -> np.ndarray:
    """Float32 ONNX ConvTranspose of ``x`` (N, C, *S) with ``w`` (C, M/group, *K)."""
    x, w = f32(x), f32(w)
    rank = x.ndim - 2
    n, c = x.shape[:2]
    in_shape = list(x.shape[2:])
    kernel = list(attrs.get("kernel_shape") or w.shape[2:])
    strides = list(attrs.get("strides") or [1] * rank)
    dilations = list(attrs.get("dilations") or [1] * rank)
    adjs = list(attrs.get("output_padding") or [0] * rank)
    group = int(attrs.get("group", 1))
    cg, mg = c // group, w.shape[1]
    m = mg * group
    heads, outs = _pads(attrs, in_shape, kernel, strides, dilations, adjs)
    n_in = int(np.prod(in_shape))
    # One matmul per group gives every (input pixel, output channel, kernel tap) product.
    xg = x.reshape(n, group, cg, n_in).transpose(1, 0, 3, 2)  # (G, N, P, Cg)
    cols = np.matmul(xg, w.reshape(group, 1, cg, -1))  # (G, N, P, Mg*K)
    cols = cols.reshape((group, n, *in_shape, mg, *kernel))
    order = (1, 0, 2 + rank) + tuple(range(3 + rank, 3 + 2 * rank)) + tuple(range(2, 2 + rank))
    cols = cols.transpose(order).reshape((n, m, *kernel, *in_shape))
    # col2im: scatter-add every kernel tap into a buffer long enough for the cropped output.
    full = [(i - 1) * s + (k - 1) * d + 1 for i, k, s, d in zip(in_shape, kernel, strides, dilations)]
    size = [max(f, h + o) for f, h, o in zip(full, heads, outs)]
    buf = np.zeros((n, m, *size), dtype=np.float32)
    for tap in np.ndindex(*kernel):
        where = tuple(slice(t * d, t * d + (i - 1) * s + 1, s)
                      for t, d, i, s in zip(tap, dilations, in_shape, strides))
        buf[(slice(None), slice(None)) + where] += cols[(slice(None), slice(None)) + tap]
    y = buf[(slice(None), slice(None)) + tuple(slice(h, h + o) for h, o in zip(heads, outs))]
    if b is not None:
        y = y + f32(b).reshape((1, m) + (1,) * rank)
    return np.ascontiguousarray(y, dtype=np.float32)


@register_cpu("ConvTranspose")
def conv_transpose(inputs: list[np.ndarray | None], attrs: dict) -> list[np.ndarray]:
    """ONNX ConvTranspose: X, W, optional B."""
    return [conv_transpose_nd(inputs[0], inputs[1], optional(inputs, 2), attrs)]
